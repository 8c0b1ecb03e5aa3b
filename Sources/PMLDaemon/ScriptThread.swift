import Glibc
import PMLCore
import PMLLua
import PMLPosix
import Synchronization

/// Something a script thread tells the supervisor: `pml.*` mutations, failures to log.
enum ScriptCommand: Sendable {
    case log(level: LuaLogLevel, source: String, message: String)
    /// An app's hook failed (error, budget, memory): logged, and the worker's last hook error.
    case hookFailed(app: String, worker: Int?, hook: String, message: String)
    /// A plugin's hook, a timer or a load failed: daemon.log, and the app's log if one is named.
    case failed(app: String?, message: String)
    case send(worker: Int, message: ScriptValue)
    case broadcast(app: String, message: ScriptValue)
    case scale(app: String, instances: Int)
    case reload(app: String, options: ReloadOptions)
    case restart(target: String)
    case spawn(argv: [String])
}

extension ScriptCommand {
    /// Roughly what it holds, for the bound on what waits for the supervisor.
    var approximateBytes: Int {
        switch self {
        case .log(_, let source, let message): return 64 + source.utf8.count + message.utf8.count
        case .hookFailed(let app, _, let hook, let message): return 64 + app.utf8.count + hook.utf8.count + message.utf8.count
        case .failed(let app, let message): return 64 + (app?.utf8.count ?? 0) + message.utf8.count
        case .send(_, let message): return 64 + message.approximateBytes
        case .broadcast(let app, let message): return 64 + app.utf8.count + message.approximateBytes
        case .scale(let app, _), .reload(let app, _): return 64 + app.utf8.count
        case .restart(let target): return 64 + target.utf8.count
        case .spawn(let argv): return 64 + argv.reduce(0) { $0 + 16 + $1.utf8.count }
        }
    }
}

extension ScriptValue {
    /// Roughly what it holds in memory.
    var approximateBytes: Int {
        switch self {
        case .string(let s): return 16 + s.utf8.count
        case .array(let items): return 16 + items.reduce(0) { $0 + $1.approximateBytes }
        case .object(let fields): return 16 + fields.reduce(0) { $0 + 16 + $1.key.utf8.count + $1.value.approximateBytes }
        default: return 16
        }
    }
}

/// What crosses from a script thread to the supervisor.
enum ScriptMessage: Sendable {
    /// The answer to `ScriptHub.ask` number `id`.
    case answer(id: Int, value: any Sendable)
    case command(ScriptCommand)
}

/// What scripts read through `pml.apps()`, `pml.workers()` and `pml.metrics()`: an immutable copy
/// the supervisor publishes, so a script never touches the supervisor's own state.
struct ScriptSnapshot: Sendable {
    var apps: [ScriptValue] = []
    var workers: [String: [ScriptValue]] = [:]
    var metrics: [String: ScriptValue] = [:]
    /// Every worker id, and whether it has a process with an open IPC channel.
    var running: [Int: Bool] = [:]
    /// Apps being reloaded (pml.scale is refused for them).
    var reloading: Set<String> = []

    /// The error `pml.restart(target)` raises at once, as `pml restart` would answer; nil if the target exists.
    func targetError(_ target: String) -> String? {
        switch TargetSelection(target) {
        case .all: return running.isEmpty ? "no apps are running" : nil
        case .app(let name): return workers[name] == nil ? "no app named \"\(name)\"" : nil
        case .worker(let id): return running[id] == nil ? "no worker with id \(id)" : nil
        }
    }
}

/// One Lua state on a thread of its own, and the only place where work crosses between that thread
/// and the supervisor's: a queue of jobs one way and a queue of messages the other, each behind a
/// mutex and announced on an eventfd the receiving side's event loop watches, plus what the
/// supervisor's watchdog reads (what the thread is busy with, since when) and the snapshot scripts
/// read. Nothing else is shared: the `LuaRuntime` lives and dies on the script thread (`ScriptSide`),
/// the supervisor's state on its own.
final class ScriptThread: Sendable {
    typealias Job = @Sendable (ScriptSide) -> Void

