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

    enum CodingKeys: String, CodingKey {
        case name, argv, cwd, env, instances, autorestart
        case minUptime = "min_uptime", maxRestarts = "max_restarts", restartDelay = "restart_delay"
        case restartDelayMax = "restart_delay_max", stableAfter = "stable_after"
        case stopExitCodes = "stop_exit_codes", killTimeout = "kill_timeout", killSignal = "kill_signal"
        case timestamps, logDateFormat = "log_date_format", logFormat = "log_format", listen, dispatch, ready, readyTimeout = "ready_timeout", autoscale, appFile = "app_file", hooks
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
        ])
    }
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
