import FoundationEssentials
import Glibc
import Logging
import PMLCore
import PMLPosix

/// The live web dashboard (`pml dashboard`): served by the daemon on a loopback address
/// (`dashboard_listen` in config.json, or a free port chosen on first use and remembered there),
/// behind the home's token and a Host check. It reads the supervisor's state and history and
/// changes apps only through `Supervisor.handle`, as the CLI does. See docs/PROTOCOL.md.
final class Dashboard {
    private unowned let supervisor: Supervisor
    private let paths: PMLPaths
    private var listener: HTTPListener?
    /// The keeper's copy of the daemon before's listener, until `serveIfConfigured` is done with it.
    private var held: Int32?
    private var access: DashboardAccess?
    private var authority = ""
    /// dashboard.html with its stylesheet and script, read when serving starts.
    private var page: (html: String, css: String, js: String)?

    init(supervisor: Supervisor, paths: PMLPaths) {
        self.supervisor = supervisor
        self.paths = paths
    }

    /// Starts serving if config.json names the address (a daemon started after `pml dashboard`
    /// ran once serves it again at once, under the same URL).
    /// `held`: the keeper's copy of the listener of the daemon before, if there was one.
    func serveIfConfigured(held: Int32? = nil) {
        self.held = held
        // Not served on now (the address changed or is gone, or serving failed): it closes.
        defer {
            supervisor.releaseHeld(KeeperTag.dashboard, self.held)
            self.held = nil
        }
        do {
            _ = try serve(choosingPort: false)
        } catch {
            supervisor.logger.error("the dashboard is not served: \(error)")
        }
    }

    /// Control requests: `dashboard` is answered here; the rest go to the supervisor.
    func handle(_ request: ControlRequest, respond: @escaping (ControlResponse) -> Void) {
        guard request.cmd == .dashboard else { return supervisor.handle(request, respond: respond) }
        do {
            guard let url = try serve(choosingPort: true) else { return respond(.failure("the dashboard could not start")) }
            respond(ControlResponse(ok: true, message: url))
        } catch {
            respond(.failure("cannot serve the dashboard: \(error)"))
        }
    }

    /// The dashboard's URL with its token, serving first if needed; nil if not configured and
    /// `choosingPort` is false.
    private func serve(choosingPort: Bool) throws(SystemError) -> String? {
        if listener == nil {
            let configured = try HomeConfig.loopbackAddress("dashboard_listen", environmentName: nil, paths: paths,
                                                            environment: [:])
            guard configured != nil || choosingPort else { return nil }
            var host = "127.0.0.1", port = 0
            if case .tcp(let h?, let p)? = configured { (host, port) = (h, p) }
            let token = try HomeConfig.token(paths)
            let l = try supervisor.httpListener(KeeperTag.dashboard, held: &held, host: host, port: port, what: "dashboard listener")
            if configured == nil {
                do {
                    try HomeConfig.set("dashboard_listen", to: .string("127.0.0.1:\(l.port)"), paths: paths)
                } catch {
                    supervisor.logger.warning("the dashboard's port is not remembered: \(error)")
                }
            }
            access = DashboardAccess(token: token)
            authority = (host.contains(":") ? "[\(host)]" : host) + ":\(l.port)"
            page = Self.loadPage(logger: supervisor.logger)
            l.handler = { [unowned self] request, connection in self.route(request, connection) }
            listener = l
            supervisor.logger.info("serving the dashboard on http://\(authority)/")
        }
        guard let access else { return nil }
        return "http://\(authority)/?token=\(access.token)"
    }

    private static func loadPage(logger: Logger) -> (html: String, css: String, js: String)? {
        guard let root = Daemon.resourceRoot() else { return nil }
        let files = ["dashboard.html", "dashboard.css", "dashboard.js"].map { readFile(root + "/web/" + $0, limit: 1 << 20) }
        guard let html = files[0], let css = files[1], let js = files[2] else {
            logger.error("the dashboard's page (web/dashboard.html, .css, .js) is missing beside \(root)")
            return nil
        }
        return (String(decoding: html, as: UTF8.self), String(decoding: css, as: UTF8.self), String(decoding: js, as: UTF8.self))
    }

    // MARK: routes

