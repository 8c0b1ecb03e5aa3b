// A Lua state stuck in a C call is replaced by a fresh one, and a deleted app's state is retired
// (issue 9): what belonged to the old state never acts in the new one, and nothing is left behind.

import Foundation
import Testing

/// One C call the count hook cannot interrupt: cubic backtracking on 2000 characters (seconds).
let stuckInC = #"string.find(string.rep("a", 2000), "^a*a*a*b")"#
/// The same for about 4 s of CPU: past the 3 s after which a state is replaced, yet over soon
/// enough for a test that waits for the stuck thread to end.
let shortStuckInC = #"string.find(string.rep("a", 1750), "^a*a*a*b")"#

extension Sandbox {
    /// Starts the daemon; its pid and how many threads it has with no script state yet.
    func daemonThreadsAtStart() async throws -> (pid: Int32, threads: Int) {
        try await pmlOK("ls")
        let pid = try #require(daemonPid)
        return (pid, threads(of: pid))
    }

    func threads(of pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task").count) ?? -1
    }
}

extension Integration {
    @Suite("Lua states replaced or retired")
    struct ScriptStates {
        @Test("a reload straddling a state replacement: the old state's table is refused in the fresh one, whose hooks keep working")
        func reloadAcrossReplacement() async throws {
            try await withSandbox { box in
                // Each worker is ready (by message) once the gate file exists: the test holds the
                // reload's new worker back until the stuck state has been replaced, however long
                // that takes on a busy machine (3 s of the script thread's CPU).
                let gate = box.work + "/gate"
                let worker = try box.write("gated.sh", """
                    while [ ! -e \(gate) ]; do sleep 0.05; done
                    printf '"ready"\\n' >&$PML_IPC_FD
                    exec sleep 1000
                    """)
                let text = """
                    return {
                      name = "rs", cmd = { "sh", \(lua(worker)) }, instances = 1, ready = "message", ready_timeout = 60000,
                      beforeReload = function() \(stuckInC) end,
                      onReload = function(app, r) pml.log("RS-ONRELOAD " .. tostring(r.ok)) end,
                      onScale = function(app, from, to) pml.log("RS-SCALE " .. from .. "->" .. to) end,
                    }
                    """
                let file = try box.write("rs.lua", text)
                #expect(FileManager.default.createFile(atPath: gate, contents: Data()))
                try await box.pmlOK("start", file)
                _ = try await box.waitOnline("rs")
                try FileManager.default.removeItem(atPath: gate)
                // The reload reads the file in the state that then gets stuck in beforeReload: the
                // table it returned is that state's. The reload goes on after the decision deadline,
                // the state is replaced meanwhile, and the reload ends only after that.
                let reload = try ChildProcess(box, box.binary, ["reload", "rs"])
                try await box.waitForDaemonLine("stuck inside a C call", timeout: 40)
                // Once the fresh state has bound the apps' own tables, the reload may end.
                try await box.waitForDaemonLine("rs: hooks bound again from", timeout: 20)
                #expect(FileManager.default.createFile(atPath: gate, contents: Data()))
                let r = await reload.finish(timeout: 30)
                #expect(r.ok && r.stdout.contains("reloaded rs"), "\(r)")
                // onReload and onScale come from the fresh state's own table, still bound.
                try await box.waitForDaemonLine("RS-ONRELOAD true")
                try await box.pmlOK("scale", "rs", "2")
                try await box.waitForDaemonLine("RS-SCALE 1->2")
                try await box.waitForDaemonLine("rs: hooks from a Lua state pml left were not bound in its fresh state")
                let (_, raw) = try await box.describe("rs")
                let scripts = raw["scripts"] as? String ?? ""
                #expect(scripts.contains("restarted 1 time") && scripts.contains("beforeReload of rs"), "describe: \(scripts)")
            }
        }

        @Test("pml delete of an app whose decision hook is blocked retires its state: its thread goes, and the file starts again at once in a fresh one")
        func deleteRetiresBlockedState() async throws {
            try await withSandbox { box in
                let (daemon, baseline) = try await box.daemonThreadsAtStart()
                func scripts(_ app: String) async throws -> String { try await box.describe(app).1["scripts"] as? String ?? "" }
                func crashing(_ name: String, onCrash: String) -> String {
                    "return { name = \(lua(name)), cmd = { \"sh\", \"-c\", \"sleep 0.3; exit 1\" }, onCrash = function() \(onCrash) end }"
                }
                func deleteWhileDeciding(_ app: String) async throws {
                    try await box.waitFor("\(app)'s onCrash running", timeout: 10) {
                        try await scripts(app).contains("running onCrash of \(app)") ? true : nil
                    }
                    try await box.pmlOK("delete", app)
                }

                // onCrash looping until its 2 s budget (each turn a C call, so the time cap stops it,
                // not the instruction count): deleted meanwhile, its state goes with it (its thread
                // ends once the budget stops the loop) instead of being kept for good.
                let loop = "while true do local _ = string.rep('x', 10000) end"
                try await box.pmlOK("start", try box.write("busy.lua", crashing("busy", onCrash: loop)))
                try await deleteWhileDeciding("busy")
                // 2 s of the script thread's CPU: far longer in wall time when scripts get little of it.
                try await box.waitFor("the daemon back to \(baseline) threads", timeout: 90) {
                    box.threads(of: daemon) == baseline ? true : nil
                }

                // onCrash stuck in one C call: deleted meanwhile, the same file starts again at once
                // in a fresh state, not behind the stuck one.
                let file = try box.write("gone.lua", crashing("gone", onCrash: stuckInC))
                try await box.pmlOK("start", file)
                try await deleteWhileDeciding("gone")
                try box.write("gone.lua", """
                    return { name = "gone", cmd = { "sleep", "1000" }, onStart = function() pml.log("GONE-AGAIN") end }
                    """)
                let t0 = nowMs()
                let again = try await box.pml(["start", file], timeout: 20)
                #expect(again.ok, "\(again)")
                #expect(nowMs() - t0 < 2000, "the start did not wait for the stuck state: \(nowMs() - t0) ms")
                try await box.waitForDaemonLine("GONE-AGAIN")
                #expect(box.daemonPid == daemon, "the same daemon")
            }
        }

