import PMLCore
import Testing

@Suite struct CheckedNumberTests {
    @Test(arguments: [
        (ScriptValue.int(5), 5), (.double(5), 5), (.int(1), 1), (.int(10), 10),
        (.int(0), nil), (.int(11), nil), (.double(5.5), nil), (.double(.nan), nil), (.double(.infinity), nil),
        (.double(-.infinity), nil), (.double(1e300), nil), (.double(-1e300), nil), (.int(.max), nil), (.int(.min), nil),
        (.double(0x1p63), nil), (.string("5"), nil), (.bool(true), nil), (.null, nil),
        (.double(-0.0), nil), (.double(.ulpOfOne), nil),
    ] as [(ScriptValue, Int?)])
    func integerFromAScriptValue(_ value: ScriptValue, _ expected: Int?) {
        #expect(CheckedNumber.integer(value, in: 1...10) == expected)
    }

    @Test func integerAtTheEdgesOfInt() {
        #expect(CheckedNumber.integer(Int64.max, in: 0...Int.max) == Int.max)
        #expect(CheckedNumber.integer(Int64.min, in: Int.min...0) == Int.min)
        #expect(CheckedNumber.integer(Int64.max, in: 0...(Int.max - 1)) == nil)
        // 2^63 is a double no Int holds, though it compares equal to Double(Int.max).
        #expect(CheckedNumber.integer(9_223_372_036_854_775_808.0, in: 0...Int.max) == nil)
        #expect(CheckedNumber.integer(-9_223_372_036_854_775_808.0, in: Int.min...0) == Int.min)
        #expect(CheckedNumber.integer(-0.0, in: 0...1) == 0)
    }

    @Test(arguments: [
        ("12", 12), ("+3", 3), ("-1", -1), ("0", 0), ("", nil), ("+", nil), ("-", nil), ("1.5", nil), (" 1", nil),
        ("1 ", nil), ("0x10", nil), ("١٢", nil), ("9223372036854775807", nil), ("99999999999999999999999", nil),
        ("++1", nil), ("+-1", nil), ("1e3", nil),
    ] as [(String, Int?)])
    func integerFromText(_ text: String, _ expected: Int?) {
        #expect(CheckedNumber.integer(Substring(text), in: -100...100) == expected)
    }

    @Test(arguments: [
        (ScriptValue.int(0), 0), (.int(86_400_000), 86_400_000), (.double(1.9), 1), (.double(86_400_000.5), 86_400_000),
        (.int(-1), nil), (.double(-0.5), nil), (.int(86_400_001), nil), (.double(86_400_001), nil), (.double(1e300), nil),
        (.double(.nan), nil), (.double(.infinity), nil), (.int(.max), nil), (.int(.min), nil), (.string("10"), nil),
    ] as [(ScriptValue, Int?)])
    func milliseconds(_ value: ScriptValue, _ expected: Int?) {
        #expect(CheckedNumber.milliseconds(value) == expected)
    }

    @Test(arguments: [
        ("3", 3), ("+2", 6), ("-3", 1), ("+0", 4), ("-0", 4), ("1024", 1024), ("+1020", 1024),
        ("0", nil), ("-4", nil), ("1025", nil), ("+1021", nil), ("+9223372036854775807", nil), ("-9223372036854775807", nil),
        ("-9223372036854775808", nil), ("+99999999999999999999", nil), ("9223372036854775807", nil), ("", nil), ("+", nil),
        ("+-1", nil), ("--1", nil), ("-+1", nil), ("x", nil), ("2.5", nil), ("+1e3", nil), (" 3", nil),
    ] as [(String, Int?)])
    func scaleCount(_ text: String, _ expected: Int?) {
        #expect(CheckedNumber.count(text, current: 4, in: 1...1024) == expected)
    }

    @Test func countNearTheEdgesOfInt() {
        #expect(CheckedNumber.count("+1", current: Int.max, in: 0...Int.max) == nil)
        #expect(CheckedNumber.count("-1", current: Int.min, in: Int.min...0) == nil)
        #expect(CheckedNumber.count("+9223372036854775807", current: 0, in: 0...Int.max) == Int.max)
    }

    @Test func saturatingAdd() {
        #expect(CheckedNumber.saturatingAdd(1, 2) == 3)
        #expect(CheckedNumber.saturatingAdd(Int.max, 1) == Int.max)
        #expect(CheckedNumber.saturatingAdd(Int.max - 5, Int.max) == Int.max)
        #expect(CheckedNumber.saturatingAdd(Int.min, -1) == Int.min)
        #expect(CheckedNumber.saturatingAdd(Int.min, Int.max) == -1)
    }
}
