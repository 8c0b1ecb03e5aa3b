import PMLCore
import PMLLua
import Testing

/// pml.after, pml.every, pml.cancel and pml.metrics.
@Suite struct TimerTests {
    let folder = FixtureFolder()

    @Test func afterAndEveryReachTheHostAndTheCallbacksRun() throws {
        let (runtime, host) = try hostedRuntime()
        let file = try load(runtime, folder, """
        local ticks = 0
        return {
          name = "web",
          onStart = function(app)
            local once = pml.after(50, function() pml.log("once for " .. app.name) end)
            local tick = pml.every(1000, function(by) ticks = ticks + (by or 1); return ticks end)
            return { once, tick }
          end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "onStart", args: [.object(["name": .string("web")])]) ==
            .returned(.array([.int(100), .int(101)])))
        #expect(host.timers.map(\.afterMs) == [50, 1000])
        #expect(host.timers.map(\.repeating) == [false, true])
        #expect(host.timers[0].callback != host.timers[1].callback)
        let once = host.timers[0].callback, tick = host.timers[1].callback

        #expect(runtime.call(once, args: []) == .returned(.null))
        #expect(host.logs == [.init(level: .info, source: "\(file.path):5", message: "once for web")])
        #expect(runtime.call(tick, args: []) == .returned(.int(1)))
        #expect(runtime.call(tick, args: [.int(10)]) == .returned(.int(11)))

        // Released callbacks are gone; releasing twice is harmless.
        runtime.release(once)
        runtime.release(once)
        #expect(runtime.call(once, args: []) == .notDefined)
        #expect(runtime.call(tick, args: []) == .returned(.int(12)))
    }

    @Test func pendingTimersAreBoundedPerState() throws {
        let (runtime, host) = try hostedRuntime()
        try load(runtime, folder, """
        return {
          name = "web",
          onStart = function()
            for i = 1, \(LuaRuntime.maxPendingTimers) do pml.after(86400000, function() end) end
            local ok, err = pcall(pml.after, 10, function() end)
            return { ok, err }
          end,
        }
        """)
        guard case .returned(.array(let answer)) = runtime.callHook(app: "web", hook: "onStart", args: []) else {
            Issue.record("onStart did not return a list")
            return
        }
        #expect(answer.first == .bool(false))
        #expect(answer.last?.stringValue?.contains("timers are pending already") == true, "\(answer)")
        #expect(host.timers.count == LuaRuntime.maxPendingTimers)
        // Once one is released, a new one is taken again.
        runtime.release(host.timers[0].callback)
        try load(runtime, folder, """
        return { name = "web2", onStart = function() return pml.after(10, function() end) end }
        """)
        guard case .returned(.int) = runtime.callHook(app: "web2", hook: "onStart", args: []) else {
            Issue.record("a timer after a release was refused")
            return
        }
    }

    @Test func cancelReachesTheHost() throws {
        let (runtime, host) = try hostedRuntime()
        try load(runtime, folder, """
        return {
          name = "web",
          onStart = function()
            local id = pml.every(10, function() end)
            pml.cancel(id)
            pml.cancel(999)
          end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "onStart", args: []) == .returned(.null))
        #expect(host.cancelled == [100, 999])
    }

