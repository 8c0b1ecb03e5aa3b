// Helpers for the reload tests (ReloadTests.swift): the worker programs they run, an HTTP GET
// with a path (`/` and the fixture's 300 ms `/slow`), a load generator with several threads
// (one connection per request) that records every outcome, and a `pml` run in the background
// (for "a second reload while the first runs").
//
// Built on the shared harness (Harness.swift) and the cluster helpers (ClusterSupport.swift:
// `Net.freePort`, `Sandbox.waitServing`, ...); nothing here changes either.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Worker programs

enum ReloadFixture {
    /// A Node HTTP server, unchanged for pml (it listens on FX_PORT; pml's preload routes it):
    /// `/` answers `hello from <pid> V=<$V>` at once, `/slow` the same after 300 ms.
    /// - FX_STARTS=<file>: once listening, appends "<pid> <epoch ms>".
    /// - FX_READY_DELAY=<ms>: once listening, waits that long, then `process.send({type:'ready'})`
    ///   (for `ready = "message"`).
    static let server = #"""
        const http = require('http');
        const fs = require('fs');
        const server = http.createServer((req, res) => {
          const reply = () => {
            res.setHeader('Content-Type', 'text/plain');
            res.end('hello from ' + process.pid + ' V=' + (process.env.V || '') + '\n');
          };
          if (req.url === '/slow') setTimeout(reply, 300); else reply();
        });
        server.listen(Number(process.env.FX_PORT), () => {
          if (process.env.FX_STARTS) fs.appendFileSync(process.env.FX_STARTS, process.pid + ' ' + Date.now() + '\n');
          const delay = Number(process.env.FX_READY_DELAY || 0);
          if (delay > 0) setTimeout(() => process.send({ type: 'ready' }), delay);
        });

        """#

    /// The same server, handling pml's "shutdown" itself (PM2 style): it closes the server and,
    /// once closed, writes FX_DIR/<pid>.closed and exits 0.
    static let selfShutdown = #"""
        const http = require('http');
        const fs = require('fs');
        const server = http.createServer((req, res) => {
          const reply = () => res.end('hello from ' + process.pid + ' V=' + (process.env.V || '') + '\n');
          if (req.url === '/slow') setTimeout(reply, 300); else reply();
        });
        server.listen(Number(process.env.FX_PORT));
        process.on('message', (m) => {
          if (m && typeof m === 'object' && typeof m.cmd === 'string' && m.cmd.startsWith('NODE_')) return;
          fs.appendFileSync(process.env.FX_DIR + '/' + process.pid + '.messages', JSON.stringify(m) + '\n');
          if (m === 'shutdown') {
            server.close(() => {
              fs.writeFileSync(process.env.FX_DIR + '/' + process.pid + '.closed', 'closed\n');
              process.exit(0);
            });
          }
        });

        """#

    /// The same server, recording every message from pml (other than NODE_ internals) as one JSON
    /// line in FX_DIR/<pid>.messages; on {type:"bye"} it closes the server and exits 0.
    static let recorder = #"""
        const http = require('http');
        const fs = require('fs');
        const server = http.createServer((req, res) => {
          res.end('hello from ' + process.pid + ' V=' + (process.env.V || '') + '\n');
        });
        server.listen(Number(process.env.FX_PORT));
        process.on('message', (m) => {
          if (m && typeof m === 'object' && typeof m.cmd === 'string' && m.cmd.startsWith('NODE_')) return;
          fs.appendFileSync(process.env.FX_DIR + '/' + process.pid + '.messages', JSON.stringify(m) + '\n');
          if (m && m.type === 'bye') server.close(() => process.exit(0));
        });

        """#

    /// A new version that throws at top level, before it listens.
    static let crashAtStart = #"""
        throw new Error('pml-reload-fixture: this version is broken');

        """#

    /// A fork-mode worker (no listen): records its pid in FX_PIDS and sleeps.
    static let forkWorker = #"""
        import os, signal, sys, time
        with open(os.environ["FX_PIDS"], "a") as f:
            f.write("%d\n" % os.getpid())
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(1)

