/// One app as pml runs it: a validated, resolved app-file entry or command-line app.
public struct AppSpec: Sendable, Codable, Equatable {
    public var name: String
    /// The program and its arguments; argv[0] may be a bare name, looked up in the app's PATH.
    public var argv: [String]
    public var cwd: String
    public var env: [String: String]
    public var instances: Int
    public var autorestart: Bool
    /// An exit sooner than this (ms) counts as an unstable start.
    public var minUptime: Int
    /// Unstable starts in a row before the app is marked errored.
    public var maxRestarts: Int
    /// First backoff delay (ms); doubles with each crash in a row.
    public var restartDelay: Int
    public var restartDelayMax: Int
    /// A worker up this long (ms) resets its backoff.
    public var stableAfter: Int
    public var stopExitCodes: [Int]
    public var killTimeout: Int
    public var killSignal: String
    /// Prefix each log line with a time (ISO-8601 UTC, or `logDateFormat`).
    public var timestamps: Bool
    /// PM2's log_date_format tokens (YYYY MM DD HH mm ss SSS Z), in local time.
    public var logDateFormat: String?
    /// "json": each log line is a JSON object { time, app, worker, stream, message }.
    public var logFormat: String
    /// Sockets pml owns for the app, bound once and kept across worker restarts.
    public var listen: [ListenAddress]
    public var dispatch: DispatchMode
    public var ready: ReadinessRule
    /// A worker not ready this long (ms) after spawning has failed to start.
    public var readyTimeout: Int
    public var autoscale: AutoscaleSpec?
    /// Absolute path of the app file it came from, if any.
    public var appFile: String?
    /// Names of the hooks the app file defines.
    public var hooks: [String]
    /// A group of apps one command can name (`pml restart backend`); nil is PM2's "default".
    public var namespace: String?
    /// The PM2 ecosystem file the app was declared in, if any (shown by describe; never re-read by pml).
    public var ecosystemFile: String? = nil

    // PM2's operational keys, under PM2's names (parsed in AppSpecOptions.swift).
    /// Restart on file changes (`watch`, `ignore_watch`, `watch_delay`); nil: off.
    public var watch: WatchSpec? = nil
    /// Where stdout goes (`out_file`; "/dev/null" with `disable_logs`); nil: `logs/<app>-out.log`.
    public var outFile: String? = nil
    /// Where stderr goes (`error_file`); nil: `logs/<app>-err.log`.
    public var errorFile: String? = nil
    /// Both streams also go here (`log_file`).
    public var logFile: String? = nil
    /// Each worker's pid is written here (`pid_file`; "-<instance>" before the extension when several).
    public var pidFile: String? = nil
    /// False: each instance writes its own log files, suffixed "-<instance>" (PM2's cluster files).
    public var mergeLogs = true
    /// Run workers as this user and group (`uid`, `gid`: names or numbers); the daemon must be root.
    public var user: String? = nil
    public var group: String? = nil
    /// A worker whose resident memory passes this many bytes is restarted (`max_memory_restart`).
    public var maxMemoryRestart: Int? = nil
    /// Restart the app on this schedule (`cron_restart`, checked by `CronSchedule`).
    public var cronRestart: String? = nil
    /// PM2's `exp_backoff_restart_delay`: the first delay (ms); ×1.5 per crash in a row, up to restart_delay_max.
    public var expBackoffRestartDelay: Int? = nil
    /// This variable of the environment grows by one per instance (`increment_var`).
    public var incrementVar: String? = nil
    /// The variable holding the instance number (`instance_var`).
    public var instanceVar = "NODE_APP_INSTANCE"
    /// Inherited variables starting with any of these are dropped (`filter_env`; "" drops them all).
    public var filterEnv: [String] = []
    /// False: `pml start` registers the app without starting it (`autostart`).
    public var autostart = true

    enum CodingKeys: String, CodingKey {
        case name, argv, cwd, env, instances, autorestart
        case minUptime = "min_uptime", maxRestarts = "max_restarts", restartDelay = "restart_delay"
        case restartDelayMax = "restart_delay_max", stableAfter = "stable_after"
        case stopExitCodes = "stop_exit_codes", killTimeout = "kill_timeout", killSignal = "kill_signal"
        case timestamps, logDateFormat = "log_date_format", logFormat = "log_format", listen, dispatch, ready, readyTimeout = "ready_timeout", autoscale, appFile = "app_file", hooks, namespace, ecosystemFile = "ecosystem_file"
        case watch, outFile = "out_file", errorFile = "error_file", logFile = "log_file", pidFile = "pid_file"
        case mergeLogs = "merge_logs", user = "uid", group = "gid", maxMemoryRestart = "max_memory_restart"
        case cronRestart = "cron_restart", expBackoffRestartDelay = "exp_backoff_restart_delay"
        case incrementVar = "increment_var", instanceVar = "instance_var", filterEnv = "filter_env", autostart
    }

