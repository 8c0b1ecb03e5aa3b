// Plugins: Lua files in $PML_HOME/plugins, in PML_PLUGINS folders and in plugins/ beside an app
// file hear the hooks of every app; a broken one is reported and skipped; a failing hook is logged
// and nothing else is disturbed; `pml plugins reload` loads them again. Then one test per plugin
// shipped in the repo's plugins/ folder, with small settings, showing it does what its header says.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// One entry of `pml plugins --json`.
struct PluginRow: Decodable, Sendable, CustomStringConvertible {
    let name: String?
    let path: String
    let hooks: [String]
    let error: String?
    var description: String { "\(name ?? "<failed>") \(path) hooks=\(hooks) error=\(error ?? "none")" }
}

extension Sandbox {
    var pluginsDir: String { home + "/plugins" }

    /// Writes `$PML_HOME/plugins/<file>` (creating PML_HOME with mode 0700 if needed); returns its path.
    @discardableResult
    func writePlugin(_ file: String, _ text: String) throws -> String {
        let fm = FileManager.default
        if !fm.fileExists(atPath: home) {
            try fm.createDirectory(atPath: home, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        try fm.createDirectory(atPath: pluginsDir, withIntermediateDirectories: true)
        let path = pluginsDir + "/" + file
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Puts the repo's `plugins/<file>` into `$PML_HOME/plugins`, as a symlink or a copy.
    @discardableResult
    func installShippedPlugin(_ file: String, symlink: Bool = false) throws -> String {
        let source = PMLBinary.packageRoot.appendingPathComponent("plugins/" + file).path
        let text = try String(contentsOfFile: source, encoding: .utf8)
        if !symlink { return try writePlugin(file, text) }
        try writePlugin(".placeholder", "")  // creates the folders
        try? FileManager.default.removeItem(atPath: pluginsDir + "/.placeholder")
        let path = pluginsDir + "/" + file
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: source)
        return path
    }

    /// `pml plugins --json`, decoded.
    func plugins(env: [String: String] = [:]) async throws -> [PluginRow] {
        let r = try await pml(["plugins", "--json"], env: env)
        guard r.ok else { throw HarnessError("pml plugins --json failed:\n\(r)") }
        do {
            return try JSONDecoder().decode([PluginRow].self, from: Data(r.stdout.utf8))
        } catch {
            throw HarnessError("pml plugins --json is not [{name, path, hooks, error}] (\(error)):\n\(r.stdout)")
        }
    }

    /// daemon.log lines containing `needle`.
    func daemonLines(_ needle: String) -> [String] {
        read(daemonLog).split(separator: "\n").map(String.init).filter { $0.contains(needle) }
    }

    /// Waits until daemon.log has a line containing `needle`; returns that line.
    @discardableResult
    func waitForDaemonLine(_ needle: String, timeout: Double = 10) async throws -> String {
        try await waitFor("a daemon.log line containing \"\(needle)\"\n\(read(daemonLog).suffix(3000))", timeout: timeout) {
            daemonLines(needle).first
        }
    }
}

/// Seconds into the current local minute, and that minute.
private func localClock() -> (minute: Int, second: Int) {
    let c = Calendar.current.dateComponents([.minute, .second], from: Date())
    return (c.minute ?? 0, c.second ?? 0)
}

extension Integration {
    @Suite("Plugins")
    struct PluginSuite {
        // MARK: - the machinery

        @Test("a plugin hears the hooks of every app, from $PML_HOME/plugins, PML_PLUGINS and plugins/ beside an app file")
        func hooksOfEveryApp() async throws {
            try await withSandbox { box in
                let spyText = """
                    return {
                      name = "spy",
                      onStart = function(app) pml.log("SPY-START " .. app.name .. " out=" .. app.out_log) end,
                      onSpawn = function(worker) pml.log("SPY-SPAWN " .. worker.app .. " pid=" .. worker.pid) end,
                      onCrash = function(worker, exit)
                        pml.log("SPY-CRASH " .. worker.app .. " code=" .. tostring(exit.code))
                        return false -- plugins observe: this must not stop the restart
                      end,
                    }
                    """
                let spy = try box.writePlugin("spy.lua", spyText)
                let crashLine = lineNumber(of: "SPY-CRASH", in: spyText)
                try box.write("extra/extra.lua", """
                    return { name = "extra", onCrash = function(w, e) pml.log("EXTRA-CRASH " .. w.app) end }
                    """)
                try box.write("site/plugins/near.lua", """
                    return {
                      name = "near",
                      onStart = function(app) pml.log("NEAR-START " .. app.name) end,
                      onSpawn = function(w) pml.log("NEAR-SPAWN " .. w.app) end,
                    }
                    """)
                let siteApp = try box.write("site/app.lua", """
                    return {
                      name = "site",
                      cmd = { "sleep", "1000" },
                      onStart = function(app) pml.log("OWN-START " .. app.name) end,
                    }
                    """)

                // The first command starts the daemon with PML_PLUGINS in its environment.
                let victim = try await box.pml(["start", "--name", "victim", "--", "sh", "-c", "sleep 0.3; exit 7"],
                                               env: ["PML_PLUGINS": box.work + "/extra"])
                #expect(victim.ok, "\(victim)")

                // onStart and onSpawn of an app started from the command line, which names no plugin.
                try await box.waitForDaemonLine("SPY-START victim out=\(box.logsDir)/victim-out.log")
                try await box.waitForDaemonLine("SPY-SPAWN victim pid=")
                // onCrash, with the exit code; logged as [lua] file:line.
                let crash = try await box.waitForDaemonLine("SPY-CRASH victim code=7")
                #expect(crash.contains("[lua] \(spy):\(crashLine): SPY-CRASH victim code=7"), "\(crash)")
                try await box.waitForDaemonLine("EXTRA-CRASH victim")

                // The plugin's `false` is ignored: the worker is restarted as usual.
                try await box.waitFor("victim restarted despite the plugin's onCrash returning false") {
                    (try await box.rows("victim").first?.restarts ?? 0) >= 1 ? true : nil
                }

                // An app file with its own hook: both the app's hook and the plugins hear it.
                try await box.pmlOK("start", siteApp)
                try await box.waitForDaemonLine("OWN-START site")
                try await box.waitForDaemonLine("SPY-START site")

                // plugins/ beside the app file was loaded when that app started, in time for its
                // onStart, and hears every app started after it.
                try await box.waitForDaemonLine("NEAR-START site")
                try await box.pmlOK("start", "--name", "later", "--", "sleep", "1000")
                try await box.waitForDaemonLine("NEAR-SPAWN later")
                try await box.waitForDaemonLine("SPY-SPAWN later pid=")

                let list = try await box.plugins()
                let byName = Dictionary(list.compactMap { p in p.name.map { ($0, p) } }, uniquingKeysWith: { a, _ in a })
                #expect(byName["spy"]?.hooks == ["onCrash", "onSpawn", "onStart"], "\(list)")
                #expect(byName["spy"]?.path == spy, "\(list)")
                #expect(byName["extra"]?.path == box.work + "/extra/extra.lua", "\(list)")
                #expect(byName["near"]?.path == box.work + "/site/plugins/near.lua", "\(list)")
                #expect(list.allSatisfy { $0.error == nil }, "\(list)")
            }
        }

        @Test("a plugin with a syntax error is listed with file:line, the others load and run; reload loads the fixed file")
        func brokenPluginAndReload() async throws {
            try await withSandbox { box in
                // Each instance of this plugin tags its ticks, so a timer left over from before a
                // reload shows up as a second tag.
                try box.writePlugin("a-good.lua", """
                    local me = tostring({}):match("0x%x+") or tostring({})
                    pml.every(100, function() pml.log("A-TICK " .. me) end)
                    return { name = "a-good", onStart = function(app) pml.log("A-START " .. app.name .. " " .. me) end }
                    """)
                let badText = """
                    return {
                      name = "b-bad",
                      onStart = function(app) pml.log("B-START " .. app.name) end
                      onStop = function(app) end,
                    }
                    """
                let bad = try box.writePlugin("b-bad.lua", badText)
                try box.writePlugin("c-good.lua", """
                    return { name = "c-good", onStart = function(app) pml.log("C-START " .. app.name) end }
                    """)

                // A plugin file that never finishes is stopped by the budget and reported.
                let loop = try box.writePlugin("d-loop.lua", "while true do end\n")
                // One that starts a timer, then fails: skipped, so its timer must not run either.
                try box.writePlugin("e-half.lua", """
                    pml.every(100, function() pml.log("E-TICK") end)
                    error("configuration is wrong")
                    """)

                let list = try await box.plugins()
                #expect(list.count == 5, "\(list)")
                let looping = try #require(list.first { $0.path == loop }, "\(list)")
                #expect(looping.name == nil && looping.error?.contains("d-loop.lua:1") == true, "\(looping)")
                let broken = try #require(list.first { $0.path == bad }, "\(list)")
                #expect(broken.name == nil && broken.hooks.isEmpty, "\(broken)")
                // Lua notices the missing comma on line 4.
                #expect(broken.error?.contains("b-bad.lua:4") == true, "\(broken)")
                #expect(list.filter { $0.error == nil }.compactMap(\.name).sorted() == ["a-good", "c-good"], "\(list)")
                let text = try await box.pml("plugins")
                #expect(text.ok && text.stdout.contains("b-bad.lua") && text.stdout.contains("a-good"), "\(text)")

                try await box.pmlOK("start", "--name", "x", "--", "sleep", "1000")
                try await box.waitForDaemonLine("A-START x")
                try await box.waitForDaemonLine("C-START x")
                #expect(box.daemonLines("B-START").isEmpty)
                await sleepMs(300)
                #expect(box.daemonLines("E-TICK").isEmpty, "e-half.lua failed to load, yet its timer ticks")
                let before = try await box.waitOnline("x")

                // Fix it and reload: all three load; the app is not touched.
                try box.writePlugin("b-bad.lua", badText.replacingOccurrences(of: "end\n  onStop", with: "end,\n  onStop"))
                let reload = try await box.pml("plugins", "reload")
                #expect(reload.ok, "\(reload)")
                let reloadedAt = box.read(box.daemonLog).utf8.count
                let after = try await box.plugins()
                #expect(after.count == 5 && after.filter { $0.error == nil }.count == 3, "\(after)")
                #expect(after.first { $0.path == bad }?.name == "b-bad", "\(after)")
                let rows = try await box.rows("x")
                #expect(rows.map(\.pid) == before.map(\.pid) && rows.allSatisfy { $0.status == "online" && $0.restarts == 0 },
                        "reloading plugins leaves apps alone: \(rows)")

                try await box.pmlOK("start", "--name", "y", "--", "sleep", "1000")
                // Each plugin's hooks run on its own script thread: each line comes in its own time.
                for plugin in ["A", "B", "C"] { try await box.waitForDaemonLine("\(plugin)-START y") }
                #expect(box.daemonLines("A-START y").count == 1 && box.daemonLines("C-START y").count == 1,
                        "each plugin is loaded once after the reload")

                // The old instance's timer was cancelled by the reload: only the new one ticks on. A
                // tick the old state had begun or had due as the reload came may still be logged
                // after it (its script thread reaches the stop later on a loaded machine); after
                // that, nothing more of it.
                func tag(after needle: String) -> String? {
                    box.daemonLines(needle).first.flatMap { line in
                        line.range(of: needle).map { String(line[$0.upperBound...]).trimmingCharacters(in: .whitespaces) }
                    }
                }
                let oldTag = try #require(tag(after: "A-START x "))
                let newTag = try #require(tag(after: "A-START y "))
                #expect(oldTag != newTag, "a fresh instance after the reload")
                func ticksSinceReload() -> [String] {
                    let since = String(decoding: Array(box.read(box.daemonLog).utf8).dropFirst(reloadedAt), as: UTF8.self)
                    return since.split(separator: "\n").compactMap { line -> String? in
                        guard let r = line.range(of: "A-TICK ") else { return nil }
                        return String(line[r.upperBound...])
                    }
                }
                let ticks = try await box.waitFor("8 ticks in a row of the new a-good only (old: \(oldTag), new: \(newTag))", timeout: 15) { () -> [String]? in
                    let ticks = ticksSinceReload()
                    let sinceOld = ticks.count - ((ticks.lastIndex { $0 != newTag }).map { $0 + 1 } ?? 0)
                    return sinceOld >= 8 ? ticks : nil
                }
                #expect(Set(ticks).isSubset(of: [oldTag, newTag]), "no other instance ticks: \(Set(ticks).sorted())")
            }
        }

        @Test("a plugin whose hook fails is logged with file:line; apps and other plugins carry on")
        func failingHook() async throws {
            try await withSandbox { box in
                let boomText = """
                    return {
                      name = "boom",
                      onStart = function(app) error("start went wrong") end,
                      onCrash = function(worker, exit)
                        local t = nil
                        return t.field
                      end,
                    }
                    """
                let boom = try box.writePlugin("a-boom.lua", boomText)
                let startLine = lineNumber(of: "start went wrong", in: boomText)
                let crashLine = lineNumber(of: "t.field", in: boomText)
                try box.writePlugin("b-watch.lua", """
                    return {
                      name = "watch",
                      onStart = function(app) pml.log("WATCH-START " .. app.name) end,
                      onCrash = function(w, e) pml.log("WATCH-CRASH " .. w.app .. " code=" .. tostring(e.code)) end,
                    }
                    """)

                try await box.pmlOK("start", "--name", "shaky", "--", "sh", "-c", "sleep 0.3; exit 5")
                try await box.waitForDaemonLine("WATCH-START shaky")
                try await box.waitForDaemonLine("WATCH-CRASH shaky code=5")
                try await box.waitForDaemonLine("a-boom.lua:\(startLine)")
                try await box.waitForDaemonLine("a-boom.lua:\(crashLine)")
                #expect(box.daemonLines("start went wrong").contains { $0.contains("\(boom):\(startLine)") })

                // The app keeps being supervised: restarted after each crash.
                try await box.waitFor("shaky restarted twice", timeout: 15) {
                    (try await box.rows("shaky").first?.restarts ?? 0) >= 2 ? true : nil
                }
                // The app's err log names the plugin, the hook and file:line.
                let (d, _) = try await box.describe("shaky")
                let errLog = box.read(d.errLog)
                #expect(errLog.contains("[pml] plugin boom: onCrash failed: ") && errLog.contains("a-boom.lua:\(crashLine)"),
                        "err log:\n\(errLog)")
                #expect(errLog.contains("[pml] plugin boom: onStart failed: "), "err log:\n\(errLog)")

                // Still answering; the failing plugin is still loaded (a run-time error is no load error).
                try await box.pmlOK("ping")
                let list = try await box.plugins()
                #expect(list.contains { $0.name == "boom" && $0.error == nil }, "\(list)")
            }
        }

