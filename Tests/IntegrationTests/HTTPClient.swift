// The integration tests' one HTTP client, with plain Glibc sockets: endpoints (TCP over IPv4 or
// IPv6, unix sockets), free ports, one request per connection (`HTTP.exchange`, `HTTP.get`,
// `HTTP.request` for URLs), chunked bodies decoded, every exchange bounded in time, and a raw
// connection (`RawConnection`) for tests that write and read the bytes themselves.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Addresses

/// Where a request goes.
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

    /// The Host header a browser would send to it.
    var hostHeader: String {
        if case .tcp = self { return description }
        return "localhost"
    }
}

/// Ports and addresses on this machine.
enum Net {
    /// A TCP port that was free a moment ago on 127.0.0.1 (and, on this loopback, on ::1):
    /// bind port 0, read the port back, close.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket(): \(errnoText())") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw HarnessError("bind(127.0.0.1:0): \(errnoText())") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let got = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard got == 0 else { throw HarnessError("getsockname: \(errnoText())") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// True if the kernel has an IPv6 loopback address (::1 on lo in /proc/net/if_inet6).
    static var hasIPv6Loopback: Bool {
        guard let text = try? String(contentsOfFile: "/proc/net/if_inet6", encoding: .utf8) else { return false }
        return text.split(separator: "\n").contains { $0.hasPrefix("00000000000000000000000000000001") }
    }
}

/// errno as text, with its number: "Connection refused (errno 111)".
func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) + " (errno \(code))" }

// MARK: - Replies and failures

/// One HTTP answer: its status, head (status line and headers) and body (dechunked).
struct HTTPReply: Sendable, CustomStringConvertible {
    let status: Int
    let head: String
    let body: String

    /// Head and body as they came (but for chunking), for prefix and substring checks.
    var text: String { head + "\r\n\r\n" + body }
    /// The pid in "hello from <pid>", if the body is that.
    var pid: Int32? {
        guard let r = body.range(of: "hello from ") else { return nil }
        return Int32(body[r.upperBound...].prefix { $0.isNumber })
    }
    /// The value after " V=" ("hello from <pid> V=<version>").
    var v: String? {
        guard let r = body.range(of: " V=") else { return nil }
        return String(body[r.upperBound...].prefix { !$0.isWhitespace })
    }
    var description: String { "\(status) \(body.prefix(300).trimmingCharacters(in: .whitespacesAndNewlines))" }
}

/// A failed request: what went wrong, from the client's point of view.
struct RequestFailure: Error, Sendable, CustomStringConvertible {
    let description: String
}

// MARK: - A raw connection

/// A connected stream socket that sends what it is told and reads only when asked; closed when
/// released. For tests that drive the bytes themselves (and under `HTTP.exchange`).
final class RawConnection: @unchecked Sendable {
    let fd: Int32
    let endpoint: Endpoint

    /// What a read got: the bytes kept (up to its limit), how many came in all, and how it ended.
    struct Received {
        let data: [UInt8]
        let bytes: Int
        /// The peer closed its side.
        let eof: Bool
        /// recv or poll failed (errno text); neither EOF nor a timeout.
        let error: String?
        var text: String { String(decoding: data, as: UTF8.self) }
    }