    /// "cluster" when pml owns sockets or runs several instances, else "fork" (PM2's words).
    public var mode: String { instances > 1 || !listen.isEmpty ? "cluster" : "fork" }

    /// The value of this app as Lua hooks see it (`app` argument).
    public var scriptValue: ScriptValue {
        .object([
            "name": .string(name),
            "cmd": .array(argv.map { .string($0) }),
            "cwd": .string(cwd),
            "env": .object(env.mapValues { .string($0) }),
            "instances": .int(Int64(instances)),
            "autorestart": .bool(autorestart),
            "min_uptime": .int(Int64(minUptime)),
            "max_restarts": .int(Int64(maxRestarts)),
            "restart_delay": .int(Int64(restartDelay)),
            "restart_delay_max": .int(Int64(restartDelayMax)),
            "stable_after": .int(Int64(stableAfter)),
            "stop_exit_codes": .array(stopExitCodes.map { .int(Int64($0)) }),
            "kill_timeout": .int(Int64(killTimeout)),
            "kill_signal": .string(killSignal),
            "mode": .string(mode),
            "listen": .array(listen.map { .string($0.description) }),
            "dispatch": .string(dispatch.rawValue),
            "ready_timeout": .int(Int64(readyTimeout)),
            "max_memory_restart": maxMemoryRestart.map { .int(Int64($0)) } ?? .null,
            "cron_restart": cronRestart.map { .string($0) } ?? .null,
            "exp_backoff_restart_delay": expBackoffRestartDelay.map { .int(Int64($0)) } ?? .null,
            "watch": .bool(watch != nil),
            "autostart": .bool(autostart),
            "namespace": .string(namespace ?? "default"),
        ].filter { $0.value != .null })
    }

    /// A worker's environment without pml's own variables: the inherited one (less `filter_env`),
    /// the app's `env`, the instance number in `instance_var`, and `increment_var` counted up.
    public func workerEnvironment(inherited: [String: String], instance: Int) -> [String: String] {
        var result = inherited.filter { entry in !filterEnv.contains { entry.key.hasPrefix($0) } }
        for (k, v) in env { result[k] = v }
        result[instanceVar] = String(instance)
        if let name = incrementVar {
            result[name] = String((result[name].flatMap { Int($0) } ?? 0) + instance)
        }
        return result
    }

    /// A log file of one instance: the path itself when the app merges logs, else "-<instance>"
    /// before the extension ("out.log" → "out-2.log"), as PM2 names them.
    public func perInstance(_ path: String, instance: Int) -> String {
        guard !mergeLogs else { return path }
        return Self.suffixed(path, instance)
    }

    /// The pid file of one instance: "-<instance>" before the extension when the app has several.
    public func pidFile(instance: Int) -> String? {
        guard let pidFile else { return nil }
        return instances > 1 ? Self.suffixed(pidFile, instance) : pidFile
    }

    static func suffixed(_ path: String, _ instance: Int) -> String {
        guard path != "/dev/null" else { return path }
        let slash = path.lastIndex(of: "/").map { path.index(after: $0) } ?? path.startIndex
        guard let dot = path[slash...].lastIndex(of: "."), dot != slash else { return "\(path)-\(instance)" }
        return "\(path[..<dot])-\(instance)\(path[dot...])"
    }
}

/// Watch mode: which paths, what to ignore, how long a burst of changes may last.
public struct WatchSpec: Sendable, Codable, Equatable {
    /// Absolute paths of folders (watched recursively) and files.
    public var paths: [String]
    /// Globs (see `GlobPattern`), the defaults included.
    public var ignore: [String]
    /// Changes within this many ms of the first one make one restart.
    public var delayMs: Int

    enum CodingKeys: String, CodingKey { case paths, ignore, delayMs = "delay_ms" }

    public init(paths: [String], ignore: [String], delayMs: Int) {
        self.paths = paths
        self.ignore = ignore
        self.delayMs = delayMs
    }

    /// Ignored in every watched tree, whatever `ignore_watch` says (PM2 ignores these too).
    public static let defaultIgnore = ["node_modules", ".git"]

}

/// A problem in an app file (or command-line app), located as precisely as pml can.
public struct AppFileError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var message: String

    public init(file: String, line: Int? = nil, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    public var description: String {
        if let line { return "\(file):\(line): \(message)" }
        return "\(file): \(message)"
    }
}
