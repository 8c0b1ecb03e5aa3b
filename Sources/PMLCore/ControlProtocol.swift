/// The control protocol between `pml` and its daemon, version 1.
///
/// Transport: a unix stream socket, `$PML_HOME/pml.sock`. The client writes one request as one
/// line of JSON; the daemon answers with one line of JSON and may then read the next request.
/// A request whose `v` differs from `ControlProtocol.version`, or that does not parse, gets
/// `{"v":1,"ok":false,"error":…}` and the connection is closed. See docs/PROTOCOL.md.
public enum ControlProtocol {
    public static let version = 1
    /// Requests longer than this are refused (and the connection closed).
    public static let maxRequestBytes = 1 << 20
}

/// What the client asks.
public enum ControlCommand: String, Codable, Sendable, CaseIterable {
    case ping, start, stop, restart, delete, list, describe, flush, signal, kill, send, scale, reload, plugins, save, resurrect
    /// Close and reopen every app's log files (after logrotate moved them).
    case reloadLogs
    /// The dashboard's URL (the daemon starts serving it if needed), in `message`.
    case dashboard
    /// Hand everything to a new daemon from the installed binary (`pml update`).
    case update
    /// reset: a worker's restart counters back to 0; env: a worker's environment.
    case reset, env
}

/// One request line.
public struct ControlRequest: Codable, Sendable, Equatable {
    public var v: Int
    public var cmd: ControlCommand
    /// App name, worker id, namespace, or "all" (stop, restart, delete, describe, flush, signal).
    public var target: String?
    /// Several targets at once (stop, restart, delete, reload, reset): every worker any of them names.
    public var targets: [String]?
    public var start: StartArguments?
    /// Signal name or number (signal).
    public var signal: String?
    /// What to send to the workers (send).
    public var message: ScriptValue?
    /// "N", "+N" or "-N" (scale).
    public var count: String?
    /// reload: send the graceful message (default "shutdown") and wait before signalling.
    public var graceful: Bool?
    /// reload: how many workers to replace at once (default 1).
    public var parallel: Int?
    /// restart, reload: the apps' environment becomes `start.clientEnv` (`--update-env`).
    public var updateEnv: Bool?

    enum CodingKeys: String, CodingKey {
        case v, cmd, target, targets, start, signal, message, count, graceful, parallel, updateEnv = "update_env"
    }

    public init(cmd: ControlCommand, target: String? = nil, start: StartArguments? = nil, signal: String? = nil,
                message: ScriptValue? = nil, count: String? = nil, graceful: Bool? = nil, parallel: Int? = nil,
                targets: [String]? = nil, updateEnv: Bool? = nil) {
        self.v = ControlProtocol.version
        self.cmd = cmd
        self.target = target
        self.targets = targets
        self.updateEnv = updateEnv
        self.start = start
        self.signal = signal
        self.message = message
        self.count = count
        self.graceful = graceful
        self.parallel = parallel
    }
}

/// What to start: an app file, or an app table built by the CLI from its arguments.
public struct StartArguments: Codable, Sendable, Equatable {
    /// Absolute path of an app file.
    public var file: String?
    /// An app table (same keys as in an app file) for `pml start script` / `pml start -- cmd`.
    public var app: ScriptValue?
    /// Overrides applied to every app started (`--name` only for single apps, `--env`, `-i`).
    public var name: String?
    public var env: [String: String]
    public var instances: ScriptValue?
    /// The client's environment: workers inherit it under the app's own env, as with PM2.
    public var clientEnv: [String: String]
    /// The client's working directory, for relative paths in command-line apps.
    public var clientCwd: String
    /// Start only the app of this name from the file (`--only`, and save/resurrect).
    public var only: String?
    /// `--watch`: watch mode for apps whose file does not set `watch`.
    public var watch: Bool?
    /// The PM2 ecosystem file `app` (a list of app tables) was mapped from: its folder is their base.
    public var ecosystem: String?
    /// `--env <name>`: the env_<name> set is merged over env (Lua app files; PM2 files are mapped with it).
    public var envName: String?