        @Test("plugins cannot clobber each other's globals, library tables or the pml table")
        func isolatedGlobals() async throws {
            try await withSandbox { box in
                try box.writePlugin("a.lua", """
                    shared = "a"
                    function helper() return "a" end
                    string.shout = function(s) return s:upper() end
                    table.insert = nil
                    pml.warn = nil
                    return {
                      name = "a",
                      onStart = function(app)
                        pml.log(("A-SEES shared=%s helper=%s warn=%s"):format(tostring(shared), helper(), type(pml.warn)))
                      end,
                    }
                    """)
                try box.writePlugin("b.lua", """
                    shared = "b"
                    return {
                      name = "b",
                      onStart = function(app)
                        local t = {}
                        table.insert(t, "ok")
                        pml.warn(("B-SEES shared=%s helper=%s shout=%s insert=%s"):format(
                          tostring(shared), type(helper), type(string.shout), t[1]))
                      end,
                    }
                    """)
                let app = try box.write("app.lua", """
                    shared = "app"
                    return {
                      name = "g",
                      cmd = { "sleep", "1000" },
                      onStart = function(app) pml.log("APP-SEES shared=" .. tostring(shared) .. " helper=" .. type(helper)) end,
                    }
                    """)
                try await box.pmlOK("start", app)
                try await box.waitForDaemonLine("A-SEES shared=a helper=a warn=nil")
                try await box.waitForDaemonLine("B-SEES shared=b helper=nil shout=nil insert=ok")
                try await box.waitForDaemonLine("APP-SEES shared=app helper=nil")
                let list = try await box.plugins()
                #expect(list.count == 2 && list.allSatisfy { $0.error == nil }, "\(list)")
            }
        }

