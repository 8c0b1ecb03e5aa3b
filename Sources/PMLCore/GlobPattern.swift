/// A glob as `ignore_watch` takes it: `*` matches within one path component, `**` across
/// components, `?` one character. A pattern without "/" (like "node_modules" or "*.log") is
/// tried against every component of a path; one with "/" against the whole path relative to
/// the watched folder ("logs/**"), or the absolute path when it starts with "/".
public struct GlobPattern: Sendable, Equatable {
    public let pattern: String
    private let chars: [UInt8]

    public init(_ pattern: String) {
        var p = pattern
        while p.hasPrefix("./") { p.removeFirst(2) }
        while p.count > 1, p.hasSuffix("/") { p.removeLast() }
        self.pattern = p
        chars = Array(p.utf8)
    }

    /// Whether the file at `absolutePath`, found under the watched folder as `relativePath`, is ignored.
    public func matches(relativePath: String, absolutePath: String) -> Bool {
        if pattern.hasPrefix("/") { return Self.match(chars, Array(absolutePath.utf8)) }
        if chars.contains(UInt8(ascii: "/")) { return Self.match(chars, Array(relativePath.utf8)) }
        return relativePath.split(separator: "/").contains { Self.match(chars, Array($0.utf8)) }
    }

    /// Dynamic programming over (pattern, text) prefixes: linear in each, whatever the stars.
    static func match(_ p: [UInt8], _ s: [UInt8]) -> Bool {
        let slash = UInt8(ascii: "/"), star = UInt8(ascii: "*"), question = UInt8(ascii: "?")
        // reach[j]: the pattern prefix consumed so far matches s[0..<j].
        var reach = [Bool](repeating: false, count: s.count + 1)
        reach[0] = true
        var i = 0
        while i < p.count {
            var next = [Bool](repeating: false, count: s.count + 1)
            if p[i] == star {
                let double = i + 1 < p.count && p[i + 1] == star
                // "**/" also matches nothing at all ("a/**/b" matches "a/b").
                let swallowsSlash = double && i + 2 < p.count && p[i + 2] == slash
                var running = false
                for j in 0...s.count {
                    if reach[j] { running = true }
                    next[j] = running
                    if j < s.count, !double, s[j] == slash { running = false }
                }
                if swallowsSlash {
                    var after = [Bool](repeating: false, count: s.count + 1)
                    for j in 0...s.count where next[j] && j < s.count && s[j] == slash { after[j + 1] = true }
                    for j in 0...s.count where reach[j] { after[j] = true }
                    next = after
                    i += 3
                } else {
                    i += double ? 2 : 1
                }
            } else {
                for j in 0..<s.count where reach[j] && (p[i] == s[j] || (p[i] == question && s[j] != slash)) {
                    next[j + 1] = true
                }
                i += 1
            }
            reach = next
        }
        return reach[s.count]
    }
}