    /// Connects, with sends (and the connect itself) bounded by `timeout` seconds;
    /// `receiveBuffer` sets SO_RCVBUF first (a small one makes a peer's output pile up).
    init(_ endpoint: Endpoint, timeout: Double = 15, receiveBuffer: Int32? = nil) throws(RequestFailure) {
        self.endpoint = endpoint
        let family: Int32
        switch endpoint {
        case .tcp(let host, _): family = host.contains(":") ? AF_INET6 : AF_INET
        case .unix: family = AF_UNIX
        }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw RequestFailure(description: "\(endpoint): socket: \(errnoText())") }
        var whole = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &whole, socklen_t(MemoryLayout<timeval>.size))
        if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        // The address in a sockaddr_storage, for one connect call whatever the family.
        var address = sockaddr_storage()
        func store<Address>(_ a: Address) -> socklen_t {
            withUnsafeMutableBytes(of: &address) { dst in
                withUnsafeBytes(of: a) { dst.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            }
            return socklen_t(MemoryLayout<Address>.size)
        }
        let length: socklen_t
        switch endpoint {
        case .tcp(let host, let port) where family == AF_INET6:
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = in_port_t(UInt16(port).bigEndian)
            guard inet_pton(AF_INET6, host, &a.sin6_addr) == 1 else {
                close(fd); throw RequestFailure(description: "bad IPv6 literal \(host)")
            }
            length = store(a)
        case .tcp(let host, let port):
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(port).bigEndian)
            guard inet_pton(AF_INET, host, &a.sin_addr) == 1 else {
                close(fd); throw RequestFailure(description: "bad IPv4 literal \(host)")
            }
            length = store(a)
        case .unix(let path):
            var a = sockaddr_un()
            a.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: a.sun_path) else {
                close(fd); throw RequestFailure(description: "unix path too long: \(path)")
            }
            withUnsafeMutableBytes(of: &a.sun_path) { raw in
                for (i, b) in bytes.enumerated() { raw[i] = b }
            }
            length = store(a)
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
        }
        if rc != 0 {
            let e = errnoText()
            close(fd)
            throw RequestFailure(description: "\(endpoint): connect: \(e)")
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Sends all of `bytes`; the failure (errno text) if the peer is gone or the send timed out.
    func send(_ bytes: [UInt8]) -> RequestFailure? {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return RequestFailure(description: "\(endpoint): send: \(errnoText())")
            }
            sent += n
        }
        return nil
    }

    /// Sends `text`; true if all of it went.
    @discardableResult
    func send(_ text: String) -> Bool { send(Array(text.utf8)) == nil }

    /// Reads until the peer closes, nothing arrives for `idle` seconds, or the monotonic
    /// `deadline` (ms, `nowMs()`) passes; keeps the first `limit` bytes.
    func read(idle: Double? = nil, deadline: Double? = nil, limit: Int = 1 << 20) -> Received {
        var data: [UInt8] = []
        var total = 0
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            var wait = idle.map { $0 * 1000 } ?? .infinity
            if let deadline { wait = min(wait, deadline - nowMs()) }
            guard wait > 0 else { return Received(data: data, bytes: total, eof: false, error: nil) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, wait.isFinite ? Int32(wait.rounded(.up)) : -1)
            if ready < 0 {
                if errno == EINTR { continue }
                return Received(data: data, bytes: total, eof: false, error: "poll: \(errnoText())")
            }
            if ready == 0 {
                if deadline != nil && idle == nil { continue } // the deadline check above decides
                return Received(data: data, bytes: total, eof: false, error: nil)
            }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return Received(data: data, bytes: total, eof: true, error: nil) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return Received(data: data, bytes: total, eof: false, error: "recv: \(errnoText())")
            }
            total += n
            if data.count < limit { data.append(contentsOf: buf[0..<min(n, limit - data.count)]) }
        }
    }

    /// Everything the peer sends until it closes, or until nothing came for `idle` seconds.
    func readAll(idle: Double = 15) -> String { read(idle: idle).text }
}

// MARK: - One request per connection

/// HTTP/1.1 requests with `Connection: close`, one connection each, read to EOF.
enum HTTP {
    /// `method path` to `ep`, with `headers` (a Host header of the endpoint's unless given) and
    /// `body`. Any status is a reply; fails on a connection error, a timeout for the whole
    /// exchange, a bad status line, or a body shorter than its Content-Length or chunking says.
    static func exchange(_ ep: Endpoint, method: String = "GET", path: String = "/", headers: [String: String] = [:],
                         body: String? = nil, timeout: Double = 5) -> Result<HTTPReply, RequestFailure> {
        let deadline = nowMs() + timeout * 1000
        let what = "\(method) \(path) on \(ep)"
        let conn: RawConnection
        do { conn = try RawConnection(ep, timeout: timeout) } catch {
            return .failure(RequestFailure(description: "\(method) \(path): \(error)"))
        }
        var head = "\(method) \(path) HTTP/1.1\r\n"
        var fields = headers
        if !fields.keys.contains(where: { $0.lowercased() == "host" }) { fields["Host"] = ep.hostHeader }
        fields["Connection"] = "close"
        fields["User-Agent"] = fields["User-Agent"] ?? "pml-it"
        if let body { fields["Content-Length"] = String(body.utf8.count) }
        for (k, v) in fields.sorted(by: { $0.key < $1.key }) { head += "\(k): \(v)\r\n" }
        if let failure = conn.send(Array((head + "\r\n" + (body ?? "")).utf8)) {
            return .failure(RequestFailure(description: "\(method) \(path): \(failure)"))
        }
        let got = conn.read(deadline: deadline, limit: 64 << 20)
        if let error = got.error {
            return .failure(RequestFailure(description: "\(what): \(error) after \(got.bytes) bytes"))
        }
        guard got.eof else {
            return .failure(RequestFailure(description: "\(what): no complete response within \(timeout) s (got \(got.bytes) bytes)"))
        }
        return parse(got.text, what)
    }

    /// `GET path` (see `exchange`); a status other than 200 is a failure too.
    static func get(_ ep: Endpoint, path: String = "/", timeout: Double = 5) -> Result<HTTPReply, RequestFailure> {
        exchange(ep, path: path, timeout: timeout).flatMap { reply in
            reply.status == 200 ? .success(reply)
                : .failure(RequestFailure(description: "GET \(path) on \(ep): status \(reply.status): \(reply.body.prefix(120))"))
        }
    }

