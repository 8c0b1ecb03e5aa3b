/// Checked conversions for the numbers a script, an app file or a client hands pml. A value pml
/// cannot use comes back nil, for the caller to refuse with one clear line: never an overflow
/// trap (which would take the daemon, and every worker, down).
public enum CheckedNumber {
    /// The longest delay or timeout pml takes anywhere (script timers, restart delays, kill and
    /// ready timeouts, autoscale periods): one day, in ms.
    public static let maxDelayMs = 86_400_000
    /// The most workers one app may run.
    public static let maxInstances = 1024

    /// A whole number in `range`: an integer, or a double without a fractional part. nil for
    /// NaN, infinities, fractions, anything outside `range`, and values that are not numbers.
    public static func integer(_ value: ScriptValue, in range: ClosedRange<Int>) -> Int? {
        switch value {
        case .int(let i): return integer(i, in: range)
        case .double(let d): return integer(d, in: range)
        default: return nil
        }
    }

    /// `value` if `range` holds it.
    public static func integer(_ value: Int64, in range: ClosedRange<Int>) -> Int? {
        guard let n = Int(exactly: value), range.contains(n) else { return nil }
        return n
    }

    /// `value` if it is whole and `range` holds it.
    public static func integer(_ value: Double, in range: ClosedRange<Int>) -> Int? {
        // Int(exactly:) is nil for NaN, infinities, fractions and doubles no Int holds (2^63 and up).
        guard let n = Int(exactly: value), range.contains(n) else { return nil }
        return n
    }

    /// Decimal digits with an optional sign ("12", "+3", "-1"), if `range` holds the value.
    public static func integer(_ text: Substring, in range: ClosedRange<Int>) -> Int? {
        let digits = text.first == "+" || text.first == "-" ? text.dropFirst() : text
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
              let n = Int(text), range.contains(n) else { return nil }
        return n
    }

    /// A duration in milliseconds from 0 to `max`: a whole number, or a finite double whose
    /// fraction is dropped.
    public static func milliseconds(_ value: ScriptValue, max: Int = maxDelayMs) -> Int? {
        switch value {
        case .int(let i): return integer(i, in: 0...max)
        case .double(let d) where d.isFinite && d >= 0 && d < Double(max) + 1: return Swift.min(Int(d), max)
        default: return nil
        }
    }

    /// A count as `pml scale` takes it: "N", or "+N" / "-N" counted from `current`; nil when the
    /// text is not one of those or the result is outside `range`.
    public static func count(_ text: String, current: Int, in range: ClosedRange<Int>) -> Int? {
        guard let sign = text.first else { return nil }
        guard sign == "+" || sign == "-" else { return integer(Substring(text), in: range) }
        let digits = text.dropFirst()
        guard digits.first != "+", digits.first != "-", let delta = integer(digits, in: 0...Int.max) else { return nil }
        let (n, overflow) = sign == "+" ? current.addingReportingOverflow(delta) : current.subtractingReportingOverflow(delta)
        return !overflow && range.contains(n) ? n : nil
    }

    /// `a + b`, held at Int.max or Int.min instead of overflowing (deadlines far in the future).
    public static func saturatingAdd(_ a: Int, _ b: Int) -> Int {
        let (sum, overflow) = a.addingReportingOverflow(b)
        if !overflow { return sum }
        return b > 0 ? Int.max : Int.min
    }
}