        @Test("a timer of a state that gets replaced: the old state's never fires again, the fresh state's alone ticks; describe says when")
        func timerAcrossReplacement() async throws {
            try await withSandbox { box in
                let (daemon, baseline) = try await box.daemonThreadsAtStart()
                func threads() -> Int { box.threads(of: daemon) }
                // Each evaluation's timer logs its own mark (a table address: distinct while both states live).
                let file = try box.write("tk.lua", """
                    local mark = tostring({})
                    pml.every(200, function() pml.log("TICK " .. mark) end)
                    return {
                      name = "tk", cmd = { "sleep", "1000" },
                      onStart = function() pml.after(1000, function() \(shortStuckInC) end) end,
                    }
                    """)
                try await box.pmlOK("start", file)
                func marks() -> [String] { box.daemonLines("TICK ").compactMap { $0.components(separatedBy: "TICK ").last } }
                let old = try await box.waitFor("the first state ticks", timeout: 10) { marks().first }
                try await box.waitForDaemonLine("stuck inside a C call", timeout: 40)
                // The old thread ends once its C call returns: only the fresh state's is left.
                try await box.waitFor("the stuck thread gone", timeout: 90) {
                    threads() == baseline + 1 ? true : nil
                }
                let seen = marks().count
                try await box.waitFor("five more ticks", timeout: 10) { marks().count >= seen + 5 ? true : nil }
                let after = Set(marks().dropFirst(seen))
                #expect(after.count == 1 && !after.contains(old), "one timer ticks, the fresh state's: \(after), old \(old)")
                let (_, raw) = try await box.describe("tk")
                let scripts = raw["scripts"] as? String ?? ""
                #expect(scripts.contains("restarted 1 time, last at ") && scripts.contains("timer 2 used ") && scripts.contains(" ms of CPU in "), "describe: \(scripts)")
                let text = try await box.pmlOK("describe", "tk").stdout
                #expect(text.contains("stuck inside a C call"), "\(text)")
                // Deleted and started again from the same file: a fresh state, and a clean history.
                try await box.pmlOK("delete", "tk")
                try await box.pmlOK("start", file)
                let again = try await box.describe("tk").1["scripts"] as? String ?? ""
                #expect(again.contains("Lua state") && !again.contains("restarted"), "describe: \(again)")
            }
        }

        @Test("top-level timers of an app file: a reload's evaluation replaces the previous one's, a refused reload's never lasts")
        func topLevelTimersAcrossReloads() async throws {
            try await withSandbox { box in
                func text(_ extra: String = "") -> String {
                    """
                    local mark = tostring({})
                    pml.every(200, function() pml.log("EV " .. mark) end)
                    return { name = "ev", cmd = { "sleep", "1000" }, min_uptime = 300\(extra) }
                    """
                }
                let file = try box.write("ev.lua", text())
                func marks() -> [String] { box.daemonLines("EV ").compactMap { $0.components(separatedBy: "EV ").last } }
                /// The marks of the ticks that come next (after two that may have been on their way).
                func nextMarks() async throws -> Set<String> {
                    let seen = marks().count
                    try await box.waitFor("six more ticks", timeout: 10) { marks().count >= seen + 6 ? true : nil }
                    return Set(marks().dropFirst(seen + 2))
                }
                try await box.pmlOK("start", file)
                var previous = try await nextMarks()
                #expect(previous.count == 1, "\(previous)")
                for round in 1...2 {
                    let r = try await box.pml(["reload", "ev"], timeout: 30)
                    #expect(r.ok, "\(r)")
                    let now = try await nextMarks()
                    #expect(now.count == 1 && now.isDisjoint(with: previous), "reload \(round): one timer, the new evaluation's: \(now), before \(previous)")
                    previous = now
                }
                // A file that no longer parses: the reload is refused, the timer its top level started ends.
                try box.write("ev.lua", text(", instanse = 2"))
                let refused = try await box.pml(["reload", "ev"], timeout: 30)
                #expect(!refused.ok && refused.stderr.contains("instanse"), "\(refused)")
                let after = try await nextMarks()
                #expect(after == previous, "the running evaluation's timer alone: \(after), before \(previous)")
            }
        }

