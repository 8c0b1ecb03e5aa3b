import PMLCore
import PMLLua
import Testing

@Suite struct SandboxTests {
    let folder = FixtureFolder()

    @Test(arguments: ["os.exit", "os.execute", "io.popen", "dofile", "loadfile", "debug", "debug.traceback",
                      "os.setlocale", "package"])
    func dangerousFunctionsAreAbsent(_ expression: String) throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let file = try load(runtime, folder, """
        return {
          name = "web",
          probe = function()
            local ok, err = pcall(function() return \(expression)() end)
            return { ok = ok, err = err }
          end,
        }
        """)
        let result = runtime.callHook(app: "web", hook: "probe", args: [])
        guard case .returned(let value) = result, value["ok"] == .bool(false),
              let err = value["err"]?.stringValue else {
            Issue.record("\(expression) is callable: \(result)"); return
        }
        #expect(err.hasPrefix("\(file.path):4: attempt to"))
        #expect(err.contains("a nil value"))
    }

    @Test func unsafeCornersAreClosed() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        try load(runtime, folder, """
        return {
          name = "web",
          gc = function() return select(2, pcall(setmetatable, {}, { __gc = function() end })) end,
          stop = function() return select(2, pcall(collectgarbage, "stop")) end,
          count = function() return type(collectgarbage("count")) end,
          binary = function() return select(2, load("\\27Lua")) end,
          loadEnv = function() secret = 1; return load("return secret")() end,
          stringMeta = function() return getmetatable("") end,
          envMeta = function() return getmetatable(_ENV) end,
          allowed = function() return { os.time() > 0, type(io.open), type(string.format), type(table.concat),
                                        type(math.floor), type(utf8.char), type(coroutine.wrap), type(os.getenv) } end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "gc", args: []).value?.stringValue?.contains("__gc metamethods are not available") == true)
        #expect(runtime.callHook(app: "web", hook: "stop", args: []).value?.stringValue?.contains("not available to scripts") == true)
        #expect(runtime.callHook(app: "web", hook: "count", args: []) == .returned(.string("number")))
        #expect(runtime.callHook(app: "web", hook: "binary", args: []).value?.stringValue?.contains("binary chunk") == true)
        #expect(runtime.callHook(app: "web", hook: "loadEnv", args: []) == .returned(.int(1)))
        #expect(runtime.callHook(app: "web", hook: "stringMeta", args: []) == .returned(.bool(false)))
        #expect(runtime.callHook(app: "web", hook: "envMeta", args: []) == .returned(.bool(false)))
        #expect(runtime.callHook(app: "web", hook: "allowed", args: []) == .returned(.array([
            .bool(true), .string("function"), .string("function"), .string("function"),
            .string("function"), .string("function"), .string("function"), .string("function"),
        ])))
    }

    @Test func appFilesCannotClobberEachOther() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        try load(runtime, folder, """
        counter = 1
        string.shout = function(s) return s:upper() end
        _G.shared = "from a"
        pml.log = nil
        return { name = "a", get = function() return { counter, type(string.shout), shared, type(pml.log) } end }
        """, as: "a.lua")
        try load(runtime, folder, """
        counter = 2
        return { name = "b", get = function() return { counter, type(string.shout), shared, type(pml.log) } end }
        """, as: "b.lua")
        #expect(runtime.callHook(app: "a", hook: "get", args: []) ==
            .returned(.array([.int(1), .string("function"), .string("from a"), .string("nil")])))
        #expect(runtime.callHook(app: "b", hook: "get", args: []) ==
            .returned(.object(["1": .int(2), "2": .string("nil"), "4": .string("function")])))
        // The library environment is untouched too.
        #expect(runtime.callLibrary(module: "pml.policy", function: "restart", args: [
            .object(["autorestart": .bool(false)]), .object([:]), .object([:]),
        ]).value?["reason"] == .string("autorestart is off"))
    }
}

extension HookOutcome {
    var value: ScriptValue? {
        if case .returned(let v) = self { return v }
        return nil
    }
    var failure: String? {
        if case .failed(let m) = self { return m }
        return nil
    }
}
