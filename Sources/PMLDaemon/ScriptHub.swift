import Glibc
import Logging
import PMLCore
import PMLLua
import PMLPosix

/// Which Lua state runs a script. Each has its own thread and its own memory cap, so one script
/// can neither stall nor starve another's.
enum ScriptOwner: Hashable, CustomStringConvertible {
    /// The apps an app file declares share the state their file was evaluated in.
    case appFile(String)
    case plugin(String)
    /// pml's own library: the default restart policy of apps started without an app file.
    case library

    var description: String {
        switch self {
        case .appFile(let path): return "app file \(path)"
        case .plugin(let path): return "plugin \(path)"
        case .library: return "pml's Lua library"
        }
    }
}

/// The supervisor's side of the script threads: starts one per owner on demand, posts jobs,
/// matches answers to waiting requests (each with a deadline after which its default applies),
/// and replaces a thread stuck inside a C call. Lives on the supervisor's thread.
final class ScriptHub {
    let loop: EventLoop
    let logger: Logger
    let libraryPaths: [String]
    let limits: LuaLimits
    let timeouts: ScriptTimeouts
    let snapshot = ScriptSnapshotBox()
    /// Called with each command a script sends (pml.send, pml.log, a failed hook, ...).
    var onCommand: ((ScriptCommand) -> Void)?
    /// Called after a stuck owner lost its state, and again when a fresh thread could be started
    /// only later (the stuck-thread caps): its scripts need loading again.
    var onRestarted: ((ScriptOwner) -> Void)?
    /// Called once before the jobs of a turn are posted: the supervisor publishes its snapshot.
    var beforePost: (() -> Void)?
    /// Called when an owner's last waiting question was answered (or expired): a state kept for it
    /// may be retired now.
    var onSettled: ((ScriptOwner) -> Void)?

    private var threads: [ScriptOwner: (thread: ScriptThread, io: IOHandle)] = [:]
    /// Who waits: the state that answers, and the app the question is about (nil: the state's own
    /// work, such as evaluating its file), so a deleted app's questions can go with it.
    private struct Asker: Hashable {
        let owner: ScriptOwner
        let app: String?
    }
    private var pending = PendingAnswers<((any Sendable)?) -> Void, Asker>()
    private var expiryTimer: (handle: TimerHandle, at: Int)?
    private var watchdog: TimerHandle?
    /// Threads given up on (stuck) or stopped, until they have exited.
    private var leaving: [ScriptThread] = []
    /// What happened to each owner's state, for `pml describe`.
    private var restarts: [ScriptOwner: (count: Int, last: String)] = [:]
    /// Owners whose state was replaced and not loaded again yet (no thread could start then): the
    /// next thread started for one loads its scripts first, or its apps would run without hooks.
    private var toLoad = StatesToLoad<ScriptOwner>()
    private var lastQueueFullNote: [ScriptOwner: Int] = [:]
    /// Jobs posted during this turn of the loop, sent after it behind one snapshot: building it
    /// (every app, worker and metric) once per turn, not once per hook.
    private var outbox = TurnBatch<(thread: ScriptThread, owner: ScriptOwner, job: ScriptThread.Job, refused: (() -> Void)?)>()
    /// At most this many stuck threads may be alive: past it no new state is started (each holds
    /// its memory until its C call returns) and scripted decisions take their defaults.
    static let maxStuckThreads = 8
    /// ... and at most this many of one owner's (app file or plugin).
    static let maxStuckThreadsPerOwner = 2
    static let watchEveryMs = 250

    init(loop: EventLoop, logger: Logger, libraryPaths: [String], limits: LuaLimits = LuaLimits()) {
        self.loop = loop
        self.logger = logger
        self.libraryPaths = libraryPaths
        self.limits = limits
        timeouts = ScriptTimeouts(callBudgetMs: limits.timeBudgetMs)
        logger.info("\(ScriptCPU.placement.sentence)")
    }