        // MARK: - the plugins shipped in plugins/

        @Test("memory-limit.lua restarts a worker above its limit (per-app override), not the others")
        func memoryLimit() async throws {
            try await withSandbox { box in
                try box.installShippedPlugin("memory-limit.lua", symlink: true)
                let env = ["PML_MEMORY_LIMIT": "1G", "PML_MEMORY_LIMIT_HOG": "3M", "PML_MEMORY_CHECK_MS": "300"]
                // A shell holding a 5 MB string: about 6 MB resident.
                let hog = try await box.pml(["start", "--name", "hog", "--", "sh", "-c",
                                             "x=$(head -c 5000000 /dev/zero | tr '\\0' a); sleep 1000"], env: env)
                #expect(hog.ok, "\(hog)")
                try await box.pmlOK("start", "--name", "calm", "--", "sleep", "1000")
                let first = try #require(try await box.waitOnline("hog").first)
                let calm = try #require(try await box.waitOnline("calm").first)

                let line = try await box.waitForDaemonLine("memory-limit: restarting hog worker \(first.id) (pid \(first.pid ?? -1))")
                #expect(line.contains("> limit 3.0M"), "\(line)")
                let again = try await box.waitFor("hog restarted with a new pid") {
                    let r = try await box.rows("hog").first
                    return r.flatMap { $0.restarts >= 1 && $0.pid != nil && $0.pid != first.pid ? $0 : nil }
                }
                #expect(!Proc.alive(try #require(first.pid)), "the old worker is gone: \(again)")
                let calmNow = try #require(try await box.rows("calm").first)
                #expect(calmNow.pid == calm.pid && calmNow.restarts == 0, "calm is under 1G: \(calmNow)")
                #expect(box.daemonLines("memory-limit: restarting calm").isEmpty)
            }
        }

