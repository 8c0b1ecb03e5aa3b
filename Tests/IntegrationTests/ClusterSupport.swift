// Client side of the cluster-mode tests: free ports, a bounded HTTP/1.0 GET over TCP (IPv4 or
// IPv6) or a unix socket with plain Glibc sockets, and a sequential load client on its own
// thread that records every request's outcome.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Addresses

enum Endpoint: CustomStringConvertible, Sendable {
    /// A numeric host ("127.0.0.1", "::1") and a port.
    case tcp(String, Int)
    case unix(String)

    static func local(_ port: Int) -> Endpoint { .tcp("127.0.0.1", port) }

    var description: String {
        switch self {
        case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        }
    }
}

enum Net {
    /// A TCP port that was free a moment ago on 127.0.0.1 (and, on this loopback, on ::1):
    /// bind port 0, read the port back, close.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket(): errno \(errno)") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw HarnessError("bind(127.0.0.1:0): errno \(errno)") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let got = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard got == 0 else { throw HarnessError("getsockname: errno \(errno)") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// True if the kernel has an IPv6 loopback address (::1 on lo in /proc/net/if_inet6).
    static var hasIPv6Loopback: Bool {
        guard let text = try? String(contentsOfFile: "/proc/net/if_inet6", encoding: .utf8) else { return false }
        return text.split(separator: "\n").contains { $0.hasPrefix("00000000000000000000000000000001") }
    }
}

// MARK: - One HTTP request

struct HTTPReply: Sendable, CustomStringConvertible {
    let status: Int
    let body: String
    /// The pid in "hello from <pid>", if the body is that.
    var pid: Int32? {
        guard let r = body.range(of: "hello from ") else { return nil }
        return Int32(body[r.upperBound...].prefix { $0.isNumber })
    }
    var description: String { "\(status) \(body.trimmingCharacters(in: .whitespacesAndNewlines))" }
}

/// A failed request: what went wrong, from the client's point of view.
struct RequestFailure: Error, Sendable, CustomStringConvertible {
    let description: String
}

enum HTTP {
    /// `GET / HTTP/1.0` on a fresh connection; reads to EOF. Fails on a connection error, a
    /// timeout (for the whole exchange), a status other than 200 or a body shorter than its
    /// Content-Length.
    static func get(_ ep: Endpoint, timeout: Double = 5) -> Result<HTTPReply, RequestFailure> {
        let deadline = nowMs() + timeout * 1000
        let fd: Int32
        switch connectTo(ep, timeout: timeout) {
        case .success(let s): fd = s
        case .failure(let e): return .failure(e)
        }
        defer { close(fd) }
        let request = Array("GET / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: pml-it\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return .failure(RequestFailure(description: "\(ep): send: \(errstr())"))
            }
            sent += n
        }
        var response: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 8192)
        while true {
            if nowMs() > deadline {
                return .failure(RequestFailure(description: "\(ep): no complete response within \(timeout) s (got \(response.count) bytes)"))
            }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { continue } // SO_RCVTIMEO slice; the deadline decides
                return .failure(RequestFailure(description: "\(ep): recv: \(errstr()) after \(response.count) bytes"))
            }
            response.append(contentsOf: buf[0..<n])
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else {
            return .failure(RequestFailure(description: "\(ep): incomplete response (\(response.count) bytes): \(text.prefix(200))"))
        }
        let head = text[..<split.lowerBound]
        let body = String(text[split.upperBound...])
        let statusLine = head.split(separator: "\r\n").first ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let status = Int(parts[1]) else {
            return .failure(RequestFailure(description: "\(ep): bad status line: \(statusLine)"))
        }
        for line in head.split(separator: "\r\n").dropFirst() where line.lowercased().hasPrefix("content-length:") {
            let value = Int(line.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces)) ?? -1
            if value != body.utf8.count {
                return .failure(RequestFailure(description: "\(ep): body \(body.utf8.count) bytes, Content-Length \(value)"))
            }
        }
        guard status == 200 else { return .failure(RequestFailure(description: "\(ep): status \(status): \(body)")) }
        return .success(HTTPReply(status: status, body: body))
    }

    /// `count` sequential GETs.
    static func sequential(_ ep: Endpoint, _ count: Int, timeout: Double = 5) -> [Result<HTTPReply, RequestFailure>] {
        (0..<count).map { _ in get(ep, timeout: timeout) }
    }

    private static func errstr() -> String { String(cString: strerror(errno)) + " (errno \(errno))" }

    private static func connectTo(_ ep: Endpoint, timeout: Double) -> Result<Int32, RequestFailure> {
        let family: Int32
        switch ep {
        case .tcp(let host, _): family = host.contains(":") ? AF_INET6 : AF_INET
        case .unix: family = AF_UNIX
        }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(RequestFailure(description: "socket: \(errstr())")) }
        // Receive timeouts in short slices (the caller's deadline decides); connect/send bounded by the whole.
        var slice = timeval(tv_sec: 0, tv_usec: 200_000)
        var whole = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &slice, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &whole, socklen_t(MemoryLayout<timeval>.size))
        var rc: Int32 = -1
        switch ep {
        case .tcp(let host, let port) where family == AF_INET6:
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = in_port_t(UInt16(port).bigEndian)
            guard inet_pton(AF_INET6, host, &a.sin6_addr) == 1 else {
                close(fd); return .failure(RequestFailure(description: "bad IPv6 literal \(host)"))
            }
            rc = withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        case .tcp(let host, let port):
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(port).bigEndian)
            guard inet_pton(AF_INET, host, &a.sin_addr) == 1 else {
                close(fd); return .failure(RequestFailure(description: "bad IPv4 literal \(host)"))
            }
            rc = withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .unix(let path):
            var a = sockaddr_un()
            a.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: a.sun_path) else {
                close(fd); return .failure(RequestFailure(description: "unix path too long: \(path)"))
            }
            withUnsafeMutableBytes(of: &a.sun_path) { raw in
                for (i, b) in bytes.enumerated() { raw[i] = b }
            }
            rc = withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        if rc != 0 {
            let e = errstr()
            close(fd)
            return .failure(RequestFailure(description: "\(ep): connect: \(e)"))
        }
        return .success(fd)
    }
}

