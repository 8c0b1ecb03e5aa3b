import PMLCore
import PMLLua
import Testing

@Suite struct PluginTests {
    let folder = FixtureFolder()

    @Test func aPluginLoadsAndItsHooksAreCalled() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let path = folder.write("plugins/notify.lua", """
        local format = require("format") -- beside the plugin, as for app files
        return {
          name = "notify",
          version = 2,
          onStart = function(app) return format(app.name) end,
          onCrash = function(worker, exit) return { delay = exit.code } end,
          autoscale = { rule = function(m) return m.instances * 2 end },
        }
        """)
        folder.write("plugins/format.lua", "return function(name) return 'notify saw ' .. name end")
        let plugin = try runtime.loadPlugin(path: path)
        #expect(plugin.name == "notify")
        #expect(plugin.path == path)
        #expect(plugin.hooks == ["onCrash", "onStart"])
        #expect(runtime.plugins == [plugin])

        #expect(runtime.callPluginHook(plugin: "notify", hook: "onStart", args: [.object(["name": .string("web")])]) ==
            .returned(.string("notify saw web")))
        #expect(runtime.callPluginHook(plugin: "notify", hook: "onCrash", args: [.object([:]), .object(["code": .int(3)])]) ==
            .returned(.object(["delay": .int(3)])))
        #expect(runtime.callPluginHook(plugin: "notify", hook: "autoscale.rule", args: [.object(["instances": .int(2)])]) ==
            .returned(.int(4)))
        #expect(runtime.callPluginHook(plugin: "notify", hook: "onExit", args: []) == .notDefined)
        #expect(runtime.callPluginHook(plugin: "notify", hook: "version", args: []) == .notDefined)
        #expect(runtime.callPluginHook(plugin: "nope", hook: "onStart", args: []) == .notDefined)
    }

    @Test func pluginsAreIsolatedFromEachOtherAndFromApps() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        _ = try runtime.loadPlugin(path: folder.write("a.lua", """
        counter = 1
        string.shout = function(s) return s:upper() end
        pml.log = nil
        pml.autoscale.target = nil
        return { name = "a", get = function() return { counter, type(string.shout), type(pml.log) } end }
        """))
        _ = try runtime.loadPlugin(path: folder.write("b.lua", """
        counter = 2
        return {
          name = "b",
          get = function() return { counter, type(string.shout), type(pml.log), type(pml.autoscale.target) } end,
        }
        """))
        try load(runtime, folder, """
        return { name = "web", get = function() return { counter, type(string.shout), type(pml.log) } end }
        """)
        #expect(runtime.plugins.map(\.name) == ["a", "b"])
        #expect(runtime.callPluginHook(plugin: "a", hook: "get", args: []) ==
            .returned(.array([.int(1), .string("function"), .string("nil")])))
        #expect(runtime.callPluginHook(plugin: "b", hook: "get", args: []) ==
            .returned(.array([.int(2), .string("nil"), .string("function"), .string("function")])))
        #expect(runtime.callHook(app: "web", hook: "get", args: []) ==
            .returned(.object(["2": .string("nil"), "3": .string("function")])))
    }

    @Test func brokenPluginFilesAreReportedAndLoadNothing() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath], limits: LuaLimits(instructionBudget: 1_000_000))
        let good = try runtime.loadPlugin(path: folder.write("good.lua", "return { name = 'good' }"))
        let cases: [(file: String, source: String, line: Int?, message: String)] = [
            ("syntax.lua", "return {\n  name = 'x',,\n}", 2, "unexpected symbol near ','"),
            ("raises.lua", "local x = 1\nerror('not today')\nreturn { name = 'x' }", 2, "not today"),
            ("loops.lua", "while true do end", 1, "plugin file exceeded its instruction budget (1000000 instructions)"),
            ("nothing.lua", "local x = 1", nil, "a plugin must return a table { name = \"...\", <hooks> } (got nil)"),
            ("number.lua", "return 42", nil, "a plugin must return a table { name = \"...\", <hooks> } (got number)"),
            ("noname.lua", "return { onStart = function() end }", nil, "a plugin's name must be a non-empty string (got nil)"),
            ("empty.lua", "return { name = '' }", nil, "a plugin's name must be a non-empty string (got an empty string)"),
            ("numbered.lua", "return { name = 7 }", nil, "a plugin's name must be a non-empty string (got number)"),
            ("list.lua", "return { 'good' }", nil, "a plugin's name must be a non-empty string (got nil)"),
            ("again.lua", "return { name = 'good', onStart = function() end }", nil,
             "a plugin named \"good\" is already loaded (from \(good.path))"),
        ]
        for bad in cases {
            let path = folder.write(bad.file, bad.source)
            #expect(throws: AppFileError(file: path, line: bad.line, message: bad.message), "\(bad.file)") {
                try runtime.loadPlugin(path: path)
            }
        }
        #expect(throws: AppFileError(file: folder.path + "/missing.lua", message: "cannot read: No such file or directory")) {
            try runtime.loadPlugin(path: folder.path + "/missing.lua")
        }
        #expect(runtime.plugins == [good])
    }

    @Test func aPluginThatFailsAtCallTimeLeavesTheOthersWorking() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath], limits: LuaLimits(instructionBudget: 1_000_000))
        let bad = try runtime.loadPlugin(path: folder.write("bad.lua", """
        return {
          name = "bad",
          onStart = function(app) return app.missing.field end,
          onStop = function() while true do end end,
        }
        """))
        _ = try runtime.loadPlugin(path: folder.write("good.lua", """
        return { name = "good", onStart = function(app) return "good " .. app.name end }
        """))
        let app: ScriptValue = .object(["name": .string("web")])
        #expect(runtime.callPluginHook(plugin: "bad", hook: "onStart", args: [app]) ==
            .failed("\(bad.path):3: attempt to index a nil value (field 'missing')"))
        #expect(runtime.callPluginHook(plugin: "good", hook: "onStart", args: [app]) == .returned(.string("good web")))
        #expect(runtime.callPluginHook(plugin: "bad", hook: "onStop", args: []) ==
            .failed("\(bad.path):4: onStop exceeded its instruction budget (1000000 instructions)"))
        #expect(runtime.callPluginHook(plugin: "good", hook: "onStart", args: [app]) == .returned(.string("good web")))
    }

    @Test func unloadPluginsForgetsThemAll() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let path = folder.write("p.lua", "return { name = 'p', onStart = function() return 1 end }")
        _ = try runtime.loadPlugin(path: path)
        _ = try runtime.loadPlugin(path: folder.write("q.lua", "return { name = 'q', onStart = function() return 2 end }"))
        runtime.unloadPlugins()
        #expect(runtime.plugins.isEmpty)
        #expect(runtime.callPluginHook(plugin: "p", hook: "onStart", args: []) == .notDefined)
        // Reloading after an edit: the same name is free again, and the new hooks are called.
        folder.write("p.lua", "return { name = 'p', onStart = function() return 3 end }")
        #expect(try runtime.loadPlugin(path: path).hooks == ["onStart"])
        #expect(runtime.callPluginHook(plugin: "p", hook: "onStart", args: []) == .returned(.int(3)))
        #expect(runtime.callPluginHook(plugin: "q", hook: "onStart", args: []) == .notDefined)
    }
}
