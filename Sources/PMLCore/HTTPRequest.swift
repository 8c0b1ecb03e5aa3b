/// One HTTP/1.x request as pml's loopback listeners (dashboard, metrics) understand it: a request
/// line, headers and an optional body of known length. No chunked bodies, no pipelining.
public struct HTTPRequest: Sendable, Equatable {
    public var method: String
    /// The request target as sent ("/api/state?token=…").
    public var target: String
    /// The target's path, percent-decoded ("/readyz/web").
    public var path: String
    /// Query parameters, percent-decoded ("+" is a space); the first of repeated names wins.
    public var query: [String: String]
    /// Header names lower-cased; values trimmed.
    public var headers: [String: String]
    public var body: [UInt8]

    public init(method: String, target: String, headers: [String: String] = [:], body: [UInt8] = []) {
        self.method = method
        self.target = target
        let (path, query) = Self.split(target)
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
    }

    /// The outcome of parsing the bytes received so far.
    public enum ParseResult: Sendable, Equatable {
        /// Not all of the head has arrived yet.
        case incomplete
        /// The head is in but not all of the body: nothing can change before this many bytes in all.
        case needs(Int)
        case complete(HTTPRequest)
        /// Refused, with the status to answer and why.
        case invalid(status: Int, reason: String)
    }

    /// Parses a request from the bytes received so far. The head (request line and headers) may
    /// be at most `maxHead` bytes and the body at most `maxBody`; beyond, the request is refused
    /// (431, 413) rather than buffered, so a client cannot make the server grow.
    public static func parse(_ bytes: ArraySlice<UInt8>, maxHead: Int = 16 * 1024, maxBody: Int = 16 * 1024) -> ParseResult {
        guard let (headEnd, bodyStart) = endOfHead(bytes) else {
            return bytes.count > maxHead ? .invalid(status: 431, reason: "request head larger than \(maxHead) bytes") : .incomplete
        }
        if headEnd - bytes.startIndex > maxHead { return .invalid(status: 431, reason: "request head larger than \(maxHead) bytes") }
        var lines = bytes[bytes.startIndex..<headEnd].split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            .map { line -> Substring in
                let text = Substring(decoding: line, as: UTF8.self)
                return text.hasSuffix("\r") ? text.dropLast() : text
            }
        // A client may send empty lines before the request line (RFC 9112 §2.2).
        while lines.first?.isEmpty == true { lines.removeFirst() }
        guard let requestLine = lines.first else { return .invalid(status: 400, reason: "no request line") }
        let parts = requestLine.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy({ $0.isUppercase || $0 == "-" }),
              parts[1].hasPrefix("/"), parts[2] == "HTTP/1.1" || parts[2] == "HTTP/1.0" else {
            return .invalid(status: 400, reason: "malformed request line")
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex,
                  !line[..<colon].contains(where: { $0 == " " || $0 == "\t" }) else {
                return .invalid(status: 400, reason: "malformed header line")
            }
            let name = line[..<colon].lowercased()
            let value = String(line[line.index(after: colon)...]).trimmingSpaces()
            // Two Host or Content-Length headers are how requests get smuggled: refuse.
            if headers[name] != nil, ["host", "content-length", "transfer-encoding"].contains(name) {
                return .invalid(status: 400, reason: "repeated \(name) header")
            }
            headers[name] = headers[name].map { $0 + ", " + value } ?? value
        }
        if headers["transfer-encoding"] != nil { return .invalid(status: 501, reason: "chunked bodies are not accepted") }
        var length = 0
        if let text = headers["content-length"] {
            guard !text.isEmpty, text.count <= 9, text.allSatisfy(\.isASCIIDigit), let n = Int(text) else {
                return .invalid(status: 400, reason: "bad content-length")
            }
            length = n
        }
        if length > maxBody { return .invalid(status: 413, reason: "request body larger than \(maxBody) bytes") }
        guard bytes.endIndex - bodyStart >= length else { return .needs(bodyStart - bytes.startIndex + length) }
        return .complete(HTTPRequest(method: String(parts[0]), target: String(parts[1]), headers: headers,
                                     body: Array(bytes[bodyStart..<(bodyStart + length)])))
    }

