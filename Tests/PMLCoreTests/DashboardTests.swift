import Testing
@testable import PMLCore

@Suite struct HTTPRequestTests {
    func parse(_ text: String, maxHead: Int = 16 * 1024, maxBody: Int = 16 * 1024) -> HTTPRequest.ParseResult {
        HTTPRequest.parse(Array(text.utf8)[...], maxHead: maxHead, maxBody: maxBody)
    }

    @Test func parsesRequestLineHeadersAndQuery() throws {
        guard case .complete(let r) = parse("GET /api/logs?app=web%20x&token=a+b&app=ignored HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-PML-Token:  t \r\n\r\n") else {
            Issue.record("not complete"); return
        }
        #expect(r.method == "GET")
        #expect(r.path == "/api/logs")
        #expect(r.query == ["app": "web x", "token": "a b"])
        #expect(r.headers["host"] == "127.0.0.1:9")
        #expect(r.headers["x-pml-token"] == "t")
        #expect(r.body.isEmpty)
    }

    @Test func waitsForTheWholeHeadAndBody() {
        #expect(parse("GET / HTTP/1.1\r\nHost: x") == .incomplete)
        #expect(parse("POST /api/action HTTP/1.1\r\nContent-Length: 5\r\n\r\nab") == .needs(53))
        guard case .complete(let r) = parse("POST /api/action HTTP/1.1\nContent-Length: 5\n\nabcdeEXTRA") else {
            Issue.record("bare LF heads are accepted"); return
        }
        #expect(r.body == Array("abcde".utf8))
    }

    @Test func refusesWhatCouldGrowOrSmuggle() {
        #expect(parse(String(repeating: "a", count: 200), maxHead: 100) == .invalid(status: 431, reason: "request head larger than 100 bytes"))
        #expect(parse("POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", maxBody: 10) == .invalid(status: 413, reason: "request body larger than 10 bytes"))
        #expect(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") == .invalid(status: 501, reason: "chunked bodies are not accepted"))
        #expect(parse("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == .invalid(status: 400, reason: "repeated host header"))
        #expect(parse("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n") == .invalid(status: 400, reason: "bad content-length"))
        #expect(parse("GET http://x/ HTTP/1.1\r\n\r\n") == .invalid(status: 400, reason: "malformed request line"))
        #expect(parse("GET / HTTP/2\r\n\r\n") == .invalid(status: 400, reason: "malformed request line"))
        #expect(parse("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n") == .invalid(status: 400, reason: "malformed header line"))
    }

    @Test func responsesCarryLengthAndClose() {
        let text = String(decoding: HTTPResponse.text(503, "not ready").bytes, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"))
        #expect(text.contains("Content-Length: 10\r\n") && text.contains("Connection: close\r\n"))
        #expect(text.hasSuffix("\r\n\r\nnot ready\n"))
    }

    @Test func serverSentEventsCarryOneLine() {
        let frame = ServerSentEvent.frame(event: "err", data: Array("boom\r".utf8)[...])
        #expect(String(decoding: frame, as: UTF8.self) == "event: err\ndata: boom\n\n")
    }
}

@Suite struct DashboardAccessTests {
    let access = DashboardAccess(token: "secret")

    func request(_ target: String, _ headers: [String: String], method: String = "GET") -> HTTPRequest {
        HTTPRequest(method: method, target: target, headers: headers)
    }

    @Test func hostMustNameLoopback() {
        #expect(access.check(request("/?token=secret", ["host": "127.0.0.1:9615"])) == .allowed)
        #expect(access.check(request("/?token=secret", ["host": "localhost:9615"])) == .allowed)
        // Through an SSH tunnel the browser names the tunnel's local port.
        #expect(access.check(request("/?token=secret", ["host": "127.0.0.1:2222"])) == .allowed)
        if case .allowed = access.check(request("/?token=secret", ["host": "attacker.example:9615"])) { Issue.record("rebinding host allowed") }
        if case .allowed = access.check(request("/?token=secret", [:])) { Issue.record("no Host allowed") }
        if case .allowed = access.check(request("/healthz", ["host": "evil:9615"])) { Issue.record("health skips the Host check") }
        for good in ["127.0.0.1", "127.1.2.3:80", "[::1]:9615", "LOCALHOST:1"] { #expect(DashboardAccess.isLoopback(authority: good), "\(good)") }
        for bad in ["127.0.0.1.evil.com:9615", "127.0.0.256", "10.0.0.1:9615", "[::2]:1", "localhost.evil:1", "127.0.0.1:x", "[::1]x", "0x7f.0.0.1"] {
            #expect(!DashboardAccess.isLoopback(authority: bad), "\(bad)")
        }
    }

    @Test func theHostCheckAloneAsTheMetricsListenerUsesIt() {
        // No token: only the Host must name loopback, for every path (metrics and probes alike).
        for host in ["127.0.0.1:9615", "localhost", "[::1]:1", "LocalHost:80"] {
            #expect(DashboardAccess.checkHost(request("/metrics", ["host": host])) == .allowed, "\(host)")
        }
        for headers in [["host": "rebound.example:9615"], ["host": "127.0.0.1.nip.io"], [:]] {
            for path in ["/metrics", "/healthz", "/readyz"] {
                #expect(DashboardAccess.checkHost(request(path, headers))
                        == .forbidden("the Host header must name a loopback address (127.0.0.1, localhost, [::1])"), "\(path) \(headers)")
            }
        }
    }

