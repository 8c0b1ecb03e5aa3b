// Autoscale (PRODUCT.md §3): an app's `autoscale = { min, max, every, cooldown, rule }` is run by
// the daemon every `every` ms with the app's metrics; the rule's answer (clamped to min..max) is
// the worker count. Real daemons, real Python workers burning real CPU or reporting a custom
// metric over their IPC channel; the test drives load through files the workers watch.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Autoscale")
    struct Autoscale {
        // MARK: fixture

        /// One Python worker for every autoscale test. Plain standard library; pml-specific only in
        /// the contract of PRODUCT.md §5 (PML_IPC_FD, NODE_HANDLE + SCM_RIGHTS, "ready", metrics).
        ///
        /// - Says "ready" at once, then loops on `select` over its IPC channel (50 ms timeout).
        /// - rr connections: ACK each NODE_HANDLE and serve "hello from <pid>" over HTTP/1.0.
        /// - FX_BURN=<file>: while the file exists, spins the CPU between `select`s (20 ms slices),
        ///   still serving; idles otherwise.
        /// - FX_QUEUE=<file>: every 200 ms sends {"type":"metric","name":"queue","value":<file>}.
        /// - SIGTERM/SIGINT or "shutdown": serves every connection already handed to it, then exits 0
        ///   (a graceful worker, as a user would write one).
        /// - FX_SERVE_MS=<n>: each response waits n ms (so a connection is often in flight).
        /// - FX_PIDS=<file>: each start appends "<instance> <pid>".
        static let worker = #"""
            import json, os, select, signal, socket, sys, time

            PID = os.getpid()
            INSTANCE = os.environ.get("PML_INSTANCE", "?")
            ipc = socket.socket(fileno=int(os.environ["PML_IPC_FD"]))
            BURN = os.environ.get("FX_BURN")
            QUEUE = os.environ.get("FX_QUEUE")
            SERVE_MS = int(os.environ.get("FX_SERVE_MS", "0"))
            stopping = False

            def on_stop(signum, frame):
                global stopping
                stopping = True

            signal.signal(signal.SIGTERM, on_stop)
            signal.signal(signal.SIGINT, on_stop)

            def send(value):
                ipc.sendall((json.dumps(value) + "\n").encode())

            \#(ClusterFixture.pythonRespond)

            if os.environ.get("FX_PIDS"):
                with open(os.environ["FX_PIDS"], "a") as f:
                    f.write("%s %d\n" % (INSTANCE, PID))
            print("autoscale worker %s up, pid %d" % (INSTANCE, PID), flush=True)
            send("ready")

            \#(ClusterFixture.pythonReceive)
            next_metric = 0.0
            while True:
                now = time.monotonic()
                if QUEUE and now >= next_metric:
                    try:
                        with open(QUEUE) as f:
                            send({"type": "metric", "name": "queue", "value": float(f.read().strip())})
                    except (OSError, ValueError):
                        pass
                    next_metric = now + 0.2
                burning = bool(BURN) and not stopping and os.path.exists(BURN)
                readable, _, _ = select.select([ipc], [], [], 0 if burning else 0.05)
                if readable:
                    for message in receive(ipc):
                        if isinstance(message, dict) and message.get("cmd") == "NODE_HANDLE":
                            if not fds:
                                send({"cmd": "NODE_HANDLE_NACK"})
                                continue
                            conn = socket.socket(fileno=fds.pop(0))
                            send({"cmd": "NODE_HANDLE_ACK"})
                            respond(conn, SERVE_MS)
                        elif message == "shutdown" or (isinstance(message, dict) and message.get("type") == "shutdown"):
                            stopping = True
                elif stopping:
                    print("worker %d: stopping, nothing left to serve" % PID, flush=True)
                    sys.exit(0)
                if burning:
                    end = time.monotonic() + 0.02
                    while time.monotonic() < end:
                        pass
            """#

        /// Writes the worker and an app file `<name>.lua`; `body` is Lua source for the keys after
        /// name/script/env. Returns (app file path, its text).
        @discardableResult
        static func app(_ box: Sandbox, name: String, env: [String: String] = [:], body: String) throws -> (String, String) {
            let worker = try box.write("asworker.py", Self.worker)
            let envLua = env.sorted { $0.key < $1.key }.map { "\($0.key) = \(lua($0.value))" }.joined(separator: ", ")
            let text = """
                return {
                  name = \(lua(name)),
                  script = \(lua(worker)),
                  env = { \(envLua) },
                  restart_delay = 100,
                  kill_timeout = 3000,
                \(body)
                }
                """
            return (try box.write("\(name).lua", text), text)
        }

        /// `onScale` that logs "SCALE <app> <from>-><to>" to daemon.log.
        static let onScaleLogger = """
              onScale = function(app, from, to) pml.log("SCALE " .. app.name .. " " .. tostring(from) .. "->" .. tostring(to)) end,
            """

        /// The "from->to" of every SCALE line of `app` in daemon.log, in order.
        static func scaleSteps(_ box: Sandbox, _ app: String) -> [String] {
            box.read(box.daemonLog).split(separator: "\n").compactMap { line in
                guard let r = line.range(of: "SCALE \(app) ") else { return nil }
                return String(line[r.upperBound...].prefix { !$0.isWhitespace })
            }
        }

        static func decision(_ raw: [String: Any]) -> String? { raw["autoscale_decision"] as? String }

        /// Waits until `app` has exactly `count` workers, all online with live pids, recording every
        /// distinct `autoscale_decision` seen on the way into `seen`.
        @discardableResult
        static func waitCount(_ box: Sandbox, _ app: String, _ count: Int, timeout: Double,
                              seen: inout [String]) async throws -> [Row] {
            var decisions = seen
            defer { seen = decisions }
            return try await box.waitFor("\(app) at exactly \(count) online worker(s); decisions so far: \(decisions.suffix(6))",
                                         timeout: timeout, every: 150) {
                if let d = try? await box.describe(app), let text = Self.decision(d.1), decisions.last != text {
                    decisions.append(text)
                }
                let rows = try await box.rows(app)
                let up = rows.filter { $0.status == "online" && $0.pid.map(Proc.alive) == true }
                return rows.count == count && up.count == count ? rows : nil
            }
        }

        // MARK: 1. CPU: min → max under load, back to min when idle, no failed request

        @Test("a CPU rule (step up=30 down=10) scales a burning rr app 1 → 3, then back to 1 when idle with 0 failed requests; onScale runs; describe explains")
        func cpuScalesUpAndDown() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let burn = box.work + "/burn"
                let (file, _) = try Self.app(box, name: "hot", env: ["FX_BURN": burn, "FX_SERVE_MS": "20"], body: """
                      instances = 1,
                      listen = \(port),
                      dispatch = "rr",
                      ready = "message",
                      autoscale = { min = 1, max = 3, every = 500, cooldown = 500,
                                    rule = pml.autoscale.step{ metric = "cpu", up = 30, down = 10 } },
                    \(Self.onScaleLogger)
                    """)
                try await box.pmlOK("start", file)
                let first = try await box.waitServing("hot", count: 1)

                // Idle: the rule asks for fewer (clamped to min 1), so the count holds at 1.
                var decisions: [String] = []
                try await box.waitFor("an autoscale decision while idle", timeout: 5) {
                    Self.decision(try await box.describe("hot").1)
                }
                let idle = try await box.rows("hot")
                #expect(idle.count == 1, "idle at min: \(idle)")

                // Burn: every worker spins a core; 1 → 2 → 3, and not beyond max.
                #expect(FileManager.default.createFile(atPath: burn, contents: Data()))
                let t0 = nowMs()
                let atMax = try await Self.waitCount(box, "hot", 3, timeout: 20, seen: &decisions)
                let upSeconds = (nowMs() - t0) / 1000
                #expect(Self.scaleSteps(box, "hot") == ["1->2", "2->3"],
                        "onScale ran once per step up: \(Self.scaleSteps(box, "hot"))\n\(box.read(box.daemonLog).suffix(1500))")
                #expect(decisions.contains { $0.contains("cpu ") && $0.contains("scaled 1 → 2") },
                        "describe explained the first step: \(decisions)")
                #expect(decisions.contains { $0.contains("scaled 2 → 3") }, "describe explained the second step: \(decisions)")
                // At max the rule still asks for 4: clamped, the count holds.
                let clamped = try await box.waitFor("a decision clamped to 3 at max", timeout: 5) {
                    let d = Self.decision(try await box.describe("hot").1) ?? ""
                    return d.contains("clamped to 3") ? d : nil
                }
                #expect(clamped.contains("rule asked for 4"), "\(clamped)")
                let stillMax = try await box.rows("hot")
                #expect(stillMax.count == 3, "not beyond max: \(stillMax)")
                let cpus = atMax.map(\.cpu)
                #expect(cpus.contains { $0 > 25 }, "ls shows burning workers: \(atMax.map { "\($0) cpu=\($0.cpu)" })")
                try await box.waitServing("hot", count: 3)

                // Idle again under a sequential client: 3 → 2 → 1 with no failed request.
                let client = LoadGenerator(.local(port), pauseMs: 5)
                client.start()
                await sleepMs(300)
                try FileManager.default.removeItem(atPath: burn)
                let t1 = nowMs()
                let atMin: [Row]
                do {
                    atMin = try await Self.waitCount(box, "hot", 1, timeout: 20, seen: &decisions)
                } catch {
                    await client.stop()
                    throw error
                }
                let downSeconds = (nowMs() - t1) / 1000
                await sleepMs(500)
                let samples = await client.stop()
                #expect(samples.failed.isEmpty, "no connection fails during the scale-down: \(samples.summary())")
                #expect(samples.count >= 20, "the client kept going through the scale-down: \(samples.summary())")
                let retired = Set(atMax.compactMap(\.pid)).subtracting(atMin.compactMap(\.pid))
                #expect(retired.count == 2, "two of the three workers were retired: max \(atMax), min \(atMin)")
                #expect(!Set(samples.responders).isDisjoint(with: retired),
                        "the client was served by the workers being retired (load during the scale-down): \(samples.summary())")
                if let last = samples.last?.pid { #expect(atMin.first?.pid == last, "the survivor serves at the end") }
                #expect(atMin.first?.pid == first.first?.pid, "the newest workers are retired, the first one stays: \(first) → \(atMin)")
                for pid in retired { #expect(!Proc.alive(pid), "retired worker \(pid) exited") }

                #expect(Self.scaleSteps(box, "hot") == ["1->2", "2->3", "3->2", "2->1"],
                        "onScale ran for every change: \(Self.scaleSteps(box, "hot"))")
                #expect(decisions.contains { $0.contains("scaled 3 → 2") } && decisions.contains { $0.contains("scaled 2 → 1") },
                        "describe explained the steps down: \(decisions)")
                print("autoscale cpu: up 1→3 in \(String(format: "%.1f", upSeconds)) s, down 3→1 in \(String(format: "%.1f", downSeconds)) s; \(samples.summary())")
            }
        }

        // MARK: 2. a custom metric over IPC

        @Test("a custom-metric rule (target queue=10, min 1 max 4): queue 35 → 1 → 4 (clamped); queue 5 → 4 → 2 → 1")
        func customMetricTarget() async throws {
            try await withSandbox { box in
                let queue = box.work + "/queue"
                try "35\n".write(toFile: queue, atomically: true, encoding: .utf8)
                let (file, _) = try Self.app(box, name: "jobs", env: ["FX_QUEUE": queue], body: """
                      instances = 1,
                      ready = "message",
                      autoscale = { min = 1, max = 4, every = 500, cooldown = 500,
                                    rule = pml.autoscale.target{ metric = "queue", value = 10 } },
                    \(Self.onScaleLogger)
                    """)
                try await box.pmlOK("start", file)
                var decisions: [String] = []
                // ceil(1 × 35 / 10) = 4: one step straight to 4.
                try await Self.waitCount(box, "jobs", 4, timeout: 15, seen: &decisions)
                #expect(Self.scaleSteps(box, "jobs") == ["1->4"], "one proportional step: \(Self.scaleSteps(box, "jobs"))")
                #expect(decisions.contains { $0.contains("rule asked for 4") && $0.contains("scaled 1 → 4") }, "\(decisions)")
                // With 4 workers each reporting 35: ceil(4 × 35 / 10) = 14, clamped to 4.
                let held = try await box.waitFor("a decision clamped to 4", timeout: 5) {
                    let d = Self.decision(try await box.describe("jobs").1) ?? ""
                    return d.contains("rule asked for 14, clamped to 4") ? d : nil
                }
                let heldRows = try await box.rows("jobs")
                #expect(heldRows.count == 4, "held at max: \(held) \(heldRows)")

                // Queue 5: ceil(4 × 5 / 10) = 2, then ceil(2 × 5 / 10) = 1.
                try "5\n".write(toFile: queue, atomically: true, encoding: .utf8)
                try await Self.waitCount(box, "jobs", 1, timeout: 15, seen: &decisions)
                #expect(Self.scaleSteps(box, "jobs") == ["1->4", "4->2", "2->1"],
                        "target tracking scales down in proportion: \(Self.scaleSteps(box, "jobs"))\n\(decisions)")
                #expect(decisions.contains { $0.contains("rule asked for 2; scaled 4 → 2") }, "\(decisions)")
                await sleepMs(1200)
                let settled = try await box.rows("jobs")
                #expect(settled.count == 1, "stays at 1: \(settled)")
                let last = Self.decision(try await box.describe("jobs").1) ?? ""
                #expect(last.contains("rule asked for 1; already 1"), "\(last)")
            }
        }

        // MARK: 3. broken rules keep the count

        @Test("a rule that returns a string or raises keeps the count; the error is logged with file:line; the app stays supervised")
        func brokenRulesKeepCount() async throws {
            try await withSandbox { box in
                let (strFile, _) = try Self.app(box, name: "words", body: """
                      instances = 2,
                      autoscale = { min = 1, max = 4, every = 300, rule = function(m) return "lots" end },
                    \(Self.onScaleLogger)
                    """)
                let (errFile, errText) = try Self.app(box, name: "boom", body: """
                      instances = 2,
                      autoscale = { min = 1, max = 4, every = 300,
                        rule = function(m)
                          error("rule exploded with " .. m.instances .. " workers")
                        end },
                    \(Self.onScaleLogger)
                    """)
                let errLine = lineNumber(of: "rule exploded", in: errText)
                try await box.pmlOK("start", strFile)
                try await box.pmlOK("start", errFile)
                let words0 = try await box.waitOnline("words", count: 2)
                let boom0 = try await box.waitOnline("boom", count: 2)

                // Several ticks go by.
                try await box.waitFor("boom.lua:\(errLine) logged in daemon.log at least 3 times", timeout: 10) {
                    box.read(box.daemonLog).components(separatedBy: "boom.lua:\(errLine)").count - 1 >= 3 ? true : nil
                }
                let log = box.read(box.daemonLog)
                #expect(log.contains("rule exploded with 2 workers"), "the error message, with m.instances = 2:\n\(log.suffix(1500))")
                let wordsDecision = try await box.waitFor("a decision for words", timeout: 5) {
                    Self.decision(try await box.describe("words").1)
                }
                #expect(wordsDecision.contains("not a number") && wordsDecision.contains("lots"),
                        "describe says why the count was kept: \(wordsDecision)")
                let errLog = box.read(box.logsDir + "/boom-err.log")
                #expect(errLog.contains("[pml]") && errLog.contains("boom.lua:\(errLine)"), "the app's err log has the error:\n\(errLog)")

                // Count and workers unchanged; no scale happened.
                let words1 = try await box.rows("words"), boom1 = try await box.rows("boom")
                #expect(words1.map(\.pid) == words0.map(\.pid), "words keeps its 2 workers: \(words0) → \(words1)")
                #expect(boom1.map(\.pid) == boom0.map(\.pid), "boom keeps its 2 workers: \(boom0) → \(boom1)")
                #expect(Self.scaleSteps(box, "words").isEmpty && Self.scaleSteps(box, "boom").isEmpty,
                        "no onScale: \(Self.scaleSteps(box, "words")) \(Self.scaleSteps(box, "boom"))")

                // Still supervised: a killed worker comes back, and the count is still 2.
                let victim = try #require(boom0.last?.pid)
                kill(victim, SIGKILL)
                let back = try await box.waitFor("boom's killed worker restarted", timeout: 10) {
                    let rows = try await box.rows("boom")
                    return rows.count == 2 && rows.allSatisfy { $0.status == "online" && $0.pid != victim && $0.pid.map(Proc.alive) == true }
                        && rows.contains { $0.restarts >= 1 } ? rows : nil
                }
                #expect(back.count == 2)
                let pinged = await box.pingOK()
                #expect(pinged, "the daemon answers")
            }
        }

        // MARK: 3b. a huge answer is clamped, not fatal

        /// A finite answer beyond Int's range (1e300) must be clamped, not trap the daemon.
        @Test("a rule returning a huge finite number (1e300) is clamped to max and the daemon survives")
        func hugeAnswerIsClamped() async throws {
            try await withSandbox { box in
                let (file, _) = try Self.app(box, name: "huge", body: """
                      instances = 1,
                      autoscale = { min = 1, max = 3, every = 300, rule = function(m) return 1e300 end },
                    """)
                try await box.pmlOK("start", file)
                try await box.waitOnline("huge", count: 1)
                let daemon = try #require(box.daemonPid)
                do {
                    let deadline = nowMs() + 6000
                    while true {
                        guard Proc.alive(daemon) else {
                            throw HarnessError("the daemon (pid \(daemon)) died:\n\(box.read(box.daemonLog).suffix(600))")
                        }
                        let rows: [Row], d: String
                        do {
                            rows = try await box.rows("huge")
                            d = Self.decision(try await box.describe("huge").1) ?? ""
                        } catch {
                            await sleepMs(200)
                            if !Proc.alive(daemon) {
                                throw HarnessError("the daemon (pid \(daemon)) died:\n\(box.read(box.daemonLog).suffix(600))")
                            }
                            throw error
                        }
                        if rows.count == 3 && rows.allSatisfy({ $0.status == "online" }) && d.contains("clamped to 3") { break }
                        guard nowMs() < deadline else { throw HarnessError("huge never reached 3: \(rows) \(d)") }
                        await sleepMs(150)
                    }
                }
            }
        }

        // MARK: 4. min/max hold even when the rule says nothing

        @Test("min and max are enforced when the rule returns nil: instances 1 with min 2 → 2; instances 5 with max 3 → 3")
        func boundsWithNilRule() async throws {
            try await withSandbox { box in
                let (low, _) = try Self.app(box, name: "low", body: """
                      instances = 1,
                      autoscale = { min = 2, max = 3, every = 300, rule = function() return nil end },
                    \(Self.onScaleLogger)
                    """)
                let (high, _) = try Self.app(box, name: "high", body: """
                      instances = 5,
                      autoscale = { min = 1, max = 3, every = 300, rule = function() return nil end },
                    \(Self.onScaleLogger)
                    """)
                try await box.pmlOK("start", low)
                try await box.pmlOK("start", high)
                var seenLow: [String] = [], seenHigh: [String] = []
                try await Self.waitCount(box, "low", 2, timeout: 10, seen: &seenLow)
                try await Self.waitCount(box, "high", 3, timeout: 10, seen: &seenHigh)
                // Then it holds: nil keeps a count inside min..max.
                await sleepMs(1000)
                let lowRows = try await box.rows("low"), highRows = try await box.rows("high")
                #expect(lowRows.count == 2, "\(lowRows)")
                #expect(highRows.count == 3, "\(highRows)")
                let lowNow = Self.decision(try await box.describe("low").1) ?? ""
                #expect(lowNow.contains("rule returned nothing"), "\(lowNow)")
                #expect(Self.scaleSteps(box, "low").allSatisfy { $0 == "1->2" }, "\(Self.scaleSteps(box, "low"))")
                #expect(Self.scaleSteps(box, "high").allSatisfy { $0 == "5->3" }, "\(Self.scaleSteps(box, "high"))")
                print("autoscale bounds: low \(seenLow), high \(seenHigh)")
            }
        }
    }
}
