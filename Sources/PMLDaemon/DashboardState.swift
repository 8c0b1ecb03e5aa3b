import Glibc
import PMLCore
import PMLPosix

/// What `/api/state` answers: every app and worker now, the samples and timeline events the page
/// has not seen yet. Keys are snake_case, as in `pml ls --json`.
struct DashboardStateJSON: Encodable {
    struct Daemon: Encodable {
        var pid: Int32
        var version: String
        var home: String
        var uptime_ms: Int
    }

    /// Samples as parallel arrays (t in wall ms): compact, and what a chart wants.
    struct Series: Encodable {
        var app: String
        var instance: Int?
        var t: [Int] = []
        var cpu: [Double] = []
        var mem: [Int] = []
        var cps: [Double] = []

        init(app: String, instance: Int?, samples: [MetricSample]) {
            self.app = app
            self.instance = instance
            for s in samples {
                t.append(s.t)
                cpu.append((s.cpu * 10).rounded() / 10)
                mem.append(s.memory)
                cps.append((s.connsPerSec * 10).rounded() / 10)
            }
        }
    }

    struct Worker: Encodable {
        var id: Int
        var instance: Int
        var pid: Int32?
        var status: String
        var restarts: Int
        var uptime_ms: Int?
        var cpu: Double
        var memory: Int
        var dispatched: Int
        var reason: String?
        var status_text: String?
    }

    struct App: Encodable {
        var name: String
        var mode: String
        var status: String
        var instances: Int
        var ready: Bool
        var reloading: Bool
        var listening: [String]
        var reloads: Int
        var scale_events: Int
        var autoscale: String?
        var autoscale_decision: String?
        var workers: [Worker]
        var series: Series
    }

    var now: Int
    var window_ms: Int
    var daemon: Daemon
    var apps: [App]
    /// Per worker id, including workers that are gone but still have samples in the window.
    var workers: [String: Series]
    var events: [TimelineEvent]
}

extension Supervisor {
    func dashboardState(samplesSince since: Int, eventsSince: Int) -> DashboardStateJSON {
        let recent = { (ring: Ring<MetricSample>) in ring.elements.filter { $0.t > since } }
        let probes = Dictionary(healthApps().map { ($0.name, $0) }) { a, _ in a }
        let apps = apps.map { app in
            DashboardStateJSON.App(
                name: app.spec.name, mode: app.mode, status: app.status.rawValue, instances: app.spec.instances,
                ready: probes[app.spec.name]?.ready ?? false, reloading: app.reloading,
                listening: app.listeners.map(\.address.description), reloads: app.reloads, scale_events: app.scaleEvents,
                autoscale: app.spec.autoscale.map { "\($0.min)–\($0.max) workers" }, autoscale_decision: app.autoscaleDecision,
                workers: app.workers.map { w in
                    let row = w.row
                    return .init(id: w.id, instance: w.instance, pid: w.pid, status: w.status.rawValue, restarts: row.restarts,
                                 uptime_ms: row.uptimeMs, cpu: row.cpu, memory: row.memory, dispatched: w.dispatched,
                                 reason: w.reason, status_text: w.statusText)
                },
                series: .init(app: app.spec.name, instance: nil, samples: history.apps[app.spec.name].map(recent) ?? []))
        }
        var workers: [String: DashboardStateJSON.Series] = [:]
        for (id, series) in history.workers {
            workers[String(id)] = .init(app: series.app, instance: series.instance, samples: recent(series.samples))
        }
        return DashboardStateJSON(
            now: wallClockMs(), window_ms: MetricsHistory.window * 1000,
            daemon: .init(pid: getpid(), version: PMLVersion.string, home: paths.home, uptime_ms: monotonicMs() - startedAt),
            apps: apps, workers: workers, events: timeline.since(eventsSince))
    }

    func healthApps() -> [HealthProbe.App] {
        apps.map { HealthProbe.App(name: $0.spec.name, wanted: $0.spec.instances, statuses: $0.workers.map(\.status)) }
    }

    /// `/healthz`, `/readyz`, `/readyz/<app>`, or nil for another path.
    func healthAnswer(path: String) -> HTTPResponse? {
        if startPending, path.hasPrefix("/readyz") { return .text(503, "not ready: starting") }
        return HealthProbe.answer(path: path, apps: healthApps())
    }

    /// The metrics listener: the Host check (it listens on loopback only), then health probes,
    /// else the Prometheus text.
    func metricsAnswer(_ request: HTTPRequest) -> HTTPResponse {
        if case .forbidden(let why) = DashboardAccess.checkHost(request) { return .text(403, "forbidden: \(why)") }
        guard request.method == "GET" else { return .text(405, "only GET is served here") }
        if let health = healthAnswer(path: request.path) { return health }
        return HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: cachedPrometheusText())
    }

    /// The Prometheus text, built at most once a second: any local user can scrape the port, and
    /// each build walks every worker on the supervisor's thread.
    static let metricsCacheMs = 1000

    private func cachedPrometheusText() -> String {
        let now = monotonicMs()
        if let cached = metricsText, now - cached.atMs < Self.metricsCacheMs { return cached.text }
        let text = prometheusText()
        metricsText = (now, text)
        return text
    }

    /// Scrapes served at once (any local user can reach the port), each a small GET in 5 s.
    static let metricsLimits = HTTPListener.Limits(maxConnections: 64, maxStreams: 0, requestTimeoutMs: 5000,
                                                   maxHead: 8 * 1024, maxBody: 0)

    /// Serves the metrics listener when config.json (`metrics_listen`) or PML_METRICS_LISTEN names
    /// a loopback address (anything else is refused), in the daemon and under `pml run`.
    func serveMetrics(environment: [String: String], held: Int32? = nil) -> HTTPListener? {
        var held = held
        // A copy the daemon before left that is not served on now (the address changed or is gone) closes.
        defer { releaseHeld(KeeperTag.metrics, held) }
        do {
            guard case .tcp(let host?, let port)? = try HomeConfig.loopbackAddress(
                "metrics_listen", environmentName: "PML_METRICS_LISTEN", paths: paths, environment: environment) else { return nil }
            let server = try httpListener(KeeperTag.metrics, held: &held, host: host, port: port, limits: Self.metricsLimits,
                                          what: "metrics listener")
            server.handler = { [unowned self] request, connection in connection.respond(self.metricsAnswer(request)) }
            logger.info("serving metrics on http://\(ListenAddress.tcp(host: host, port: port).description)/metrics (and /healthz, /readyz)")
            return server
        } catch {
            logger.error("metrics are not served: \(error)")
            return nil
        }
    }
}

