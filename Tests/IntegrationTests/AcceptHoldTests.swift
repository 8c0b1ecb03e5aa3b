// The accept hold (PML_ACCEPT_HOLD_US) is per listener: under sustained load only the busy
// listener leaves the daemon's loop between accept turns, and only if every worker serving it is on
// the native handoff channel. Real daemons with the longest hold (10000 µs), real Node workers on
// the preload's handoff channel and real Python NODE_HANDLE workers; what is asserted is what a
// user sees (answers, `pml ls`, `accept_holds` in `pml describe --json`), never a tight timing.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Accept hold")
    struct AcceptHold {
        /// The longest hold there is: any effect of holding on another listener would be largest.
        static let daemonEnv = ["PML_ACCEPT_HOLD_US": "10000"]

        /// `accept_holds` of `app` in describe --json.
        static func holds(_ box: Sandbox, _ app: String) async throws -> Int {
            let (_, raw) = try await box.describe(app)
            return raw["accept_holds"] as? Int ?? -1
        }

        /// Keeps `load` running until `app`'s listener has been held at least `count` times (a
        /// busy machine may take a while to make the load sustained), for at most 60 s.
        static func waitHeld(_ box: Sandbox, _ app: String, count: Int = 20) async throws -> Int {
            try await box.waitFor("\(app)'s listener held \(count) times under load", timeout: 60, every: 250) {
                let n = try await holds(box, app)
                return n >= count ? n : nil
            }
        }

        /// A Node app on the preload's handoff channel (credits 16), 2 workers, serving.
        static func creditsApp(_ box: Sandbox, name: String, port: Int) async throws -> String {
            let file = try Reload.nodeApp(box, name: name, script: ReloadFixture.server, port: port, instances: 2)
            try await box.pmlOK("start", file)
            try await box.waitServing(name, count: 2)
            try await Handoff.waitMode(box, name, count: 2, "credits 16, 1 fd/message")
            return file
        }

        /// A daemon with the longest hold and app `a` (handoff channel) under 8 clients back to back
        /// (a hold goes on only while it gathers five connections or more),
        /// once its listener has been held: the load, its port, and how often it was held by then.
        static func heldApp(_ box: Sandbox) async throws -> (load: LoadGenerator, port: Int, holds: Int) {
            try box.startDaemon(env: daemonEnv)
            let port = try Net.freePort()
            _ = try await creditsApp(box, name: "a", port: port)
            let load = LoadGenerator(.local(port), pauseMs: 0, timeout: 10)
            load.start(fast: 8)
            return (load, port, try await waitHeld(box, "a"))
        }

        @Test("a held listener never stops another app's listener or the control socket: with the 10000 µs hold on app A under load, app B answers 300 of 300 requests and pml ls answers every time, and B is never held")
        func holdIsPerListener() async throws {
            try await withSandbox { box in
                let (load, _, heldBefore) = try await Self.heldApp(box)
                let portB = try Net.freePort()
                _ = try await Self.creditsApp(box, name: "b", port: portB)
                // B: one request at a time with a pause, so B itself is never busy enough to hold.
                var bAnswers: [Result<HTTPReply, RequestFailure>] = []
                var slowestB = 0.0, slowestLs = 0.0
                for i in 0..<300 {
                    let t0 = nowMs()
                    bAnswers.append(HTTP.get(.local(portB), timeout: 10))
                    slowestB = max(slowestB, nowMs() - t0)
                    if i % 30 == 0 {
                        let t1 = nowMs()
                        let ls = try await box.pml(["ls", "--json"], timeout: 10)
                        slowestLs = max(slowestLs, nowMs() - t1)
                        #expect(ls.ok, "\(ls)")
                    }
                    await sleepMs(3)
                }
                let heldAfter = try await Self.holds(box, "a")
                let samples = await load.stop()
                let failed = failuresOf(bAnswers)
                #expect(failed.isEmpty, "B: \(failed.count) of 300 failed: \(failed.prefix(3))")
                #expect(slowestB < 2000, "B's slowest request took \(Int(slowestB)) ms")
                #expect(slowestLs < 5000, "the slowest pml ls took \(Int(slowestLs)) ms")
                #expect(heldAfter > heldBefore, "A went on being held while B was served: \(heldBefore) → \(heldAfter)")
                #expect(try await Self.holds(box, "b") == 0, "B was never held")
                #expect(samples.failed.isEmpty, "A under the hold: \(samples.summary())")
            }
        }

        @Test("a listener served by NODE_HANDLE workers is never held, under a load that holds a handoff-channel app's listener in the same daemon")
        func nodeHandleIsNeverHeld() async throws {
            try await withSandbox { box in
                let (loadA, _, _) = try await Self.heldApp(box)
                let portP = try Net.freePort()
                // Four Python workers for two clients: a worker is nearly always free, so its accept
                // turns are busy, not starved (a starved turn never holds whoever serves it).
                let file = try Cluster.rrApp(box, name: "py", listen: "\(portP)", instances: 4)
                try await box.pmlOK("start", file)
                try await box.waitOnline("py", count: 4)
                try await Handoff.waitMode(box, "py", count: 4, "NODE_HANDLE")
                let loadP = LoadGenerator(.local(portP), pauseMs: 0, timeout: 10)
                loadP.start(fast: 2)
                // While a's listener goes on being held (that load is sustained enough to hold).
                let heldA = try await Self.holds(box, "a")
                _ = try await Self.waitHeld(box, "a", count: heldA + 50)
                _ = try await box.waitFor("200 requests to py") { loadP.samples.count >= 200 ? true : nil }
                let held = try await Self.holds(box, "py")
                let a = await loadA.stop(), p = await loadP.stop()
                #expect(held == 0, "the NODE_HANDLE app's listener was held \(held) times")
                #expect(p.failed.isEmpty && p.count > 100, "the NODE_HANDLE app under load: \(p.summary())")
                #expect(a.failed.isEmpty, "the handoff app: \(a.summary())")
            }
        }

        @Test("nothing is lost with the hold on: 8 clients back to back and a graceful reload, every request answered, and 100 one at a time after the load")
        func nothingLostUnderHold() async throws {
            try await withSandbox { box in
                let (load, port, _) = try await Self.heldApp(box)
                let first = Row.pids(try await box.rows("a"))
                _ = try await box.gracefulReloads("a", count: 2, replacing: first, rounds: 1, pauseMs: 300)
                try await Handoff.waitMode(box, "a", count: 2, "credits 16, 1 fd/message")
                // Held again with the new workers.
                _ = try await Self.waitHeld(box, "a", count: try await Self.holds(box, "a") + 20)
                let samples = await load.stop()
                #expect(samples.failed.isEmpty, "no request failed: \(samples.summary())")
                #expect(samples.count > 200, "the load ran: \(samples.summary())")
                // Once the load is gone the listener is back in the loop and the workers' credits
                // come back: one request at a time, far more than the workers' windows, all answered.
                let after = HTTP.sequential(.local(port), 100, timeout: 10)
                #expect(failuresOf(after).isEmpty, "after the load: \(failuresOf(after).prefix(3))")
            }
        }
    }
}