    @Test func tokenIsNeededExceptForProbes() {
        if case .allowed = access.check(request("/api/state", ["host": "127.0.0.1:9615"])) { Issue.record("no token allowed") }
        if case .allowed = access.check(request("/?token=secreT", ["host": "127.0.0.1:9615"])) { Issue.record("wrong token allowed") }
        #expect(access.check(request("/api/state", ["host": "127.0.0.1:9615", "x-pml-token": "secret"])) == .allowed)
        #expect(access.check(request("/readyz/web", ["host": "127.0.0.1:9615"])) == .allowed)
        #expect(access.check(request("/healthz", ["host": "127.0.0.1:9615"])) == .allowed)
    }

    @Test func changesNeedTheHeaderAndTheSameOrigin() {
        let host = ["host": "127.0.0.1:9615"]
        if case .allowed = access.check(request("/api/action?token=secret", host, method: "POST")) { Issue.record("query token accepted for a change") }
        var h = host.merging(["x-pml-token": "secret"]) { a, _ in a }
        #expect(access.check(request("/api/action", h, method: "POST")) == .allowed)
        h["origin"] = "http://127.0.0.1:9615"
        h["sec-fetch-site"] = "same-origin"
        #expect(access.check(request("/api/action", h, method: "POST")) == .allowed)
        h["origin"] = "http://evil.example"
        if case .allowed = access.check(request("/api/action", h, method: "POST")) { Issue.record("cross origin allowed") }
        h["origin"] = "http://127.0.0.1:8000" // another local server's page
        if case .allowed = access.check(request("/api/action", h, method: "POST")) { Issue.record("another local origin allowed") }
        h["origin"] = "http://127.0.0.1:9615"
        h["sec-fetch-site"] = "cross-site"
        if case .allowed = access.check(request("/api/action", h, method: "POST")) { Issue.record("cross site allowed") }
    }
}

@Suite struct HealthProbeTests {
    let apps = [
        HealthProbe.App(name: "web", wanted: 2, statuses: [.online, .online, .starting]),
        HealthProbe.App(name: "jobs", wanted: 2, statuses: [.online, .waiting]),
    ]

    @Test func healthzAlwaysAnswers() {
        #expect(HealthProbe.answer(path: "/healthz", apps: apps)?.status == 200)
        #expect(HealthProbe.answer(path: "/metrics", apps: apps) == nil)
    }

    @Test func readyWhenEveryAppHasItsWorkersOnline() {
        let all = HealthProbe.answer(path: "/readyz", apps: apps)
        #expect(all?.status == 503)
        #expect(String(decoding: all?.body ?? [], as: UTF8.self) == "not ready: jobs: 1/2 online (1 waiting)\n")
        // A reload's replacement starting beside the old workers does not make web unready.
        #expect(HealthProbe.answer(path: "/readyz/web", apps: apps)?.status == 200)
        #expect(HealthProbe.answer(path: "/readyz/jobs", apps: apps)?.status == 503)
        #expect(HealthProbe.answer(path: "/readyz/nope", apps: apps)?.status == 404)
        #expect(HealthProbe.answer(path: "/readyz", apps: [apps[0]])?.status == 200)
        #expect(HealthProbe.answer(path: "/readyz", apps: [HealthProbe.App(name: "x", wanted: 1, statuses: [.stopped])])?.status == 503)
    }
}

@Suite struct DashboardHistoryTests {
    @Test func ringKeepsTheNewest() {
        var r = Ring<Int>(capacity: 3)
        for i in 1...5 { r.append(i) }
        #expect(r.elements == [3, 4, 5])
        #expect(r.last == 5 && r.count == 3)
    }

    @Test func samplesGiveRatesAndAppSums() {
        var h = MetricsHistory(window: 10)
        let read = { (id: Int, d: Int) in MetricsHistory.Reading(id: id, app: "web", instance: id, cpu: 10, memory: 100, dispatched: d) }
        h.record(t: 1000, readings: [read(1, 0), read(2, 0)], appNames: ["web", "idle"])
        h.record(t: 2000, readings: [read(1, 50), read(2, 30)], appNames: ["web", "idle"])
        #expect(h.workers[1]?.samples.elements.map(\.connsPerSec) == [0, 50])
        #expect(h.apps["web"]?.last == MetricSample(t: 2000, cpu: 20, memory: 200, connsPerSec: 80))
        #expect(h.apps["idle"]?.last?.memory == 0)
        // Worker 1 is gone; its series stays until its samples leave the 10 s window.
        h.record(t: 5000, readings: [read(2, 30)], appNames: ["web"])
        #expect(h.workers[1] != nil)
        h.record(t: 12_500, readings: [read(2, 30)], appNames: ["web"])
        #expect(h.workers[1] == nil && h.workers[2]?.samples.count == 4)
        #expect(h.apps["idle"] == nil)
    }

    @Test func seriesAreBounded() {
        var h = MetricsHistory(window: 900)
        for id in 0..<(MetricsHistory.maxSeries + 50) {
            h.record(t: 1000 + id, readings: [MetricsHistory.Reading(id: id, app: "a", instance: 0, cpu: 0, memory: 0, dispatched: 0)], appNames: ["a"])
        }
        #expect(h.workers.count == MetricsHistory.maxSeries)
        #expect(h.workers[MetricsHistory.maxSeries + 49] != nil && h.workers[0] == nil)
    }

    @Test func timelineNumbersEventsAndForgetsTheOldest() {
        var t = Timeline()
        for i in 0..<(Timeline.capacity + 10) { t.append(TimelineEvent(t: i, app: "web", kind: .crash, title: "\(i)")) }
        #expect(t.since(0).count == Timeline.capacity)
        #expect(t.since(0).first?.seq == 11)
        #expect(t.since(Timeline.capacity + 9).map(\.title) == ["\(Timeline.capacity + 9)"])
    }
}