    enum CodingKeys: String, CodingKey {
        case file, app, name, env, instances, only, watch, ecosystem
        case clientEnv = "client_env", clientCwd = "client_cwd", envName = "env_name"
    }

    public init(file: String? = nil, app: ScriptValue? = nil, name: String? = nil, env: [String: String] = [:],
                instances: ScriptValue? = nil, clientEnv: [String: String], clientCwd: String) {
        self.file = file
        self.app = app
        self.name = name
        self.env = env
        self.instances = instances
        self.clientEnv = clientEnv
        self.clientCwd = clientCwd
    }
}

/// What `pml save` writes to dump.json and the daemon keeps current in state.json: enough to
/// start every app again as it was.
public struct SavedState: Codable, Sendable, Equatable {
    public var version = 1
    /// The daemon that wrote it (state.json): if it is gone without cleaning up, it died.
    public var daemonPID: Int32?
    /// The keeper that held the daemon's fds (state.json): a successor it starts adopts the workers.
    public var keeperPID: Int32?
    public var apps: [SavedApp]

    enum CodingKeys: String, CodingKey { case version, daemonPID = "daemon_pid", keeperPID = "keeper_pid", apps }

    public init(daemonPID: Int32?, apps: [SavedApp]) {
        self.daemonPID = daemonPID
        self.apps = apps
    }
}

/// One app in a `SavedState`.
public struct SavedApp: Codable, Sendable, Equatable {
    public var name: String
    /// How it was started (its app file or command-line table, the client's environment).
    public var start: StartArguments
    public var instances: Int
    /// False for an app that was stopped: it is not started again.
    public var running: Bool
    /// state.json only: the processes a successor daemon adopts, and the sockets the keeper holds.
    public var workers: [SavedWorker]?
    public var listeners: [SavedListener]?

    public init(name: String, start: StartArguments, instances: Int, running: Bool) {
        self.name = name
        self.start = start
        self.instances = instances
        self.running = running
    }
}

/// One answer line.
public struct ControlResponse: Codable, Sendable, Equatable {
    public var v: Int
    public var ok: Bool
    public var error: String?
    /// A human sentence about what happened ("stopped web (2 workers)").
    public var message: String?
    /// The process table (start, stop, restart, delete, list, signal).
    public var processes: [ProcessRow]?
    /// describe
    public var app: AppDescription?
    /// ping
    public var daemon: DaemonInfo?
    /// plugins: every plugin file found, loaded or not.
    public var plugins: [PluginInfo]?
    /// Something the user should hear once, on stderr, whatever they asked (a daemon died and
    /// its successor adopted the workers).
    public var notice: String?
    /// env: the worker's environment.
    public var environment: [String: String]?

    public init(ok: Bool, error: String? = nil, message: String? = nil, processes: [ProcessRow]? = nil,
                app: AppDescription? = nil, daemon: DaemonInfo? = nil, plugins: [PluginInfo]? = nil,
                environment: [String: String]? = nil) {
        self.v = ControlProtocol.version
        self.ok = ok
        self.error = error
        self.message = message
        self.processes = processes
        self.app = app
        self.daemon = daemon
        self.plugins = plugins
        self.environment = environment
    }

    public static func failure(_ error: String) -> ControlResponse { ControlResponse(ok: false, error: error) }
}

/// One worker as `pml ls` shows it.
public struct ProcessRow: Codable, Sendable, Equatable {
    public var id: Int
    public var name: String
    public var instance: Int
    public var mode: String
    public var pid: Int32?
    public var status: WorkerStatus
    public var restarts: Int
    /// Milliseconds since this worker started; nil when not running.
    public var uptimeMs: Int?
    /// CPU % of one core over the last sample period.
    public var cpu: Double
    /// Resident memory in bytes.
    public var memory: Int

    enum CodingKeys: String, CodingKey {
        case id, name, instance, mode, pid, status, restarts, uptimeMs = "uptime_ms", cpu, memory
    }