    @Test func callbackErrorsCarryFileAndLine() throws {
        let (runtime, host) = try hostedRuntime(limits: LuaLimits(instructionBudget: 1_000_000, memoryLimitBytes: 16 << 20))
        let file = try load(runtime, folder, """
        return {
          name = "web",
          onStart = function()
            pml.after(1, function(worker) return worker.missing.field end)
            pml.every(5, function() while true do end end)
            pml.after(1, function() error("late") end)
            pml.after(1, function() return #string.rep("x", 100 * 1024 * 1024) end)
          end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "onStart", args: []) == .returned(.null))
        let callbacks = host.timers.map(\.callback)
        #expect(runtime.call(callbacks[0], args: [.object([:])]) ==
            .failed("\(file.path):4: attempt to index a nil value (field 'missing')"))
        #expect(runtime.call(callbacks[1], args: []) ==
            .failed("\(file.path):5: timer exceeded its instruction budget (1000000 instructions)"))
        #expect(runtime.call(callbacks[2], args: []) == .failed("\(file.path):6: late"))
        // Lua gives a refused allocation no location: the message names where the callback is defined.
        #expect(runtime.call(callbacks[3], args: []) == .failed("\(file.path):7: timer exceeded the memory limit (16 MiB)"))
        // A failed callback stays callable, as a repeating timer needs.
        #expect(runtime.call(callbacks[2], args: []) == .failed("\(file.path):6: late"))
    }

    @Test func badArgumentsRaiseClearErrors() throws {
        let cases: [(lua: String, error: String)] = [
            ("pml.after()", "pml.after: ms must be an integer from 1 to 86400000 (got no value)"),
            ("pml.after(0, f)", "pml.after: ms must be an integer from 1 to 86400000 (got 0)"),
            ("pml.after(-5, f)", "pml.after: ms must be an integer from 1 to 86400000 (got -5)"),
            ("pml.every(1.5, f)", "pml.every: ms must be an integer from 1 to 86400000 (got 1.5)"),
            ("pml.every('10', f)", "pml.every: ms must be an integer from 1 to 86400000 (got string)"),
            ("pml.after(f, 10)", "pml.after: ms must be an integer from 1 to 86400000 (got function)"),
            // Issue 9: math.maxinteger overflowed the deadline (a trap, after every restart of the daemon).
            ("pml.after(math.maxinteger, f)", "pml.after: ms must be an integer from 1 to 86400000 (got 9223372036854775807)"),
            ("pml.every(86400001, f)", "pml.every: ms must be an integer from 1 to 86400000 (got 86400001)"),
            ("pml.after(math.huge, f)", "pml.after: ms must be an integer from 1 to 86400000 (got inf)"),
            ("pml.every(-math.huge, f)", "pml.every: ms must be an integer from 1 to 86400000 (got -inf)"),
            ("pml.after(1e300, f)", "pml.after: ms must be an integer from 1 to 86400000 (got 1e+300)"),
            ("pml.after(math.mininteger, f)", "pml.after: ms must be an integer from 1 to 86400000 (got -9223372036854775808)"),
            ("pml.after(10)", "pml.after: fn must be a function (got no value)"),
            ("pml.every(10, 'f')", "pml.every: fn must be a function (got string)"),
            ("pml.every(10, {})", "pml.every: fn must be a function (got table)"),
            ("pml.cancel()", "pml.cancel: id must be a timer id (got no value)"),
            ("pml.cancel('1')", "pml.cancel: id must be a timer id (got string)"),
            ("pml.cancel(1.5)", "pml.cancel: id must be a timer id (got 1.5)"),
        ]
        let (runtime, host) = try hostedRuntime()
        try expectEachFails(runtime, folder, cases, after: "local function f() end")
        #expect(host.timers.isEmpty && host.cancelled.isEmpty)
    }

    @Test func withoutAHostTimersFailAndTheirFunctionsAreNotKept() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let file = try load(runtime, folder, """
        local kept = setmetatable({}, { __mode = "k" })
        return {
          name = "web",
          schedule = function()
            local f = function() end
            kept[f] = true
            return select(2, pcall(function() pml.after(10, f) end))
          end,
          cancel = function() pml.cancel(1) end,
          collected = function() collectgarbage(); return next(kept) == nil end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "schedule", args: []) ==
            .returned(.string("\(file.path):7: no supervisor is attached")))
        #expect(runtime.callHook(app: "web", hook: "collected", args: []) == .returned(.bool(true)))
        #expect(runtime.callHook(app: "web", hook: "cancel", args: []) == .failed("\(file.path):9: no supervisor is attached"))
    }

    @Test func aReleasedCallbackCanBeCollected() throws {
        let (runtime, host) = try hostedRuntime()
        try load(runtime, folder, """
        local kept = setmetatable({}, { __mode = "k" })
        return {
          name = "web",
          schedule = function() local f = function() end; kept[f] = true; pml.every(10, f) end,
          collected = function() collectgarbage(); return next(kept) == nil end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "schedule", args: []) == .returned(.null))
        #expect(runtime.callHook(app: "web", hook: "collected", args: []) == .returned(.bool(false)))
        runtime.release(host.timers[0].callback)
        #expect(runtime.callHook(app: "web", hook: "collected", args: []) == .returned(.bool(true)))
    }

    @Test func metrics() throws {
        let (runtime, host) = try hostedRuntime()
        let file = try load(runtime, folder, """
        return {
          name = "web",
          byName = function() return pml.metrics("web") end,
          byTable = function(app) return pml.metrics(app) end,
          missing = function(name) return { pml.metrics(name) } end,
          bad = function() pml.metrics(42) end,
          noName = function() pml.metrics({}) end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "byName", args: []) == .returned(host.metrics))
        #expect(runtime.callHook(app: "web", hook: "byTable", args: [.object(["name": .string("web")])]) == .returned(host.metrics))
        #expect(runtime.callHook(app: "web", hook: "missing", args: [.string("nope")]) ==
            .returned(.object(["2": .string("no app named \"nope\"")])))
        #expect(runtime.callHook(app: "web", hook: "bad", args: []) ==
            .failed("\(file.path):6: pml.metrics: app must be an app name or an app table (got 42)"))
        #expect(runtime.callHook(app: "web", hook: "noName", args: []) ==
            .failed("\(file.path):7: pml.metrics: the app table has no name"))
        // Without a supervisor no app exists.
        runtime.host = nil
        #expect(runtime.callHook(app: "web", hook: "missing", args: [.string("web")]) ==
            .returned(.object(["2": .string("no app named \"web\"")])))
    }
}