    /// What the thread is doing, for the watchdog and `pml describe`.
    struct Activity: Sendable {
        /// The Lua call running now, when it started (monotonic ms) and the thread's CPU time then (ns).
        var busy: (since: Int, cpuNs: UInt64, label: String)?
        /// The kernel's id of the thread, once it runs (0 before).
        var tid: Int32 = 0
        /// Bytes the Lua state holds, after its last call.
        var memory = 0
        /// The supervisor gave up on this thread: it ends at its next chance, answering nothing.
        var abandoned = false
        var exited = false
    }

    /// Names the state in logs ("app file /srv/web/app.lua", "plugin /home/u/.pml/plugins/x.lua").
    let name: String
    let limits: LuaLimits
    let snapshot: ScriptSnapshotBox
    /// Watched by the script thread's loop.
    let jobsFD: Int32
    /// Watched by the supervisor's loop.
    let messagesFD: Int32
    private let jobs = Mutex<[Job]>([])
    private let messages = Mutex<(queue: [ScriptMessage], commandBytes: Int, dropped: Bool)>(([], 0, false))
    private let activity = Mutex(Activity())
    /// Said once when commands are dropped; made up front so that `send` allocates nothing under its lock.
    private let dropNotice: String

    private init(name: String, limits: LuaLimits, snapshot: ScriptSnapshotBox) throws(SystemError) {
        self.name = name
        dropNotice = "\(name): more than \(Self.maxQueuedCommands) commands or \(Self.maxQueuedCommandBytes >> 20) MiB wait for the supervisor; the rest are dropped"
        self.limits = limits
        self.snapshot = snapshot
        jobsFD = try makeEventFD()
        do {
            messagesFD = try makeEventFD()
        } catch {
            closeFD(jobsFD)
            throw error
        }
    }

    deinit {
        closeFD(jobsFD)
        closeFD(messagesFD)
    }

    /// Starts a thread with a fresh Lua state (made on that thread); jobs posted before it is up wait.
    static func start(name: String, libraryPaths: [String], limits: LuaLimits,
                      snapshot: ScriptSnapshotBox) throws(SystemError) -> ScriptThread {
        let thread = try ScriptThread(name: name, limits: limits, snapshot: snapshot)
        let context = Unmanaged.passRetained(Start(thread: thread, libraryPaths: libraryPaths)).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { raw in
            let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
            start.thread.main(libraryPaths: start.libraryPaths)
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<Start>.fromOpaque(context).release()
            throw SystemError("pthread_create", errno: rc)
        }
        pthread_detach(tid)
        return thread
    }

    private final class Start {
        let thread: ScriptThread
        let libraryPaths: [String]
        init(thread: ScriptThread, libraryPaths: [String]) {
            self.thread = thread
            self.libraryPaths = libraryPaths
        }
    }

    /// Script threads yield the CPU to the supervisor and the apps when the machine is busy: a
    /// script that burns its budget (or is stuck in a C call) slows the apps as little as possible.
    /// Nice ranks them among the daemon's threads (the last resort when `ScriptCPU` cannot place them).
    static let nice: Int32 = 19
    /// What `ps -L`, top and /proc/<pid>/task/<tid>/comm call a script thread.
    static let threadName = "pml-lua"

    private func main(libraryPaths: [String]) {
        defer { activity.withLock { $0.exited = true } }
        let tid = thisThreadID()
        activity.withLock { $0.tid = tid }
        setThisThreadName(Self.threadName)
        try? setThisThreadNice(Self.nice)
        if let problem = ScriptCPU.place(tid: tid) {
            send(.command(.failed(app: nil, message: "\(name): \(problem)")))
        }
        let side: ScriptSide
        do {
            side = try ScriptSide(thread: self, libraryPaths: libraryPaths)
        } catch {
            send(.command(.failed(app: nil, message: "\(name): cannot start a Lua state: \(error)")))
            return
        }
        side.run()
    }

    // MARK: supervisor side

    /// At most this many jobs wait for a thread busy with a long call; more are refused.
    static let maxQueuedJobs = 1000

