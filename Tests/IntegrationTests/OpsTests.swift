// Operations (issue 6): save → kill → resurrect with scaled counts (a daemon death is in
// KeeperTests); `pml run` in the foreground (prefixed output, graceful stop on SIGTERM, exit 1 when
// everything errored, READY=1 to NOTIFY_SOCKET, signal forwarding, PID 1 in a new PID namespace that
// reaps an adopted orphan); `pml startup` / `--install` / `unstartup`; `pml daemon --resurrect`.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Helpers (private to this file)

private enum Ops {
    /// A bound unix datagram socket (the test's own NOTIFY_SOCKET). Returns the fd.
    static func bindDatagram(_ path: String) throws -> Int32 {
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket(AF_UNIX, SOCK_DGRAM): errno \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw HarnessError("socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else { let e = errno; close(fd); throw HarnessError("bind(\(path)): errno \(e)") }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        return fd
    }

    /// Every datagram waiting on `fd` (non-blocking).
    static func drain(_ fd: Int32) -> [String] {
        var got: [String] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            got.append(String(decoding: buf[0..<n], as: UTF8.self))
        }
        return got
    }

    /// The children of `pid` (its main thread's list).
    static func children(of pid: Int32) -> [Int32] {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// Runs a program to completion (for probes such as `unshare ... true`).
    static func succeeds(_ executable: String, _ args: [String]) -> Bool {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return false }
        p.waitUntilExit()
        return p.terminationReason == .exit && p.terminationStatus == 0
    }

    static func which(_ name: String) -> String? {
        for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return nil
    }

    /// Whether this machine lets us create a PID namespace (checked once).
    static let unshareStatus: String? = {
        guard let unshare = which("unshare") else { return "unshare(1) is not installed" }
        return succeeds(unshare, ["--fork", "--pid", "--mount-proc", "true"])
            ? nil : "unshare --fork --pid --mount-proc is not permitted here (needs root or user namespaces)"
    }()

    static func tag() -> String { String(UInt32.random(in: 0..<UInt32.max), radix: 36) }

    static func counts(_ rows: [Row]) -> [String: Int] {
        rows.reduce(into: [:]) { $0[$1.name, default: 0] += 1 }
    }

    /// The " | " lines of `pml run` output for app `app`.
    static func prefixed(_ app: String, _ text: String) -> [String] {
        text.split(separator: "\n").map(String.init).filter { $0.hasPrefix("\(app) | ") }
            .map { String($0.dropFirst(app.count + 3)) }
    }
}

extension Integration {
    @Suite("Operations: save/resurrect, daemon death, pml run, startup")
    struct OpsTests {

        /// An app file with one app of 2 workers, each `sh` with a marked grandchild `sleep`.
        static func groupApp(name: String, marker: String, extra: String = "") -> String {
            """
            return {
              { name = \(lua(name)), instances = 2,
                cmd = { "sh", "-c", \(lua("sleep \(marker) & sleep \(marker)1"))}, \(extra) },
            }
            """
        }

        // MARK: 1. save → kill → resurrect

        @Test("start (app file ×2 + command line app) → scale → save → kill → resurrect: same apps, same counts, new pids; again: nothing")
        func saveKillResurrect() async throws {
            try await withSandbox { box in
                let marker = "31\(Int.random(in: 10000...99999))"
                try box.write("apps.lua", Self.groupApp(name: "alpha", marker: marker))
                try await box.pmlOK("start", "apps.lua")
                try await box.pmlOK("start", "--name", "beta", "--", "sleep", "2345")
                try await box.pmlOK("start", "--name", "idle", "--", "sleep", "2346")
                try await box.pmlOK("scale", "beta", "3")
                try await box.pmlOK("stop", "idle")
                try await box.waitOnline("alpha", count: 2)
                let before = try await box.waitOnline("beta", count: 3)
                let oldPids = Set(try await box.ls().compactMap(\.pid))
                #expect(before.count == 3)

                let save = try await box.pml("save")
                #expect(save.ok, "\(save)")
                // dump.json: parses, holds the apps with their counts, and no temp file is left beside it.
                let dumpPath = box.home + "/dump.json"
                let data = try #require(FileManager.default.contents(atPath: dumpPath), "dump.json written:\n\(save)")
                let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "dump.json is an object")
                #expect(json["version"] != nil, "dump.json has a version: \(json.keys)")
                let apps = try #require(json["apps"] as? [[String: Any]], "dump.json has apps[]")
                var saved: [String: Int] = [:]
                for app in apps {
                    if let n = app["name"] as? String, let i = app["instances"] as? Int { saved[n] = i }
                    #expect(app["start"] is [String: Any], "each app has its start arguments: \(app)")
                }
                #expect(saved["alpha"] == 2 && saved["beta"] == 3, "saved counts: \(saved)")
                let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: box.home))?
                    .filter { $0.hasPrefix("dump.json") && $0 != "dump.json" } ?? []
                #expect(leftovers.isEmpty, "no temp file left after an atomic save: \(leftovers)")

