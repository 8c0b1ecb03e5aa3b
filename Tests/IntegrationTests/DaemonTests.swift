// The daemon: auto-start, files and modes in PML_HOME, clean errors, a control socket that
// survives garbage, and `pml kill` leaving nothing behind.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A raw client of the control socket, for feeding it garbage.
final class RawClient {
    let fd: Int32

    init(path: String, timeoutSeconds: Int = 5) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket(): errno \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            throw HarnessError("socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw HarnessError("connect(\(path)): errno \(e)")
        }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    /// Sends all of `bytes`; false if the peer closed (EPIPE/ECONNRESET) — acceptable for garbage.
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            sent += n
        }
        return true
    }

    enum Reply: CustomStringConvertible {
        case line(String)
        case closed
        case timedOut(partial: String)

        var description: String {
            switch self {
            case .line(let s): return "reply line: \(s)"
            case .closed: return "connection closed"
            case .timedOut(let p): return "no reply within the timeout (partial: \(p.debugDescription))"
            }
        }
    }

    /// Reads one line, or notices the close, or times out.
    func readReply() -> Reply {
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                buffer += chunk[0..<n]
                if let nl = buffer.firstIndex(of: 10) {
                    return .line(String(decoding: buffer[..<nl], as: UTF8.self))
                }
            } else if n == 0 {
                return buffer.isEmpty ? .closed : .line(String(decoding: buffer, as: UTF8.self))
            } else if errno == EINTR {
                continue
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                return .timedOut(partial: String(decoding: buffer, as: UTF8.self))
            } else {
                return .closed // ECONNRESET and friends: the daemon hung up
            }
        }
    }
}

extension Integration {
    @Suite("Daemon")
    struct Daemon {
        @Test("the first command auto-starts the daemon; PML_HOME 0700, socket 0600, pid and log files")
        func autoStartAndFiles() async throws {
            try await withSandbox { box in
                let ping = try await box.pml("ping")
                #expect(ping.ok, "\(ping)")
                #expect(ping.stdout.contains("pid"), "ping prints the daemon pid:\n\(ping)")

                var st = stat()
                #expect(stat(box.home, &st) == 0, "PML_HOME created")
                #expect(st.st_mode & 0o777 == 0o700, "PML_HOME mode is \(String(st.st_mode & 0o777, radix: 8))")
                #expect(lstat(box.socketPath, &st) == 0, "pml.sock exists")
                #expect(st.st_mode & S_IFMT == S_IFSOCK, "pml.sock is a socket")
                #expect(st.st_mode & 0o777 == 0o600, "pml.sock mode is \(String(st.st_mode & 0o777, radix: 8))")
                #expect(FileManager.default.fileExists(atPath: box.daemonLog), "daemon.log exists")
                let pid = try #require(box.daemonPid, "daemon.pid holds a pid")
                #expect(Proc.alive(pid), "the daemon \(pid) runs")
                #expect(ping.stdout.contains(String(pid)), "ping reports the daemon's pid \(pid):\n\(ping)")

                // The CLI returned while the daemon keeps running; a second command reuses it.
                let again = try await box.pml("ping")
                #expect(again.ok)
                #expect(box.daemonPid == pid, "the same daemon answers")

                let empty = try await box.ls()
                #expect(empty.isEmpty, "no apps yet: \(empty)")

                let kill = try await box.pml("kill")
                #expect(kill.ok, "\(kill)")
                try await box.waitFor("the daemon \(pid) to exit after pml kill", timeout: 10) {
                    Proc.alive(pid) ? nil : true
                }
            }
        }

        @Test("errors: non-zero exit and one line on stderr starting with \"pml: \"")
        func cleanErrors() async throws {
            try await withSandbox { box in
                try await box.pmlOK("ping")
                try await box.pml("stop", "web").expectCleanFailure(mentioning: ["web"])
                try await box.pml("restart", "web").expectCleanFailure(mentioning: ["web"])
                try await box.pml("delete", "999").expectCleanFailure(mentioning: ["999"])
                try await box.pml("logs", "web").expectCleanFailure(mentioning: ["web"])
                try await box.pml("start", box.work + "/missing.lua").expectCleanFailure(mentioning: ["missing.lua"])
                try await box.pml("signal", "SIGNOPE", "all").expectCleanFailure()
                // Usage errors follow the same rule.
                try await box.pml("no-such-command").expectCleanFailure()
                try await box.pml("stop").expectCleanFailure()
            }
        }

