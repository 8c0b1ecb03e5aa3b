// `pml reload <app|all> [--graceful] [--parallel N]` as a user runs it: rolling replacement of
// real Node workers behind a port pml owns, under real HTTP load; beforeReload / onReload;
// rollback of a broken version; the app file re-read (env); fork mode; --parallel; a second
// reload refused. Helpers: ReloadSupport.swift; every port comes from `Net.freePort()`.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Reload")
    struct Reload {
        // MARK: fixtures

        /// Writes `script` as `<name>.js` and an app file `<name>.lua` for it; returns the app file.
        /// `env` values and `extra` keys are Lua source.
        static func nodeApp(_ box: Sandbox, name: String, script: String, port: Int, instances: Int,
                            env: [String: String] = [:], extra: String = "") throws -> String {
            let js = try box.write("\(name).js", script)
            var all = env
            all["FX_PORT"] = lua(String(port))
            let envLua = all.sorted { $0.key < $1.key }.map { "\($0.key) = \($0.value)" }.joined(separator: ", ")
            return try box.write("\(name).lua", """
                return {
                  name = \(lua(name)),
                  script = \(lua(js)),
                  instances = \(instances),
                  listen = \(port),
                  env = { \(envLua) },
                  restart_delay = 100,
                  kill_timeout = 5000,
                \(extra)
                }
                """)
        }

        /// Lines of daemon.log that record an exit of `pid` ("... (pid N) exited with code 0 after ...").
        static func exitLines(_ box: Sandbox, pid: Int32) -> [String] {
            box.lines(box.daemonLog).filter { $0.contains("(pid \(pid))") && ($0.contains("exited") || $0.contains("killed") || $0.contains("signal")) }
        }

        // MARK: zero downtime

        @Test("3 graceful reloads of 4 Node workers under 4-thread load: no failed request, /slow in flight completes, all pids change each time")
        func gracefulUnderLoad() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.nodeApp(box, name: "web", script: ReloadFixture.server, port: port, instances: 4)
                try await box.pmlOK("start", file)
                var pids = Row.pids(try await box.waitServing("web", count: 4))
                #expect(pids.count == 4)

                let load = LoadGenerator(.local(port), pauseMs: 3)
                load.start(fast: 2, slow: 2)   // 2 threads on /, 2 keeping a /slow (300 ms) in flight
                await sleepMs(700)
                var windows: [(Double, Double)] = []
                var durations: [String] = []
                for round in 1...3 {
                    let t0 = nowMs()
                    let r = try await box.pml(["reload", "web", "--graceful"], timeout: 40)
                    let t1 = nowMs()
                    windows.append((t0, t1))
                    #expect(r.ok, "reload \(round):\n\(r)")
                    #expect(r.stdout.contains("reloaded web: 4 workers"), "reload \(round) says what it did:\n\(r)")
                    durations.append("\(Int(t1 - t0)) ms")
                    let rows = try await box.waitServing("web", count: 4)
                    let now = Row.pids(rows)
                    #expect(now.count == 4 && now.isDisjoint(with: pids),
                            "reload \(round): all 4 pids change: before \(pids.sorted()), after \(now.sorted())")
                    for old in pids {
                        #expect(!Proc.alive(old), "reload \(round): old worker \(old) is gone once the reload returns")
                    }
                    pids = now
                    await sleepMs(600)
                }
                let samples = await load.stop()

                let failed = samples.failed
                print("reload under load: \(samples.summary()); reloads took \(durations)")
                #expect(failed.count == 0, "no request fails during reloads (\(durations)):\n\(samples.summary())")
                #expect(samples.count > 100, "the load ran: \(samples.summary())")
                for (i, w) in windows.enumerated() {
                    let slow = samples.filter { $0.path == "/slow" && $0.overlaps(w.0, w.1) }
                    let fast = samples.filter { $0.path == "/" && $0.overlaps(w.0, w.1) }
                    #expect(slow.count >= 2 && fast.count >= 10,
                            "reload \(i + 1): requests were in flight during it (\(slow.count) /slow, \(fast.count) /)")
                    #expect(slow.allSatisfy { $0.failure == nil }, "reload \(i + 1): every /slow in flight completed with 200")
                }
                // /slow requests answered by workers that were being retired: drained, not cut.
                let finalPids = pids
                let byRetired = samples.filter { s in
                    s.path == "/slow" && s.pid.map { !finalPids.contains($0) } == true
                        && windows.contains { w in s.overlaps(w.0, w.1) }
                }
                #expect(!byRetired.isEmpty, "some /slow requests in flight during a reload were answered by an old worker")
                let responders = Set(samples.compactMap(\.pid))
                #expect(responders.isSuperset(of: finalPids), "the final workers served: \(finalPids.sorted())")
            }
        }

        @Test("a keep-alive request in progress when its Node worker gets \"shutdown\" (reload --graceful) is answered with Connection: close, and the connection ends (the preload finds it among the HTTP server's own connections); before, the same request keeps its connection")
        func inProgressKeepAliveEndsAtReload() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let script = """
                    require('http').createServer((req, res) => {
                      const reply = () => res.end('hello from ' + process.pid + '\\n');
                      if (req.url === '/slow') setTimeout(reply, 2500); else reply();
                    }).listen(Number(process.env.FX_PORT));
                    """
                let file = try Self.nodeApp(box, name: "ka", script: script, port: port, instances: 1, extra: "  kill_timeout = 8000,")
                try await box.pmlOK("start", file)
                _ = try await box.waitServing("ka", count: 1)
                let request = "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                // Before: answered, the connection kept.
                let kept = try RawConnection(.local(port))
                #expect(kept.send(request))
                let first = kept.read(idle: 3, deadline: nowMs() + 10_000)
                #expect(first.text.contains("hello from") && first.text.lowercased().contains("connection: keep-alive") && !first.eof, "\(first.text)")
                // In progress while the worker is told to stop: Connection: close, then EOF.
                let conn = try RawConnection(.local(port))
                #expect(conn.send(request))
                await sleepMs(300)
                async let reload = box.pml(["reload", "ka", "--graceful"], timeout: 40)
                let reply = conn.read(idle: 4, deadline: nowMs() + 15_000)
                #expect(reply.text.contains("hello from") && reply.text.lowercased().contains("connection: close"), "\(reply.text)")
                #expect(reply.eof, "the server closed the connection after the answer")
                #expect(try await reload.ok)
            }
        }

        // MARK: the graceful message

        @Test("a Node worker handling 'shutdown' itself gets it, closes and exits 0 on its own (no signal, well before kill_timeout)")
        func appHandlesShutdown() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let dir = box.work + "/marks"
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                let file = try Self.nodeApp(box, name: "own", script: ReloadFixture.selfShutdown, port: port, instances: 2,
                                            env: ["FX_DIR": lua(dir)], extra: "  kill_timeout = 8000,")
                try await box.pmlOK("start", file)
                let old = Row.pids(try await box.waitServing("own", count: 2))
                _ = try box.answers(port: port, count: 4)

                let t0 = nowMs()
                let r = try await box.pml(["reload", "own", "--graceful"], timeout: 40)
                let took = nowMs() - t0
                #expect(r.ok, "\(r)")
                // Had the message not arrived, pml would wait kill_timeout (8 s) per worker before SIGTERM.
                #expect(took < 6000, "the old workers exited by themselves, before kill_timeout: reload took \(Int(took)) ms")
                let now = Row.pids(try await box.waitServing("own", count: 2))
                #expect(now.isDisjoint(with: old), "new pids \(now.sorted()) vs old \(old.sorted())")
                for pid in old {
                    #expect(box.lines("\(dir)/\(pid).messages") == ["\"shutdown\""],
                            "old worker \(pid) got exactly the message \"shutdown\": \(box.lines("\(dir)/\(pid).messages"))")
                    #expect(FileManager.default.fileExists(atPath: "\(dir)/\(pid).closed"),
                            "old worker \(pid) closed its server itself (marker file)")
                    let exits = try await box.waitFor("daemon.log records the exit of \(pid)", timeout: 5) {
                        let l = Self.exitLines(box, pid: pid)
                        return l.isEmpty ? nil : l
                    }
                    #expect(exits.contains { $0.contains("exited with code 0") }, "old worker \(pid) exited 0: \(exits)")
                    #expect(!exits.contains { $0.contains("SIGTERM") || $0.contains("SIGKILL") }, "no signal for \(pid): \(exits)")
                }
                let log = box.read(box.daemonLog)
                #expect(!log.contains("sending SIGKILL"), "nothing was SIGKILLed")
                _ = try box.answers(port: port, count: 4)
            }
        }

        @Test("beforeReload's { message = { type = \"bye\", n = 7 } } reaches each old worker exactly; `false` from the running version vetoes")
        func beforeReloadMessageAndVeto() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let dir = box.work + "/msgs"
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                let hooks = """
                    beforeReload = function(app)
                      pml.log("HOOK beforeReload " .. app.name)
                      return { message = { type = "bye", n = 7 }, timeout = 4000 } -- BEFORE
                    end,
                    onReload = function(app, r)
                      pml.log("HOOK onReload ok=" .. tostring(r.ok) .. " vetoed=" .. tostring(r.vetoed) .. " error=" .. tostring(r.error))
                    end,
                  """
                let file = try Self.nodeApp(box, name: "msg", script: ReloadFixture.recorder, port: port, instances: 2,
                                            env: ["FX_DIR": lua(dir), "V": lua("1")], extra: hooks)
                try await box.pmlOK("start", file)
                let v1 = Row.pids(try await box.waitServing("msg", count: 2))

                // The next version vetoes reloads; this reload still runs the current version's hook.
                try box.edit(file, replacing: "return { message = { type = \"bye\", n = 7 }, timeout = 4000 } -- BEFORE",
                             with: "return false")
                try box.edit(file, replacing: "V = \"1\"", with: "V = \"2\"")
                let t0 = nowMs()
                let r = try await box.pml(["reload", "msg", "--graceful"], timeout: 40)
                #expect(r.ok, "\(r)")
                #expect(nowMs() - t0 < 4000 * 2, "the old workers left on the message, not after the 4 s timeout")
                let v2 = Row.pids(try await box.waitServing("msg", count: 2))
                #expect(v2.isDisjoint(with: v1), "replaced: \(v1.sorted()) → \(v2.sorted())")
                for pid in v1 {
                    let got = box.lines("\(dir)/\(pid).messages")
                    #expect(got.count == 1, "old worker \(pid) got one message: \(got)")
                    if let line = got.first,
                       let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] {
                        #expect(obj.count == 2 && obj["type"] as? String == "bye" && (obj["n"] as? Int) == 7,
                                "exactly { type = \"bye\", n = 7 }: \(line)")
                    } else {
                        Issue.record("old worker \(pid) did not record a JSON object: \(got)")
                    }
                }
                let answers = try box.answers(port: port, count: 4)
                #expect(answers.allSatisfy { $0.v == "2" }, "the new version serves: \(answers.map(\.body))")

                // Now the running version's beforeReload returns false.
                let veto = try await box.pml(["reload", "msg", "--graceful"], timeout: 20)
                veto.expectCleanFailure(mentioning: ["veto"])
                #expect(try await box.pidSet("msg") == v2, "a vetoed reload replaces nothing")
                for pid in v2 {
                    #expect(box.lines("\(dir)/\(pid).messages").isEmpty, "worker \(pid) got no message: vetoed")
                    #expect(Proc.alive(pid))
                }
                _ = try box.answers(port: port, count: 4)
                try await box.waitFor("beforeReload and both onReload calls in daemon.log", timeout: 5) {
                    let log = box.read(box.daemonLog)
                    return log.contains("HOOK beforeReload msg") && log.contains("HOOK onReload ok=true")
                        && log.contains("HOOK onReload ok=false vetoed=true") ? true : nil
                }
            }
        }

        // MARK: rollback

        @Test("a new version that throws at start is rolled back: non-zero exit, one line naming the crash, old pids keep serving")
        func rollbackOnCrash() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.nodeApp(box, name: "rb", script: ReloadFixture.server, port: port, instances: 4, extra: """
                      onReload = function(app, r) pml.log("HOOK onReload ok=" .. tostring(r.ok) .. " error=" .. tostring(r.error)) end,
                    """)
                try await box.pmlOK("start", file)
                let old = Row.pids(try await box.waitServing("rb", count: 4))
                let broken = try box.write("broken.js", ReloadFixture.crashAtStart)
                try box.edit(file, replacing: "rb.js", with: (broken as NSString).lastPathComponent)

                let r = try await box.pml(["reload", "rb", "--graceful"], timeout: 40)
                r.expectCleanFailure(mentioning: ["rolled back", "crashed", "code 1", "old workers keep serving"])

                let rows = try await box.waitServing("rb", count: 4, timeout: 5)
                #expect(Row.pids(rows) == old, "the old workers are the ones in ls: \(rows)")
                #expect(rows.allSatisfy { $0.status == "online" }, "\(rows)")
                let answers = try box.answers(port: port, count: 12)
                #expect(Set(answers.compactMap(\.pid)) == old, "the old pids serve: \(answers.map(\.body))")
                #expect(Proc.pids(withCommandLine: "broken.js").isEmpty, "the broken replacement is gone")
                let (desc, _) = try await box.describe("rb")
                #expect(desc.spec.argv.contains { $0.hasSuffix("rb.js") }, "the spec is the old one: \(desc.spec.argv)")
                try await box.waitFor("onReload ok=false with the error", timeout: 5) {
                    box.read(box.daemonLog).contains("HOOK onReload ok=false error=") ? true : nil
                }

                // Fixed: the next reload goes through.
                try box.edit(file, replacing: (broken as NSString).lastPathComponent, with: "rb.js")
                let fixed = try await box.pml(["reload", "rb"], timeout: 40)
                #expect(fixed.ok, "\(fixed)")
                #expect(try await box.pidSet("rb").isDisjoint(with: old))
            }
        }

        @Test("a replacement never ready (ready = \"message\") is rolled back after ready_timeout under load: no failed request, it served nothing")
        func rollbackOnReadyTimeout() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let starts = box.work + "/starts"
                let file = try Self.nodeApp(box, name: "rt", script: ReloadFixture.server, port: port, instances: 2,
                                            env: ["FX_READY_DELAY": lua("200"), "FX_STARTS": lua(starts)],
                                            extra: "  ready = \"message\",\n  ready_timeout = 1500,")
                try await box.pmlOK("start", file)
                let old = Row.pids(try await box.waitServing("rt", count: 2))
                // The next version listens but never says ready.
                try box.edit(file, replacing: "FX_READY_DELAY = \"200\"", with: "FX_READY_DELAY = \"0\"")

                let load = LoadGenerator(.local(port), pauseMs: 3)
                load.start(fast: 2, slow: 2)
                await sleepMs(300)
                let r = try await box.pml(["reload", "rt", "--graceful"], timeout: 30)
                await sleepMs(300)
                let samples = await load.stop()
                r.expectCleanFailure(mentioning: ["rolled back", "ready_timeout", "1500 ms", "old workers keep serving"])
                let candidates = Set(box.lines(starts).compactMap { Int32($0.split(separator: " ").first ?? "") }).subtracting(old)
                #expect(candidates.count == 1, "one replacement was started: \(candidates)")
                let servedByCandidate = samples.filter { $0.pid.map(candidates.contains) == true }
                // A Node worker with ready = "message" joins the rotation only once it says ready.
                #expect(samples.failed.count == 0, "no request fails during the rollback:\n\(samples.summary())")
                #expect(servedByCandidate.count == 0,
                        "a replacement that never said ready must not get connections (\(servedByCandidate.count) of \(samples.count) did)")
                #expect(try await box.pidSet("rt") == old, "the old workers remain")
                for pid in candidates { #expect(!Proc.alive(pid), "the replacement \(pid) is gone") }
            }
        }

        // MARK: the app file is read again

        @Test("reload after editing env: new workers answer the new V, output says env.V, onReload gets the changes; a listen change is refused")
        func envChange() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.nodeApp(box, name: "envy", script: ReloadFixture.server, port: port, instances: 2,
                                            env: ["V": lua("one")], extra: """
                      onReload = function(app, r)
                        pml.log("HOOK onReload ok=" .. tostring(r.ok) .. " replaced=" .. tostring(r.replaced)
                          .. " changes=" .. table.concat(r.changes or {}, ",") .. " duration_is_number=" .. tostring(type(r.duration) == "number"))
                      end,
                    """)
                try await box.pmlOK("start", file)
                let old = Row.pids(try await box.waitServing("envy", count: 2))
                #expect(try box.answers(port: port, count: 4).allSatisfy { $0.v == "one" })

                try box.edit(file, replacing: "V = \"one\"", with: "V = \"two\"")
                let r = try await box.pml(["reload", "envy", "--graceful"], timeout: 40)
                #expect(r.ok, "\(r)")
                #expect(r.stdout.contains("env.V"), "the output lists what changed:\n\(r)")
                let now = Row.pids(try await box.waitServing("envy", count: 2))
                #expect(now.isDisjoint(with: old))
                let answers = try box.answers(port: port, count: 6)
                #expect(answers.allSatisfy { $0.v == "two" && $0.pid.map(now.contains) == true },
                        "every answer comes from a new worker with V=two: \(answers.map(\.body))")
                let (desc, _) = try await box.describe("envy")
                #expect(desc.spec.env["V"] == "two", "describe shows the new env: \(desc.spec.env)")
                try await box.waitFor("onReload with ok, replaced and changes", timeout: 5) {
                    box.read(box.daemonLog).contains("HOOK onReload ok=true replaced=2 changes=env.V duration_is_number=true") ? true : nil
                }

                // Another port is not something a reload can do.
                let other = try Net.freePort()
                try box.edit(file, replacing: "listen = \(port),", with: "listen = \(other),")
                let refused = try await box.pml(["reload", "envy"], timeout: 20)
                refused.expectCleanFailure(mentioning: ["listen", "restart"])
                #expect(try await box.pidSet("envy") == now, "nothing replaced")
                #expect(try box.answers(port: port, count: 2).allSatisfy { $0.v == "two" })
            }
        }

        // MARK: fork mode

        @Test("fork mode (a Python worker, no listen): reload replaces both pids and the old ones are gone")
        func forkModeReload() async throws {
            try await withSandbox { box in
                let pidsFile = box.work + "/fork.pids"
                let worker = try box.write("fork.py", ReloadFixture.forkWorker)
                let file = try box.write("fork.lua", """
                    return {
                      name = "bg",
                      cmd = { "python3", \(lua(worker)) },
                      instances = 2,
                      min_uptime = 400,
                      env = { FX_PIDS = \(lua(pidsFile)) },
                    }
                    """)
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("bg", count: 2)
                let old = Row.pids(rows)

                let r = try await box.pml(["reload", "bg"], timeout: 40)
                #expect(r.ok, "\(r)")
                #expect(r.stdout.contains("reloaded bg: 2 workers"), "\(r)")
                let now = Row.pids(try await box.waitOnline("bg", count: 2))
                #expect(now.count == 2 && now.isDisjoint(with: old), "\(old.sorted()) → \(now.sorted())")
                for pid in old { #expect(!Proc.alive(pid), "old fork worker \(pid) is gone") }
                // A worker writes its pid once Python is up, which on a loaded machine can be after
                // pml counted it started: wait for all four, then check there is no fifth.
                let expected = old.union(now)
                let started = try await box.waitFor("the four workers' pids written", timeout: 10) { () -> Set<Int32>? in
                    let written = Set(box.numbers(pidsFile).map(Int32.init))
                    return written.isSuperset(of: expected) ? written : nil
                }
                #expect(started == expected, "exactly 4 processes were ever started: \(started.sorted())")

                // `all` reloads it too.
                let all = try await box.pml(["reload", "all"], timeout: 40)
                #expect(all.ok, "\(all)")
                #expect(try await box.waitOnline("bg", count: 2).allSatisfy { !now.contains($0.pid ?? -1) })
            }
        }

        // MARK: --parallel, and what is refused

        @Test("--parallel 2 replaces 4 workers two at a time; reload while starting, and a second concurrent reload, are refused")
        func parallelAndConcurrent() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let starts = box.work + "/starts"
                let file = try Self.nodeApp(box, name: "par", script: ReloadFixture.server, port: port, instances: 4,
                                            env: ["FX_READY_DELAY": lua("1500"), "FX_STARTS": lua(starts)],
                                            extra: "  ready = \"message\",\n  ready_timeout = 10000,")
                try await box.pmlOK("start", file)
                // Workers take 1.5 s to say ready: a reload now is refused.
                try await box.waitFor("a worker of par is starting", timeout: 5) {
                    try await box.rows("par").contains { $0.status == "starting" } ? true : nil
                }
                let early = try await box.pml(["reload", "par"], timeout: 20)
                early.expectCleanFailure(mentioning: ["starting"])

                let old = Row.pids(try await box.waitServing("par", count: 4))
                _ = try box.answers(port: port, count: 4)

                let t0 = nowMs()
                let bg = try ChildProcess(box, box.binary, ["reload", "par", "--graceful", "--parallel", "2"])
                // Watch the table while it runs; ask for a second reload once replacements are starting.
                var maxStarting = 0
                var maxActive = 0
                var second: RunResult?
                while bg.isRunning && nowMs() - t0 < 30_000 {
                    let rows = try await box.rows("par")
                    let starting = rows.filter { $0.status == "starting" }.count
                    maxStarting = max(maxStarting, starting)
                    // Old workers out of rotation stay listed as `stopping` until they exit, later
                    // on a loaded machine: only those serving or starting count.
                    maxActive = max(maxActive, rows.filter { $0.status != "stopping" }.count)
                    if second == nil && starting > 0 {
                        second = try await box.pml(["reload", "par"], timeout: 20)
                    }
                    await sleepMs(100)
                }
                let first = await bg.finish()
                let took = nowMs() - t0
                #expect(first.ok, "\(first)")
                #expect(first.stdout.contains("reloaded par: 4 workers"), "\(first)")
                let refused = try #require(second, "the second reload was attempted while the first ran")
                refused.expectCleanFailure(mentioning: ["already running"])

                #expect(maxStarting == 2, "two replacements start at a time (saw at most \(maxStarting) starting)")
                #expect(maxActive <= 6, "never more than 4 + 2 workers serving or starting (saw \(maxActive))")
                // One at a time would need 4 × 1.5 s of readiness alone.
                #expect(took < 6000, "two batches, not four: \(Int(took)) ms")
                let now = Row.pids(try await box.waitServing("par", count: 4))
                #expect(now.isDisjoint(with: old), "\(old.sorted()) → \(now.sorted())")

                // The replacements' listen times (ms since epoch): two batches ≥ ~1.5 s apart.
                let stamps = box.lines(starts).compactMap { line -> (Int32, Int)? in
                    let p = line.split(separator: " ")
                    guard p.count == 2, let pid = Int32(p[0]), let ms = Int(p[1]) else { return nil }
                    return (pid, ms)
                }.filter { now.contains($0.0) }.map(\.1).sorted()
                #expect(stamps.count == 4, "each new worker recorded its start: \(stamps)")
                if stamps.count == 4 {
                    #expect(stamps[1] - stamps[0] < 1000 && stamps[3] - stamps[2] < 1000, "pairs start together: \(stamps)")
                    #expect(stamps[2] - stamps[1] >= 1400, "the second pair starts after the first is ready: \(stamps)")
                }
                _ = try box.answers(port: port, count: 8)
            }
        }
    }
}