                let k = try await box.pml("kill")
                #expect(k.ok, "\(k)")
                try await box.waitFor("every old worker gone after pml kill", timeout: 10) {
                    oldPids.allSatisfy { !Proc.alive($0) } ? true : nil
                }

                let r = try await box.pml("resurrect")
                #expect(r.ok, "\(r)")
                #expect(r.stdout.contains("resurrected") && r.stdout.contains("alpha") && r.stdout.contains("beta"), "\(r)")
                #expect(!r.stdout.contains("idle"), "the stopped app is not resurrected:\n\(r)")
                let alpha = try await box.waitOnline("alpha", count: 2)
                let beta = try await box.waitOnline("beta", count: 3)
                let all = try await box.ls()
                #expect(Set(all.map(\.name)) == ["alpha", "beta"], "only the running apps come back: \(all)")
                let newPids = Set((alpha + beta).compactMap(\.pid))
                #expect(newPids.count == 5 && newPids.isDisjoint(with: oldPids), "new pids: \(newPids) vs old \(oldPids)")

                let again = try await box.pml("resurrect")
                #expect(again.ok, "\(again)")
                #expect(again.stdout.contains("nothing to resurrect"), "\(again)")
                #expect(Ops.counts(try await box.ls()) == ["alpha": 2, "beta": 3], "a second resurrect starts nothing")
            }
        }

        // MARK: 1b. pml daemon --resurrect (what the startup unit runs)

        @Test("pml daemon --resurrect (foreground, Type=notify) starts dump.json's apps, sends READY=1, exits 0 on pml kill")
        func foregroundDaemonResurrect() async throws {
            try await withSandbox { box in
                try await box.pmlOK("start", "--name", "gamma", "-i", "2", "--", "sleep", "2347")
                try await box.waitOnline("gamma", count: 2)
                try await box.pmlOK("save")
                try await box.pmlOK("kill")

                let notify = box.work + "/d.sock"
                let fd = try Ops.bindDatagram(notify)
                defer { close(fd) }
                let daemon = try ChildProcess(box, box.binary, ["daemon", "--resurrect"], env: ["NOTIFY_SOCKET": notify])
                let rows = try await box.waitOnline("gamma", count: 2)
                #expect(rows.count == 2)
                var messages: [String] = []
                try await box.waitFor("READY=1 on NOTIFY_SOCKET from pml daemon --resurrect", timeout: 5) {
                    messages += Ops.drain(fd)
                    return messages.contains { $0.contains("READY=1") } ? true : nil
                }
                #expect(messages.contains { $0.contains("MAINPID=\(daemon.pid)") }, "MAINPID is the daemon: \(messages)")
                let k = try await box.pml("kill")
                #expect(k.ok, "\(k)")
                let end = await daemon.finish(timeout: 10)
                #expect(end.status == 0 && !end.timedOut, "the foreground daemon exits 0 after pml kill:\n\(end)")
            }
        }

        // MARK: 2. kill -9 of the daemon: see KeeperTests (a successor adopts the workers)

        // MARK: 3. pml run under timeout -s TERM, and exiting by itself

        @Test("pml run under timeout -s TERM: prefixed output from both workers, graceful stop (bye), exit 0, no worker left, no daemon")
        func runUnderTimeout() async throws {
            try await withSandbox { box in
                let timeout = try #require(Ops.which("timeout"), "timeout(1)")
                let marker = "opsrun-\(Ops.tag())"
                let script = "trap 'echo bye $PML_INSTANCE; exit 0' TERM; : \(marker); echo hello $PML_INSTANCE; while :; do sleep 0.1; done"
                try box.write("run.lua", """
                    return { name = "runner", instances = 2, cmd = { "sh", "-c", \(lua(script)) } }
                    """)
                let child = try ChildProcess(box, timeout, ["--preserve-status", "-s", "TERM", "2", box.binary, "run", "run.lua"])
                var workers: [Int32] = []
                try await box.waitFor("both workers running", timeout: 5) {
                    workers = Proc.pids(withCommandLine: marker)
                    return workers.count == 2 ? true : nil
                }
                #expect(!FileManager.default.fileExists(atPath: box.socketPath), "pml run opens no control socket")
                #expect(box.daemonPid == nil, "pml run starts no daemon")
                let r = await child.finish(timeout: 15)
                #expect(r.status == 0 && !r.timedOut, "pml run exits 0 after SIGTERM:\n\(r)")
                let lines = Ops.prefixed("runner", r.stdout)
                for needle in ["hello 0", "hello 1", "bye 0", "bye 1"] {
                    #expect(lines.contains(needle), "stdout has \"runner | \(needle)\":\n\(r)")
                }
                #expect(!r.stdout.contains("\nhello") && !r.stdout.hasPrefix("hello"), "every worker line is prefixed:\n\(r)")
                try await box.waitFor("no worker left after pml run", timeout: 2) {
                    Proc.pids(withCommandLine: marker).isEmpty ? true : nil
                }
                #expect(workers.allSatisfy { !Proc.alive($0) }, "workers \(workers) are gone")
            }
        }

        @Test("pml run exits 1 by itself when its only app errors, and 1 on SIGTERM if an app had errored")
        func runErrored() async throws {
            try await withSandbox { box in
                try box.write("bad.lua", """
                    return { name = "bad", cmd = { "sh", "-c", "echo failing; exit 3" }, max_restarts = 1, restart_delay = 10 }
                    """)
                let t0 = nowMs()
                let r = try await box.pml(["run", "bad.lua"], timeout: 15)
                #expect(r.status == 1 && !r.timedOut, "pml run exits 1 by itself when nothing is left:\n\(r)")
                #expect(nowMs() - t0 < 10_000, "and promptly")
                #expect(Ops.prefixed("bad", r.stdout).contains("failing"), "\(r)")

                // One app errored, one fine: pml run keeps going; SIGTERM → exit 1.
                let marker = "opsmix-\(Ops.tag())"
                try box.write("mixed.lua", """
                    return {
                      { name = "bad", cmd = { "sh", "-c", "exit 3" }, max_restarts = 1, restart_delay = 10 },
                      { name = "good", cmd = { "sh", "-c", \(lua(": \(marker); sleep 1000; :")) } },
                    }
                    """)
                let child = try ChildProcess(box, box.binary, ["run", "mixed.lua"])
                try await box.waitFor("good running", timeout: 5) { Proc.pids(withCommandLine: marker).isEmpty ? nil : true }
                await sleepMs(700)
                #expect(child.process.isRunning, "pml run keeps supervising the good app:\n\(child.stderr)")
                kill(child.pid, SIGTERM)
                let end = await child.finish(timeout: 15)
                #expect(end.status == 1 && !end.timedOut, "SIGTERM with an errored app: exit 1:\n\(end)")
                #expect(Proc.pids(withCommandLine: marker).isEmpty, "the good app's worker is stopped")
            }
        }

        @Test("a daemon started in the same PML_HOME leaves a running pml run's workers alone")
        func daemonLeavesForegroundRunAlone() async throws {
            try await withSandbox { box in
                let marker = "opsfg-\(Ops.tag())"
                try box.write("fg.lua", """
                    return { name = "fg", cmd = { "sh", "-c", \(lua(": \(marker); while :; do sleep 0.1; done")) } }
                    """)
                let child = try ChildProcess(box, box.binary, ["run", "fg.lua"])
                let worker = try await box.waitFor("pml run's worker", timeout: 5) { Proc.pids(withCommandLine: marker).first }
                let ls = try await box.pml("ls")   // starts a daemon in the same home
                #expect(ls.ok, "\(ls)")
                await sleepMs(500)
                // The new daemon's start-up sweep spares the workers of a supervisor that is alive.
                #expect(Proc.alive(worker), "pml run's worker \(worker) survives a daemon start in the same home:\n\(child.stderr)")
                #expect(child.process.isRunning, "pml run itself keeps running")
                try await box.pmlOK("kill")
                kill(child.pid, SIGTERM)
                let end = await child.finish(timeout: 15)
                #expect(end.status == 0 && !end.timedOut, "\(end)")
            }
        }

        // MARK: 4. NOTIFY_SOCKET, and signal forwarding

        @Test("pml run sends READY=1 (+MAINPID) to NOTIFY_SOCKET once every worker is ready, and forwards SIGUSR1")
        func runNotifyReady() async throws {
            try await withSandbox { box in
                let notify = box.work + "/n.sock"
                let fd = try Ops.bindDatagram(notify)
                defer { close(fd) }
                // Each worker takes 0.6 s, leaves a marker, then says it is ready over IPC.
                let script = """
                    trap 'echo got-usr1 $PML_INSTANCE' USR1; sleep 0.6; touch ready.$PML_INSTANCE; \
                    echo '"ready"' >&$PML_IPC_FD; while :; do sleep 0.1; done
                    """
                try box.write("rdy.lua", """
                    return { name = "rdy", instances = 2, ready = "message", cmd = { "sh", "-c", \(lua(script)) } }
                    """)
                let child = try ChildProcess(box, box.binary, ["run", "rdy.lua"], env: ["NOTIFY_SOCKET": notify])
                var messages: [String] = []
                var markersAtReady: [Bool] = []
                try await box.waitFor("READY=1 on the test's NOTIFY_SOCKET", timeout: 10, every: 20) {
                    let got = Ops.drain(fd)
                    if got.contains(where: { $0.contains("READY=1") }) && markersAtReady.isEmpty {
                        markersAtReady = [0, 1].map { FileManager.default.fileExists(atPath: box.work + "/ready.\($0)") }
                    }
                    messages += got
                    return markersAtReady.isEmpty ? nil : true
                }
                #expect(markersAtReady == [true, true], "READY=1 only after both workers were ready: \(markersAtReady), \(messages)")
                let ready = messages.first { $0.contains("READY=1") } ?? ""
                #expect(ready.contains("MAINPID=\(child.pid)"), "MAINPID is pml run's pid \(child.pid): \(messages)")

                kill(child.pid, SIGUSR1)
                try await box.waitFor("both workers got SIGUSR1", timeout: 5) {
                    let lines = Ops.prefixed("rdy", child.stdout)
                    return lines.contains("got-usr1 0") && lines.contains("got-usr1 1") ? true : nil
                }
                #expect(child.process.isRunning, "SIGUSR1 does not stop pml run")
                kill(child.pid, SIGTERM)
                let end = await child.finish(timeout: 15)
                #expect(end.status == 0 && !end.timedOut, "\(end)")
                #expect(Ops.drain(fd).filter { $0.contains("READY=1") }.isEmpty, "READY=1 is sent once")
            }
        }

        // MARK: 5. PID 1 in a new PID namespace

        @Test("pml run as PID 1 (unshare --fork --pid --mount-proc) reaps an adopted orphan and exits 0 on SIGTERM",
              .enabled(if: Ops.unshareStatus == nil, "unshare --fork --pid --mount-proc is not permitted or not installed here"))
        func runAsPID1() async throws {
            try await withSandbox { box in
                let unshare = try #require(Ops.which("unshare"))
                // The worker's child shell starts `sleep 0.31` in the background and exits: the sleep is
                // orphaned, adopted by PID 1 (pml), and exits 0.31 s later. Then the worker lists the namespace.
                let script = """
                    sh -c 'sleep 0.31 & exit 0'; sleep 0.1; echo PS1; ps -e -o stat=,pid=,ppid=,args=; \
                    sleep 1; echo PS2; ps -e -o stat=,pid=,ppid=,args=; echo PSEND; exec sleep 1000
                    """
                try box.write("pid1.lua", """
                    return { name = "p1", cmd = { "sh", "-c", \(lua(script)) } }
                    """)
                let child = try ChildProcess(box, unshare, ["--fork", "--pid", "--mount-proc", box.binary, "run", "pid1.lua"])
                try await box.waitFor("the worker's second process listing", timeout: 10) {
                    Ops.prefixed("p1", child.stdout).contains("PSEND") ? true : nil
                }
                let lines = Ops.prefixed("p1", child.stdout)
                let i1 = try #require(lines.firstIndex(of: "PS1")), i2 = try #require(lines.firstIndex(of: "PS2"))
                let i3 = try #require(lines.firstIndex(of: "PSEND"))
                let first = lines[(i1 + 1)..<i2], second = lines[(i2 + 1)..<i3]
                func fields(_ l: String) -> [String] { l.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
                #expect(first.contains { fields($0).count >= 3 && fields($0)[1] == "1" && $0.contains("pml") && $0.contains("run") },
                        "pml is PID 1 in the namespace:\n\(first.joined(separator: "\n"))")
                #expect(first.contains { let f = fields($0); return f.count >= 5 && f[2] == "1" && f[3] == "sleep" && f[4] == "0.31" },
                        "the orphan was adopted by PID 1:\n\(first.joined(separator: "\n"))")
                #expect(!second.contains { $0.hasPrefix("Z") }, "no zombie a second later:\n\(second.joined(separator: "\n"))")
                #expect(!second.contains { let f = fields($0); return f.count >= 4 && f[3].contains("sleep") && (f.count < 5 || f[4] == "0.31") },
                        "the orphan is reaped:\n\(second.joined(separator: "\n"))")

                let inner = try #require(Ops.children(of: child.pid).first, "unshare's child (pml as PID 1)")
                kill(inner, SIGTERM)
                let end = await child.finish(timeout: 15)
                #expect(end.status == 0 && !end.timedOut, "pml (PID 1) exits 0 on SIGTERM:\n\(end)")
            }
        }

        // MARK: 6. startup / unstartup

        @Test("pml startup prints a Type=notify unit running pml daemon --resurrect with PML_HOME; --install writes it; unstartup removes it")
        func startupUnit() async throws {
            try await withSandbox { box in
                let home = box.work + "/userhome"
                try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
                let uid = getuid()
                let user = getpwuid(uid).flatMap { String(validatingCString: $0.pointee.pw_name) } ?? "\(uid)"
                let unitPath = uid == 0 ? "/etc/systemd/system/pml-\(user).service" : home + "/.config/systemd/user/pml.service"
                // As root the unit lives in /etc: keep whatever was there and put it back afterwards.
                let previous = FileManager.default.contents(atPath: unitPath)
                defer {
                    if let previous { _ = FileManager.default.createFile(atPath: unitPath, contents: previous) }
                    else if uid == 0 { unlink(unitPath) }
                }
                if previous != nil, uid == 0 { unlink(unitPath) }
                let env = ["HOME": home]

                let p = try await box.pml(["startup"], env: env)
                #expect(p.ok, "\(p)")
                let unit = p.stdout
                let exec = unit.split(separator: "\n").first { $0.hasPrefix("ExecStart=") }.map(String.init) ?? ""
                #expect(exec.hasSuffix(" daemon --resurrect"), "ExecStart runs pml daemon --resurrect:\n\(unit)")
                let binary = String(exec.dropFirst("ExecStart=".count).dropLast(" daemon --resurrect".count))
                #expect(binary.hasPrefix("/") && FileManager.default.isExecutableFile(atPath: binary), "ExecStart's pml is an absolute executable: \(binary)")
                #expect(unit.contains("Type=notify"), "\(unit)")
                // READY=1 comes from the daemon, a child of the keeper systemd starts.
                #expect(unit.split(separator: "\n").contains("NotifyAccess=all"), "\(unit)")
                #expect(unit.split(separator: "\n").contains { $0 == "Environment=PML_HOME=\(box.home)" || $0 == "Environment=\"PML_HOME=\(box.home)\"" },
                        "the unit names this PML_HOME:\n\(unit)")
                #expect(unit.contains("[Install]") && unit.contains("WantedBy="), "\(unit)")
                #expect(!FileManager.default.fileExists(atPath: unitPath), "printing writes nothing")

                let i = try await box.pml(["startup", "--install"], env: env)
                #expect(i.ok, "\(i)")
                let written = (try? String(contentsOfFile: unitPath, encoding: .utf8)) ?? ""
                #expect(written.contains("ExecStart=\(binary) daemon --resurrect") && written.contains("Type=notify"),
                        "--install writes the unit at \(unitPath):\n\(i)\n\(written)")
                #expect(i.stdout.contains(unitPath), "says where:\n\(i)")
                if !FileManager.default.fileExists(atPath: "/run/systemd/system") {
                    #expect(i.stdout.contains("not running") && i.stdout.contains("not enabled"),
                            "says systemd is not running, so the unit is not enabled:\n\(i)")
                }

                let u = try await box.pml(["unstartup"], env: env)
                #expect(u.ok, "\(u)")
                #expect(!FileManager.default.fileExists(atPath: unitPath), "unstartup removes \(unitPath):\n\(u)")
            }
        }
    }
}