        @Test("garbage on the control socket gets an error reply or a closed connection; others are still served")
        func garbageOnControlSocket() async throws {
            try await withSandbox { box in
                try await box.pmlOK("ping")
                let daemon = try #require(box.daemonPid)

                // Positive control: the same raw client gets an answer to a real request.
                do {
                    let c = try RawClient(path: box.socketPath)
                    c.send(Array("{\"v\":1,\"cmd\":\"ping\"}\n".utf8))
                    let reply = c.readReply()
                    guard case .line(let line) = reply, let obj = Self.json(line) else {
                        Issue.record("a well-formed ping on the raw socket got \(reply)")
                        return
                    }
                    #expect(obj["ok"] as? Bool == true, "\(line)")
                }

                // An idle client and a half-written request, held open while the others talk.
                let idle = try RawClient(path: box.socketPath)
                let half = try RawClient(path: box.socketPath)
                half.send(Array("{\"v\":1,\"cmd\":\"pi".utf8))

                var junk: [UInt8] = (0..<512).map { _ in UInt8.random(in: 0...255) }
                junk += [0, 0xff, 0xfe, 0xc0, 0x80, 10]
                let cases: [(String, [UInt8])] = [
                    ("text", Array("this is not json\n".utf8)),
                    ("binary junk", junk),
                    ("text then junk", Array("this is not json\n".utf8) + junk),
                    ("JSON but not a request", Array("[1,2,3]\n".utf8)),
                    ("wrong protocol version", Array("{\"v\":999,\"cmd\":\"ping\"}\n".utf8)),
                    ("unknown command", Array("{\"v\":1,\"cmd\":\"explode\"}\n".utf8)),
                    ("a 2 MB line", [UInt8](repeating: UInt8(ascii: "a"), count: 2 << 20) + [10]),
                ]
                for (label, bytes) in cases {
                    let c = try RawClient(path: box.socketPath)
                    c.send(bytes) // the daemon may hang up mid-way: fine
                    let reply = c.readReply()
                    switch reply {
                    case .closed:
                        break
                    case .line(let line):
                        let obj = Self.json(line)
                        #expect(obj != nil, "\(label): the reply is one line of JSON: \(line.prefix(200))")
                        #expect(obj?["ok"] as? Bool == false, "\(label): the reply says ok=false: \(line.prefix(200))")
                    case .timedOut:
                        Issue.record("\(label): \(reply)")
                    }
                    // Between garbage, the daemon still serves a real client.
                    let ping = try await box.pml(["ping"], timeout: 10)
                    #expect(ping.ok, "after \(label):\n\(ping)")
                }

                let ls = try await box.pml(["ls", "--json"], timeout: 10)
                #expect(ls.ok, "\(ls)")
                #expect(box.daemonPid == daemon && Proc.alive(daemon), "the same daemon is still serving")
                _ = idle
                _ = half
            }
        }

        @Test("pml kill leaves no worker process (nor their children) behind, and no daemon")
        func killLeavesNothing() async throws {
            try await withSandbox { box in
                let marker = "pmlitmark\(UInt32.random(in: 1..<UInt32.max))"
                // One worker ignores SIGTERM (pml must escalate to SIGKILL after kill_timeout);
                // both start children in their process group.
                try box.write("\(marker)-a.sh", """
                    #!/bin/sh
                    sleep 1000 &
                    echo $! >> \(box.work)/pids
                    sh -c 'sleep 1000; :' &
                    echo $! >> \(box.work)/pids
                    echo $$ >> \(box.work)/pids
                    wait
                    """, executable: true)
                try box.write("\(marker)-b.sh", """
                    #!/bin/sh
                    trap '' TERM
                    sleep 1000 &
                    echo $! >> \(box.work)/pids
                    echo $$ >> \(box.work)/pids
                    while :; do sleep 1; done
                    """, executable: true)
                let file = try box.write("fam.lua", """
                    return {
                      { name = "a", cmd = { "sh", "\(marker)-a.sh" }, instances = 2 },
                      { name = "b", cmd = { "sh", "\(marker)-b.sh" }, kill_timeout = 1000 },
                    }
                    """)
                try await box.pmlOK("start", file)
                let a = try await box.waitOnline("a", count: 2)
                let b = try await box.waitOnline("b")
                let pids = try await box.waitFor("8 pids recorded by the workers") {
                    let p = box.numbers("pids").map(Int32.init)
                    return p.count >= 8 ? p : nil
                }
                let workerPids = (a + b).compactMap(\.pid)
                #expect(workerPids.allSatisfy { pids.contains($0) }, "ls pids \(workerPids) are the workers \(pids)")
                #expect(Proc.pids(withCommandLine: marker).count >= 3)
                let daemon = try #require(box.daemonPid)

                let kill = try await box.pml("kill")
                #expect(kill.ok, "\(kill)")
                try await box.waitFor("every worker process and child gone after pml kill", timeout: 8) {
                    let left = pids.filter(Proc.alive) + Proc.pids(withCommandLine: marker)
                    if left.isEmpty { return true }
                    throw HarnessError("still alive: \(left)")
                }
                try await box.waitFor("the daemon \(daemon) gone after pml kill", timeout: 8) {
                    Proc.alive(daemon) ? nil : true
                }
                #expect(Proc.pids(withEnvironment: "PML_HOME=\(box.home)").isEmpty,
                        "no process with this PML_HOME is left")
            }
        }

        static func json(_ line: String) -> [String: Any]? {
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }
    }
}