        @Test("cron-restart.lua restarts an app once in a matching minute, and leaves the others")
        func cronRestart() async throws {
            // A malformed schedule: the plugin does not load and says why.
            try await withSandbox { box in
                try box.installShippedPlugin("cron-restart.lua")
                let list = try await box.plugins(env: ["PML_CRON_RESTART": "web=61 * * * *"])
                #expect(list.count == 1 && list[0].name == nil, "\(list)")
                #expect(list[0].error?.contains("minute") == true && list[0].error?.contains("61") == true, "\(list)")
            }

            // Stay clear of a minute boundary: the whole check takes well under 10 s.
            while localClock().second >= 48 { await sleepMs(500) }
            let minute = localClock().minute
            let expression = "\(minute) * * * *"
            try await withSandbox { box in
                let env = ["PML_CRON_RESTART": "cronny=\(expression);other=\((minute + 30) % 60) * * * *"]
                let start = try await box.pml(["start", "--name", "cronny", "--", "sleep", "1000"], env: env)
                #expect(start.ok, "\(start)")
                try await box.pmlOK("start", "--name", "other", "--", "sleep", "1000")
                let first = try #require(try await box.waitOnline("cronny").first)
                let other = try #require(try await box.waitOnline("other").first)

                // The plugin loads during a matching minute: it fires at its first check.
                try box.installShippedPlugin("cron-restart.lua")
                try await box.pmlOK("plugins", "reload")
                try await box.waitForDaemonLine("cron-restart: restarting cronny (\(expression))", timeout: 5)
                try await box.waitFor("cronny restarted with a new pid", timeout: 5) {
                    let r = try await box.rows("cronny").first
                    return r.flatMap { $0.restarts == 1 && $0.status == "online" && $0.pid != first.pid ? $0 : nil }
                }

                // Once per minute: no second restart while the minute lasts.
                await sleepMs(2500)
                #expect(localClock().minute == minute, "the test ran into the next minute; the check below is void")
                #expect(try await box.rows("cronny").first?.restarts == 1)
                #expect(box.daemonLines("cron-restart: restarting cronny").count == 1)
                let otherNow = try #require(try await box.rows("other").first)
                #expect(otherNow.pid == other.pid && otherNow.restarts == 0, "other's minute is not now: \(otherNow)")
            }
        }