    /// Runs `job` on the owner's thread; nothing comes back (notification hooks, binding).
    func tell(_ owner: ScriptOwner, _ job: @escaping ScriptThread.Job) {
        guard let thread = thread(for: owner) else { return }
        enqueue(thread, owner, job, refused: nil)
    }

    /// Runs `job` on the owner's thread and calls `answer` with its result on the supervisor's
    /// thread — or with nil when it did not come within `deadlineMs` (default: a decision's), or
    /// the owner's state was lost: then the caller's default applies. Always called later, never
    /// from inside `ask`.
    func ask<T: Sendable>(_ owner: ScriptOwner, about app: String? = nil, deadlineMs: Int? = nil,
                          _ job: @escaping @Sendable (ScriptSide) -> T, answer: @escaping (T?) -> Void) {
        guard let thread = thread(for: owner) else {
            loop.schedule(after: 0) { answer(nil) }
            return
        }
        let deadline = monotonicMs() + (deadlineMs ?? timeouts.decisionMs)
        let id = pending.add(deadline: deadline, owner: Asker(owner: owner, app: app)) { answer($0 as? T) }
        armExpiry()
        // A question whose deadline passed while it waited in the queue is not worth running.
        enqueue(thread, owner, { side in
            guard monotonicMs() <= deadline else { return }
            side.answer(id, job(side))
        }, refused: { [unowned self] in
            if let refused = self.pending.answer(id) { self.loop.schedule(after: 0) { refused(nil) } }
        })
    }

    private func enqueue(_ thread: ScriptThread, _ owner: ScriptOwner, _ job: @escaping ScriptThread.Job, refused: (() -> Void)?) {
        if outbox.add((thread, owner, job, refused)) { loop.schedule(after: 0) { [unowned self] in self.flush() } }
    }

    /// Posts the turn's jobs, in order, after publishing one snapshot. A replaced thread's jobs are
    /// dropped (its questions were answered with nil then).
    private func flush() {
        guard !outbox.isEmpty else { return }
        beforePost?()
        for item in outbox.take() where !item.thread.isAbandoned {
            if !item.thread.post(item.job) {
                queueFull(item.owner)
                item.refused?()
            }
        }
    }

    /// Said once per state and second: its queue is full, so hooks are dropped and decisions default.
    private func queueFull(_ owner: ScriptOwner) {
        let now = monotonicMs()
        if let last = lastQueueFullNote[owner], now - last < 1000 { return }
        lastQueueFullNote[owner] = now
        logger.warning("scripts of \(owner): \(ScriptThread.maxQueuedJobs) hooks wait behind a long call; new ones are dropped (decisions take their defaults)")
    }

    /// Whether requests to `owner` wait for answers.
    func waits(on owner: ScriptOwner) -> Bool { pending.waits { $0.owner == owner } }

    /// `app` was deleted: the questions asked about it get nil now (what they decide is moot), so
    /// they no longer hold its state, which the caller may then retire.
    func forget(app: String, of owner: ScriptOwner) {
        for answer in pending.drop(where: { $0 == Asker(owner: owner, app: app) }) { answer(nil) }
        armExpiry()
    }

    /// Owners with a thread now.
    var owners: [ScriptOwner] { Array(threads.keys) }

    /// Ends the owner's thread after the jobs already queued; requests still waiting on it get nil.
    func stop(_ owner: ScriptOwner) {
        toLoad.forget(owner) // nobody needs its scripts any more
        guard let entry = threads.removeValue(forKey: owner) else { return }
        flush() // what was posted before the stop runs before it
        // Its history goes with it: a later app from the same file starts with a clean `describe`.
        restarts[owner] = nil
        lastQueueFullNote[owner] = nil
        // What it sent already is carried out; what its queued jobs send the watchdog hands over.
        received(from: entry.thread)
        loop.unregister(entry.io)
        _ = entry.thread.post(always: true) { $0.stop() }
        leaving.append(entry.thread)
        armWatchdog()
        for answer in pending.drop(where: { $0.owner == owner }) { answer(nil) }
    }

