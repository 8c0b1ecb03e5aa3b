import PMLCore
import PMLLua
import Testing

@Suite struct HostTests {
    let folder = FixtureFolder()

    @Test func logWarnAndPrintReachTheHostWithTheirSource() throws {
        let (runtime, host) = try hostedRuntime()
        let file = try load(runtime, folder, """
        pml.log("loading")
        return {
          name = "web",
          onStart = function(app)
            pml.log("starting", app.name, 3, true, nil)
            pml.warn("careful")
            print("printed", 1.5)
            pcall(pml.log, "through pcall")
          end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "onStart", args: [.object(["name": .string("web")])]) == .returned(.null))
        let path = file.path
        #expect(host.logs == [
            .init(level: .info, source: "\(path):1", message: "loading"),
            .init(level: .info, source: "\(path):5", message: "starting\tweb\t3\ttrue\tnil"),
            .init(level: .warn, source: "\(path):6", message: "careful"),
            .init(level: .info, source: "\(path):7", message: "printed\t1.5"),
            .init(level: .info, source: "\(path):8", message: "through pcall"),
        ])
    }

    @Test func appsAndWorkers() throws {
        let (runtime, host) = try hostedRuntime()
        defer { withExtendedLifetime(host) {} } // the runtime holds it weakly
        try load(runtime, folder, """
        return {
          name = "web",
          probe = function()
            local apps = pml.apps()
            local workers = pml.workers("web")
            local none, err = pml.workers("nope")
            return { apps[1].name, #apps, workers[1].pid, none == nil, err }
          end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "probe", args: []) == .returned(.array([
            .string("web"), .int(1), .int(4242), .bool(true), .string("no app named \"nope\""),
        ])))
    }

    @Test func restartAndSpawn() throws {
        let (runtime, host) = try hostedRuntime()
        let file = try load(runtime, folder, """
        return {
          name = "web",
          onCrash = function()
            pml.restart("api")
            pml.restart(3)
            pml.spawn({ "notify-send", "crashed", 42 })
          end,
          restart = function(target) pml.restart(target) end,
          caught = function() return select(2, pcall(pml.restart, "x")) end,
          badSpawn = function() pml.spawn({ "ok", {} }) end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "onCrash", args: []) == .returned(.null))
        #expect(host.restarted == ["api", "3"])
        #expect(host.spawned == [["notify-send", "crashed", "42"]])

        host.restartError = "no app named \"x\""
        #expect(runtime.callHook(app: "web", hook: "restart", args: [.string("x")]) ==
            .failed("\(file.path):8: no app named \"x\""))
        #expect(runtime.callHook(app: "web", hook: "caught", args: []).value?.stringValue?.hasSuffix("no app named \"x\"") == true)
        #expect(runtime.callHook(app: "web", hook: "badSpawn", args: []).failure?.contains("argv[2] is not a string") == true)
        host.restartError = nil
        host.spawnError = "cannot run notify-send: No such file or directory"
        #expect(runtime.callHook(app: "web", hook: "onCrash", args: []).failure?.hasSuffix("cannot run notify-send: No such file or directory") == true)
    }

    @Test func withoutAHost() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        try load(runtime, folder, """
        return {
          name = "web",
          probe = function() pml.log("dropped"); return { #pml.apps(), pml.workers("web") == nil } end,
          restart = function() pml.restart("web") end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "probe", args: []) == .returned(.array([.int(0), .bool(true)])))
        #expect(runtime.callHook(app: "web", hook: "restart", args: []).failure?.hasSuffix("no supervisor is attached") == true)
    }

    @Test func aHostCallbackMayCallAHook() throws {
        final class ReentrantHost: RecordingHost {
            weak var runtime: LuaRuntime?
            var nested: HookOutcome?
            override func luaRestart(target: String) -> String? {
                nested = runtime?.callHook(app: target, hook: "onStop", args: [.string(target)])
                return nil
            }
        }
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let host = ReentrantHost()
        host.runtime = runtime
        runtime.host = host
        try load(runtime, folder, """
        return {
          name = "web",
          outer = function() pml.restart("web"); return "outer done" end,
          onStop = function(name) return "stopped " .. name end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "outer", args: []) == .returned(.string("outer done")))
        #expect(host.nested == .returned(.string("stopped web")))
    }
}