    /// Absent values are written as null, so `pml ls --json` rows always have every key.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(name, forKey: .name)
        try c.encode(instance, forKey: .instance)
        try c.encode(mode, forKey: .mode)
        try c.encode(pid, forKey: .pid)
        try c.encode(status, forKey: .status)
        try c.encode(restarts, forKey: .restarts)
        try c.encode(uptimeMs, forKey: .uptimeMs)
        try c.encode(cpu, forKey: .cpu)
        try c.encode(memory, forKey: .memory)
    }

    public init(id: Int, name: String, instance: Int, mode: String, pid: Int32?, status: WorkerStatus,
                restarts: Int, uptimeMs: Int?, cpu: Double, memory: Int) {
        self.id = id
        self.name = name
        self.instance = instance
        self.mode = mode
        self.pid = pid
        self.status = status
        self.restarts = restarts
        self.uptimeMs = uptimeMs
        self.cpu = cpu
        self.memory = memory
    }
}

/// How a worker ended.
public struct ExitInfo: Codable, Sendable, Equatable {
    /// Exit code, if it exited.
    public var code: Int?
    /// Signal name, if a signal killed it.
    public var signal: String?
    /// How long it ran, in ms.
    public var uptimeMs: Int

    enum CodingKeys: String, CodingKey { case code, signal, uptimeMs = "uptime_ms" }

    public init(code: Int?, signal: String?, uptimeMs: Int) {
        self.code = code
        self.signal = signal
        self.uptimeMs = uptimeMs
    }

    /// The `exit` argument of onExit/onCrash: `{ code, signal, uptime }`.
    public var scriptValue: ScriptValue {
        var t: [String: ScriptValue] = ["uptime": .int(Int64(uptimeMs))]
        if let code { t["code"] = .int(Int64(code)) }
        if let signal { t["signal"] = .string(signal) }
        return .object(t)
    }

    public var summary: String {
        if let signal { return "killed by \(signal)" }
        return "exited with code \(code ?? 0)"
    }
}

/// `pml describe`: one app in full.
public struct AppDescription: Codable, Sendable, Equatable {
    public var name: String
    public var mode: String
    public var status: WorkerStatus
    public var spec: AppSpec
    public var outLog: String
    public var errLog: String
    public var workers: [WorkerDescription]
    /// Sockets pml holds for the app now (bound addresses; ephemeral ports resolved).
    public var listening: [String]
    /// Connections accepted but not yet handed to a worker.
    public var pendingConnections: Int
    /// How many times its listeners were held (`PML_ACCEPT_HOLD_US`: arrivals left to gather in
    /// the backlog between accept turns under sustained load) since they were bound.
    public var acceptHolds: Int
    /// The last autoscale decision and why ("rule asked for 4; scaled 2 → 4").
    public var autoscaleDecision: String?
    /// Reloads that completed since the app was started.
    public var reloads: Int
    /// Changes of its worker count (pml scale, autoscale).
    public var scaleEvents: Int
    /// Every file the workers' stdout and stderr go to (one per instance when logs are not merged).
    public var outLogs: [String]?
    public var errLogs: [String]?
    /// The Lua state its scripts run in: memory, what it runs, whether it was ever replaced
    /// because a script was stuck inside a C call.
    public var scripts: String?

    enum CodingKeys: String, CodingKey {
        case name, mode, status, spec, outLog = "out_log", errLog = "err_log", workers, listening
        case pendingConnections = "pending_connections", acceptHolds = "accept_holds", autoscaleDecision = "autoscale_decision"
        case reloads, scaleEvents = "scale_events", outLogs = "out_logs", errLogs = "err_logs", scripts
    }