        @Test("cron-restart.lua's schedules on a fake clock: fields, steps, lists, day rules, once per minute")
        func cronSchedules() async throws {
            try await withSandbox { box in
                // A test plugin runs the real cron-restart.lua in an environment whose os.time,
                // os.getenv and pml are fakes, ticks it through chosen instants, and reports.
                let source = PMLBinary.packageRoot.appendingPathComponent("plugins/cron-restart.lua").path
                try box.writePlugin("cron-check.lua", """
                    local f = assert(io.open(\(lua(source))))
                    local src = f:read("a")
                    f:close()
                    local function at(y, mo, d, h, mi, s)
                      return os.time({ year = y, month = mo, day = d, hour = h, min = mi, sec = s or 0 })
                    end
                    -- Ticks the plugin at `times` with PML_CRON_RESTART = schedule; returns what it restarted.
                    local function run(schedule, times)
                      local now, tick, restarted = nil, nil, {}
                      local env = setmetatable({
                        os = { getenv = function(k) if k == "PML_CRON_RESTART" then return schedule end end,
                               time = function() return now end, date = os.date },
                        pml = { every = function(ms, fn) tick = fn; return 1 end, log = function() end,
                                warn = function() end, after = function() return 2 end,
                                apps = function()
                                  return { { name = "web", status = "online" }, { name = "api", status = "online" },
                                           { name = "fri", status = "online" }, { name = "off", status = "stopped" } }
                                end,
                                restart = function(name) restarted[#restarted + 1] = name end },
                      }, { __index = _ENV })
                      local chunk = assert(load(src, "=cron-restart.lua", "t", env))
                      local plugin = chunk()
                      assert(plugin.name == "cron-restart")
                      for _, t in ipairs(times) do now = t; tick() end
                      table.sort(restarted)
                      return table.concat(restarted, ",")
                    end
                    local schedule = "web=*/5 * * * *; api=0 3 * * 1-5 ;off=* * * * *;fri=0 0 13 * 5"
                    local cases = {
                      -- 2024-01-01 is a Monday.
                      { "mon 03:00:00", { at(2024, 1, 1, 3, 0, 0) }, "api,web" },
                      { "same minute twice", { at(2024, 1, 1, 3, 0, 0), at(2024, 1, 1, 3, 0, 1), at(2024, 1, 1, 3, 0, 59) }, "api,web" },
                      { "03:01 and 03:04", { at(2024, 1, 1, 3, 1, 0), at(2024, 1, 1, 3, 4, 30) }, "" },
                      { "03:05", { at(2024, 1, 1, 3, 5, 1) }, "web" },
                      { "saturday 03:00", { at(2024, 1, 6, 3, 0, 0) }, "web" },
                      { "friday the 5th 00:00 (day-of-week)", { at(2024, 1, 5, 0, 0, 0) }, "fri,web" },
                      { "saturday the 13th 00:00 (day-of-month)", { at(2024, 1, 13, 0, 0, 0) }, "fri,web" },
                      { "sunday the 14th 00:00", { at(2024, 1, 14, 0, 0, 0) }, "web" },
                      { "two matching minutes", { at(2024, 1, 1, 3, 0, 0), at(2024, 1, 1, 3, 5, 0) }, "api,web,web" },
                    }
                    local function check(label, got, want)
                      pml.log(("CRON-CASE %s: %s"):format(got == want and "ok" or "FAIL", label) ..
                        (got == want and "" or (" got [" .. got .. "] want [" .. want .. "]")))
                    end
                    for _, c in ipairs(cases) do check(c[1], run(schedule, c[2]), c[3]) end
                    local more = {
                      { "10-20/5 * * * *", { 10, 15, 20 }, { 11, 25, 5 } },
                      { "5/20 * * * *", { 5, 25, 45 }, { 0, 46 } },
                      { "1,2,30-31 * * * *", { 1, 2, 30, 31 }, { 3, 29 } },
                    }
                    for _, m in ipairs(more) do
                      for _, minute in ipairs(m[2]) do check(m[1] .. " @" .. minute, run("web=" .. m[1], { at(2024, 1, 1, 3, minute) }), "web") end
                      for _, minute in ipairs(m[3]) do check(m[1] .. " @" .. minute, run("web=" .. m[1], { at(2024, 1, 1, 3, minute) }), "") end
                    end
                    check("@daily at midnight", run("web=@daily", { at(2024, 1, 2, 0, 0) }), "web")
                    check("@hourly at 00:01", run("web=@hourly", { at(2024, 1, 2, 0, 1) }), "")
                    check("sunday as 7", run("web=0 0 * * 7", { at(2024, 1, 7, 0, 0) }), "web")
                    for _, bad in ipairs({ "web=61 * * * *", "web=* * *", "web=*/0 * * * *", "web=5-1 * * * *",
                                           "web=1,,2 * * * *", "web=* * 0 * *", "web=* * * * 8", "nonsense" }) do
                      local ok, err = pcall(run, bad, {})
                      check("rejects " .. bad, ok and "accepted" or "rejected", "rejected")
                    end
                    pml.log("CRON-CASES DONE")
                    return { name = "cron-check" }
                    """)
                let list = try await box.plugins()
                #expect(list.count == 1 && list[0].error == nil, "\(list)")
                try await box.waitForDaemonLine("CRON-CASES DONE")
                let cases = box.daemonLines("CRON-CASE ")
                let expected = 37  // 9 schedule cases, 17 step/list/range minutes, 3 specials, 8 rejections
                #expect(cases.count == expected, "\(cases.joined(separator: "\n"))")
                let failed = cases.filter { !$0.contains("CRON-CASE ok") }
                #expect(failed.isEmpty, "\(failed.joined(separator: "\n"))")
            }
        }