    private func route(_ request: HTTPRequest, _ c: HTTPConnection) {
        guard let access else { return c.respond(.text(503, "not ready")) }
        if case .forbidden(let why) = access.check(request) { return c.respond(.text(403, "forbidden: \(why)")) }
        if let health = supervisor.healthAnswer(path: request.path) { return c.respond(health) }
        switch (request.method, request.path) {
        case ("GET", "/"), ("GET", "/index.html"):
            c.respond(pageResponse())
        case ("GET", "/api/state"):
            c.respond(stateResponse(request))
        case ("GET", "/api/logs"):
            streamLogs(request, c)
        case ("POST", "/api/action"):
            act(request, c)
        case (_, "/"), (_, "/api/state"), (_, "/api/logs"), (_, "/api/action"):
            c.respond(.text(405, "method not allowed"))
        default:
            c.respond(.text(404, "not found"))
        }
    }

    private func pageResponse() -> HTTPResponse {
        guard let page else { return .text(500, "the dashboard's page is not installed (web/ beside lua/)") }
        guard let nonce = try? HomeConfig.randomHex(16) else { return .text(500, "no random source") }
        let html = page.html
            .replacing("<!--pml:style-->", with: "<style nonce=\"\(nonce)\">\n\(page.css)</style>")
            .replacing("<!--pml:script-->", with: "<script nonce=\"\(nonce)\">\n\(page.js)</script>")
        // The page may only talk to this listener; nothing may frame it (its buttons act).
        let csp = "default-src 'none'; script-src 'nonce-\(nonce)'; style-src 'nonce-\(nonce)'; connect-src 'self'; "
            + "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        return HTTPResponse(status: 200, contentType: "text/html; charset=utf-8", body: html, headers: [
            ("Content-Security-Policy", csp), ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"),
        ])
    }

    private func stateResponse(_ request: HTTPRequest) -> HTTPResponse {
        let since = request.query["since"].flatMap { Int($0) } ?? 0
        let events = request.query["events"].flatMap { Int($0) } ?? 0
        let state = supervisor.dashboardState(samplesSince: since, eventsSince: events)
        guard let data = try? JSONEncoder().encode(state) else { return .text(500, "cannot encode the state") }
        return HTTPResponse(status: 200, contentType: "application/json", body: String(decoding: data, as: UTF8.self))
    }

    /// What a button sends: `{"cmd": "restart"|"reload"|"stop"|"scale", "target": app, "count": "+1"}`.
    private struct Action: Decodable {
        var cmd: String
        var target: String
        var count: String?
    }

    private func act(_ request: HTTPRequest, _ c: HTTPConnection) {
        guard let action = try? JSONDecoder().decode(Action.self, from: Data(request.body)) else {
            return c.respond(.text(400, "expected {\"cmd\": …, \"target\": …}"))
        }
        guard supervisor.apps.contains(where: { $0.spec.name == action.target }) else {
            return c.respond(.text(404, "no app named \"\(action.target)\""))
        }
        let control: ControlRequest
        switch action.cmd {
        case "restart": control = ControlRequest(cmd: .restart, target: action.target)
        case "stop": control = ControlRequest(cmd: .stop, target: action.target)
        case "reload": control = ControlRequest(cmd: .reload, target: action.target)
        case "scale" where ["+1", "-1"].contains(action.count ?? ""):
            control = ControlRequest(cmd: .scale, target: action.target, count: action.count)
        default:
            return c.respond(.text(400, "unknown action \"\(action.cmd)\" (restart, reload, stop, scale +1/-1)"))
        }
        let what = action.cmd + (action.count.map { " \($0)" } ?? "")
        supervisor.record(action.target, .action, "\(what) pressed on the dashboard")
        supervisor.handle(control) { [weak self] response in
            if !response.ok {
                self?.supervisor.record(action.target, .action, "\(what) from the dashboard failed", detail: response.error, ok: false)
            }
            let body: ScriptValue = .object(["ok": .bool(response.ok), "message": response.message.map { .string($0) } ?? .null,
                                             "error": response.error.map { .string($0) } ?? .null])
            let json = (try? JSONEncoder().encode(body)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
            c.respond(HTTPResponse(status: response.ok ? 200 : 409, contentType: "application/json", body: json))
        }
    }

    private func streamLogs(_ request: HTTPRequest, _ c: HTTPConnection) {
        guard let name = request.query["app"], let app = supervisor.apps.first(where: { $0.spec.name == name }) else {
            return c.respond(.text(404, "no app named \"\(request.query["app"] ?? "")\""))
        }
        guard c.startStream() else { return }
        // The err log's last lines first: out is usually the busier and more recent of the two.
        let tail = LogTail(files: [("err", app.logs.errPath), ("out", app.logs.outPath)], connection: c, loop: supervisor.loop)
        c.onClose = { tail.stop() }
        tail.start()
    }
}