// MARK: - A sequential client on its own thread

/// Makes sequential GETs (one connection each) until stopped, recording each outcome with its
/// start and end times. Runs on a plain thread: blocking sockets stay off the test's executor.
final class LoadClient: @unchecked Sendable {
    struct Sample: Sendable {
        let start: Double
        let end: Double
        let result: Result<HTTPReply, RequestFailure>
        var pid: Int32? { if case .success(let r) = result { return r.pid } else { return nil } }
        var failure: RequestFailure? { if case .failure(let f) = result { return f } else { return nil } }
    }

    let endpoint: Endpoint
    private let pauseMs: Int
    private let timeout: Double
    private let lock = NSLock()
    private var _samples: [Sample] = []
    private var stopping = false
    private var finished = false

    init(_ endpoint: Endpoint, pauseMs: Int = 2, timeout: Double = 5) {
        self.endpoint = endpoint
        self.pauseMs = pauseMs
        self.timeout = timeout
    }

    func start() {
        let t = Thread { [self] in run() }
        t.start()
    }

    private func run() {
        while !(lock.withLock { stopping }) {
            let start = nowMs()
            let result = HTTP.get(endpoint, timeout: timeout)
            let sample = Sample(start: start, end: nowMs(), result: result)
            lock.withLock { _samples.append(sample) }
            if pauseMs > 0 { usleep(useconds_t(pauseMs * 1000)) }
        }
        lock.withLock { finished = true }
    }

    var samples: [Sample] { lock.withLock { _samples } }

    /// Stops after the request in flight and returns every sample.
    @discardableResult
    func stop() async -> [Sample] {
        lock.withLock { stopping = true }
        let deadline = nowMs() + (timeout + 2) * 1000
        while !(lock.withLock { finished }) && nowMs() < deadline { await sleepMs(10) }
        return samples
    }
}

/// Summaries for assertions and failure messages.
extension Array where Element == LoadClient.Sample {
    var failures: [(Int, RequestFailure)] {
        enumerated().compactMap { i, s in s.failure.map { (i, $0) } }
    }

    var responders: [Int32] { compactMap(\.pid) }

    func summary(limit: Int = 8) -> String {
        let f = failures
        var counts: [Int32: Int] = [:]
        for p in responders { counts[p, default: 0] += 1 }
        let shown = f.prefix(limit).map { "#\($0.0): \($0.1)" }.joined(separator: "\n  ")
        return "\(count) requests, \(f.count) failed; per pid: \(counts.sorted { $0.key < $1.key })"
            + (f.isEmpty ? "" : "\n  " + shown)
    }
}

/// A tally of pids over sequential results.
func tally(_ results: [Result<HTTPReply, RequestFailure>]) -> [Int32: Int] {
    var counts: [Int32: Int] = [:]
    for case .success(let r) in results { counts[r.pid ?? -1, default: 0] += 1 }
    return counts
}

func failuresOf(_ results: [Result<HTTPReply, RequestFailure>]) -> [String] {
    results.enumerated().compactMap { i, r in
        if case .failure(let f) = r { return "#\(i): \(f)" } else { return nil }
    }
}

// MARK: - Sandbox helpers for cluster apps

extension Sandbox {
    /// The raw `workers` of `pml describe <app> --json`.
    func rawWorkers(_ app: String) async throws -> [[String: Any]] {
        let (_, raw) = try await describe(app)
        return raw["workers"] as? [[String: Any]] ?? []
    }

    /// Waits until `count` workers of `app` are online and each serves at least one address
    /// (`serving` in describe --json): for Node workers, once their `listen()` went through pml.
    @discardableResult
    func waitServing(_ app: String, count: Int, timeout: Double = 15) async throws -> [Row] {
        try await waitFor("\(count) worker(s) of \(app) online and serving", timeout: timeout) {
            let rows = try await rows(app)
            guard rows.count == count, rows.allSatisfy({ $0.status == "online" && $0.pid.map(Proc.alive) == true })
            else { return nil }
            let workers = try await rawWorkers(app)
            let serving = workers.filter { (($0["serving"] as? [Any]) ?? []).isEmpty == false }
            return serving.count == count ? rows : nil
        }
    }

    /// What each worker of `app` running `ClusterFixture.pythonShared` found in its environment
    /// and fd table (`<dir>/<instance>.json`), once all `count` records match the pids in ls.
    func sharedRecords(_ app: String, in dir: String, count: Int) async throws -> [[String: Any]] {
        try await waitFor("\(count) env records of \(app)'s workers, matching ls") {
            var out: [[String: Any]] = []
            for row in try await rows(app) {
                guard let data = FileManager.default.contents(atPath: "\(dir)/\(row.instance).json"),
                      let rec = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                      (rec["pid"] as? Int).map(Int32.init) == row.pid else { return nil }
                out.append(rec)
            }
            return out.count == count ? out : nil
        }
    }

    /// `pml ping` answers.
    func pingOK() async -> Bool {
        (try? await pml(["ping"], timeout: 5).ok) ?? false
    }
}
