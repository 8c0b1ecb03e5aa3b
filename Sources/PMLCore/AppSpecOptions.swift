/// PM2's operational keys in app files, under PM2's names and meanings: watch mode, log files,
/// users, per-app memory and cron restarts, backoff, environment shaping, autostart.
extension AppSpecParser {
    /// The keys parsed here.
    public static let operationKeys: [String] = [
        "watch", "ignore_watch", "watch_delay", "out_file", "error_file", "log_file", "pid_file", "merge_logs",
        "disable_logs", "log_type", "uid", "gid", "max_memory_restart", "cron_restart", "exp_backoff_restart_delay",
        "increment_var", "instance_var", "filter_env", "autostart",
    ]

    /// PM2's watch_delay default: changes within a second of the first make one restart.
    public static let defaultWatchDelay = 1000

    func parseOperations(_ t: [String: ScriptValue], into spec: inout AppSpec) throws(AppFileError) {
        spec.watch = try watch(t, cwd: spec.cwd)
        spec.outFile = try path(t, "out_file")
        spec.errorFile = try path(t, "error_file")
        spec.logFile = try path(t, "log_file")
        spec.pidFile = try path(t, "pid_file")
        if try bool(t, "disable_logs", false) {
            spec.outFile = "/dev/null"
            spec.errorFile = "/dev/null"
            spec.logFile = nil
        }
        spec.mergeLogs = try bool(t, "merge_logs", true)
        if let v = t["log_type"] {
            guard v == .string("json") else { throw typeError("log_type", "\"json\"", v) }
            if t["log_format"] != nil, spec.logFormat != "json" {
                throw fail("log_type", "log_type = \"json\" and log_format = \"\(spec.logFormat)\" disagree; keep one")
            }
            spec.logFormat = "json"
        }
        spec.user = try account(t, "uid")
        spec.group = try account(t, "gid")
        if let v = t["max_memory_restart"] {
            guard let bytes = Self.byteSize(v), bytes >= 1 else {
                throw typeError("max_memory_restart", "a size such as \"200M\", \"1G\" or a number of bytes", v)
            }
            spec.maxMemoryRestart = bytes
        }
        if let v = t["cron_restart"] {
            guard let s = v.stringValue else { throw typeError("cron_restart", "a cron expression such as \"0 3 * * *\"", v) }
            do {
                _ = try CronSchedule(s)
            } catch {
                throw fail("cron_restart", "cron_restart \(error.description)")
            }
            spec.cronRestart = s
        }
        if t["exp_backoff_restart_delay"] != nil {
            let ms = try millis(t, "exp_backoff_restart_delay", 0)
            if ms < 1 { throw typeError("exp_backoff_restart_delay", "a delay in milliseconds from 1", t["exp_backoff_restart_delay"]!) }
            spec.expBackoffRestartDelay = ms
        }
        spec.incrementVar = try variableName(t, "increment_var")
        spec.instanceVar = try variableName(t, "instance_var") ?? spec.instanceVar
        switch t["filter_env"] {
        case nil, .bool(false)?: break
        case .bool(true)?: spec.filterEnv = [""]
        case .string(let s)? where !s.isEmpty: spec.filterEnv = [s]
        case .array(let items)?:
            for item in items {
                guard let s = item.stringValue, !s.isEmpty else { throw typeError("filter_env", "true or a list of variable-name prefixes", item) }
                spec.filterEnv.append(s)
            }
        case let v?: throw typeError("filter_env", "true or a list of variable-name prefixes", v)
        }
        spec.autostart = try bool(t, "autostart", true)
    }

    private func watch(_ t: [String: ScriptValue], cwd: String) throws(AppFileError) -> WatchSpec? {
        var ignore = WatchSpec.defaultIgnore
        switch t["ignore_watch"] {
        case nil: break
        case .string(let s)? where !s.isEmpty: ignore.append(s)
        case .array(let items)?:
            for item in items {
                guard let s = item.stringValue, !s.isEmpty else { throw typeError("ignore_watch", "a list of globs", item) }
                ignore.append(s)
            }
        case let v?: throw typeError("ignore_watch", "a glob or a list of globs", v)
        }
        let delay = try millis(t, "watch_delay", Self.defaultWatchDelay)
        let inCwd = { (p: String) in p.hasPrefix("/") ? Self.normalize(p) : Self.normalize(cwd + "/" + p) }
        switch t["watch"] {
        case nil, .bool(false)?: return nil
        case .bool(true)?: return WatchSpec(paths: [cwd], ignore: ignore, delayMs: delay)
        case .string(let s)? where !s.isEmpty: return WatchSpec(paths: [inCwd(s)], ignore: ignore, delayMs: delay)
        case .array(let items)? where !items.isEmpty:
            var paths: [String] = []
            for item in items {
                guard let s = item.stringValue, !s.isEmpty else { throw typeError("watch", "true, a path or a list of paths", item) }
                paths.append(inCwd(s))
            }
            return WatchSpec(paths: paths, ignore: ignore, delayMs: delay)
        case let v?: throw typeError("watch", "true, a path or a list of paths", v)
        }
    }

    private func path(_ t: [String: ScriptValue], _ key: String) throws(AppFileError) -> String? {
        guard let v = t[key] else { return nil }
        guard let s = v.stringValue, !s.isEmpty, !s.hasSuffix("/") else { throw typeError(key, "a file path", v) }
        return resolve(s)
    }

    private func account(_ t: [String: ScriptValue], _ key: String) throws(AppFileError) -> String? {
        guard let v = t[key] else { return nil }
        if let n = v.intValue, n >= 0, n < Int64(UInt32.max) { return String(n) }
        guard let s = v.stringValue, !s.isEmpty, s.utf8.count <= 64, !s.contains(":"), !s.contains("\n") else {
            throw typeError(key, key == "uid" ? "a user name or number" : "a group name or number", v)
        }
        return s
    }

    private func variableName(_ t: [String: ScriptValue], _ key: String) throws(AppFileError) -> String? {
        guard let v = t[key] else { return nil }
        guard let s = v.stringValue, !s.isEmpty, s.utf8.count <= 128, !s.utf8.contains(where: { $0 == UInt8(ascii: "=") || $0 == 0 }) else {
            throw typeError(key, "an environment variable name", v)
        }
        return s
    }

    /// 1048576, "512K", "200M", "1.5G", "2gb" → bytes (K, M, G, T are powers of 1024, as PM2 reads them).
    public static func byteSize(_ v: ScriptValue) -> Int? {
        if let n = v.intValue { return n > 0 && n < Int64(1) << 50 ? Int(n) : nil }
        guard var s = v.stringValue?.uppercased() else { return nil }
        s = String(s.trimmingWhitespace)
        if s.hasSuffix("B") { s.removeLast() }
        let units: [Character: Double] = ["K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024, "T": 1024 * 1024 * 1024 * 1024]
        var factor = 1.0
        if let last = s.last, let f = units[last] {
            factor = f
            s.removeLast()
        }
        guard !s.isEmpty, s.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }), let n = Double(s) else { return nil }
        let bytes = n * factor
        guard bytes >= 1, bytes < Double(Int64(1) << 50) else { return nil }
        return Int(bytes)
    }
}