    /// Ends every thread, giving them up to `ms` to finish what is queued (the last notification
    /// hooks at shutdown) and handing over what they send meanwhile. Then gives up on the rest.
    func finish(within ms: Int) {
        flush()
        let all = threads
        threads = [:]
        for (_, entry) in all {
            loop.unregister(entry.io)
            _ = entry.thread.post(always: true) { $0.stop() }
        }
        let deadline = monotonicMs() + ms
        while all.values.contains(where: { !$0.thread.currentActivity.exited }), monotonicMs() < deadline {
            usleep(10_000)
        }
        for (_, entry) in all {
            entry.thread.abandon()
            for case .command(let c) in entry.thread.takeMessages(waiting: true) { onCommand?(c) }
        }
    }

    /// One line for `pml describe`: the state's memory, and whether it was ever replaced.
    func describe(_ owner: ScriptOwner) -> String? {
        var parts: [String] = []
        if let entry = threads[owner] {
            let a = entry.thread.currentActivity
            let mib = (Double(a.memory) / 1048576 * 10).rounded(.up) / 10
            parts.append("Lua state \(mib) MiB of \(LuaRuntime.describe(bytes: limits.memoryLimitBytes))")
            if let busy = a.busy { parts.append("running \(busy.label) for \(monotonicMs() - busy.since) ms") }
        } else {
            parts.append("no Lua state running")
        }
        if let (count, last) = restarts[owner] {
            parts.append("restarted \(count) time\(count == 1 ? "" : "s"), last at \(last)")
        }
        return parts.joined(separator: "; ")
    }

    // MARK: threads

    private func thread(for owner: ScriptOwner) -> ScriptThread? {
        if let entry = threads[owner] { return entry.thread }
        leaving.removeAll { $0.currentActivity.exited }
        let stuck = leaving.filter { $0.currentActivity.busy != nil }
        let own = stuck.filter { $0.name == owner.description }.count
        // Per owner first: one script that keeps getting stuck must not leave the others without states.
        if own >= Self.maxStuckThreadsPerOwner || stuck.count >= Self.maxStuckThreads {
            logger.error("\(owner): not started: \(own) of its script threads (\(stuck.count) in all) are stuck in C calls; scripted decisions take their defaults")
            return nil
        }
        do {
            let t = try ScriptThread.start(name: owner.description, libraryPaths: libraryPaths, limits: limits,
                                           snapshot: snapshot)
            let io = try loop.register(fd: t.messagesFD, events: [.readable]) { [unowned self] _ in self.received(from: t) }
            threads[owner] = (t, io)
        } catch {
            logger.error("\(owner): cannot start a script thread: \(error)")
            return nil
        }
        armWatchdog()
        if toLoad.started(owner) {
            logger.info("scripts of \(owner): a script thread could start again; loading its scripts")
            onRestarted?(owner) // its evaluation is queued ahead of what asked for the thread
        }
        return threads[owner]?.thread
    }

    private func received(from thread: ScriptThread) {
        for message in thread.takeMessages() {
            switch message {
            case .answer(let id, let value):
                let asker = pending.owner(of: id)
                pending.answer(id)?(value)
                if let asker { settled(asker.owner) }
            case .command(let command):
                onCommand?(command)
            }
        }
    }

    private func settled(_ owner: ScriptOwner) {
        if threads[owner] != nil, !waits(on: owner) { onSettled?(owner) }
    }

    // MARK: deadlines

    private func armExpiry() {
        guard let next = pending.nextDeadline else {
            if let t = expiryTimer { loop.cancel(t.handle) }
            expiryTimer = nil
            return
        }
        if let t = expiryTimer, t.at <= next { return }
        if let t = expiryTimer { loop.cancel(t.handle) }
        expiryTimer = (loop.schedule(after: next - monotonicMs()) { [unowned self] in
            self.expiryTimer = nil
            let owners = Set(self.threads.keys)
            for answer in self.pending.expire(now: monotonicMs()) { answer(nil) }
            self.armExpiry()
            owners.forEach(self.settled)
        }, next)
    }

