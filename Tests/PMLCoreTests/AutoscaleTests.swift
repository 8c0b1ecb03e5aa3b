import Testing
@testable import PMLCore

@Suite struct AutoscaleTests {
    let spec = AutoscaleSpec(min: 2, max: 8, every: 1000, cooldown: 3000)

    func parse(_ fields: [String: ScriptValue]) throws(AppFileError) -> AppSpec {
        try AppSpecParser(file: "app.lua", source: nil, baseDirectory: "/", cpuCount: 2)
            .parseApp(.object(["cmd": .string("x"), "name": .string("web"), "autoscale": .object(fields)]))
    }

    @Test func parsesWithDefaults() throws {
        let s = try parse(["max": .int(4), "rule": .function]).autoscale
        #expect(s == AutoscaleSpec(min: 1, max: 4, every: 5000, cooldown: 5000))
        let full = try parse(["min": .int(2), "max": .int(6), "every": .int(500), "cooldown": .int(0), "rule": .function]).autoscale
        #expect(full == AutoscaleSpec(min: 2, max: 6, every: 500, cooldown: 0))
    }

    @Test func rejectsBadTables() {
        #expect(throws: AppFileError.self) { try parse(["max": .int(4)]) }                                  // no rule
        #expect(throws: AppFileError.self) { try parse(["rule": .function]) }                               // no max
        #expect(throws: AppFileError.self) { try parse(["min": .int(5), "max": .int(2), "rule": .function]) }
        #expect(throws: AppFileError.self) { try parse(["max": .int(2), "every": .int(10), "rule": .function]) }
        #expect(throws: AppFileError(file: "app.lua", message: "unknown key \"autoscale.maxx\" (did you mean \"max\"?)")) {
            try parse(["maxx": .int(2), "rule": .function])
        }
    }

    @Test func clampsToBounds() {
        #expect(AutoscaleDecision.decide(answer: .int(20), current: 4, spec: spec, msSinceLastChange: nil)
                == .scale(to: 8, reason: "rule asked for 20, clamped to 8"))
        #expect(AutoscaleDecision.decide(answer: .int(0), current: 4, spec: spec, msSinceLastChange: nil)
                == .scale(to: 2, reason: "rule asked for 0, clamped to 2"))
        #expect(AutoscaleDecision.decide(answer: .double(3.2), current: 2, spec: spec, msSinceLastChange: nil)
                == .scale(to: 4, reason: "rule asked for 4"))
    }

    @Test func keepsWhenNothingChangesOrInCooldown() {
        #expect(AutoscaleDecision.decide(answer: .int(4), current: 4, spec: spec, msSinceLastChange: nil)
                == .keep(reason: "rule asked for 4; already 4"))
        #expect(AutoscaleDecision.decide(answer: .int(5), current: 4, spec: spec, msSinceLastChange: 1000)
                == .keep(reason: "rule asked for 5; in cooldown (2000 ms left)"))
        #expect(AutoscaleDecision.decide(answer: .int(5), current: 4, spec: spec, msSinceLastChange: 3000)
                == .scale(to: 5, reason: "rule asked for 5"))
        #expect(AutoscaleDecision.decide(answer: .null, current: 4, spec: spec, msSinceLastChange: nil)
                == .keep(reason: "rule returned nothing"))
        #expect(AutoscaleDecision.decide(answer: .string("more"), current: 4, spec: spec, msSinceLastChange: nil)
                == .keep(reason: "rule returned \"more\", not a number"))
    }

    @Test func hugeAnswersAreClampedNotTrapped() {
        #expect(AutoscaleDecision.decide(answer: .double(1e300), current: 4, spec: spec, msSinceLastChange: nil)
                == .scale(to: 8, reason: "rule asked for 1000000, clamped to 8"))
        #expect(AutoscaleDecision.decide(answer: .double(-1e300), current: 4, spec: spec, msSinceLastChange: nil)
                == .scale(to: 2, reason: "rule asked for -1000000, clamped to 2"))
        #expect(AutoscaleDecision.decide(answer: .int(Int64.max), current: 4, spec: spec, msSinceLastChange: nil)
                == .scale(to: 8, reason: "rule asked for 1000000, clamped to 8"))
    }

    @Test func nothingStillEnforcesBounds() {
        #expect(AutoscaleDecision.decide(answer: .null, current: 1, spec: spec, msSinceLastChange: nil)
                == .scale(to: 2, reason: "rule asked for 2"))
        #expect(AutoscaleDecision.decide(answer: .null, current: 9, spec: spec, msSinceLastChange: nil)
                == .scale(to: 8, reason: "rule asked for 8"))
    }
}
