/// An app's `autoscale` table: bounds and pacing; the rule itself stays in Lua.
public struct AutoscaleSpec: Sendable, Codable, Equatable {
    public var min: Int
    public var max: Int
    /// How often the rule runs (ms).
    public var every: Int
    /// After a change, no other change for this long (ms).
    public var cooldown: Int

    public init(min: Int, max: Int, every: Int, cooldown: Int) {
        self.min = min
        self.max = max
        self.every = every
        self.cooldown = cooldown
    }

    /// Parses `autoscale = { min, max, every, cooldown, rule = function }`.
    static func parse(_ value: ScriptValue, fail: (String) -> AppFileError) throws(AppFileError) -> AutoscaleSpec {
        guard case .object(let t) = value else { throw fail("\"autoscale\" must be a table { min, max, every, cooldown, rule }, got \(value.typeName)") }
        for key in t.keys.sorted() where !["min", "max", "every", "cooldown", "rule"].contains(key) {
            var message = "unknown key \"autoscale.\(key)\""
            if let near = AppSpecParser.nearest(key, in: ["min", "max", "every", "cooldown", "rule"]) { message += " (did you mean \"\(near)\"?)" }
            throw fail(message)
        }
        guard t["rule"] == .function else { throw fail("\"autoscale.rule\" must be a function(m) returning a worker count") }
        func int(_ key: String, _ def: Int?, _ range: ClosedRange<Int>) throws(AppFileError) -> Int {
            guard let v = t[key] else {
                if let def { return def }
                throw fail("\"autoscale.\(key)\" is required")
            }
            guard let n = CheckedNumber.integer(v, in: range) else {
                throw fail("\"autoscale.\(key)\" must be a whole number from \(range.lowerBound) to \(range.upperBound), got \(v.brief)")
            }
            return n
        }
        let min = try int("min", 1, 1...CheckedNumber.maxInstances)
        let max = try int("max", nil, 1...CheckedNumber.maxInstances)
        if max < min { throw fail("\"autoscale.max\" (\(max)) is below \"autoscale.min\" (\(min))") }
        let every = try int("every", 5000, 100...CheckedNumber.maxDelayMs)
        let cooldown = try int("cooldown", every, 0...CheckedNumber.maxDelayMs)
        return AutoscaleSpec(min: min, max: max, every: every, cooldown: cooldown)
    }
}

/// What one run of an autoscale rule leads to.
public enum AutoscaleDecision: Sendable, Equatable {
    case scale(to: Int, reason: String)
    case keep(reason: String)

    /// Turns the rule's answer into a decision: clamped to min…max, held during the cooldown.
    public static func decide(answer: ScriptValue, current: Int, spec: AutoscaleSpec, msSinceLastChange: Int?) -> AutoscaleDecision {
        let wanted: Int
        switch answer {
        case .null:
            if current < spec.min { wanted = spec.min } else if current > spec.max { wanted = spec.max } else {
                return .keep(reason: "rule returned nothing")
            }
        default:
            guard let d = answer.doubleValue, d.isFinite else { return .keep(reason: "rule returned \(answer.brief), not a number") }
            // Bounded before converting: a rule may return 1e300, which no Int holds.
            wanted = Int(Swift.min(Swift.max(d, -1_000_000), 1_000_000).rounded(.up))
        }
        let clamped = Swift.min(Swift.max(wanted, spec.min), spec.max)
        let note = clamped == wanted ? "rule asked for \(wanted)" : "rule asked for \(wanted), clamped to \(clamped)"
        if clamped == current { return .keep(reason: "\(note); already \(current)") }
        if let since = msSinceLastChange, since < spec.cooldown {
            return .keep(reason: "\(note); in cooldown (\(spec.cooldown - since) ms left)")
        }
        return .scale(to: clamped, reason: note)
    }
}
