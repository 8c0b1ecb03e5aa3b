/// A cron expression (PM2's `cron_restart`): 5 fields (minute hour day-of-month month
/// day-of-week) or 6 with seconds first, as PM2's cron library reads them; or a macro
/// (@hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually).
///
/// Each field is `*`, `n`, `a-b`, a step (`*/n`, `a-b/n`, `a/n` = from a to the end) or a list
/// of those. Day-of-week is 0-7 (0 and 7 are Sunday). As in cron, when both day fields are
/// restricted, a day matching either one matches.
public struct CronSchedule: Sendable, Equatable {
    /// The expression as written.
    public let expression: String
    /// Whether the first field is seconds (6 fields); otherwise matches happen at second 0.
    public let hasSeconds: Bool
    private let second: Set<Int>
    private let minute: Set<Int>
    private let hour: Set<Int>
    private let dayOfMonth: Set<Int>
    private let month: Set<Int>
    private let dayOfWeek: Set<Int>
    private let anyDayOfMonth: Bool
    private let anyDayOfWeek: Bool

    static let macros: [String: String] = [
        "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
    ]

    private static let fields: [(name: String, range: ClosedRange<Int>)] = [
        ("second", 0...59), ("minute", 0...59), ("hour", 0...23), ("day-of-month", 1...31), ("month", 1...12),
        ("day-of-week", 0...7),
    ]

    /// Parses an expression; the error says which field is wrong and why.
    public init(_ expression: String) throws(CronError) {
        self.expression = expression
        let text = Self.macros[expression.lowercased()] ?? expression
        var words = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard words.count == 5 || words.count == 6 else {
            throw CronError("\"\(expression)\": expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), got \(words.count)")
        }
        hasSeconds = words.count == 6
        if !hasSeconds { words.insert("0", at: 0) }
        var sets: [Set<Int>] = []
        for (word, field) in zip(words, Self.fields) {
            sets.append(try Self.parseField(word, name: field.name, range: field.range))
        }
        second = sets[0]
        minute = sets[1]
        hour = sets[2]
        dayOfMonth = sets[3]
        month = sets[4]
        dayOfWeek = sets[5].contains(7) ? sets[5].union([0]) : sets[5]
        anyDayOfMonth = words[3].hasPrefix("*")
        anyDayOfWeek = words[5].hasPrefix("*")
    }

    private static func parseField(_ text: String, name: String, range: ClosedRange<Int>) throws(CronError) -> Set<Int> {
        var set = Set<Int>()
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let pieces = part.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count <= 2, let rangeText = pieces.first else { throw CronError("\(name) field \"\(text)\": expected *, n, a-b, */n or a-b/n") }
            var step = 1
            if pieces.count == 2 {
                guard let s = Int(pieces[1]), s >= 1 else { throw CronError("\(name) field \"\(text)\": the step must be a whole number from 1") }
                step = s
            }
            var from: Int, to: Int
            if rangeText == "*" {
                (from, to) = (range.lowerBound, range.upperBound)
            } else if let n = Int(rangeText) {
                from = n
                to = pieces.count == 2 ? range.upperBound : n
            } else {
                let ends = rangeText.split(separator: "-", omittingEmptySubsequences: false)
                guard ends.count == 2, let a = Int(ends[0]), let b = Int(ends[1]) else {
                    throw CronError("\(name) field \"\(text)\": expected *, n, a-b, */n or a-b/n")
                }
                (from, to) = (a, b)
            }
            guard range.contains(from), range.contains(to), from <= to else {
                throw CronError("\(name) field \"\(text)\": out of range \(range.lowerBound)-\(range.upperBound)")
            }
            set.formUnion(stride(from: from, through: to, by: step))
        }
        return set
    }

    /// Whether the schedule fires at this local time (`weekday`: 0 = Sunday).
    public func matches(_ t: CivilTime) -> Bool {
        guard second.contains(t.second), minute.contains(t.minute), hour.contains(t.hour), month.contains(t.month) else {
            return false
        }
        return dayMatches(t)
    }

    /// The first time strictly after `t` that matches, searched up to ~4 years ahead (nil if
    /// none, e.g. "0 0 30 2 *"). Works on local calendar time; the caller converts to a clock.
    public func next(after t: CivilTime) -> CivilTime? {
        var c = t
        c.advanceSecond()
        // Whole days, hours and minutes that cannot match are skipped, so this stays fast.
        let limit = t.year + 5
        while c.year < limit {
            if !month.contains(c.month) || !dayMatches(c) {
                c.advanceDay()
                continue
            }
            if !hour.contains(c.hour) { c.advanceHour(); continue }
            if !minute.contains(c.minute) { c.advanceMinute(); continue }
            if second.contains(c.second) { return c }
            c.advanceSecond()
        }
        return nil
    }

    private func dayMatches(_ t: CivilTime) -> Bool {
        let d = dayOfMonth.contains(t.day), w = dayOfWeek.contains(t.weekday)
        if anyDayOfMonth || anyDayOfWeek { return d && w }
        return d || w
    }
}

/// A cron expression that does not parse.
public struct CronError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A local calendar time to the second, as cron reads clocks.
public struct CivilTime: Sendable, Equatable, CustomStringConvertible {
    public var year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int

    public init(year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int) {
        (self.year, self.month, self.day, self.hour, self.minute, self.second) = (year, month, day, hour, minute, second)
    }

    /// 0 = Sunday (Zeller's congruence, Gregorian calendar).
    public var weekday: Int {
        var y = year, m = month
        if m < 3 { m += 12; y -= 1 }
        let h = (day + (13 * (m + 1)) / 5 + y + y / 4 - y / 100 + y / 400) % 7 // 0 = Saturday
        return (h + 6) % 7
    }

    public var description: String {
        func pad(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(year)-\(pad(month))-\(pad(day)) \(pad(hour)):\(pad(minute)):\(pad(second))"
    }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    mutating func advanceSecond() {
        second += 1
        if second == 60 { second = 0; advanceMinuteKeepingSecond() }
    }

    mutating func advanceMinute() { second = 0; advanceMinuteKeepingSecond() }

    private mutating func advanceMinuteKeepingSecond() {
        minute += 1
        if minute == 60 { minute = 0; advanceHourKeeping() }
    }

    mutating func advanceHour() { second = 0; minute = 0; advanceHourKeeping() }

    private mutating func advanceHourKeeping() {
        hour += 1
        if hour == 24 { hour = 0; advanceDayKeeping() }
    }

    mutating func advanceDay() { second = 0; minute = 0; hour = 0; advanceDayKeeping() }

    private mutating func advanceDayKeeping() {
        day += 1
        if day > Self.daysIn(month: month, year: year) {
            day = 1
            month += 1
            if month == 13 { month = 1; year += 1 }
        }
    }
}
