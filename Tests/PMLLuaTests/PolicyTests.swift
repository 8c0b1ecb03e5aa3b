import PMLCore
import PMLLua
import Testing

/// lua/pml/policy.lua, called as the daemon calls it.
@Suite struct PolicyTests {
    let runtime: LuaRuntime

    init() throws {
        runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
    }

    private func decide(app: [String: ScriptValue] = [:], worker: [String: ScriptValue] = [:],
                        exit: [String: ScriptValue] = ["code": .int(1), "uptime": .int(50)]) -> HookOutcome {
        // The app as the daemon passes it: a parsed spec with the defaults an app file gets.
        var spec = try! AppSpecParser(file: "app.lua", source: nil, baseDirectory: "/", cpuCount: 1)
            .parseApp(.object(["name": .string("web"), "cmd": .string("./web"),
                               "stop_exit_codes": .array([.int(0), .int(78)])]))
            .scriptValue
        if case .object(var fields) = spec {
            fields.merge(app) { $1 }
            spec = .object(fields)
        }
        let counters = CrashHistory().scriptFields.merging(worker) { $1 }
        return runtime.callLibrary(module: "pml.policy", function: "restart",
                                   args: [spec, .object(counters), .object(exit)])
    }

    @Test func autorestartOff() {
        #expect(decide(app: ["autorestart": .bool(false)]) ==
            .returned(.object(["restart": .bool(false), "reason": .string("autorestart is off")])))
    }

    @Test func stopExitCode() {
        #expect(decide(exit: ["code": .int(78), "uptime": .int(10)]) ==
            .returned(.object(["restart": .bool(false), "reason": .string("exit code 78 is in stop_exit_codes")])))
        // A signalled exit has no code and is restarted.
        #expect(decide(exit: ["signal": .string("SIGKILL"), "uptime": .int(10)]) == .returned(.object(["delay": .int(100)])))
    }

    @Test func erroredAfterTooManyUnstableRestarts() {
        #expect(decide(worker: ["unstable_restarts": .int(16)]) == .returned(.object([
            "errored": .bool(true),
            "reason": .string("crashed 16 times in a row, each within min_uptime (1000ms)"),
        ])))
        // Exactly max_restarts is still restarted.
        #expect(decide(worker: ["unstable_restarts": .int(15)]) == .returned(.object(["delay": .int(100)])))
    }

    @Test func exponentialBackoffCappedAtTheMaximum() {
        #expect(decide(worker: ["backoff_step": .int(0)]) == .returned(.object(["delay": .int(100)])))
        #expect(decide(worker: ["backoff_step": .int(3)]) == .returned(.object(["delay": .int(800)])))
        #expect(decide(worker: ["backoff_step": .int(8)]) == .returned(.object(["delay": .int(15000)])))
        #expect(decide(worker: ["backoff_step": .int(5000)]) == .returned(.object(["delay": .int(15000)])))
        #expect(decide(app: ["restart_delay": .int(250), "restart_delay_max": .int(1000)], worker: ["backoff_step": .int(1)]) ==
            .returned(.object(["delay": .int(500)])))
    }

    @Test func pm2ExpBackoffGrowsByHalf() {
        let app: [String: ScriptValue] = ["exp_backoff_restart_delay": .int(100)]
        #expect(decide(app: app, worker: ["backoff_step": .int(0)]) == .returned(.object(["delay": .int(100)])))
        #expect(decide(app: app, worker: ["backoff_step": .int(2)]) == .returned(.object(["delay": .int(225)])))
        #expect(decide(app: app, worker: ["backoff_step": .int(30)]) == .returned(.object(["delay": .int(15000)])))
    }

    @Test func decisionsInterpretAsRestartDecisions() throws {
        guard case .returned(let value) = decide(worker: ["backoff_step": .int(2)]) else {
            Issue.record("policy failed"); return
        }
        #expect(try RestartDecision.interpret(value, defaultDelay: 0, hook: "policy") == .restart(delayMs: 400))
    }

    @Test func unknownModuleAndFunction() {
        #expect(runtime.callLibrary(module: "pml.policy", function: "nope", args: []) == .notDefined)
        #expect(runtime.callLibrary(module: "pml.nope", function: "restart", args: []).failure?
            .hasPrefix("module 'pml.nope' not found:") == true)
    }
}
