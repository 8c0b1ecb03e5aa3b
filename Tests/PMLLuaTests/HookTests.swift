import PMLCore
import PMLLua
import Testing

@Suite struct HookTests {
    let folder = FixtureFolder()

    @Test func hooksReceiveArgumentsAndReturnValues() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        try load(runtime, folder, """
        return {
          name = "web",
          onCrash = function(worker, exit)
            return { delay = exit.code * 10, who = worker.name, tags = worker.tags,
                     signal = exit.signal, half = exit.uptime / 2, first = worker.tags[1] }
          end,
          echo = function(...) return ... end,
          count = function(...) return select("#", ...) end,
          nothing = function() end,
        }
        """)
        let worker: ScriptValue = .object(["name": .string("web#0"), "tags": .array([.string("a"), .string("b")])])
        let exit: ScriptValue = .object(["code": .int(3), "signal": .null, "uptime": .int(5)])
        #expect(runtime.callHook(app: "web", hook: "onCrash", args: [worker, exit]) == .returned(.object([
            "delay": .int(30), "who": .string("web#0"), "tags": .array([.string("a"), .string("b")]),
            "half": .double(2.5), "first": .string("a"),
        ])))
        #expect(runtime.callHook(app: "web", hook: "nothing", args: []) == .returned(.null))
        #expect(runtime.callHook(app: "web", hook: "count", args: [.null, .int(1), .null]) == .returned(.int(3)))
        // Values round-trip (a function has no Lua form and arrives as nil).
        let nested: ScriptValue = .object([
            "list": .array([.int(1), .double(1.5), .bool(true), .bool(false), .string("ü ✓")]),
            "map": .object(["deep": .object(["deeper": .array([.object(["x": .int(-7)])])])]),
        ])
        #expect(runtime.callHook(app: "web", hook: "echo", args: [nested]) == .returned(nested))
        #expect(runtime.callHook(app: "web", hook: "echo", args: [.function]) == .returned(.null))
        #expect(runtime.callHook(app: "web", hook: "echo", args: [.object([:])]) == .returned(.object([:])))
    }

    @Test func notDefined() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        try load(runtime, folder, """
        return {
          name = "web",
          autoscale = { min = 1, rule = function(m) return m.instances + 1 end },
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "onCrash", args: []) == .notDefined)
        #expect(runtime.callHook(app: "web", hook: "name", args: []) == .notDefined)
        #expect(runtime.callHook(app: "web", hook: "name.len", args: []) == .notDefined)
        #expect(runtime.callHook(app: "nope", hook: "onCrash", args: []) == .notDefined)
        #expect(runtime.callHook(app: "web", hook: "autoscale.min", args: []) == .notDefined)
        #expect(runtime.callHook(app: "web", hook: "autoscale.rule", args: [.object(["instances": .int(2)])]) == .returned(.int(3)))
        runtime.unbind(app: "web")
        #expect(runtime.callHook(app: "web", hook: "autoscale.rule", args: []) == .notDefined)
    }

    @Test func rebindingReplacesTheHooks() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        try load(runtime, folder, "return { name = 'web', v = function() return 1 end }")
        try load(runtime, folder, "return { name = 'web', v = function() return 2 end }")
        #expect(runtime.callHook(app: "web", hook: "v", args: []) == .returned(.int(2)))
        let unused = try runtime.evaluateAppFile(path: folder.write("x.lua", "return { { name = 'a' }, { name = 'b' } }"))
        for ref in unused.tableRefs { runtime.release(tableRef: ref) }
        #expect(runtime.callHook(app: "web", hook: "v", args: []) == .returned(.int(2)))
    }

    /// A state that replaced a stuck one gets the same registry numbers for its own tables: a ref
    /// (or timer callback) from the old state must never bind, release or call anything there.
    @Test func refsFromAnotherStateAreRefused() throws {
        let old = try LuaRuntime(libraryPaths: [repoLuaPath])
        let fresh = try LuaRuntime(libraryPaths: [repoLuaPath])
        #expect(old.stateID != fresh.stateID)
        func source(_ version: String) -> String { "return { name = 'web', v = function() return '\(version)' end }" }
        let stale = try old.evaluateAppFile(path: folder.write("old.lua", source("old")))
        let mine = try fresh.evaluateAppFile(path: folder.write("new.lua", source("new")))
        #expect(fresh.bind(app: "web", tableRef: mine.tableRefs[0]))
        // Same position in both registries: only the state tells them apart.
        #expect(!fresh.bind(app: "web", tableRef: stale.tableRefs[0]))
        #expect(!fresh.release(tableRef: stale.tableRefs[0]))
        #expect(fresh.callHook(app: "web", hook: "v", args: []) == .returned(.string("new")))
        // The old state's own ref still works there.
        #expect(old.bind(app: "web", tableRef: stale.tableRefs[0]))
        #expect(old.callHook(app: "web", hook: "v", args: []) == .returned(.string("old")))

        let host = RecordingHost()
        old.host = host
        fresh.host = host
        try load(old, folder, "return { name = 't', go = function() pml.after(10, function() return 'old' end) end }", as: "t1.lua")
        try load(fresh, folder, "return { name = 't', go = function() pml.after(10, function() return 'new' end) end }", as: "t2.lua")
        _ = old.callHook(app: "t", hook: "go", args: [])
        _ = fresh.callHook(app: "t", hook: "go", args: [])
        let (oldTimer, newTimer) = (host.timers[0].callback, host.timers[1].callback)
        #expect(fresh.call(oldTimer, args: []) == .notDefined)
        fresh.release(oldTimer)
        #expect(fresh.call(newTimer, args: []) == .returned(.string("new")))
        #expect(old.call(oldTimer, args: []) == .returned(.string("old")))
    }

    @Test func hookErrorsCarryFileAndLine() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let file = try load(runtime, folder, """
        return {
          name = "web",
          onStart = function(app)
            return app.missing.field
          end,
          raise = function() error("custom failure") end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "onStart", args: [.object([:])]) ==
            .failed("\(file.path):4: attempt to index a nil value (field 'missing')"))
        #expect(runtime.callHook(app: "web", hook: "raise", args: []) == .failed("\(file.path):6: custom failure"))
    }

    @Test func conversionsFollowTheRules() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        try load(runtime, folder, """
        return {
          name = "web",
          sparse = function() return { [1] = "a", [3] = "c" } end,
          mixed = function() return { "a", x = 1 } end,
          zero = function() return { [0] = "z", [1] = "a" } end,
          floatKey = function() return { [1.5] = true } end,
          odd = function() return { [true] = 1, [{}] = 2, co = coroutine.create(print), ok = 1 } end,
          cycle = function() local t = { name = "t" }; t.self = t; t.again = t; return t end,
          deep = function() local t = {} ; local c = t
            for i = 1, 40 do c.n = {} ; c = c.n end ; return t end,
          wide = function() local t = {} ; local c = t
            for i = 1, 30 do local n = {} ; c.a = n ; c.b = n ; c = n end ; return t end,
          numbers = function() return { 1, 2.0, 2^53, -0.0 } end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "sparse", args: []) == .returned(.object(["1": .string("a"), "3": .string("c")])))
        #expect(runtime.callHook(app: "web", hook: "mixed", args: []) == .returned(.object(["1": .string("a"), "x": .int(1)])))
        #expect(runtime.callHook(app: "web", hook: "zero", args: []) == .returned(.object(["0": .string("z"), "1": .string("a")])))
        #expect(runtime.callHook(app: "web", hook: "floatKey", args: []) == .returned(.object(["1.5": .bool(true)])))
        #expect(runtime.callHook(app: "web", hook: "odd", args: []) == .returned(.object(["co": .null, "ok": .int(1)])))
        #expect(runtime.callHook(app: "web", hook: "numbers", args: []) ==
            .returned(.array([.int(1), .double(2), .double(9007199254740992), .double(-0.0)])))

        // A cycle reads as null where it closes.
        #expect(runtime.callHook(app: "web", hook: "cycle", args: []) ==
            .returned(.object(["name": .string("t"), "self": .null, "again": .null])))

        // Tables nested deeper than 32 read as null.
        guard case .returned(var value) = runtime.callHook(app: "web", hook: "deep", args: []) else {
            Issue.record("deep failed"); return
        }
        var depth = 1
        while case .object(let fields) = value, let next = fields["n"] { value = next; depth += 1 }
        #expect(depth == 33 && value == .null)

        // Shared subtables: 2^30 paths, read within a bounded number of values.
        guard case .returned = runtime.callHook(app: "web", hook: "wide", args: []) else {
            Issue.record("wide failed"); return
        }
    }
}
