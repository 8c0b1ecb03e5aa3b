import PMLCore
import PMLLua
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@Suite struct BudgetTests {
    let folder = FixtureFolder()

    private func expectStillWorks(_ runtime: LuaRuntime) {
        #expect(runtime.callHook(app: "web", hook: "ok", args: [.int(20)]) == .returned(.int(21)))
    }

    @Test func runawayLoopIsStoppedAndTheRuntimeKeepsWorking() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath], limits: LuaLimits(instructionBudget: 2_000_000))
        let file = try load(runtime, folder, """
        return {
          name = "web",
          spin = function()
            while true do end
          end,
          ok = function(n) return n + 1 end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "spin", args: []) ==
            .failed("\(file.path):4: spin exceeded its instruction budget (2000000 instructions)"))
        expectStillWorks(runtime)
        // The budget is per call: a second runaway is stopped the same way.
        #expect(runtime.callHook(app: "web", hook: "spin", args: [])
            .failure?.hasSuffix("spin exceeded its instruction budget (2000000 instructions)") == true)
        expectStillWorks(runtime)
    }

    @Test func aScriptsPcallCannotSwallowTheBudgetError() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath], limits: LuaLimits(instructionBudget: 1_000_000))
        let file = try load(runtime, folder, """
        return {
          name = "web",
          stubborn = function()
            while true do
              pcall(function() while true do end end)
            end
          end,
          ok = function(n) return n + 1 end,
        }
        """)
        let failure = runtime.callHook(app: "web", hook: "stubborn", args: []).failure
        #expect(failure?.hasPrefix(file.path + ":") == true)
        #expect(failure?.contains("stubborn exceeded its instruction budget") == true)
        expectStillWorks(runtime)
    }

    @Test func cpuTimeBudget() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath],
                                     limits: LuaLimits(instructionBudget: Int.max, timeBudgetMs: 50))
        let file = try load(runtime, folder, """
        return {
          name = "web",
          spin = function()
            local n = 0
            while true do n = n + 1 end
          end,
          ok = function(n) return n + 1 end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "spin", args: []) ==
            .failed("\(file.path):5: spin exceeded its CPU time budget (50 ms)"))
        expectStillWorks(runtime)
    }

    @Test("the time budget counts the script thread's CPU, not time it spends waiting (a slow host call, a busy CPU)")
    func waitingDoesNotCountAgainstTheTimeBudget() throws {
        final class SlowHost: RecordingHost {
            override func luaRestart(target: String) -> String? {
                usleep(40_000) // waits without using CPU
                return super.luaRestart(target: target)
            }
        }
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath],
                                     limits: LuaLimits(instructionBudget: Int.max, timeBudgetMs: 50))
        let host = SlowHost()
        runtime.host = host
        try load(runtime, folder, """
        return {
          name = "web",
          patient = function()
            for _ = 1, 5 do pml.restart("web") end
            return "done"
          end,
          ok = function(n) return n + 1 end,
        }
        """)
        let started = monotonicSeconds()
        #expect(runtime.callHook(app: "web", hook: "patient", args: []) == .returned(.string("done")))
        #expect(monotonicSeconds() - started >= 0.2, "five waits of 40 ms: four times the 50 ms budget in wall time")
        #expect(host.restarted.count == 5)
        expectStillWorks(runtime)
    }

    @Test func aScriptsPcallCannotSwallowTheTimeBudgetError() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath],
                                     limits: LuaLimits(instructionBudget: Int.max, timeBudgetMs: 30))
        try load(runtime, folder, """
        return {
          name = "web",
          stubborn = function()
            while true do pcall(function() while true do end end) end
          end,
          ok = function(n) return n + 1 end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "stubborn", args: []).failure?.hasSuffix("stubborn exceeded its CPU time budget (30 ms)") == true)
        expectStillWorks(runtime)
    }

    @Test func runawayAppFileIsStopped() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath], limits: LuaLimits(instructionBudget: 1_000_000))
        let path = folder.write("app.lua", "local x = 0\nwhile true do\n  x = x + 1\nend\n")
        let error = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: path) }
        #expect(error?.line != nil)
        #expect(error?.message == "app file exceeded its instruction budget (1000000 instructions)")
    }

    @Test func runawayCoroutineIsStopped() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath], limits: LuaLimits(instructionBudget: 1_000_000))
        try load(runtime, folder, """
        return {
          name = "web",
          spin = function()
            local co = coroutine.wrap(function() while true do end end)
            co()
          end,
          ok = function(n) return n + 1 end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "spin", args: []).failure?.contains("exceeded its instruction budget") == true)
        expectStillWorks(runtime)
    }

    @Test func allocationBombIsStoppedAndTheRuntimeKeepsWorking() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let file = try load(runtime, folder, """
        return {
          name = "web",
          bomb = function()
            local t = {} while true do t[#t+1] = string.rep("x", 1e6) end
          end,
          ok = function(n) return n + 1 end,
        }
        """)
        let before = runtime.memoryInUse
        #expect(runtime.callHook(app: "web", hook: "bomb", args: []) ==
            .failed("\(file.path):4: bomb exceeded the memory limit (64 MiB)"))
        #expect(runtime.memoryInUse < before + (1 << 20))
        expectStillWorks(runtime)
        #expect(runtime.callHook(app: "web", hook: "bomb", args: []).failure?.hasSuffix("exceeded the memory limit (64 MiB)") == true)
        expectStillWorks(runtime)
    }

    @Test func oneHugeAllocationIsRefused() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath], limits: LuaLimits(memoryLimitBytes: 16 << 20))
        let file = try load(runtime, folder, """
        return {
          name = "web",
          huge = function()
            return #string.rep("x", 100 * 1024 * 1024)
          end,
          table = function()
            local t = {}
            for i = 1, 1e7 do t[i] = i end
          end,
          ok = function(n) return n + 1 end,
        }
        """)
        // Lua gives a refused allocation no location: the message names where the hook is defined.
        #expect(runtime.callHook(app: "web", hook: "huge", args: []) ==
            .failed("\(file.path):3: huge exceeded the memory limit (16 MiB)"))
        expectStillWorks(runtime)
        #expect(runtime.callHook(app: "web", hook: "table", args: []).failure?.contains("exceeded the memory limit (16 MiB)") == true)
        expectStillWorks(runtime)
        #expect(runtime.memoryInUse < 16 << 20)
    }

    @Test func allocationBombInAnAppFile() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath], limits: LuaLimits(memoryLimitBytes: 16 << 20))
        let path = folder.write("app.lua", "local t = {}\nwhile true do t[#t+1] = string.rep('x', 1e5) end\n")
        let error = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: path) }
        #expect(error == AppFileError(file: path, line: 2, message: "app file exceeded the memory limit (16 MiB)"))
    }

    @Test func hugeAllocationInAnAppFile() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath], limits: LuaLimits(memoryLimitBytes: 16 << 20))
        let path = folder.write("app.lua", "local s = string.rep('x', 1 << 30)\nreturn { name = 'x' }")
        let error = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: path) }
        #expect(error == AppFileError(file: path, message: "app file exceeded the memory limit (16 MiB)"))
        #expect(throws: Never.self) { try runtime.evaluateAppFile(path: folder.write("ok.lua", "return { name = 'ok' }")) }
    }

    @Test func memoryErrorInALibraryCall() throws {
        let lib = folder.write("mylib.lua", "local M = {}\nfunction M.big(n)\n  return #string.rep('x', n)\nend\nreturn M\n")
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath, folder.path], limits: LuaLimits(memoryLimitBytes: 16 << 20))
        #expect(runtime.callLibrary(module: "mylib", function: "big", args: [.int(1 << 30)]) ==
            .failed("\(lib):2: mylib.big exceeded the memory limit (16 MiB)"))
        #expect(runtime.callLibrary(module: "mylib", function: "big", args: [.int(10)]) == .returned(.int(10)))
    }

    @Test func tooSmallAMemoryLimitFailsToStart() {
        #expect(throws: LuaRuntimeError.self) { try LuaRuntime(libraryPaths: [repoLuaPath], limits: LuaLimits(memoryLimitBytes: 4096)) }
    }
}