    /// Where the head ends (the blank line) and the body starts, or nil if the blank line has not arrived.
    private static func endOfHead(_ bytes: ArraySlice<UInt8>) -> (Int, Int)? {
        var i = bytes.startIndex
        while i < bytes.endIndex {
            if bytes[i] == UInt8(ascii: "\n") {
                let next = i + 1
                if next < bytes.endIndex, bytes[next] == UInt8(ascii: "\n") { return (i, next + 1) }
                if next + 1 < bytes.endIndex, bytes[next] == UInt8(ascii: "\r"), bytes[next + 1] == UInt8(ascii: "\n") {
                    return (i, next + 2)
                }
            }
            i += 1
        }
        return nil
    }

    /// "/a%20b?x=1&y=%2F" → ("/a b", ["x": "1", "y": "/"]).
    static func split(_ target: String) -> (String, [String: String]) {
        let pathPart: Substring, queryPart: Substring
        if let q = target.firstIndex(of: "?") {
            pathPart = target[..<q]
            queryPart = target[target.index(after: q)...]
        } else {
            pathPart = target[...]
            queryPart = ""
        }
        var query: [String: String] = [:]
        for pair in queryPart.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = percentDecode(kv[0], plusIsSpace: true)
            if query[key] == nil { query[key] = kv.count > 1 ? percentDecode(kv[1], plusIsSpace: true) : "" }
        }
        return (percentDecode(pathPart, plusIsSpace: false), query)
    }

    /// Decodes %XX escapes; a malformed escape stays as it is.
    public static func percentDecode(_ text: Substring, plusIsSpace: Bool) -> String {
        var out: [UInt8] = []
        let bytes = Array(text.utf8)
        var i = 0
        func hex(_ b: UInt8) -> UInt8? {
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): b - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "%"), i + 2 < bytes.count, let h = hex(bytes[i + 1]), let l = hex(bytes[i + 2]) {
                out.append(h << 4 | l)
                i += 3
            } else {
                out.append(plusIsSpace && bytes[i] == UInt8(ascii: "+") ? UInt8(ascii: " ") : bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// One answer to an `HTTPRequest`, serialised by `bytes`.
public struct HTTPResponse: Sendable, Equatable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(status: Int, contentType: String = "text/plain; charset=utf-8", body: String, headers: [(String, String)] = []) {
        self.status = status
        self.headers = [("Content-Type", contentType)] + headers
        self.body = Array(body.utf8)
    }

    public static func == (a: HTTPResponse, b: HTTPResponse) -> Bool {
        a.status == b.status && a.body == b.body && a.headers.map { $0.0 + ":" + $0.1 } == b.headers.map { $0.0 + ":" + $0.1 }
    }

    /// A plain-text answer ending in a newline.
    public static func text(_ status: Int, _ text: String) -> HTTPResponse {
        HTTPResponse(status: status, body: text.hasSuffix("\n") ? text : text + "\n")
    }

    /// The response with its head; the connection is closed after it (`Connection: close`).
    public var bytes: [UInt8] {
        var head = "HTTP/1.1 \(status) \(Self.reason(status))\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "Content-Length: \(body.count)\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
        return Array(head.utf8) + body
    }

    public static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 204: "No Content"
        case 400: "Bad Request"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 409: "Conflict"
        case 413: "Content Too Large"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 503: "Service Unavailable"
        default: "Status"
        }
    }
}

/// Server-sent events (the `text/event-stream` format).
public enum ServerSentEvent {
    /// One event carrying one line: `event: <event>`, `data: <line>`, blank line. Carriage returns
    /// are dropped (a line break inside `data` would end the field).
    public static func frame(event: String, data: ArraySlice<UInt8>) -> [UInt8] {
        Array("event: \(event)\ndata: ".utf8) + data.filter { $0 != UInt8(ascii: "\r") && $0 != UInt8(ascii: "\n") } + Array("\n\n".utf8)
    }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return String(s)
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}