    /// Every `watchEveryMs` while threads run or are leaving: a thread that used more than
    /// `stuckAfterMs` of CPU in one call (or spent `stuckAfterWallMs` in it) is inside a C call no
    /// budget can stop; the owner gets a fresh thread and state.
    private func armWatchdog() {
        guard watchdog == nil else { return }
        watchdog = loop.schedule(after: Self.watchEveryMs) { [unowned self] in
            self.watchdog = nil
            for (owner, entry) in self.threads {
                guard let stuck = self.stuckCall(entry.thread) else { continue }
                self.replace(owner, stuck: stuck)
            }
            // A retired state stuck in C is left too: what it still had queued (hooks of deleted
            // apps) must not run whenever the call returns.
            for t in self.leaving where !t.currentActivity.abandoned {
                guard let stuck = self.stuckCall(t) else { continue }
                t.abandon()
                self.logger.warning("\(t.name): a retired Lua state is stuck inside a C call (\(stuck.label), \(stuck.what)): left; it exits if the call returns")
            }
            // A stopped (not abandoned) thread still runs the jobs queued before its stop: their
            // commands count (the last pml.log of an onStop). Then an exited one lets go of its eventfds.
            let gone = Set(self.leaving.filter { $0.currentActivity.exited }.map(ObjectIdentifier.init))
            for t in self.leaving where !t.currentActivity.abandoned {
                // An exited thread holds no lock: its last messages are taken for sure.
                for case .command(let c) in t.takeMessages(waiting: gone.contains(ObjectIdentifier(t))) { self.onCommand?(c) }
            }
            self.leaving.removeAll { gone.contains(ObjectIdentifier($0)) }
            if !self.threads.isEmpty || !self.leaving.isEmpty { self.armWatchdog() }
        }
    }

    /// The call `thread` is stuck in, if it is: its label and what it used ("3010 ms of CPU in 3250 ms").
    private func stuckCall(_ thread: ScriptThread) -> (label: String, what: String)? {
        let a = thread.currentActivity
        guard let busy = a.busy, a.tid > 0, let cpu = threadCPUNanoseconds(a.tid) else { return nil }
        let busyMs = monotonicMs() - busy.since
        let cpuMs = Int((cpu > busy.cpuNs ? cpu - busy.cpuNs : 0) / 1_000_000)
        guard timeouts.isStuck(busyMs: busyMs, cpuMs: cpuMs) else { return nil }
        return (busy.label, "\(cpuMs) ms of CPU in \(busyMs) ms")
    }

    private func replace(_ owner: ScriptOwner, stuck: (label: String, what: String)) {
        guard let entry = threads.removeValue(forKey: owner) else { return }
        loop.unregister(entry.io)
        entry.thread.abandon()
        leaving.append(entry.thread)
        let note = "\(AppLogFiles.timestamp()): \(stuck.label) used \(stuck.what), stuck inside a C call; its Lua state was left and a fresh one started"
        // A count and the last note: a script that keeps getting stuck does not grow a list.
        restarts[owner] = ((restarts[owner]?.count ?? 0) + 1, note)
        logger.error("scripts of \(owner): \(stuck.label) used \(stuck.what) (budget \(timeouts.callBudgetMs) ms of CPU), stuck inside a C call: pml left that Lua state and starts a fresh one; no app is restarted")
        // Decisions that waited on the lost state take their defaults now.
        for answer in pending.drop(where: { $0.owner == owner }) { answer(nil) }
        toLoad.lose(owner)
        onRestarted?(owner) // starts the fresh thread unless a cap refuses it
        toLoad.loaded(owner)
    }
}