    public init(name: String, mode: String, status: WorkerStatus, spec: AppSpec, outLog: String, errLog: String,
                workers: [WorkerDescription], listening: [String] = [], pendingConnections: Int = 0, acceptHolds: Int = 0,
                autoscaleDecision: String? = nil, reloads: Int = 0, scaleEvents: Int = 0,
                outLogs: [String]? = nil, errLogs: [String]? = nil, scripts: String? = nil) {
        self.outLogs = outLogs
        self.errLogs = errLogs
        self.name = name
        self.mode = mode
        self.status = status
        self.spec = spec
        self.outLog = outLog
        self.errLog = errLog
        self.workers = workers
        self.listening = listening
        self.pendingConnections = pendingConnections
        self.acceptHolds = acceptHolds
        self.autoscaleDecision = autoscaleDecision
        self.reloads = reloads
        self.scaleEvents = scaleEvents
        self.scripts = scripts
    }
}

/// `pml describe`: one worker in full.
public struct WorkerDescription: Codable, Sendable, Equatable {
    public var row: ProcessRow
    public var lastExit: ExitInfo?
    /// Why the worker is in its state ("onCrash returned false", "crashed 16 times in a row…").
    public var reason: String?
    /// Delay (ms) before the pending restart, when waiting.
    public var restartDelayMs: Int?
    public var unstableRestarts: Int
    public var lastHookError: String?
    /// Latest value of each `{"type":"metric"}` the worker sent.
    public var metrics: [String: Double]
    /// The worker's own status line (sd_notify `STATUS=`).
    public var statusText: String?
    /// Listen addresses the worker is in rotation for.
    public var serving: [String]
    /// Connections pml handed to this worker (all its processes).
    public var dispatched: Int
    /// How pml hands it connections: `credits W, F fds/message` on its native handoff channel (with
    /// `, mark never echoed` if it said revision 2 and did not echo), `NODE_HANDLE` on its IPC channel;
    /// nil when pml hands it none.
    public var handoff: String?

    enum CodingKeys: String, CodingKey {
        case row = "process", lastExit = "last_exit", reason, restartDelayMs = "restart_delay_ms"
        case unstableRestarts = "unstable_restarts", lastHookError = "last_hook_error", metrics
        case statusText = "status_text", serving, dispatched, handoff
    }

    public init(row: ProcessRow, lastExit: ExitInfo?, reason: String?, restartDelayMs: Int?, unstableRestarts: Int,
                lastHookError: String?, metrics: [String: Double] = [:], statusText: String? = nil, serving: [String] = [],
                dispatched: Int = 0, handoff: String? = nil) {
        self.row = row
        self.lastExit = lastExit
        self.reason = reason
        self.restartDelayMs = restartDelayMs
        self.unstableRestarts = unstableRestarts
        self.lastHookError = lastHookError
        self.metrics = metrics
        self.statusText = statusText
        self.serving = serving
        self.dispatched = dispatched
        self.handoff = handoff
    }
}

/// `pml plugins`: one plugin file.
public struct PluginInfo: Codable, Sendable, Equatable {
    /// The plugin's `name`; nil when it failed to load.
    public var name: String?
    public var path: String
    public var hooks: [String]
    /// Why it did not load (file:line: message).
    public var error: String?

    enum CodingKeys: String, CodingKey { case name, path, hooks, error }

    /// Absent values are written as null, so every entry has every key.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(path, forKey: .path)
        try c.encode(hooks, forKey: .hooks)
        try c.encode(error, forKey: .error)
    }

    public init(name: String?, path: String, hooks: [String], error: String?) {
        self.name = name
        self.path = path
        self.hooks = hooks
        self.error = error
    }
}

/// `pml ping`: who answered.
public struct DaemonInfo: Codable, Sendable, Equatable {
    public var pid: Int32
    public var version: String
    public var home: String
    public var uptimeMs: Int

    enum CodingKeys: String, CodingKey { case pid, version, home, uptimeMs = "uptime_ms" }

    public init(pid: Int32, version: String, home: String, uptimeMs: Int) {
        self.pid = pid
        self.version = version
        self.home = home
        self.uptimeMs = uptimeMs
    }
}

/// pml's version, shown by `pml --version` and `pml ping`.
public enum PMLVersion {
    public static let string = "0.1.0"
}