        @Test("a top-level timer of a two-app file goes on for the app not reloaded; a reload of both leaves one timer, the new evaluation's")
        func topLevelTimerOfTwoApps() async throws {
            try await withSandbox { box in
                let file = try box.write("pair.lua", """
                    local mark, n = tostring({}):sub(8), 0
                    pml.every(150, function() n = n + 1; pml.log("PTICK " .. mark) end)
                    local function app(name)
                      return { name = name, cmd = { "sleep", "1000" }, min_uptime = 300,
                               onScale = function(a) pml.log("SEEN " .. a.name .. " " .. mark .. " " .. n) end }
                    end
                    return { app("pa"), app("pb") }
                    """)
                func ticks() -> [String] { box.daemonLines("PTICK ").compactMap { $0.components(separatedBy: "PTICK ").last } }
                /// The marks of the timers that tick next (after the ticks that may have been on their way).
                func nextMarks() async throws -> Set<String> {
                    let seen = ticks().count
                    try await box.waitFor("eight more ticks", timeout: 10) { ticks().count >= seen + 8 ? true : nil }
                    return Set(ticks().dropFirst(seen + 2))
                }
                /// What `app`'s hook sees of the top level: its evaluation's mark and tick count.
                func seen(_ app: String, scaleTo n: Int) async throws -> (mark: String, count: Int) {
                    let before = box.daemonLines("SEEN \(app) ").count
                    try await box.pmlOK("scale", app, "\(n)")
                    let line = try await box.waitFor("\(app)'s onScale", timeout: 10) {
                        let lines = box.daemonLines("SEEN \(app) ")
                        return lines.count > before ? lines.last : nil
                    }
                    let fields = line.components(separatedBy: "SEEN \(app) ").last?.split(separator: " ") ?? []
                    return (fields.first.map(String.init) ?? "", fields.count > 1 ? Int(fields[1]) ?? -1 : -1)
                }
                try await box.pmlOK("start", file)
                _ = try await box.waitOnline("pa")
                _ = try await box.waitOnline("pb")
                let first = try await nextMarks()
                #expect(first.count == 1, "one evaluation, one timer: \(first)")

                // Reload pa alone: pb's hooks still close over the first evaluation, whose timer goes on.
                try await box.pmlOK("reload", "pa")
                let both = try await nextMarks()
                #expect(both.count == 2 && both.isSuperset(of: first), "pa's new evaluation and pb's first one tick: \(both)")
                let b1 = try await seen("pb", scaleTo: 2)
                let mine = ticks().count
                try await box.waitFor("more ticks", timeout: 10) { ticks().count >= mine + 6 ? true : nil }
                let b2 = try await seen("pb", scaleTo: 3)
                #expect(first.contains(b1.mark) && b2.mark == b1.mark && b2.count > b1.count,
                        "pb's hooks see the timer's updates: \(b1) then \(b2)")

                // Reload both: one evaluation for both apps, and its timer alone ticks.
                try await box.waitOnline("pb", count: 3)
                try await box.pmlOK("reload", "all")
                let last = try await nextMarks()
                #expect(last.count == 1 && last.isDisjoint(with: both), "one timer, the new evaluation's: \(last), before \(both)")
                let a = try await seen("pa", scaleTo: 2), b = try await seen("pb", scaleTo: 4)
                #expect(last.contains(a.mark) && a.mark == b.mark, "both apps' hooks share the new top level: \(a) \(b)")
            }
        }

        @Test("each app of a multi-app file gets its own table: started with --only, and after save, kill and resurrect")
        func eachAppItsOwnTable() async throws {
            try await withSandbox { box in
                let file = try box.write("two.lua", """
                    local function app(name, tag)
                      return { name = name, cmd = { "sleep", "1000" },
                               onStart = function(a) pml.log("ONSTART-" .. tag .. " " .. a.name) end }
                    end
                    return { app("first", "A"), app("second", "B") }
                    """)
                try await box.pmlOK("start", file, "--only", "second")
                try await box.waitForDaemonLine("ONSTART-B second")
                try await box.pmlOK("start", file, "--only", "first")
                try await box.waitForDaemonLine("ONSTART-A first")
                try await box.pmlOK("save")
                try await box.pmlOK("kill")
                try await box.pmlOK("resurrect")
                try await box.waitFor("both started again by resurrect", timeout: 15) {
                    box.daemonLines("ONSTART-B second").count == 2 && box.daemonLines("ONSTART-A first").count == 2 ? true : nil
                }
                #expect(box.daemonLines("ONSTART-A second").isEmpty && box.daemonLines("ONSTART-B first").isEmpty,
                        "no app ran another's hooks:\n\(box.daemonLines("ONSTART-").joined(separator: "\n"))")
            }
        }
    }
}