    /// Queues a job for the script thread (FIFO: jobs run in the order they were posted); false
    /// when the queue is full (the thread has been busy while hooks kept coming), unless `always`.
    func post(always: Bool = false, _ job: @escaping Job) -> Bool {
        let queued = jobs.withLock { queue in
            guard always || queue.count < Self.maxQueuedJobs else { return false }
            queue.append(job)
            return true
        }
        if queued { signalEventFD(jobsFD) }
        return queued
    }

    /// Messages the thread sent since the last call; call after `messagesFD` became readable.
    /// Unless `waiting`, the supervisor does not wait for the lock: a script thread runs at a small
    /// CPU share and can be preempted inside `send`, the only other holder, which signals
    /// `messagesFD` after letting go, so what it adds comes with the next wake-up.
    func takeMessages(waiting: Bool = false) -> [ScriptMessage] {
        drainEventFD(messagesFD)
        if waiting {
            return messages.withLock { m in
                defer { m = ([], 0, false) }
                return m.queue
            }
        }
        return messages.withLockIfAvailable { m in
            defer { m = ([], 0, false) }
            return m.queue
        } ?? []
    }

    var currentActivity: Activity { activity.withLock { $0 } }

    /// The supervisor no longer waits for this thread: it exits after the call it is stuck in, if
    /// that ever returns, without running anything else.
    func abandon() {
        activity.withLock { $0.abandoned = true }
        // The queued jobs (and what they captured) are freed after the lock, not under it.
        _ = jobs.withLock { queue in
            defer { queue = [] }
            return queue
        }
        signalEventFD(jobsFD)
    }

    // MARK: script side

    func takeJobs() -> [Job] {
        drainEventFD(jobsFD)
        return jobs.withLock { queue in
            defer { queue.removeAll() }
            return queue
        }
    }

    /// Commands waiting for the supervisor, at most: what a script copies out of Lua is not under
    /// its state's memory cap, so a script that logs or sends in a loop loses the excess (once
    /// said) rather than exhaust the daemon's memory. Answers always go.
    static let maxQueuedCommands = 10_000
    static let maxQueuedCommandBytes = 32 << 20

    /// Everything that walks or allocates (the size of a big `pml.send` value, the drop notice) is
    /// done before the lock: the supervisor waits on it in `takeMessages`, and a script thread runs
    /// at a small CPU share, so whatever it does while holding the lock can stall the supervisor.
    func send(_ message: ScriptMessage) {
        let bytes: Int?
        if case .command(let c) = message { bytes = c.approximateBytes } else { bytes = nil }
        messages.withLock { m in
            guard let bytes else { return m.queue.append(message) }
            if m.queue.count < Self.maxQueuedCommands, m.commandBytes + bytes <= Self.maxQueuedCommandBytes {
                m.queue.append(message)
                m.commandBytes += bytes
            } else if !m.dropped {
                m.dropped = true
                m.queue.append(.command(.failed(app: nil, message: dropNotice)))
            }
        }
        signalEventFD(messagesFD)
    }

    var isAbandoned: Bool { activity.withLock { $0.abandoned } }

    /// Marks the start of a Lua call (for the watchdog); called on the script thread.
    func busy(_ label: String) {
        let now = monotonicMs(), cpu = thisThreadCPUNanoseconds()
        activity.withLock { $0.busy = (now, cpu, label) }
    }

    /// Marks its end; returns whether the thread should stop now (abandoned meanwhile).
    func idle(memory: Int) -> Bool {
        activity.withLock { a in
            a.busy = nil
            a.memory = memory
            return a.abandoned
        }
    }
}

/// The one snapshot every script thread reads; the supervisor replaces it whole.
final class ScriptSnapshotBox: Sendable {
    private let value = Mutex(ScriptSnapshot())

    /// The old snapshot is freed after the lock (script threads read through the same lock).
    func publish(_ snapshot: ScriptSnapshot) {
        _ = value.withLock { current in
            defer { current = snapshot }
            return current
        }
    }

    var current: ScriptSnapshot { value.withLock { $0 } }
}