        @Test("notify.lua runs PML_NOTIFY_CMD on crashes and on errored, at most PML_NOTIFY_MAX per app")
        func notify() async throws {
            try await withSandbox { box in
                try box.installShippedPlugin("notify.lua")
                let out = box.work + "/notified"
                let cmd = try box.write("notify.sh", """
                    #!/bin/sh
                    printf '%s|%s|%s|%s|%s\\n' "$1" "$2" "$3" "$4" "$5" >> \(out)
                    """, executable: true)
                let app = try box.write("apps.lua", """
                    return {
                      -- Crashes at once: restarted twice, then errored (3 unstable starts > max_restarts 2).
                      { name = "boom", cmd = { "sh", "-c", "exit 3" }, max_restarts = 2, restart_delay = 50, min_uptime = 5000 },
                      -- Crashes every ~0.2 s, stable each time: never errored, capped at 2 notifications.
                      { name = "flap", cmd = { "sh", "-c", "sleep 0.2; exit 4" }, min_uptime = 100,
                        restart_delay = 50, restart_delay_max = 100 },
                    }
                    """)
                let env = ["PML_NOTIFY_CMD": cmd, "PML_NOTIFY_MAX": "5", "PML_NOTIFY_MAX_FLAP": "2"]
                let start = try await box.pml(["start", app], env: env)
                #expect(start.ok, "\(start)")

                let boom = try await box.waitFor("boom errored", timeout: 15) {
                    let r = try await box.rows("boom").first
                    return r?.status == "errored" ? r : nil
                }
                try await box.waitFor("flap crashed at least 5 times", timeout: 15) {
                    (try await box.rows("flap").first?.restarts ?? 0) >= 5 ? true : nil
                }
                try await box.waitForDaemonLine("notify: suppressed (2 sent for flap")
                await sleepMs(500)  // the last spawned commands finish writing

                let lines = box.lines(out)
                let boomCrashed = lines.filter { $0.hasPrefix("crashed|boom|\(boom.id)|3|") }
                let boomErrored = lines.filter { $0.hasPrefix("errored|boom|\(boom.id)|3|") }
                #expect(boomCrashed.count == boom.restarts + 1, "one per crash (\(boom.restarts + 1)):\n\(lines.joined(separator: "\n"))")
                #expect(boomErrored.count == 1, "\(lines.joined(separator: "\n"))")
                #expect(boomCrashed.first?.contains("boom worker \(boom.id)") == true
                        && boomCrashed.first?.contains("exited with code 3") == true, "the summary: \(boomCrashed)")
                let flap = lines.filter { $0.contains("|flap|") }
                #expect(flap.count == 2 && flap.allSatisfy { $0.hasPrefix("crashed|flap|") && $0.contains("|4|") },
                        "PML_NOTIFY_MAX_FLAP=2:\n\(lines.joined(separator: "\n"))")
                #expect(lines.count == boomCrashed.count + 1 + 2, "\(lines.joined(separator: "\n"))")
            }
        }

        @Test("log-rotate.lua copies a big log to .1, .2 (never .3) and truncates it in place")
        func logRotate() async throws {
            try await withSandbox { box in
                try box.installShippedPlugin("log-rotate.lua")
                let env = ["PML_LOGROTATE_MAX_SIZE": "1K", "PML_LOGROTATE_KEEP": "2", "PML_LOGROTATE_CHECK_MS": "200"]
                // About 2.5 KB a second of numbered lines.
                let start = try await box.pml(["start", "--name", "chat", "--", "sh", "-c",
                                               "i=0; while :; do echo \"chat-line $i ..................................\"; i=$((i+1)); sleep 0.02; done"],
                                              env: env)
                #expect(start.ok, "\(start)")
                let log = box.logsDir + "/chat-out.log"
                try await box.waitFor("4 rotations of chat-out.log", timeout: 15) {
                    box.daemonLines("log-rotate: rotated \(log)").count >= 4 ? true : nil
                }
                try await box.pmlOK("stop", "chat")
                await sleepMs(600)  // a last check may still rotate; then nothing changes

                let fm = FileManager.default
                #expect(fm.fileExists(atPath: log + ".1") && fm.fileExists(atPath: log + ".2"))
                #expect(!fm.fileExists(atPath: log + ".3"), "PML_LOGROTATE_KEEP=2")
                func size(_ p: String) -> Int { ((try? fm.attributesOfItem(atPath: p))?[.size] as? Int) ?? -1 }
                #expect(size(log) <= 1024, "the live log is small again: \(size(log)) bytes")
                for p in [log + ".1", log + ".2"] {
                    #expect(size(p) > 1024 && size(p) <= 2048, "\(p): \(size(p)) bytes")
                }

                // Oldest in .2, then .1, then the live log; each rotated file is whole lines in order.
                func numbers(_ p: String) -> [Int] {
                    box.lines(p).compactMap { line in
                        line.hasPrefix("chat-line ") ? Int(line.split(separator: " ")[1]) : nil
                    }
                }
                let n2 = numbers(log + ".2"), n1 = numbers(log + ".1"), live = numbers(log)
                #expect(!n2.isEmpty && !n1.isEmpty)
                #expect(n2 == Array((n2.first ?? 0)...(n2.last ?? 0)), ".2 is contiguous: \(n2)")
                #expect(n1 == Array((n1.first ?? 0)...(n1.last ?? 0)), ".1 is contiguous: \(n1)")
                #expect((n2.last ?? .max) < (n1.first ?? .min), ".2 is older than .1")
                if let l = live.first { #expect((n1.last ?? .max) < l, ".1 is older than the live log") }
                // pml appended to the truncated file at its start, not at the old offset (no hole of zeros).
                #expect(!box.read(log).contains("\0"))
            }
        }

        @Test("cpu-limit.lua restarts a worker that stays above the CPU limit, not an idle one")
        func cpuLimit() async throws {
            try await withSandbox { box in
                try box.installShippedPlugin("cpu-limit.lua")
                // 15 %: a spinning worker gets at least that even when other sessions keep both
                // cores busy (each worker is a scheduling group of its own); the idle one uses 0.
                let env = ["PML_CPU_LIMIT": "15", "PML_CPU_LIMIT_FOR_MS": "2000"]
                let start = try await box.pml(["start", "--name", "spin", "--", "sh", "-c", "while :; do :; done"], env: env)
                #expect(start.ok, "\(start)")
                try await box.pmlOK("start", "--name", "idle", "--", "sleep", "1000")
                let first = try #require(try await box.waitOnline("spin").first)
                let idle = try #require(try await box.waitOnline("idle").first)

                let line = try await box.waitForDaemonLine("cpu-limit: restarting spin worker \(first.id) (pid \(first.pid ?? -1))",
                                                           timeout: 15)
                #expect(line.contains("above 15% CPU for 2000 ms"), "\(line)")
                try await box.waitFor("spin restarted with a new pid") {
                    let r = try await box.rows("spin").first
                    return r.flatMap { $0.restarts >= 1 && $0.pid != nil && $0.pid != first.pid ? $0 : nil }
                }
                #expect(!Proc.alive(try #require(first.pid)))
                let idleNow = try #require(try await box.rows("idle").first)
                #expect(idleNow.pid == idle.pid && idleNow.restarts == 0, "\(idleNow)")
            }
        }
    }
}
