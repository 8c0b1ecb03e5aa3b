/// A socket pml binds for an app: TCP on a host and port, or a unix socket path.
public enum ListenAddress: Sendable, Equatable, Hashable, CustomStringConvertible {
    /// host nil: every interface, IPv6 and IPv4 (one dual-stack socket).
    case tcp(host: String?, port: Int)
    case unix(path: String)

    /// Parses 8080, "8080", "127.0.0.1:8080", "[::1]:8080", "localhost:8080", "unix:/run/web.sock".
    public static func parse(_ value: ScriptValue, baseDirectory: String) -> ListenAddress? {
        if let n = value.intValue { return (0...65535).contains(n) ? .tcp(host: nil, port: Int(n)) : nil }
        guard let text = value.stringValue, !text.isEmpty else { return nil }
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { return nil }
            return .unix(path: path.hasPrefix("/") ? path : AppSpecParser.normalize(baseDirectory + "/" + path))
        }
        if let port = Int(text) { return (0...65535).contains(port) ? .tcp(host: nil, port: port) : nil }
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.isEmpty || host.contains(" ") { return nil }
        if host.contains(":") && !text.hasPrefix("[") { return nil } // IPv6 needs brackets
        return .tcp(host: host == "*" ? nil : host, port: port)
    }

    /// Name for LISTEN_FDNAMES and messages: "8080", "127.0.0.1:8080", "[::1]:8080", "unix:/path".
    public var description: String {
        switch self {
        case .tcp(nil, let port): return String(port)
        case .tcp(let host?, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): return "unix:" + path
        }
    }

    public var port: Int? {
        if case .tcp(_, let p) = self { return p }
        return nil
    }
}

/// How connections reach workers.
public enum DispatchMode: String, Sendable, Codable, Equatable {
    /// pml accepts and passes each connection to the next ready worker over IPC.
    case roundRobin = "rr"
    /// Like rr, to the worker with the fewest open connections (as workers report them).
    case leastBusy = "least-busy"
    /// One SO_REUSEPORT socket per worker slot, inherited by that worker; pml holds a copy of
    /// each and accepts on a slot itself while no worker serves it.
    case reusePort = "reuseport"
    /// Workers inherit the listening sockets (systemd socket activation) and accept themselves.
    case shared

    /// pml accepts on the app's sockets and passes each connection over IPC.
    public var passesConnections: Bool { self == .roundRobin || self == .leastBusy }
}

/// When a new worker counts as ready.
public enum ReadinessRule: Sendable, Equatable {
    /// At once, or (Node workers through pml's shim) when their server listens.
    case automatic
    /// When it says so: "ready" on IPC, or READY=1 on NOTIFY_SOCKET.
    case message
    /// After this many ms alive.
    case delay(Int)
}

extension ListenAddress: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let a = ListenAddress.parse(.string(text), baseDirectory: "/") else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad listen address \(text)"))
        }
        self = a
    }

    /// Encoded as its description, the form an app file uses.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

extension ReadinessRule: Codable {
    /// "auto", "message", or a number of ms, as in an app file.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let ms = try? c.decode(Int.self) { self = .delay(ms); return }
        switch try c.decode(String.self) {
        case "message": self = .message
        default: self = .automatic
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .automatic: try c.encode("auto")
        case .message: try c.encode("message")
        case .delay(let ms): try c.encode(ms)
        }
    }
}
