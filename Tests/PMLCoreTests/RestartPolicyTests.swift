import Testing
@testable import PMLCore

@Suite struct RestartPolicyTests {
    func spec(_ edit: (inout AppSpec) -> Void = { _ in }) -> AppSpec {
        var s = try! AppSpecParser(file: "t", source: nil, baseDirectory: "/", cpuCount: 1)
            .parseApp(.object(["cmd": .string("x"), "name": .string("t")]))
        edit(&s)
        return s
    }

    @Test func quickExitsCountAsUnstableAndLongRunsReset() {
        let s = spec()
        var h = CrashHistory()
        h.recordCrash(uptimeMs: 10, spec: s)
        h.recordRestart()
        h.recordCrash(uptimeMs: 999, spec: s)
        h.recordRestart()
        #expect(h.unstableRestarts == 2)
        #expect(h.backoffStep == 2)
        #expect(h.restarts == 2)
        h.recordCrash(uptimeMs: 1000, spec: s)
        #expect(h.unstableRestarts == 0)
        #expect(h.backoffStep == 2, "backoff only resets after stable_after")
        h.recordCrash(uptimeMs: 30000, spec: s)
        #expect(h.backoffStep == 0)
        #expect(h.restarts == 2, "restarts only counts restarts")
    }

    @Test func interpretsEveryHookAnswer() throws {
        #expect(try RestartDecision.interpret(.null, defaultDelay: 100, hook: "onCrash") == nil)
        #expect(try RestartDecision.interpret(.bool(false), defaultDelay: 100, hook: "onCrash") == .stop(reason: "onCrash returned false"))
        #expect(try RestartDecision.interpret(.bool(true), defaultDelay: 100, hook: "onCrash") == .restart(delayMs: 100))
        #expect(try RestartDecision.interpret(.int(250), defaultDelay: 100, hook: "onCrash") == .restart(delayMs: 250))
        #expect(try RestartDecision.interpret(.double(12.7), defaultDelay: 100, hook: "onCrash") == .restart(delayMs: 12))
        #expect(try RestartDecision.interpret(.object(["delay": .int(5)]), defaultDelay: 100, hook: "h") == .restart(delayMs: 5))
        #expect(try RestartDecision.interpret(.object(["restart": .bool(true)]), defaultDelay: 7, hook: "h") == .restart(delayMs: 7))
        #expect(try RestartDecision.interpret(.object(["restart": .bool(false), "reason": .string("r")]), defaultDelay: 7, hook: "h") == .stop(reason: "r"))
        #expect(try RestartDecision.interpret(.object(["errored": .bool(true)]), defaultDelay: 7, hook: "h") == .errored(reason: "h marked it errored"))
    }

    @Test func rejectsNonsense() {
        #expect(throws: HookResultError.self) { try RestartDecision.interpret(.int(-1), defaultDelay: 1, hook: "h") }
        #expect(throws: HookResultError.self) { try RestartDecision.interpret(.string("soon"), defaultDelay: 1, hook: "h") }
        #expect(throws: HookResultError.self) { try RestartDecision.interpret(.object([:]), defaultDelay: 1, hook: "h") }
        #expect(throws: HookResultError.self) { try RestartDecision.interpret(.object(["delay": .string("x")]), defaultDelay: 1, hook: "h") }
        #expect(throws: HookResultError.self) { try RestartDecision.interpret(.double(1e12), defaultDelay: 1, hook: "h") }
    }

    @Test func fallbackFollowsTheSameRules() {
        var h = CrashHistory()
        #expect(RestartDecision.fallback(history: h, exitCode: 1, spec: spec { $0.autorestart = false }) == .stop(reason: "autorestart is off"))
        #expect(RestartDecision.fallback(history: h, exitCode: 78, spec: spec { $0.stopExitCodes = [78] }) == .stop(reason: "exit code 78 is in stop_exit_codes"))
        #expect(RestartDecision.fallback(history: h, exitCode: 1, spec: spec { $0.restartDelay = 100 }) == .restart(delayMs: 100))
        // No delay to grow: a huge backoff step (a tampered state.json) answers at once, no loop.
        var huge = h
        huge.backoffStep = Int.max
        #expect(RestartDecision.fallback(history: huge, exitCode: 1, spec: spec { $0.restartDelay = 0 }) == .restart(delayMs: 0))
        h.backoffStep = 3
        #expect(RestartDecision.fallback(history: h, exitCode: 1, spec: spec { $0.restartDelay = 100 }) == .restart(delayMs: 800), "doubling, as policy.lua")
        #expect(RestartDecision.fallback(history: h, exitCode: 1, spec: spec { $0.expBackoffRestartDelay = 100 }) == .restart(delayMs: 337), "× 1.5 for PM2's exp backoff")
        h.backoffStep = 1_000_000
        #expect(RestartDecision.fallback(history: h, exitCode: 1, spec: spec { $0.restartDelayMax = 15000 }) == .restart(delayMs: 15000), "capped")
        h.unstableRestarts = 16
        if case .errored = RestartDecision.fallback(history: h, exitCode: 1, spec: spec()) {} else { Issue.record("expected errored") }
    }

    @Test func targets() {
        #expect(TargetSelection("all") == .all)
        #expect(TargetSelection("3") == .worker(3))
        #expect(TargetSelection("web") == .app("web"))
        #expect(TargetSelection("-1") == .app("-1"))
    }

    @Test func signalNames() {
        #expect(SignalNames.number("SIGTERM") == 15)
        #expect(SignalNames.number("usr2") == 12)
        #expect(SignalNames.number("9") == 9)
        #expect(SignalNames.number("SIGNOPE") == nil)
        #expect(SignalNames.number("0") == nil)
        #expect(SignalNames.name(9) == "SIGKILL")
        #expect(SignalNames.name(40) == "SIG40")
    }

    @Test func statusesThatHaveProcesses() {
        #expect(WorkerStatus.allCases.filter(\.hasProcess) == [.starting, .online, .stopping])
    }
}