/// Follows an app's two log files for one server-sent-event stream: the last lines first, then
/// what is appended, read every half second (at most 64 KiB per file per look). A truncated file
/// (pml flush) or a replaced one (log rotation) is followed from its start.
final class LogTail {
    private struct File {
        var stream: String
        var path: String
        var fd: Int32 = -1
        var inode: UInt = 0
        var offset = 0
        var partial: [UInt8] = []
        /// Reading starts mid-file: the first line is cut, so it is dropped.
        var dropFirstLine = false
    }

    private var files: [File]
    /// Weak: the connection may close (a slow reader dropped) in the middle of a tick.
    private weak var connection: HTTPConnection?
    private let loop: EventLoop
    private var timer: TimerHandle?
    private var quietTicks = 0
    static let initialBytes = 16 * 1024
    static let maxReadPerTick = 64 * 1024

    init(files: [(stream: String, path: String)], connection: HTTPConnection, loop: EventLoop) {
        self.files = files.map { File(stream: $0.stream, path: $0.path) }
        self.connection = connection
        self.loop = loop
    }

    func start() {
        for i in files.indices { open(i, tail: true) }
        connection?.send(Array("retry: 2000\n\n".utf8))
        tick()
    }

    func stop() {
        if let timer { loop.cancel(timer) }
        timer = nil
        for f in files { closeFD(f.fd) }
        files = []
    }

    private func open(_ i: Int, tail: Bool) {
        closeFD(files[i].fd)
        files[i].fd = Glibc.open(files[i].path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        files[i].partial = []
        files[i].offset = 0
        files[i].dropFirstLine = false
        guard files[i].fd >= 0 else { return }
        var st = stat()
        guard fstat(files[i].fd, &st) == 0 else { return }
        files[i].inode = UInt(st.st_ino)
        if tail, Int(st.st_size) > Self.initialBytes {
            files[i].offset = Int(st.st_size) - Self.initialBytes
            files[i].dropFirstLine = true
        }
    }

    private func tick() {
        guard let connection, !connection.isClosed else { return stop() }
        var sent = false
        for i in files.indices {
            var st = stat()
            // Replaced (rotated) or created since: follow the file now at the path.
            if lstat(files[i].path, &st) == 0, files[i].fd < 0 || UInt(st.st_ino) != files[i].inode { open(i, tail: false) }
            guard files[i].fd >= 0, fstat(files[i].fd, &st) == 0 else { continue }
            if Int(st.st_size) < files[i].offset { // truncated
                files[i].offset = 0
                files[i].partial = []
            }
            // A worker writing faster than a page can follow: skip to the newest lines rather than
            // fall further and further behind.
            let behind = Int(st.st_size) - files[i].offset
            if behind > 4 * Self.maxReadPerTick {
                files[i].offset = Int(st.st_size) - Self.maxReadPerTick
                files[i].partial = []
                files[i].dropFirstLine = true
                connection.send(ServerSentEvent.frame(event: "note", data: Array("skipped \(behind / 1024) KiB of \(files[i].stream) to keep up".utf8)[...]))
                if connection.isClosed { return }
            }
            let available = min(Int(st.st_size) - files[i].offset, Self.maxReadPerTick)
            guard available > 0 else { continue }
            var buf = [UInt8](repeating: 0, count: available)
            let n = buf.withUnsafeMutableBytes { pread(files[i].fd, $0.baseAddress, available, off_t(files[i].offset)) }
            guard n > 0 else { continue }
            files[i].offset += n
            var bytes = files[i].partial + buf[0..<n]
            if files[i].dropFirstLine, let nl = bytes.firstIndex(of: UInt8(ascii: "\n")) {
                bytes.removeSubrange(...nl)
                files[i].dropFirstLine = false
            }
            var out: [UInt8] = []
            var start = 0
            while let nl = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) {
                out += ServerSentEvent.frame(event: files[i].stream, data: bytes[start..<nl])
                start = nl + 1
            }
            files[i].partial = Array(bytes[start...])
            // An endless line is sent in pieces rather than held.
            if files[i].partial.count > Self.maxReadPerTick {
                out += ServerSentEvent.frame(event: files[i].stream, data: files[i].partial[...])
                files[i].partial = []
            }
            if !out.isEmpty {
                connection.send(out)
                sent = true
                // A reader too slow for this much is dropped; closing stopped this tail.
                if connection.isClosed { return }
            }
        }
        // A comment now and then: a browser that went away is noticed when the write fails.
        quietTicks = sent ? 0 : quietTicks + 1
        if quietTicks >= 30 {
            quietTicks = 0
            connection.send(Array(": keep-alive\n\n".utf8))
        }
        if connection.isClosed { return stop() }
        timer = loop.schedule(after: 500) { [weak self] in self?.tick() }
    }
}
