// The web dashboard (`pml dashboard`) and the health endpoints: HTTP.request for the HTTP contract,
// headless Chromium (scripts/browser.py, the DevTools protocol over a pipe) for the page itself.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// scripts/browser.py: headless Chromium driven step by step.
enum Browser {
    static func run(_ url: String, _ steps: [String], timeout: Double = 15) -> (status: Int32, stdout: String, stderr: String) {
        let script = PMLBinary.packageRoot.appendingPathComponent("scripts/browser.py").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", script, "--timeout", String(timeout), url] + steps
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        guard (try? p.run()) != nil else { return (127, "", "python3 did not start") }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }
}

extension Integration {
    @Suite("Dashboard")
    struct Dashboard {
        /// `pml dashboard`'s URL, split.
        struct Served {
            let url: String
            let base: String
            let port: Int
            let token: String
        }

        static func dashboard(_ box: Sandbox) async throws -> Served {
            let r = try await box.pmlOK("dashboard")
            let url = r.stdout.trimmingCharacters(in: .newlines)
            #expect(r.stdout.split(separator: "\n").count == 1, "one line: \(r)")
            let parts = url.split(separator: "/?token=")
            let base = String(try #require(parts.first))
            let port = try #require(Int(base.split(separator: ":").last ?? ""), "\(url)")
            let token = String(try #require(parts.last))
            #expect(base.hasPrefix("http://127.0.0.1:") && token.count == 64 && token.allSatisfy(\.isHexDigit), "\(url)")
            return Served(url: url, base: base, port: port, token: token)
        }

        @Test("pml dashboard: one URL on loopback, remembered; token, Host and same-origin checks; actions go through the daemon; health on both listeners")
        func httpContract() async throws {
            try await withSandbox { box in
                let metrics = try Net.freePort()
                try box.writeConfig(#"{"metrics_listen": "127.0.0.1:\#(metrics)"}"#)
                try await box.pmlOK("start", "--name", "d", "-i", "2", "--", "sleep", "1000")
                _ = try await box.waitOnline("d", count: 2)
                let served = try await Self.dashboard(box)
                let again = try await Self.dashboard(box)
                #expect(again.url == served.url, "the same URL every time")
                let config = box.read(box.home + "/config.json")
                #expect(config.contains("\"dashboard_listen\" : \"127.0.0.1:\(served.port)\"") && config.contains("metrics_listen"),
                        "the port is remembered beside metrics_listen:\n\(config)")
                let mode = try FileManager.default.attributesOfItem(atPath: box.home + "/dashboard.token")[.posixPermissions] as? Int
                #expect(mode == 0o600, "the token file is 0600, not \(String(mode ?? 0, radix: 8))")

                let base = served.base, token = served.token
                #expect(HTTP.request(base + "/").status == 403, "no token")
                #expect(HTTP.request(base + "/?token=" + String(repeating: "0", count: 64)).status == 403, "wrong token")
                let page = HTTP.request(served.url)
                #expect(page.status == 200 && page.body.contains("<title>pml dashboard</title>") && page.body.contains("<script nonce="), "\(page)")
                let rebound = HTTP.request(served.url, headers: ["Host": "attacker.example:\(served.port)"])
                #expect(rebound.status == 403, "DNS rebinding: a foreign Host is refused: \(rebound)")
                #expect(HTTP.request(served.url, headers: ["Host": "127.0.0.1:2222"]).status == 200, "an SSH tunnel's local port is fine")
                let state = HTTP.request(base + "/api/state?token=" + token)
                #expect(state.status == 200 && state.body.contains("\"name\":\"d\""), "\(state)")

                let action = #"{"cmd":"scale","target":"d","count":"+1"}"#
                let crossOrigin = HTTP.request(base + "/api/action", method: "POST",
                                               headers: ["X-PML-Token": token, "Origin": "http://attacker.example"], body: action)
                #expect(crossOrigin.status == 403, "\(crossOrigin)")
                let crossSite = HTTP.request(base + "/api/action", method: "POST",
                                             headers: ["X-PML-Token": token, "Sec-Fetch-Site": "cross-site"], body: action)
                #expect(crossSite.status == 403, "\(crossSite)")
                let queryToken = HTTP.request(base + "/api/action?token=" + token, method: "POST", body: action)
                #expect(queryToken.status == 403, "a change needs the token in a header: \(queryToken)")
                #expect(try await box.rows("d").count == 2, "refused actions changed nothing")
                let scaled = HTTP.request(base + "/api/action", method: "POST",
                                          headers: ["X-PML-Token": token, "Origin": base, "Sec-Fetch-Site": "same-origin"], body: action)
                #expect(scaled.status == 200 && scaled.body.contains("scaled d from 2 to 3"), "\(scaled)")
                #expect(try await box.rows("d").count == 3)
                let unknown = HTTP.request(base + "/api/action", method: "POST", headers: ["X-PML-Token": token],
                                           body: #"{"cmd":"scale","target":"d","count":"+100"}"#)
                #expect(unknown.status == 400, "\(unknown)")

                _ = try await box.waitOnline("d", count: 3)
                for b in [base, "http://127.0.0.1:\(metrics)"] {
                    #expect(HTTP.request(b + "/healthz").status == 200)
                    let ready = HTTP.request(b + "/readyz")
                    #expect(ready.status == 200 && ready.body.hasPrefix("ready"), "\(b): \(ready)")
                    #expect(HTTP.request(b + "/readyz/d").status == 200)
                    #expect(HTTP.request(b + "/readyz/nope").status == 404)
                }
                #expect(HTTP.request("http://127.0.0.1:\(metrics)/metrics").body.contains("pml_worker_up"), "metrics still served")
                try await box.pmlOK("stop", "d")
                for b in [base, "http://127.0.0.1:\(metrics)"] {
                    let ready = HTTP.request(b + "/readyz")
                    #expect(ready.status == 503 && ready.body.contains("not ready: d: 0/3 online (3 stopped)"), "\(b): \(ready)")
                    #expect(HTTP.request(b + "/readyz/d").status == 503)
                    #expect(HTTP.request(b + "/healthz").status == 200)
                }
                let events = HTTP.request(base + "/api/state?token=" + token).body
                for kind in ["\"kind\":\"action\"", "\"kind\":\"scale\"", "\"kind\":\"stop\""] {
                    #expect(events.contains(kind), "the timeline has \(kind): \(events.suffix(800))")
                }

                // A new daemon serves the remembered address at once, with the same token.
                try await box.pmlOK("kill")
                try await box.pmlOK("ping")
                let back = try await box.waitFor("the dashboard served by the next daemon") { () -> HTTPReply? in
                    let r = HTTP.request(served.url)
                    return r.status == 200 ? r : nil
                }
                #expect(back.body.contains("pml dashboard"))

                // Only loopback: another address is refused in one line, and nothing is served.
                try await box.pmlOK("kill")
                try box.writeConfig(#"{"dashboard_listen": "0.0.0.0:\#(served.port)"}"#)
                let refused = try await box.pml("dashboard")
                refused.expectCleanFailure(mentioning: ["must be a loopback address"])
                #expect(HTTP.request(served.base + "/healthz").status == 0, "nothing listens")
            }
        }

        @Test("the timeline says what the default policy proposed for a crash and what onCrash decided, or that it failed")
        func crashDecisions() async throws {
            try await withSandbox { box in
                let file = try box.write("crashy.lua", """
                    return {
                      { name = "picky", cmd = { "sh", "-c", "sleep 0.3; exit 2" },
                        onCrash = function(w, e) if e.code == 2 then return { delay = 700 } end end },
                      { name = "broken", cmd = { "sh", "-c", "sleep 0.3; exit 3" },
                        onCrash = function(w, e) error("no idea") end },
                    }
                    """)
                try await box.pmlOK("start", file)
                let served = try await Self.dashboard(box)
                struct Event: Decodable { let app: String; let kind: String; let title: String; let detail: String? }
                struct State: Decodable { let events: [Event] }
                let crashes = try await box.waitFor("a crash of each app on the timeline", timeout: 10) { () -> [Event]? in
                    let body = HTTP.request(served.base + "/api/state?token=" + served.token).body
                    guard let state = try? JSONDecoder().decode(State.self, from: Data(body.utf8)) else { return nil }
                    let crashes = state.events.filter { $0.kind == "crash" }
                    return Set(crashes.map(\.app)) == ["picky", "broken"] ? crashes : nil
                }
                let picky = try #require(crashes.first { $0.app == "picky" })
                #expect(picky.title.contains("exited with code 2"), "\(picky)")
                #expect(picky.detail?.hasPrefix("onCrash: restart in 700 ms (the default policy: restart in") == true, "\(picky)")
                let broken = try #require(crashes.first { $0.app == "broken" })
                #expect(broken.detail?.contains("onCrash failed, so it stands") == true && broken.detail?.contains("no idea") == true, "\(broken)")
            }
        }

        @Test("pml dashboard --open: starts xdg-open with the URL when there is one, says so when there is none")
        func open() async throws {
            try await withSandbox { box in
                let bin = box.work + "/bin"
                try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
                try box.write("bin/xdg-open", "#!/bin/sh\necho \"$1\" > \(box.work)/opened\n", executable: true)
                let served = try await Self.dashboard(box)
                let opened = try await box.pmlOK("dashboard", "--open", env: ["PATH": bin + ":/usr/bin:/bin"])
                #expect(opened.stdout == served.url + "\n" && opened.stderr.contains("opened with xdg-open"), "\(opened)")
                let arg = try await box.waitFor("the fake browser to run") { () -> String? in
                    let text = box.read(box.work + "/opened")
                    return text.isEmpty ? nil : text
                }
                #expect(arg == served.url + "\n", "xdg-open got the URL: \(arg)")
                let empty = box.work + "/empty"
                try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
                let none = try await box.pmlOK("dashboard", "--open", env: ["PATH": empty])
                #expect(none.stdout == served.url + "\n", "the URL is still printed: \(none)")
                #expect(none.stderr.contains("no browser found"), "and it says there is no browser: \(none)")
            }
        }

        @Test("headless Chromium: apps listed, graphs have points, logs tail, a click on reload replaces the pids")
        func browser() async throws {
            try await withSandbox { box in
                try await box.pmlOK("start", "--name", "web", "-i", "2", "--", "sh", "-c", "echo hello-from-$PML_INSTANCE; exec sleep 1000")
                try await box.pmlOK("start", "--name", "jobs", "--", "sleep", "1000")
                let before = try await box.waitOnline("web", count: 2)
                let served = try await Self.dashboard(box)
                // The graphs need two samples (one per second) to draw a line.
                await sleepMs(2200)
                let pidsInPage = "JSON.stringify([...document.querySelectorAll('article[data-app=\"web\"] tr[data-pid]')].map(r => Number(r.dataset.pid)).sort())"
                let r = Browser.run(served.url, [
                    "wait:document.querySelector('article[data-app=\"web\"]') && document.querySelector('article[data-app=\"jobs\"]')",
                    "eval:[...document.querySelectorAll('article[data-app]')].map(a => a.dataset.app)",
                    "wait:[...document.querySelectorAll('article[data-app=\"web\"] polyline[data-points]')].some(p => Number(p.dataset.points) >= 2)",
                    "eval:Math.max(...[...document.querySelectorAll('polyline[data-points]')].map(p => Number(p.dataset.points)))",
                    "wait:[...document.querySelectorAll('#logs .l')].some(l => l.textContent.startsWith('hello-from-'))",
                    "eval:" + pidsInPage,
                    "click:button[data-action=\"reload\"][data-app=\"web\"]",
                    "wait:[...document.querySelectorAll('#timeline li[data-kind=\"reload\"]')].some(l => l.textContent.includes('reloaded:'))",
                    "eval:[...document.querySelectorAll('#timeline li[data-kind=\"reload\"]')].map(l => l.textContent).join(' | ')",
                    "eval:document.querySelector('#timeline li[data-kind=\"action\"]').textContent",
                    "wait:!document.querySelector('article[data-app=\"web\"] tr[data-pid=\"\(before[0].pid ?? 0)\"]')",
                    "eval:" + pidsInPage,
                ], timeout: 15)
                #expect(r.status == 0, "browser steps:\n\(r.stderr)\n\(r.stdout)")
                let lines = r.stdout.split(separator: "\n").map(String.init)
                guard lines.count == 6 else { return }
                #expect(lines[0] == #"["web","jobs"]"#, "both apps are listed: \(lines[0])")
                #expect((Int(lines[1]) ?? 0) >= 2, "a graph has points: \(lines[1])")
                let oldPids = Set(before.compactMap(\.pid))
                #expect(lines[2] == "\"[\(oldPids.sorted().map(String.init).joined(separator: ","))]\"", "the page shows the pids: \(lines[2])")
                #expect(lines[3].contains("reloaded: 2 workers started") && lines[3].contains("reload started"), "the reload is on the timeline: \(lines[3])")
                #expect(lines[3].contains("old workers: SIGTERM"), "with how its old workers are stopped: \(lines[3])")
                #expect(lines[4].contains("reload pressed on the dashboard"), "so is the button: \(lines[4])")
                let after = try await box.rows("web")
                let newPids = Set(after.compactMap(\.pid))
                #expect(after.count == 2 && newPids.count == 2 && newPids.isDisjoint(with: oldPids),
                        "the click reloaded web: \(before) → \(after)")
                #expect(after.allSatisfy { $0.status == "online" }, "\(after)")
            }
        }

        @Test("the listener stays bounded: extra connections get 503, a huge head 431, a silent client 408, a log reader that stops reading is dropped")
        func bounded() async throws {
            try await withSandbox { box in
                // A worker that writes its log as fast as it can.
                try await box.pmlOK("start", "--name", "chatty", "--", "sh", "-c",
                                    "while :; do echo 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'; done")
                _ = try await box.waitOnline("chatty")
                let served = try await Self.dashboard(box)
                let host = "Host: 127.0.0.1:\(served.port)\r\n"

                // A reader that never reads: the daemon drops it once its output piles up.
                let reader = try RawConnection(.local(served.port), receiveBuffer: 4096)
                reader.send("GET /api/logs?app=chatty&token=\(served.token) HTTP/1.1\r\n\(host)\r\n")

                let big = try RawConnection(.local(served.port))
                big.send("GET / HTTP/1.1\r\n\(host)X-Big: \(String(repeating: "x", count: 20_000))\r\n\r\n")
                #expect(big.read(idle: 3).text.hasPrefix("HTTP/1.1 431"), "a 20 KB head is refused")

                var idle: [RawConnection] = []
                for _ in 0..<40 { idle.append(try RawConnection(.local(served.port))) }
                await sleepMs(300)
                let refused = idle.filter { $0.read(idle: 0.05).text.contains("503") }.count
                #expect(refused >= 40 - 32 && refused < 40, "beyond 32 connections, 503 (\(refused) of 40 refused)")

                let silent = idle.first { !$0.read(idle: 0.1).eof }
                let timedOut = silent?.read(idle: 7)
                #expect(timedOut?.text.hasPrefix("HTTP/1.1 408") == true && timedOut?.eof == true, "a client that sends nothing is answered 408 and closed: \(timedOut?.text.prefix(80) ?? "none")")

                let dropped = reader.read(idle: 10, limit: 4096)
                #expect(dropped.eof, "the stalled log reader was dropped (read \(dropped.bytes) bytes, no EOF)")
                #expect(dropped.text.hasPrefix("HTTP/1.1 200") && dropped.text.contains("event: out"), "\(dropped.text.prefix(200))")

                #expect(HTTP.request(served.base + "/healthz").status == 200, "the daemon still answers")
                try await box.pmlOK("ls")
            }
        }

        @Test("pml run serves /healthz, /readyz and /metrics on PML_METRICS_LISTEN: 503 until every worker is ready, then 200")
        func foregroundProbes() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                try box.write("probe.lua", """
                    return { name = "probe", instances = 2, ready = "message",
                             cmd = { "sh", "-c", "sleep 1.2; echo '\\"ready\\"' >&$PML_IPC_FD; exec sleep 1000" } }
                    """)
                let run = try ChildProcess(box, box.binary, ["run", "probe.lua"], env: ["PML_METRICS_LISTEN": "127.0.0.1:\(port)"])
                defer { if run.isRunning { kill(run.pid, SIGKILL) } }
                let base = "http://127.0.0.1:\(port)"
                let first = try await box.waitFor("pml run's health listener", timeout: 5, every: 50) { () -> HTTPReply? in
                    let r = HTTP.request(base + "/readyz")
                    return r.status == 0 ? nil : r
                }
                // Not ready while the app file is evaluated (scripts may get little CPU), nor while its workers start.
                #expect(first.status == 503 && (first.body.contains("not ready: starting") || first.body.contains("not ready: probe: 0/2 online (2 starting)")),
                        "workers not ready yet: \(first)")
                #expect(HTTP.request(base + "/healthz").status == 200)
                let ready = try await box.waitFor("/readyz 200", timeout: 10) { () -> HTTPReply? in
                    let r = HTTP.request(base + "/readyz")
                    return r.status == 200 ? r : nil
                }
                #expect(ready.body == "ready: 1 app online\n", "\(ready)")
                #expect(HTTP.request(base + "/readyz/probe").status == 200)
                #expect(HTTP.request(base + "/readyz/other").status == 404)
                #expect(HTTP.request(base + "/metrics").body.contains("pml_worker_up{app=\"probe\""))
                kill(run.pid, SIGTERM)
                try await box.waitFor("pml run to exit", timeout: 10) { run.isRunning ? nil : true }
                #expect(run.process.terminationStatus == 0)
            }
        }
    }
}