        """#
}

// MARK: - HTTP with a path

enum ReloadHTTP {
    struct Reply: Sendable {
        let status: Int
        let body: String
        /// The pid in "hello from <pid> V=...".
        var pid: Int32? {
            guard let r = body.range(of: "hello from ") else { return nil }
            return Int32(body[r.upperBound...].prefix { $0.isNumber })
        }
        /// The value after "V=".
        var v: String? {
            guard let r = body.range(of: " V=") else { return nil }
            return String(body[r.upperBound...].prefix { !$0.isWhitespace })
        }
    }

    /// `GET <path> HTTP/1.1` with `Connection: close` on a fresh connection to 127.0.0.1:port;
    /// reads to EOF. Fails on connect/send/recv errors (refused, reset), a timeout for the whole
    /// exchange, a truncated body or a status other than 200.
    static func get(port: Int, path: String, timeout: Double = 5) -> Result<Reply, RequestFailure> {
        let deadline = nowMs() + timeout * 1000
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(RequestFailure(description: "socket: \(errstr())")) }
        defer { close(fd) }
        var slice = timeval(tv_sec: 0, tv_usec: 200_000)
        var whole = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &slice, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &whole, socklen_t(MemoryLayout<timeval>.size))
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 { return .failure(RequestFailure(description: "GET \(path): connect: \(errstr())")) }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\nUser-Agent: pml-reload-it\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return .failure(RequestFailure(description: "GET \(path): send: \(errstr())"))
            }
            sent += n
        }
        var response: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 8192)
        while true {
            if nowMs() > deadline {
                return .failure(RequestFailure(description: "GET \(path): no complete response within \(timeout) s (got \(response.count) bytes)"))
            }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK { continue }
                return .failure(RequestFailure(description: "GET \(path): recv: \(errstr()) after \(response.count) bytes"))
            }
            response.append(contentsOf: buf[0..<n])
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else {
            return .failure(RequestFailure(description: "GET \(path): incomplete response (\(response.count) bytes): \(text.prefix(120))"))
        }
        let head = text[..<split.lowerBound]
        var body = String(text[split.upperBound...])
        let lines = head.split(separator: "\r\n")
        let parts = (lines.first ?? "").split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let status = Int(parts[1]) else {
            return .failure(RequestFailure(description: "GET \(path): bad status line: \(lines.first ?? "")"))
        }
        var chunked = false
        for line in lines.dropFirst() {
            let l = line.lowercased()
            if l.hasPrefix("content-length:") {
                let value = Int(l.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) ?? -1
                if value != body.utf8.count {
                    return .failure(RequestFailure(description: "GET \(path): body \(body.utf8.count) bytes, Content-Length \(value)"))
                }
            }
            if l.hasPrefix("transfer-encoding:") && l.contains("chunked") { chunked = true }
        }
        if chunked {
            guard let decoded = dechunk(body) else {
                return .failure(RequestFailure(description: "GET \(path): truncated chunked body: \(body.prefix(120))"))
            }
            body = decoded
        }
        guard status == 200 else { return .failure(RequestFailure(description: "GET \(path): status \(status): \(body.prefix(120))")) }
        return .success(Reply(status: status, body: body))
    }

    /// A complete chunked body, decoded; nil if it is cut short.
    private static func dechunk(_ s: String) -> String? {
        var rest = Substring(s)
        var out = ""
        while true {
            guard let eol = rest.range(of: "\r\n"), let size = Int(rest[..<eol.lowerBound], radix: 16) else { return nil }
            rest = rest[eol.upperBound...]
            if size == 0 { return out }
            let bytes = Array(rest.utf8)
            guard bytes.count >= size + 2 else { return nil }
            out += String(decoding: bytes[0..<size], as: UTF8.self)
            rest = Substring(String(decoding: bytes[(size + 2)...], as: UTF8.self))
        }
    }

    private static func errstr() -> String { String(cString: strerror(errno)) + " (errno \(errno))" }
}

// MARK: - Load with several threads

/// Several threads, each making requests one connection at a time until stopped: `fast` threads
/// GET `/` (with a short pause), `slow` threads GET `/slow` back to back, so that some slow
/// request is in flight at any moment.
final class ReloadLoad: @unchecked Sendable {
    struct Sample: Sendable {
        let path: String
        let start: Double
        let end: Double
        let result: Result<ReloadHTTP.Reply, RequestFailure>
        var pid: Int32? { if case .success(let r) = result { return r.pid } else { return nil } }
        var failure: RequestFailure? { if case .failure(let f) = result { return f } else { return nil } }
        func overlaps(_ from: Double, _ to: Double) -> Bool { start < to && end > from }
    }

    let port: Int
    private let lock = NSLock()
    private var _samples: [Sample] = []
    private var stopping = false
    private var running = 0

    init(port: Int) { self.port = port }

    func start(fast: Int, slow: Int) {
        for i in 0..<(fast + slow) {
            let path = i < fast ? "/" : "/slow"
            lock.withLock { running += 1 }
            let t = Thread { [self] in run(path: path, pauseMs: path == "/" ? 3 : 0) }
            t.start()
        }
    }

    private func run(path: String, pauseMs: Int) {
        while !(lock.withLock { stopping }) {
            let start = nowMs()
            let result = ReloadHTTP.get(port: port, path: path, timeout: 5)
            let sample = Sample(path: path, start: start, end: nowMs(), result: result)
            lock.withLock { _samples.append(sample) }
            if pauseMs > 0 { usleep(useconds_t(pauseMs * 1000)) }
        }
        lock.withLock { running -= 1 }
    }

    var samples: [Sample] { lock.withLock { _samples } }

    /// Stops after the requests in flight and returns every sample.
    @discardableResult
    func stop() async -> [Sample] {
        lock.withLock { stopping = true }
        let deadline = nowMs() + 8000
        while (lock.withLock { running }) > 0 && nowMs() < deadline { await sleepMs(10) }
        return samples
    }
}

extension Array where Element == ReloadLoad.Sample {
    var failed: [ReloadLoad.Sample] { filter { $0.failure != nil } }

    func summary(limit: Int = 8) -> String {
        let f = failed
        let slow = filter { $0.path == "/slow" }
        var lines = ["\(count) requests (\(slow.count) to /slow), \(f.count) failed"]
        for s in f.prefix(limit) { lines.append("  at +\(Int(s.start - (first?.start ?? 0))) ms: \(s.failure!)") }
        return lines.joined(separator: "\n")
    }
}

// MARK: - pml in the background

/// `pml args...` started without waiting, for a command that must still be running while the
/// test does something else. Owns its capture files (the sandbox's own counter is not shared).
final class BackgroundPML: @unchecked Sendable {
    let args: [String]
    private let process = Process()
    private let outPath: String
    private let errPath: String

    init(_ box: Sandbox, _ args: [String]) throws {
        self.args = args
        let tag = String(UInt32.random(in: 0..<UInt32.max), radix: 36)
        outPath = "\(box.root)/.bg-\(tag).out"
        errPath = "\(box.root)/.bg-\(tag).err"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        guard let out = FileHandle(forWritingAtPath: outPath), let err = FileHandle(forWritingAtPath: errPath) else {
            throw HarnessError("cannot create capture files in \(box.root)")
        }
        process.executableURL = URL(fileURLWithPath: box.binary)
        process.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["PML_HOME"] = box.home
        process.environment = env
        process.currentDirectoryURL = URL(fileURLWithPath: box.work)
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = err
        try process.run()
        try? out.close()
        try? err.close()
    }

    var isRunning: Bool { process.isRunning }

    /// Waits for the command (killing it after `timeout` s) and returns what it did.
    func finish(timeout: Double = 30) async -> RunResult {
        let deadline = nowMs() + timeout * 1000
        var timedOut = false
        while process.isRunning {
            if nowMs() > deadline {
                timedOut = true
                kill(process.processIdentifier, SIGKILL)
                break
            }
            await sleepMs(10)
        }
        process.waitUntilExit()
        let stdout = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let stderr = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        return RunResult(args: args, status: process.terminationStatus, stdout: stdout, stderr: stderr, timedOut: timedOut)
    }
}

// MARK: - Sandbox helpers for reloads

extension Sandbox {
    /// The pids of `app`'s workers in `pml ls --json`.
    func pidSet(_ app: String) async throws -> Set<Int32> {
        Set(try await rows(app).compactMap(\.pid))
    }

    /// `count` sequential GET / on 127.0.0.1:port: the replies, or the first failure thrown.
    func answers(port: Int, count: Int, path: String = "/") throws -> [ReloadHTTP.Reply] {
        try (0..<count).map { i in
            switch ReloadHTTP.get(port: port, path: path) {
            case .success(let r): return r
            case .failure(let f): throw HarnessError("request \(i + 1)/\(count) failed: \(f)")
            }
        }
    }

    /// Replaces `old` with `new` in the file at `path` (which must contain it).
    func edit(_ path: String, replacing old: String, with new: String) throws {
        let text = read(path)
        guard text.contains(old) else { throw HarnessError("\(path) does not contain \(old)") }
        try text.replacingOccurrences(of: old, with: new).write(toFile: path, atomically: true, encoding: .utf8)
    }
}
