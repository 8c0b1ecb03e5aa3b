// Watch mode on inotify with real workers: an edit restarts the app once within watch_delay + 1 s,
// edits in node_modules or the app's own log file do nothing, a burst gives one restart, cluster
// apps are reloaded, and a tree too big to watch is refused at start.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Watch mode")
    struct Watch {
        /// The worker appends its pid to a file outside the watched folder: one line per start.
        static func starts(_ box: Sandbox) -> [Int] { box.numbers(box.root + "/starts.txt") }

        /// Absence can only be seen by waiting: long enough for a restart that should not come.
        static func settle(_ ms: Int) async { await sleepMs(ms) }

        @Test("an edit restarts once within watch_delay + 1 s; node_modules and the app's log do not; a burst gives one restart")
        func editsRestartOnce() async throws {
            try await withSandbox { box in
                let delay = 400
                try box.write("app/src/index.js", "1")
                try box.write("app/node_modules/dep/index.js", "1")
                let file = try box.write("app/app.lua", """
                    return { name = "w", watch = true, watch_delay = \(delay), out_file = "out.log",
                             cmd = { "sh", "-c", "echo $$ >> \(box.root)/starts.txt; echo started; exec sleep 1000" } }
                    """)
                try await box.pmlOK("start", file)
                try await box.waitOnline("w")
                try await box.waitFor("the first start") { Self.starts(box).count == 1 ? true : nil }
                try await box.waitFor("the worker's line in its out_file") { box.read("app/out.log").contains("started") ? true : nil }

                let edited = nowMs()
                try box.write("app/src/index.js", "2")
                try await box.waitFor("a restart after the edit", timeout: 5, every: 20) { Self.starts(box).count >= 2 ? true : nil }
                let took = nowMs() - edited
                #expect(took < Double(delay + 1000), "restarted \(Int(took)) ms after the edit")
                await Self.settle(delay + 700)
                #expect(Self.starts(box).count == 2, "one edit, one restart: \(Self.starts(box))")
                #expect(box.read("app/out.log").components(separatedBy: "started").count == 3, "the app's own log writes restart nothing")

                try box.write("app/node_modules/dep/index.js", "2")
                try box.write("app/node_modules/dep/new.js", "new")
                await Self.settle(delay + 700)
                #expect(Self.starts(box).count == 2, "node_modules is ignored: \(Self.starts(box))")

                for i in 0..<10 {
                    try box.write("app/src/file\(i).js", "\(i)")
                    await sleepMs(20)
                }
                try await box.waitFor("a restart after the burst", timeout: 5) { Self.starts(box).count >= 3 ? true : nil }
                await Self.settle(delay + 700)
                #expect(Self.starts(box).count == 3, "a burst of 10 edits, one restart: \(Self.starts(box))")
                let row = try #require(try await box.rows("w").first)
                #expect(row.status == "online" && row.restarts == 2, "\(row)")

                // A folder made after the start is watched too; pml stop stops reacting.
                try FileManager.default.createDirectory(atPath: box.work + "/app/src/later", withIntermediateDirectories: true)
                try await box.waitFor("a restart for the new folder", timeout: 5) { Self.starts(box).count >= 4 ? true : nil }
                try await box.waitOnline("w")
                try box.write("app/src/later/deep.js", "1")
                try await box.waitFor("a restart for a file in the new folder", timeout: 5) { Self.starts(box).count >= 5 ? true : nil }
                try await box.waitOnline("w")
                try await box.pmlOK("stop", "w")
                try box.write("app/src/index.js", "3")
                await Self.settle(delay + 700)
                #expect(try await box.rows("w").first?.status == "stopped", "a stopped app stays stopped")
            }
        }

        @Test("a cluster app is reloaded worker by worker when a file changes")
        func clusterReloads() async throws {
            try await withSandbox { box in
                try box.write("c/lib.py", "x = 1")
                let file = try box.write("c/app.lua", """
                    return { name = "cw", instances = 2, watch = { "lib.py" }, watch_delay = 200, ready = 100,
                             cmd = { "sleep", "1000" } }
                    """)
                try await box.pmlOK("start", file)
                let before = Set(try await box.waitOnline("cw", count: 2).compactMap(\.pid))
                try box.write("c/other.txt", "not watched")
                try box.write("c/lib.py", "x = 2")
                let after = try await box.waitFor("both workers replaced", timeout: 10) { () -> Set<Int32>? in
                    let rows = try await box.rows("cw")
                    let pids = Set(rows.compactMap(\.pid))
                    return rows.count == 2 && rows.allSatisfy({ $0.status == "online" }) && pids.isDisjoint(with: before) ? pids : nil
                }
                #expect(after.count == 2)
                let (_, raw) = try await box.describe("cw")
                #expect(raw["reloads"] as? Int == 1, "a reload, not a restart: \(raw["reloads"] ?? "nil")")
            }
        }

        @Test("a tree with more folders than the cap (PML_WATCH_MAX_FOLDERS) is refused in one line; ignored folders are not walked; pml start --watch")
        func hugeTreeIsRefused() async throws {
            try await withSandbox { box in
                // The cap (4096 folders by default) is lowered for the test: folders are slow to make here.
                let cap = ["PML_WATCH_MAX_FOLDERS": "50"]
                let big = box.work + "/big/data"
                try FileManager.default.createDirectory(atPath: big, withIntermediateDirectories: true)
                for i in 0...50 { mkdir(big + "/d\(i)", 0o755) }
                let file = try box.write("big/app.lua", #"return { name = "big", watch = true, cmd = { "sleep", "1000" } }"#)
                let started = nowMs()
                try await box.pml(["start", file], env: cap).expectCleanFailure(mentioning: ["big", "more than 50 folders", "ignore_watch"])
                #expect(nowMs() - started < 10_000)
                #expect(try await box.rows("big").isEmpty, "nothing started")

                let ok = try box.write("big/ok.lua", #"return { name = "ok", watch = true, ignore_watch = { "data" }, cmd = { "sleep", "1000" } }"#)
                try await box.pmlOK("start", ok)
                try await box.waitOnline("ok")

                // pml start --watch: a script watched in its folder.
                let script = try box.write("s/run.sh", "echo $$ >> \(box.root)/starts.txt\nexec sleep 1000\n", executable: true)
                try await box.pml(["start", script, "--watch"], cwd: box.work + "/s").expectOK()
                try await box.waitFor("the script's first start") { Self.starts(box).count == 1 ? true : nil }
                try box.write("s/config.json", "{}")
                try await box.waitFor("a restart after an edit beside the script", timeout: 5) { Self.starts(box).count == 2 ? true : nil }
            }
        }
    }
}

extension RunResult {
    /// Throws with the whole result unless the command succeeded.
    func expectOK() throws {
        guard ok else { throw HarnessError("expected success:\n\(self)") }
    }
}
