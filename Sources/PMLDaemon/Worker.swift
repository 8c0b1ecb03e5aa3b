import PMLCore
import PMLPosix

/// Why pml asked a worker to exit, which decides what happens when it does.
enum StopIntent {
    case stop, restart, delete
}

/// One instance of an app: a slot with a stable id that outlives the processes it runs.
final class Worker {
    let id: Int
    let instance: Int
    unowned let app: ManagedApp
    var pid: Int32?
    /// When the process started (/proc/<pid>/stat field 22): a successor checks it before adopting.
    var startTicks: UInt64 = 0
    /// Its process was adopted from a dead daemon: the keeper, not this daemon, reaps it.
    var adopted = false
    var status: WorkerStatus = .stopped
    var startedAt = 0
    var history = CrashHistory()
    var ipc: IPCChannel?
    /// pml's end of its native handoff channel (rr, least-busy), used once the worker opts in.
    var handoff: HandoffChannel?
    /// pml's copy of the worker's own end of that channel (the reclaim end): never read while the
    /// worker holds it; what the worker never read is read back from it once it is gone. Nil for a
    /// worker adopted from a daemon that kept none (pml keeps copies of its connections instead).
    var reclaim: Int32?
    var killTimer: TimerHandle?
    var restartTimer: TimerHandle?
    var intent: StopIntent?
    var lastExit: ExitInfo?
    var reason: String?
    var restartDelayMs: Int?
    var lastHookError: String?
    /// The environment it was last spawned with (`pml env <id>`).
    var environment: [String: String]?
    var readyTimer: TimerHandle?
    /// The crash whose restart decision the scripts are working out (answers to older ones are dropped).
    var pendingDecision: Int?
    /// Set when the worker was stopped for not becoming ready in time.
    var failedToStart = false
    /// Set on a reload's replacement until it is ready: called with nil once ready, or with why
    /// it failed to start (exited, ready_timeout, stopped). The restart policy does not apply to it.
    var startWatch: ((_ failure: String?) -> Void)?
    var metrics: [String: Double] = [:]
    /// Listeners a Node worker asked for through the preload; it serves them once ready.
    var requestedListeners: Set<Int> = []
    /// pml:listen requests refused so far (the 1st, 10th and 100th are logged).
    var listenRefusals = 0
    /// reuseport, through the preload: it listens on its inherited slot socket.
    var listensOnSlot = false
    /// Messages from the worker in the current one-second window (flood control).
    var messageWindow = (start: 0, count: 0)
    var statusText: String?
    /// Connections handed to this worker (all its processes).
    var dispatched = 0
    var cpuSample: (cpuMs: Int, at: Int)?
    var cpuPercent = 0.0
    var rssBytes = 0

    init(id: Int, instance: Int, app: ManagedApp) {
        self.id = id
        self.instance = instance
        self.app = app
    }

    /// The `worker` argument of hooks.
    var scriptValue: ScriptValue {
        var t = history.scriptFields
        t["id"] = .int(Int64(id))
        t["app"] = .string(app.spec.name)
        t["instance"] = .int(Int64(instance))
        t["status"] = .string(status.rawValue)
        if let pid { t["pid"] = .int(Int64(pid)) }
        if pid != nil {
            t["uptime"] = .int(Int64(monotonicMs() - startedAt))
            t["cpu"] = .double(cpuPercent)
            t["mem"] = .int(Int64(rssBytes))
        }
        if !metrics.isEmpty { t["metrics"] = .object(metrics.mapValues { .double($0) }) }
        return .object(t)
    }

    var row: ProcessRow {
        ProcessRow(id: id, name: app.spec.name, instance: instance, mode: app.mode, pid: pid, status: status,
                   restarts: history.restarts, uptimeMs: pid != nil ? monotonicMs() - startedAt : nil,
                   cpu: pid != nil ? (cpuPercent * 10).rounded() / 10 : 0, memory: pid != nil ? rssBytes : 0)
    }

    func description(serving: [String]) -> WorkerDescription {
        var mode: String?
        if pid != nil, app.spec.dispatch.passesConnections || !serving.isEmpty {
            if let h = handoff?.hello, handoff?.isOpen == true {
                mode = "credits \(h.window), \(h.maxFDs) fd\(h.maxFDs == 1 ? "" : "s")/message"
                    + (handoff?.echoNeverCame == true ? ", mark never echoed" : "")
            } else if app.spec.dispatch != .reusePort || !serving.isEmpty {
                mode = "NODE_HANDLE"
            }
        }
        return WorkerDescription(row: row, lastExit: lastExit, reason: reason,
                                 restartDelayMs: status == .waiting ? restartDelayMs : nil,
                                 unstableRestarts: history.unstableRestarts, lastHookError: lastHookError,
                                 metrics: metrics, statusText: statusText, serving: serving, dispatched: dispatched,
                                 handoff: mode)
    }
}

