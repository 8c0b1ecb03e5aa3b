import FoundationEssentials
import Glibc
import PMLCore
import PMLPosix

/// Human-readable rendering of what the daemon reports.
enum Output {
    /// "850ms", "12s", "5m", "3h", "2d".
    static func duration(_ ms: Int) -> String {
        if ms < 1000 { return "\(ms)ms" }
        let s = ms / 1000
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m" }
        if s < 86400 { return "\(s / 3600)h" }
        return "\(s / 86400)d"
    }

    /// "512b", "12.3kb", "45.1mb", "1.2gb".
    static func bytes(_ n: Int) -> String {
        let units = ["b", "kb", "mb", "gb", "tb"]
        var value = Double(n)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(n)b" }
        return "\((value * 10).rounded() / 10)\(units[unit])"
    }

    /// The process table of `pml ls`.
    static func table(_ rows: [ProcessRow]) -> String {
        if rows.isEmpty { return "no apps (start one with: pml start app.lua)\n" }
        let header = ["id", "name", "mode", "pid", "uptime", "restarts", "status", "cpu", "mem"]
        var lines: [[String]] = [header]
        for r in rows {
            lines.append([
                String(r.id), r.name, r.mode, r.pid.map { String($0) } ?? "-",
                r.uptimeMs.map(duration) ?? "-", String(r.restarts), r.status.rawValue,
                r.pid == nil ? "-" : "\(r.cpu)%", r.pid == nil ? "-" : bytes(r.memory),
            ])
        }
        return align(lines)
    }

    /// Left-aligned columns separated by two spaces.
    static func align(_ lines: [[String]]) -> String {
        guard let first = lines.first else { return "" }
        var widths = Array(repeating: 0, count: first.count)
        for line in lines { for (i, cell) in line.enumerated() { widths[i] = max(widths[i], cell.count) } }
        var out = ""
        for line in lines {
            var row = ""
            for (i, cell) in line.enumerated() {
                row += cell
                if i < line.count - 1 { row += String(repeating: " ", count: widths[i] - cell.count + 2) }
            }
            out += row + "\n"
        }
        return out
    }

    /// `pml describe` without --json.
    static func description(_ app: AppDescription) -> String {
        let spec = app.spec
        var lines: [[String]] = [
            ["name", app.name], ["status", app.status.rawValue], ["mode", app.mode],
            ["command", spec.argv.joined(separator: " ")], ["cwd", spec.cwd],
            ["instances", String(spec.instances)],
            ["app file", spec.appFile ?? spec.ecosystemFile.map { "\($0) (PM2 ecosystem)" } ?? "-"],
            ["namespace", spec.namespace ?? "default"],
            ["hooks", spec.hooks.isEmpty ? "-" : spec.hooks.joined(separator: ", ")],
            ["autorestart", String(spec.autorestart)],
            ["restart policy", (spec.expBackoffRestartDelay.map { "backoff \($0)ms ×1.5" } ?? "backoff \(spec.restartDelay)ms doubling") + " to \(spec.restartDelayMax)ms; errored after \(spec.maxRestarts) exits in a row within \(spec.minUptime)ms"],
            ["stop", "\(spec.killSignal), SIGKILL after \(spec.killTimeout)ms"],
            ["out log", app.outLog], ["err log", app.errLog],
        ]
        if let scripts = app.scripts { lines.append(["scripts", scripts]) }
        if !spec.env.isEmpty {
            lines.append(["env", spec.env.keys.sorted().map { "\($0)=\(spec.env[$0]!)" }.joined(separator: " ")])
        }
        if let logFile = spec.logFile { lines.append(["combined log", logFile]) }
        if let pidFile = spec.pidFile { lines.append(["pid file", pidFile]) }
        if let w = spec.watch {
            lines.append(["watch", w.paths.joined(separator: ", ") + " (ignoring \(w.ignore.joined(separator: ", ")); \(w.delayMs)ms per burst)"])
        }
        if spec.user != nil || spec.group != nil { lines.append(["runs as", [spec.user.map { "uid \($0)" }, spec.group.map { "gid \($0)" }].compactMap { $0 }.joined(separator: ", ")]) }
        if let m = spec.maxMemoryRestart { lines.append(["max_memory_restart", "\(m) bytes"]) }
        if let c = spec.cronRestart { lines.append(["cron_restart", c]) }
        var out = align(lines) + "\n" + table(app.workers.map(\.row))
        for w in app.workers {
            var notes: [String] = []
            if let e = w.lastExit { notes.append("last exit: \(e.summary) after \(duration(e.uptimeMs))") }
            if let r = w.reason { notes.append(r) }
            if let h = w.lastHookError { notes.append("last hook error: \(h)") }
            if !notes.isEmpty { out += "worker \(w.row.id): " + notes.joined(separator: "; ") + "\n" }
        }
        return out
    }

    /// JSON for --json output: stable key order.
    static func json<T: Encodable>(_ value: T) throws(CLIError) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(value) else { throw CLIError("cannot encode output") }
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    static func print(_ text: String) {
        try? writeAll(1, text)
    }
}