    /// `count` sequential GETs.
    static func sequential(_ ep: Endpoint, _ count: Int, path: String = "/", timeout: Double = 5) -> [Result<HTTPReply, RequestFailure>] {
        (0..<count).map { _ in get(ep, path: path, timeout: timeout) }
    }

    /// A request to a URL (`http://127.0.0.1:port/path?query`, `http://[::1]:port/...`), the way
    /// curl would make it: whatever status comes back; status 0 with the failure as body if none.
    static func request(_ url: String, method: String = "GET", headers: [String: String] = [:],
                        body: String? = nil, timeout: Double = 5) -> HTTPReply {
        guard url.hasPrefix("http://") else { return HTTPReply(status: 0, head: "", body: "not an http URL: \(url)") }
        let rest = url.dropFirst("http://".count)
        let authority = rest.prefix { $0 != "/" && $0 != "?" }
        var path = String(rest.dropFirst(authority.count))
        if !path.hasPrefix("/") { path = "/" + path }
        let host: String, portText: Substring
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            portText = authority[close...].dropFirst(2)
        } else {
            host = String(authority.prefix { $0 != ":" })
            portText = authority.drop { $0 != ":" }.dropFirst()
        }
        guard let port = Int(portText.isEmpty ? "80" : portText) else { return HTTPReply(status: 0, head: "", body: "bad port in \(url)") }
        switch exchange(.tcp(host, port), method: method, path: path, headers: headers, body: body, timeout: timeout) {
        case .success(let reply): return reply
        case .failure(let f): return HTTPReply(status: 0, head: "", body: f.description)
        }
    }

    private static func parse(_ text: String, _ what: String) -> Result<HTTPReply, RequestFailure> {
        guard let split = text.range(of: "\r\n\r\n") else {
            return .failure(RequestFailure(description: "\(what): incomplete response (\(text.utf8.count) bytes): \(text.prefix(200))"))
        }
        let head = String(text[..<split.lowerBound])
        var body = String(text[split.upperBound...])
        let lines = head.split(separator: "\r\n")
        let parts = (lines.first ?? "").split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let status = Int(parts[1]) else {
            return .failure(RequestFailure(description: "\(what): bad status line: \(lines.first ?? "")"))
        }
        var chunked = false
        for line in lines.dropFirst() {
            let l = line.lowercased()
            if l.hasPrefix("content-length:") {
                let value = Int(l.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) ?? -1
                if value != body.utf8.count {
                    return .failure(RequestFailure(description: "\(what): body \(body.utf8.count) bytes, Content-Length \(value)"))
                }
            }
            if l.hasPrefix("transfer-encoding:") && l.contains("chunked") { chunked = true }
        }
        if chunked {
            guard let decoded = dechunk(body) else {
                return .failure(RequestFailure(description: "\(what): truncated chunked body: \(body.prefix(120))"))
            }
            body = decoded
        }
        return .success(HTTPReply(status: status, head: head, body: body))
    }

    /// A complete chunked body, decoded; nil if it is cut short.
    private static func dechunk(_ s: String) -> String? {
        var rest = Array(s.utf8)[...]
        var out: [UInt8] = []
        while true {
            guard let cr = rest.firstIndex(of: UInt8(ascii: "\r")), rest[cr...].starts(with: [13, 10]),
                  let size = Int(String(decoding: rest[..<cr], as: UTF8.self).split(separator: ";").first ?? "", radix: 16)
            else { return nil }
            rest = rest[(cr + 2)...]
            if size == 0 { return String(decoding: out, as: UTF8.self) }
            guard rest.count >= size + 2 else { return nil }
            out += rest.prefix(size)
            rest = rest.dropFirst(size + 2)
        }
    }
}

/// A tally of pids over sequential results.
func tally(_ results: [Result<HTTPReply, RequestFailure>]) -> [Int32: Int] {
    var counts: [Int32: Int] = [:]
    for case .success(let r) in results { counts[r.pid ?? -1, default: 0] += 1 }
    return counts
}

/// The pids that answered, in order of the results.
func servedBy(_ results: [Result<HTTPReply, RequestFailure>]) -> [Int32] {
    results.compactMap { if case .success(let r) = $0 { return r.pid } else { return nil } }
}

/// The failed ones among sequential results, numbered.
func failuresOf(_ results: [Result<HTTPReply, RequestFailure>]) -> [String] {
    results.enumerated().compactMap { i, r in
        if case .failure(let f) = r { return "#\(i): \(f)" } else { return nil }
    }
}

extension Sandbox {
    /// `count` sequential GET `path` on 127.0.0.1:port: the replies, or the first failure thrown.
    func answers(port: Int, count: Int, path: String = "/") throws -> [HTTPReply] {
        try (0..<count).map { i in
            switch HTTP.get(.local(port), path: path) {
            case .success(let r): return r
            case .failure(let f): throw HarnessError("request \(i + 1)/\(count) failed: \(f)")
            }
        }
    }
}