/// One app under supervision: its spec, the environment it was started with, its workers.
final class ManagedApp {
    var spec: AppSpec
    /// The starting client's environment; the app's own `env` goes on top.
    var baseEnv: [String: String]
    /// How it was started, for save/resurrect and recovery after a daemon death.
    var startArgs: StartArguments?
    var workers: [Worker] = []
    /// Sockets pml holds for the app; kept across worker restarts, closed when the app stops.
    var listeners: [AppListener] = []
    /// reuseport: which slot sockets exist, who holds and serves them.
    var slots = ReusePortSlots()
    /// A reload is replacing the workers; a second one is refused.
    var reloading = false
    var autoscaleTimer: TimerHandle?
    /// Watch mode's inotify watches, and the settings they were made for.
    var watcher: AppWatcher?
    var watchedSpec: WatchSpec?
    /// `cron_restart`: the timer for the next restart, and the second it last fired for.
    var cronTimer: TimerHandle?
    var cronLastFired: Int?
    var reloads = 0
    var scaleEvents = 0
    var lastScaleAt: Int?
    var autoscaleDecision: String?
    /// Connections dispatched to the app's workers at the last sample, for a rate.
    var dispatchSample: (count: Int, at: Int)?
    /// Connections dispatched per second between the last two samples.
    var rps = 0.0
    /// An autoscale rule was asked and has not answered yet.
    var autoscaleAsking = false
    /// The app's log files: its workers' output when it merges logs, and pml's notes about it.
    let logs: AppLogFiles
    /// Each instance's files when the app does not merge logs (`merge_logs = false`).
    private var instanceLogs: [Int: AppLogFiles] = [:]
    private let paths: PMLPaths

    init(spec: AppSpec, baseEnv: [String: String], paths: PMLPaths, console: Bool) {
        self.spec = spec
        self.baseEnv = baseEnv
        self.paths = paths
        logs = AppLogFiles(app: spec.name, outPath: paths.outLog(spec.name), errPath: paths.errLog(spec.name),
                           timestamps: spec.timestamps, dateFormat: spec.logDateFormat, jsonLines: spec.logFormat == "json",
                           consolePrefix: console ? spec.name + " | " : nil)
        logs.configure(for: spec, paths: paths)
    }

    /// The files the worker of `instance` writes its output to.
    func logFiles(instance: Int) -> AppLogFiles {
        guard !spec.mergeLogs, logs.consolePrefix == nil else { return logs }
        if let files = instanceLogs[instance] { return files }
        let files = AppLogFiles(app: spec.name, outPath: "", errPath: "", timestamps: spec.timestamps)
        files.configure(for: spec, paths: paths, instance: instance)
        instanceLogs[instance] = files
        return files
    }

    /// Every set of log files in use (`pml reloadLogs`, `pml flush`, `pml logs`).
    var allLogFiles: [AppLogFiles] { [logs] + instanceLogs.keys.sorted().compactMap { instanceLogs[$0] } }

    /// Takes up the spec's log settings (start, reload) in every set of files.
    func configureLogs() {
        logs.configure(for: spec, paths: paths)
        if spec.mergeLogs { instanceLogs = [:] }
        for (instance, files) in instanceLogs { files.configure(for: spec, paths: paths, instance: instance) }
    }

    /// Node workers of `rr`, `least-busy` and `reuseport` apps get pml's preload, which turns
    /// `server.listen()` into a request to pml (or, under reuseport, a listen on the inherited slot
    /// socket); they serve an address once they ask for it, not as soon as they are ready.
    var usesNodeShim: Bool {
        guard spec.dispatch != .shared, let program = spec.argv.first?.split(separator: "/").last else { return false }
        return program == "node" || program == "nodejs"
    }

    /// "cluster" while pml holds sockets for the app or runs several workers, else "fork" (PM2's words).
    var mode: String { listeners.isEmpty && workers.count <= 1 && spec.listen.isEmpty ? "fork" : "cluster" }

    /// The app's status as one word: the liveliest of its workers'.
    var status: WorkerStatus {
        let order: [WorkerStatus] = [.online, .starting, .stopping, .waiting, .errored, .stopped]
        return order.first { s in workers.contains { $0.status == s } } ?? .stopped
    }
}
