import Glibc

/// CPU time and memory of a process, read from /proc.
public struct ProcStats: Sendable, Equatable {
    /// utime + stime, in milliseconds.
    public var cpuTimeMs: Int
    /// Resident set size in bytes.
    public var rssBytes: Int

    private static let ticksPerSecond = max(1, sysconf(Int32(_SC_CLK_TCK)))
    private static let pageSize = max(1, sysconf(Int32(_SC_PAGESIZE)))

    /// Reads /proc/<pid>/stat; nil if the process is gone.
    public static func read(pid: Int32) -> ProcStats? {
        guard let bytes = readFile("/proc/\(pid)/stat", limit: 4096) else { return nil }
        // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "))
        // After ')': state is field 3, so utime (14) is index 11, stime (15) 12, rss (24) 21.
        guard fields.count > 21,
              let utime = Int(String(decoding: fields[fields.startIndex + 11], as: UTF8.self)),
              let stime = Int(String(decoding: fields[fields.startIndex + 12], as: UTF8.self)),
              let rss = Int(String(decoding: fields[fields.startIndex + 21], as: UTF8.self)) else { return nil }
        return ProcStats(cpuTimeMs: (utime + stime) * 1000 / ticksPerSecond, rssBytes: rss * pageSize)
    }
}
