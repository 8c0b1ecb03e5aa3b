// The supervisor keeps workers alive, backs off between rapid crashes, obeys onCrash, and gives
// up ("errored") on a worker that always exits at once.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Supervision")
    struct Supervision {
        /// A worker script that appends `date +%s%N` (ns) to `stamps` each time it starts, then runs `tail`.
        static func stampingWorker(_ box: Sandbox, _ name: String, then tail: String) throws -> String {
            try box.write(name, """
                #!/bin/sh
                date +%s%N >> \(box.work)/\(name).stamps
                echo $$ >> \(box.work)/\(name).pids
                \(tail)
                """, executable: true)
        }

        static func stampsMs(_ box: Sandbox, _ name: String) -> [Double] {
            box.numbers("\(box.work)/\(name).stamps").map { Double($0) / 1_000_000 }
        }

        static func gaps(_ stamps: [Double]) -> [Double] {
            zip(stamps.dropFirst(), stamps).map { $0 - $1 }
        }

        @Test("examples/keepalive: kill -9 brings a new pid and counts a restart")
        func keepaliveSurvivesKill9() async throws {
            try await withSandbox { box in
                let app = PMLBinary.packageRoot.appendingPathComponent("examples/keepalive/app.lua").path
                // Started from another folder: the app file's paths are relative to its own folder.
                let start = try await box.pml(["start", app], cwd: "/")
                #expect(start.ok, "\(start)")
                #expect(start.stdout.contains("keepalive"), "start prints the process table:\n\(start)")

                let first = try await box.waitOnline("keepalive")[0]
                let oldPid = try #require(first.pid)
                #expect(first.restarts == 0)
                #expect(first.mode == "fork")

                #expect(kill(oldPid, SIGKILL) == 0)

                let second = try await box.waitFor("a new online pid for keepalive") {
                    let r = try await box.rows("keepalive").first
                    return r.flatMap { $0.status == "online" && $0.pid != nil && $0.pid != oldPid ? $0 : nil }
                }
                #expect(second.restarts >= 1, "restart counter went up: \(second)")
                #expect(second.id == first.id, "the worker keeps its id across restarts")
                #expect(Proc.alive(try #require(second.pid)))
                #expect(!Proc.alive(oldPid))

                let (d, _) = try await box.describe("keepalive")
                let w = try #require(d.workers.first)
                #expect(w.lastExit?.signal == "SIGKILL", "last_exit records the SIGKILL")
                #expect(w.lastExit?.code == nil)

                // What the worker printed is in its log (relative script path and env worked).
                let logs = try await box.waitFor("the worker's greeting in pml logs") {
                    let r = try await box.pml("logs", "keepalive", "--lines", "50", "--nostream")
                    return r.ok && r.stdout.contains("hello from pml: worker 0 of keepalive is up") ? r : nil
                }
                #expect(logs.stdout.contains("(pid \(oldPid))"))
            }
        }

        @Test("the backoff between rapid crashes grows, and restarts are counted")
        func backoffGrows() async throws {
            try await withSandbox { box in
                let worker = try Self.stampingWorker(box, "crashy.sh", then: "exit 1")
                let file = try box.write("backoff.lua", """
                    return {
                      name = "crashy",
                      cmd = { "sh", \(lua(worker)) },
                      restart_delay = 200,
                      restart_delay_max = 15000,
                      min_uptime = 1000,
                      max_restarts = 50,
                    }
                    """)
                try await box.pmlOK("start", file)
                // Delays 200, 400, 800, 1600 ms: five starts within ~3 s (plus spawn time).
                let stamps = try await box.waitFor("5 starts of crashy", timeout: 20) {
                    let s = Self.stampsMs(box, "crashy.sh")
                    return s.count >= 5 ? Array(s.prefix(5)) : nil
                }
                let g = Self.gaps(stamps)
                let shown = g.map { String(Int($0)) }.joined(separator: ", ")
                #expect(g[0] >= 150 && g[0] < 1000, "first delay ~200 ms (restart_delay); gaps ms: \(shown)")
                for i in 1..<g.count {
                    #expect(g[i] > g[i - 1] * 1.4, "gap \(i) should be about twice gap \(i - 1); gaps ms: \(shown)")
                }
                #expect(g[3] >= 1200, "fourth delay ~1600 ms; gaps ms: \(shown)")

                let row = try #require(try await box.rows("crashy").first)
                #expect(row.restarts >= 4, "restart counter counts the crashes: \(row)")
                #expect(["waiting", "starting", "online"].contains(row.status), "\(row)")
                #expect(row.status != "errored", "50 max_restarts not reached: \(row)")

                let (d, _) = try await box.describe("crashy")
                let w = try #require(d.workers.first)
                #expect(w.unstableRestarts >= 4, "unstable_restarts counts exits sooner than min_uptime")
                #expect(w.lastExit?.code == 1)
            }
        }

        @Test("a worker that always exits at once ends errored after max_restarts")
        func erroredAfterMaxRestarts() async throws {
            try await withSandbox { box in
                let worker = try Self.stampingWorker(box, "dies.sh", then: "exit 2")
                let file = try box.write("dies.lua", """
                    return {
                      name = "dies",
                      cmd = { "sh", \(lua(worker)) },
                      max_restarts = 3,
                      restart_delay = 50,
                      restart_delay_max = 200,
                      min_uptime = 2000,
                    }
                    """)
                try await box.pmlOK("start", file)
                let row = try await box.waitFor("dies to be errored") {
                    let r = try await box.rows("dies").first
                    return r?.status == "errored" ? r : nil
                }
                #expect(row.pid == nil, "an errored worker has no pid: \(row)")
                // Errored after more than max_restarts (3) unstable exits in a row: 4 starts, 3 restarts.
                let starts = Self.stampsMs(box, "dies.sh").count
                #expect(starts == 4, "expected max_restarts + 1 = 4 starts, saw \(starts)")
                #expect(row.restarts == 3, "expected 3 restarts: \(row)")

                // And it stays down.
                await sleepMs(1500)
                #expect(Self.stampsMs(box, "dies.sh").count == starts, "an errored app is not restarted")
                let again = try #require(try await box.rows("dies").first)
                #expect(again.status == "errored")
                let (d, _) = try await box.describe("dies")
                #expect(d.status == "errored")
                let w = try #require(d.workers.first)
                #expect(w.lastExit?.code == 2)
                #expect(w.reason != nil, "describe says why it is errored")

                // A user can start it again with restart.
                try await box.pmlOK("restart", "dies")
                try await box.waitFor("a fresh start after pml restart") {
                    Self.stampsMs(box, "dies.sh").count > starts ? true : nil
                }
            }
        }

        @Test("onCrash returning false leaves the app stopped")
        func onCrashFalseStops() async throws {
            try await withSandbox { box in
                let worker = try Self.stampingWorker(box, "once.sh", then: "sleep 0.3; exit 3")
                let file = try box.write("once.lua", """
                    return {
                      name = "once",
                      cmd = { "sh", \(lua(worker)) },
                      restart_delay = 100,
                      onCrash = function(worker, exit)
                        if exit.code == 3 then return false end
                      end,
                    }
                    """)
                try await box.pmlOK("start", file)
                let row = try await box.waitFor("once to be stopped after its crash") {
                    let r = try await box.rows("once").first
                    return r?.status == "stopped" && Self.stampsMs(box, "once.sh").count >= 1 ? r : nil
                }
                #expect(row.pid == nil, "\(row)")
                await sleepMs(1500)
                #expect(Self.stampsMs(box, "once.sh").count == 1, "no restart after onCrash returned false")
                let again = try #require(try await box.rows("once").first)
                #expect(again.status == "stopped", "\(again)")
                let (d, _) = try await box.describe("once")
                let w = try #require(d.workers.first)
                #expect(w.lastExit?.code == 3)
                #expect(d.spec.hooks.contains("onCrash"), "spec.hooks lists onCrash: \(d.spec.hooks)")
            }
        }

        @Test("onCrash returning a delay (a number, or { delay = ms }) is obeyed")
        func onCrashDelayObeyed() async throws {
            try await withSandbox { box in
                // Crash on the first start only, then stay up.
                func worker(_ name: String) throws -> String {
                    try Self.stampingWorker(box, name, then: """
                        if [ "$(wc -l < \(box.work)/\(name).stamps)" -le 1 ]; then exit 1; fi
                        exec sleep 1000
                        """)
                }
                let a = try worker("num.sh"), b = try worker("tbl.sh")
                let file = try box.write("delays.lua", """
                    return {
                      {
                        name = "num",
                        cmd = { "sh", \(lua(a)) },
                        restart_delay = 100,
                        onCrash = function(worker, exit) return 1500 end,
                      },
                      {
                        name = "tbl",
                        cmd = { "sh", \(lua(b)) },
                        restart_delay = 100,
                        onCrash = function(worker, exit) return { delay = 2000 } end,
                      },
                    }
                    """)
                try await box.pmlOK("start", file)
                for (name, script, delay) in [("num", "num.sh", 1500.0), ("tbl", "tbl.sh", 2000.0)] {
                    let s = try await box.waitFor("two starts of \(name)", timeout: 20) {
                        let s = Self.stampsMs(box, script)
                        return s.count >= 2 ? s : nil
                    }
                    let gap = s[1] - s[0]
                    #expect(gap >= delay - 100 && gap < delay + 1500,
                            "\(name): onCrash asked for \(Int(delay)) ms, restart came after \(Int(gap)) ms")
                    let row = try await box.waitOnline(name)[0]
                    #expect(row.restarts == 1, "\(row)")
                }
            }
        }

        @Test("autorestart = false and stop_exit_codes leave a worker stopped")
        func noAutorestartAndStopExitCodes() async throws {
            try await withSandbox { box in
                let a = try Self.stampingWorker(box, "noauto.sh", then: "sleep 0.2; exit 1")
                let b = try Self.stampingWorker(box, "code.sh", then: "sleep 0.2; exit 42")
                let c = try Self.stampingWorker(box, "othercode.sh", then: "sleep 0.2; exit 43")
                let file = try box.write("stops.lua", """
                    return {
                      { name = "noauto", cmd = { "sh", \(lua(a)) }, autorestart = false },
                      { name = "code", cmd = { "sh", \(lua(b)) }, stop_exit_codes = { 42 }, restart_delay = 100 },
                      { name = "othercode", cmd = { "sh", \(lua(c)) }, stop_exit_codes = { 42 }, restart_delay = 100 },
                    }
                    """)
                try await box.pmlOK("start", file)
                for name in ["noauto", "code"] {
                    try await box.waitFor("\(name) stopped after its exit") {
                        let r = try await box.rows(name).first
                        return r?.status == "stopped" && r?.pid == nil ? true : nil
                    }
                }
                try await box.waitFor("othercode (exit 43, not in stop_exit_codes) restarted") {
                    Self.stampsMs(box, "othercode.sh").count >= 2 ? true : nil
                }
                await sleepMs(800)
                #expect(Self.stampsMs(box, "noauto.sh").count == 1, "autorestart = false: no restart")
                #expect(Self.stampsMs(box, "code.sh").count == 1, "exit 42 is in stop_exit_codes: no restart")
            }
        }

        @Test("onCrash returning { errored = true } marks the worker errored")
        func onCrashErrored() async throws {
            try await withSandbox { box in
                let worker = try Self.stampingWorker(box, "giveup.sh", then: "exit 1")
                let file = try box.write("giveup.lua", """
                    return {
                      name = "giveup",
                      cmd = { "sh", \(lua(worker)) },
                      onCrash = function(worker, exit) return { errored = true } end,
                    }
                    """)
                try await box.pmlOK("start", file)
                let row = try await box.waitFor("giveup to be errored") {
                    let r = try await box.rows("giveup").first
                    return r?.status == "errored" ? r : nil
                }
                #expect(row.pid == nil)
                await sleepMs(800)
                #expect(Self.stampsMs(box, "giveup.sh").count == 1, "not restarted")
            }
        }

        @Test("a worker that was up long enough is restarted, and backoff steps reset after stable_after")
        func stableWorkerResetsBackoff() async throws {
            try await withSandbox { box in
                // Every start lives 700 ms, longer than stable_after (500) and min_uptime (300):
                // the gaps must stay near restart_delay instead of doubling.
                let worker = try Self.stampingWorker(box, "steady.sh", then: "sleep 0.7; exit 1")
                let file = try box.write("steady.lua", """
                    return {
                      name = "steady",
                      cmd = { "sh", \(lua(worker)) },
                      restart_delay = 300,
                      min_uptime = 300,
                      stable_after = 500,
                      max_restarts = 1,
                    }
                    """)
                try await box.pmlOK("start", file)
                let stamps = try await box.waitFor("4 starts of steady", timeout: 20) {
                    let s = Self.stampsMs(box, "steady.sh")
                    return s.count >= 4 ? Array(s.prefix(4)) : nil
                }
                let g = Self.gaps(stamps)
                let shown = g.map { String(Int($0)) }.joined(separator: ", ")
                // Each gap = 700 ms of uptime + ~300 ms delay; doubling would give 1000, 1300, 1900.
                for gap in g {
                    #expect(gap < 1500, "backoff should reset after stable_after; gaps ms: \(shown)")
                }
                let row = try #require(try await box.rows("steady").first)
                #expect(row.status != "errored", "exits after min_uptime are not unstable: \(row)")
            }
        }
    }
}
