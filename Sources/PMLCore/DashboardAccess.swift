/// Who may use the dashboard listener: a request must name a loopback host in its Host header (a
/// DNS-rebinding page names its own host), carry the home's token, and — when it changes
/// something — come from the dashboard's own page (Origin equal to the Host it was sent to,
/// Sec-Fetch-Site same-origin) with the token in a header, which a cross-site form or image cannot
/// set. The Host's port is not checked: through an SSH tunnel (`ssh -L 9615:127.0.0.1:<port>`)
/// the browser names the tunnel's local port.
public struct DashboardAccess: Sendable {
    public let token: String

    public init(token: String) {
        self.token = token
    }

    /// "127.0.0.1:9615", "localhost:9615", "[::1]:9615" (the port optional): a name only loopback answers to.
    public static func isLoopback(authority: String) -> Bool {
        var host = Substring(authority.lowercased())
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return false }
            let rest = host[host.index(after: close)...]
            guard rest.isEmpty || (rest.hasPrefix(":") && rest.dropFirst().allSatisfy(\.isASCIIDigit) && rest.count > 1) else { return false }
            return host[host.index(after: host.startIndex)..<close] == "::1"
        }
        if let colon = host.lastIndex(of: ":") {
            let port = host[host.index(after: colon)...]
            guard !port.isEmpty, port.count <= 5, port.allSatisfy(\.isASCIIDigit) else { return false }
            host = host[..<colon]
        }
        if host == "localhost" { return true }
        let octets = host.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127"
            && octets.allSatisfy { !$0.isEmpty && $0.count <= 3 && $0.allSatisfy(\.isASCIIDigit) && Int($0)! <= 255 }
    }

    /// What to do with a request.
    public enum Verdict: Sendable, Equatable {
        case allowed
        case forbidden(String)
    }

    /// Probes for orchestrators: no token (they carry no secret and reveal only app names and states).
    public static func isHealthPath(_ path: String) -> Bool {
        path == "/healthz" || path == "/readyz" || path.hasPrefix("/readyz/")
    }

    /// The check every request to a loopback listener passes first (the dashboard's and the
    /// metrics listener): its Host header names a loopback address, so a page from a rebound DNS
    /// name, whose requests carry that name, is refused.
    public static func checkHost(_ request: HTTPRequest) -> Verdict {
        guard let host = request.headers["host"], isLoopback(authority: host) else {
            return .forbidden("the Host header must name a loopback address (127.0.0.1, localhost, [::1])")
        }
        return .allowed
    }

    public func check(_ request: HTTPRequest) -> Verdict {
        if case .forbidden(let why) = Self.checkHost(request) { return .forbidden(why) }
        let host = request.headers["host", default: ""].lowercased()
        if Self.isHealthPath(request.path) { return .allowed }
        let mutating = !["GET", "HEAD"].contains(request.method)
        // Changes need the header: a cross-origin page cannot add it without a CORS preflight we never answer.
        let presented = mutating ? request.headers["x-pml-token"] : (request.headers["x-pml-token"] ?? request.query["token"])
        guard let presented, Self.constantTimeEqual(presented, token) else {
            return .forbidden(mutating ? "changes need the dashboard token in an X-PML-Token header" : "a valid token is needed (see pml dashboard)")
        }
        guard mutating else { return .allowed }
        if let origin = request.headers["origin"], origin.lowercased() != "http://" + host {
            return .forbidden("cross-origin request refused (Origin \(origin))")
        }
        if let site = request.headers["sec-fetch-site"], site != "same-origin" {
            return .forbidden("cross-site request refused (Sec-Fetch-Site \(site))")
        }
        return .allowed
    }

    /// Compares without stopping at the first difference, so timing does not reveal the token's prefix.
    public static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var diff: UInt8 = 0
        for i in x.indices { diff |= x[i] ^ y[i] }
        return diff == 0
    }
}

/// `/healthz` and `/readyz` for orchestrators (Kubernetes probes, load balancers).
public enum HealthProbe {
    /// One app as readiness sees it.
    public struct App: Sendable, Equatable {
        public var name: String
        /// The workers it should have (its instances).
        public var wanted: Int
        public var statuses: [WorkerStatus]

        public init(name: String, wanted: Int, statuses: [WorkerStatus]) {
            self.name = name
            self.wanted = wanted
            self.statuses = statuses
        }

        /// Ready when at least as many workers as it should have are online: a reload's
        /// replacements starting beside the old ones do not make a serving app unready.
        public var ready: Bool { statuses.filter { $0 == .online }.count >= max(1, wanted) }

        var summary: String {
            let online = statuses.filter { $0 == .online }.count
            var others: [String: Int] = [:]
            for s in statuses where s != .online { others[s.rawValue, default: 0] += 1 }
            let detail = others.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
            return "\(name): \(online)/\(max(1, wanted)) online" + (detail.isEmpty ? "" : " (\(detail))")
        }
    }

    /// The answer to a health path, or nil when `path` is not one.
    public static func answer(path: String, apps: [App]) -> HTTPResponse? {
        if path == "/healthz" { return .text(200, "ok") }
        if path == "/readyz" || path == "/readyz/" {
            let waiting = apps.filter { !$0.ready }
            if waiting.isEmpty { return .text(200, "ready: \(apps.count) app\(apps.count == 1 ? "" : "s") online") }
            return .text(503, "not ready: " + waiting.map(\.summary).joined(separator: "; "))
        }
        guard path.hasPrefix("/readyz/") else { return nil }
        let name = String(path.dropFirst("/readyz/".count))
        guard let app = apps.first(where: { $0.name == name }) else { return .text(404, "no app named \"\(name)\"") }
        return app.ready ? .text(200, "ready: " + app.summary) : .text(503, "not ready: " + app.summary)
    }
}
