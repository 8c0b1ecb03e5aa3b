import Glibc
import Logging
import PMLCore
import PMLLua
import PMLPosix

/// The supervisor: keeps apps' workers alive according to their specs, hooks and the
/// default policy, routes their connections, and answers control requests. Lives on the
/// event loop's thread.
final class Supervisor {
    let loop: EventLoop
    let paths: PMLPaths
    /// The Lua states, each on a thread of its own: hooks, plugins and timers never run here.
    let scripts: ScriptHub
    let logger: Logger
    let router: ConnectionRouter
    let notify: NotifySocket?
    /// pml's Node preload (shims/node/preload.js), if found.
    let nodeShim: String?
    var apps: [ManagedApp] = []
    var workersByPID: [Int32: Worker] = [:]
    /// Workers with a process, by id: the per-connection path looks them up here.
    var runningWorkers: [Int: Worker] = [:]
    let readBuffer = ReadBuffer()
    var nextWorkerID = 0
    var nextListenerID = 0
    var waiters: [(isDone: () -> Bool, done: () -> Void)] = []
    /// Plugin files in load order, loaded or not.
    var plugins: [PluginSlot] = []
    /// Called once no plugin is loading (`pml plugins` answers then).
    var pluginWaiters: [() -> Void] = []
    var appPluginFolders: [String] = []
    var nextDecisionID = 1
    /// Control requests waiting for the start-up take-over to finish (nil: answered at once).
    var heldRequests: [() -> Void]?
    var statePersistScheduled = false
    let startedAt = monotonicMs()
    /// The keeper that holds what must outlive this daemon (nil for `pml run`).
    var keeper: KeeperLink?
    /// While a successor starts: what it adopts from the daemon before it.
    var adoption: Adoption?
    /// Said once to the next client, whatever it asks (a daemon died; this one adopted its workers).
    var notice: String?
    /// `pml update` was answered: the loop ends and the daemon exits, leaving everything running.
    var handingOver = false
    /// The metrics and dashboard listeners (see `httpListener`), answered before a hand-over.
    var httpListeners: [HTTPListener] = []
    let cpuCount = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    private static let sampleEveryMs = 1000
    /// The dashboard's graphs (15 minutes of samples) and timeline (see SupervisorTimeline.swift).
    var history = MetricsHistory()
    var timeline = Timeline()
    /// The metrics listener's last Prometheus text and when it was built (scrapes within a second share it).
    var metricsText: (atMs: Int, text: String)?

    /// `pml run`: no daemon; logs go to the terminal; pml exits when nothing is left to supervise.
    let foreground: Bool
    /// Foreground: called once every app's workers are online (READY=1 to systemd).
    var onAllReady: (() -> Void)?
    /// Foreground: the apps to run are not started yet (their app file may still be evaluated):
    /// `/readyz` says so rather than "ready" with no app.
    var startPending = false
    /// Foreground: called when no worker runs or waits to restart any more, with the exit status.
    var onNothingLeft: ((Int32) -> Void)?

    init(loop: EventLoop, paths: PMLPaths, luaPath: String, logger: Logger, nodeShim: String?, foreground: Bool = false,
         notifyFD: Int32? = nil) {
        self.foreground = foreground
        self.loop = loop
        self.paths = paths
        scripts = ScriptHub(loop: loop, logger: logger, libraryPaths: [luaPath])
        self.logger = logger
        self.nodeShim = nodeShim
        router = ConnectionRouter(loop: loop, logger: logger)
        do {
            // A foreground run may share its home with a daemon: its socket gets its own name.
            let path = paths.home + (foreground ? "/notify-\(getpid()).sock" : "/notify.sock")
            notify = try notifyFD.map { NotifySocket(fd: $0, path: path) } ?? NotifySocket(path: path)
        } catch {
            logger.warning("no NOTIFY_SOCKET for workers: \(error)")
            notify = nil
        }
        scripts.onCommand = { [unowned self] command in self.scriptCommand(command) }
        scripts.onRestarted = { [unowned self] owner in self.scriptsRestarted(owner) }
        scripts.onSettled = { [unowned self] owner in self.retireIfUnused(owner) }
        scripts.beforePost = { [unowned self] in self.publishSnapshot() }
        router.sendHandle = { [unowned self] worker, fd, listener in self.sendHandle(worker: worker, fd: fd, listener: listener) }
        router.passConnections = { [unowned self] worker, fds, listener in
            guard let w = self.runningWorkers[worker], let channel = w.handoff else { return .closed }
            let result = channel.send(listener.handoffLine, fds: fds)
            if result == .sent { w.dispatched += fds.count }
            return result
        }
        router.channelAbandoned = { [unowned self] id in
            guard let w = self.runningWorkers[id], let pid = w.pid, let reclaim = w.reclaim, !process(pid, holds: reclaim) else { return false }
            self.logger.warning("\(w.app.spec.name) worker \(id) closed its handoff channel; what it had not read goes to others, and it gets its connections as NODE_HANDLE")
            w.handoff?.close()
            w.reclaim = nil
            self.router.handoffClosed(worker: id, receiverGone: true, reclaim: (reclaim, self.releasing(reclaim: reclaim, pid: pid)))
            return true
        }
        router.readCreditsPromptly = { [unowned self] id, promptly in self.runningWorkers[id]?.handoff?.readPromptly(promptly) }
        router.catchUpCredits = { [unowned self] id in self.runningWorkers[id]?.handoff?.catchUp() }
        router.echoOverdue = { [unowned self] id in
            guard let epoch = self.runningWorkers[id]?.handoff?.giveUpOnEcho() else { return false }
            // Once per worker: from now on it is not awaited.
            self.logger.warning("worker \(id) declared handoff revision 2 but never echoed the mark E \(epoch) within \(ConnectionRouter.ackTimeoutMs) ms; its credits count from now on, as in revision 1")
            return true
        }
        if let notify {
            _ = try? loop.register(fd: notify.fd, events: [.readable]) { [unowned self] _ in self.notifyReadable() }
        }
        scheduleSampling()
        loadPlugins()
    }

    func worker(id: Int) -> Worker? { apps.lazy.flatMap(\.workers).first { $0.id == id } }

    // MARK: waiting for state

    func wait(until isDone: @escaping () -> Bool, then done: @escaping () -> Void) {
        if isDone() { return done() }
        waiters.append((isDone, done))
    }

    func checkWaiters() {
        if foreground { checkForegroundState() } else { persistStateSoon() }
        var i = 0
        while i < waiters.count {
            if waiters[i].isDone() {
                let w = waiters.remove(at: i)
                w.done()
            } else {
                i += 1
            }
        }
    }

    /// Foreground bookkeeping after each change: all ready → onAllReady once; nothing left → onNothingLeft.
    private func checkForegroundState() {
        let workers = apps.flatMap(\.workers)
        guard !workers.isEmpty else { return }
        if let ready = onAllReady, workers.allSatisfy({ $0.status == .online }) {
            onAllReady = nil
            ready()
        }
        if let done = onNothingLeft, workers.allSatisfy({ $0.status == .stopped || $0.status == .errored }) {
            onNothingLeft = nil
            done(workers.contains { $0.status == .errored } ? 1 : 0)
        }
    }

    // MARK: spawning

    func spawn(_ w: Worker) throws(SpawnError) {
        if adopt(w) { return }
        let app = w.app
        var env = app.spec.workerEnvironment(inherited: app.baseEnv, instance: w.instance)
        env["PML_HOME"] = nil
        env["PML_NODE_SHIM_PID"] = nil // set by the preload in its own process; never inherited from pml's client
        // Marks the worker as this home's: a new daemon sweeps away any a dead one left behind; under
        // a keeper the mark is the keeper's, which outlives daemons (its sentinel sweeps by it).
        env["PML_SUPERVISOR"] = "\(paths.home):\(keeper?.keeperPID ?? getpid())"
        env["PML_APP"] = app.spec.name
        env["PML_ID"] = String(w.id)
        env["PML_INSTANCE"] = String(w.instance)
        env["PML_DISPATCH"] = app.spec.dispatch.rawValue
        if let notify { env["NOTIFY_SOCKET"] = notify.path }
        var fds: [(source: Int32, target: Int32)] = []
        let reusePort = app.spec.dispatch == .reusePort && !app.listeners.isEmpty
        let shared = (app.spec.dispatch == .shared || reusePort) && !app.listeners.isEmpty
        if shared {
            // systemd socket activation: listening fds from 3, in app-file order; under reuseport,
            // this worker's slot (its instance) of each address.
            let slot = w.instance
            for (i, l) in app.listeners.enumerated() {
                var fd = l.fd
                if reusePort {
                    do {
                        fd = try slotSocket(app, l, slot).fd
                    } catch {
                        throw SpawnError("cannot bind the socket of slot \(slot) on \(l.address): \(error)")
                    }
                }
                fds.append((fd, Int32(3 + i)))
            }
            env["LISTEN_FDS"] = String(app.listeners.count)
            env["LISTEN_FDNAMES"] = Array(repeating: app.spec.name, count: app.listeners.count).joined(separator: ":")
        } else {
            env["LISTEN_FDS"] = nil
            env["LISTEN_FDNAMES"] = nil
        }
        // The preload matches `server.listen(port)` against these to listen on the inherited slot socket.
        env["PML_LISTEN_ADDRESSES"] = reusePort ? app.listeners.map(\.address.description).joined(separator: ",") : nil
        let ipcTarget = Int32(3 + (shared ? app.listeners.count : 0))
        env["PML_IPC_FD"] = String(ipcTarget)
        env["NODE_CHANNEL_FD"] = String(ipcTarget)
        env["NODE_CHANNEL_SERIALIZATION_MODE"] = "json"
        // rr, least-busy: pml's native handoff channel, next to the IPC channel (used once the
        // worker opts in on it; docs/PROTOCOL.md).
        let handoffTarget: Int32? = app.spec.dispatch.passesConnections ? ipcTarget + 1 : nil
        env["PML_HANDOFF_FD"] = handoffTarget.map { String($0) }
        // Which revision of it this daemon speaks: a worker says a later one only to a daemon that
        // reads it (a worker started by an older daemon from newer files must not).
        env["PML_HANDOFF_REVISION"] = handoffTarget.map { _ in String(HandoffRecord.revision) }
        if app.usesNodeShim, let nodeShim {
            let preload = "--require \(nodeShim)"
            env["NODE_OPTIONS"] = [env["NODE_OPTIONS"], preload].compactMap { $0 }.joined(separator: " ")
        }
        w.environment = env

        let account = try workerAccount(app.spec)
        account?.apply(to: &env)

        var opened: [Int32] = []
        func closeAll() { opened.forEach(closeFD) }
        let out: (read: Int32, write: Int32), err: (read: Int32, write: Int32), ipc: (Int32, Int32)
        var handoff: (Int32, Int32)?
        do {
            out = try makePipe(nonblockingRead: true); opened += [out.read, out.write]
            err = try makePipe(nonblockingRead: true); opened += [err.read, err.write]
            ipc = try makeSocketPair(); opened += [ipc.0, ipc.1]
            if handoffTarget != nil {
                let pair = try makeSocketPair()
                if var size = HandoffChannel.sendBufferBytes {
                    setsockopt(pair.0, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
                }
                handoff = pair
                opened += [pair.0, pair.1]
            }
        } catch {
            closeAll()
            throw SpawnError("cannot create pipes: \(error)")
        }
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { closeFD(devNull) }
        let pid: Int32
        do {
            pid = try spawnProcess(SpawnRequest(
                argv: app.spec.argv, env: env, cwd: app.spec.cwd,
                fds: [(devNull, 0), (out.write, 1), (err.write, 2), (ipc.1, ipcTarget)] + fds
                    + (handoff.flatMap { h in handoffTarget.map { (h.1, $0) } }.map { [$0] } ?? []),
                // Under a keeper, workers outlive the daemon (a successor adopts them); in `pml run`
                // they die with it, even by SIGKILL.
                newSession: true, parentDeathSignal: keeper == nil ? SIGKILL : 0, setListenPID: shared, account: account))
        } catch {
            closeAll()
            throw error
        }
        closeFD(out.write)
        closeFD(err.write)
        closeFD(ipc.1)
        // The worker's end of the handoff channel stays open here too: the reclaim end.
        w.reclaim = handoff?.1
        keeperHold(worker: pid, ipc: ipc.0, out: out.read, err: err.read, handoff: handoff)
        attachStreams(w, ipc: ipc.0, out: out.read, err: err.read, handoff: handoff?.0, resync: false)
        w.pid = pid
        w.adopted = false
        w.startTicks = readFile("/proc/\(pid)/stat", limit: 4096).flatMap(procStartTime) ?? 0
        w.status = .starting
        w.startedAt = monotonicMs()
        w.failedToStart = false
        w.cpuSample = nil
        w.cpuPercent = 0
        w.rssBytes = 0
        w.reason = nil
        w.restartDelayMs = nil
        w.statusText = nil
        w.requestedListeners = []
        w.listensOnSlot = false
        workersByPID[pid] = w
        runningWorkers[w.id] = w
        writePidFile(w, pid: pid)
        if reusePort {
            app.slots.spawned(worker: w.id, slot: w.instance)
            updateSlots(app)
        }
        logger.info("\(app.spec.name) worker \(w.id) started as pid \(pid)")
        callHook(app, "onSpawn", [w.scriptValue], worker: w)
        awaitReadiness(w)
        // A successor must know this process even if the daemon dies the next moment.
        if keeper != nil { persistStateNow() }
    }

    /// Reads a worker's stdout/stderr into its app's logs and opens its IPC channel. `resync`:
    /// the channel was read by a daemon before (adopted): a partial first line is skipped.
    func attachStreams(_ w: Worker, ipc: Int32, out: Int32, err: Int32, handoff: Int32?, resync: Bool) {
        // Each pipe keeps itself registered until EOF (see OutputPipe).
        let files = w.app.logFiles(instance: w.instance)
        if (try? OutputPipe(fd: out, stream: .out, files: files, worker: w.id, loop: loop, scratch: readBuffer)) == nil { closeFD(out) }
        if (try? OutputPipe(fd: err, stream: .err, files: files, worker: w.id, loop: loop, scratch: readBuffer)) == nil { closeFD(err) }
        do {
            w.ipc = try IPCChannel(fd: ipc, loop: loop, scratch: readBuffer, resync: resync, onMessage: { [unowned self, unowned w] msg in
                self.ipcMessage(w, msg)
            }, onAck: { [unowned self, unowned w] in
                self.router.acknowledged(worker: w.id)
            }, onLoad: { [unowned self, unowned w] n in
                self.router.report(worker: w.id, closedConnections: n)
            }, onGarbage: { [unowned self, unowned w] why, count, cutOff in
                self.ipcGarbage(w, why, count: count, cutOff: cutOff)
            })
        } catch {
            closeFD(ipc)
        }
        guard let handoff else { return }
        do {
            w.handoff = try HandoffChannel(fd: handoff, loop: loop, scratch: readBuffer, resync: resync, onHello: { [unowned self, weak w] maxFDs, window in
                guard let w else { return }
                self.router.grant(worker: w.id, maxFDs: maxFDs, window: window, keepingCopies: w.reclaim == nil)
                // A successor must know it opted in (it will not say so again); called only when the
                // grant changes, and written once for many changes.
                if self.keeper != nil { self.persistStateSoon() }
            }, onCredit: { [unowned self, weak w] n in
                guard let w else { return }
                self.router.credited(worker: w.id, n)
            }, onLateCredit: { [unowned self, weak w] in
                guard let w else { return }
                self.router.readWithoutCredit(worker: w.id)
            }, onClosed: { [unowned self, weak w] receiverGone in
                guard let w, let pid = w.pid else { return }
                // Taken back from only if the worker will not read it: the router owns it then.
                let reclaim = receiverGone ? w.reclaim.map { ($0, self.releasing(reclaim: $0, pid: pid)) } : nil
                if reclaim != nil { w.reclaim = nil }
                self.router.handoffClosed(worker: w.id, receiverGone: receiverGone, reclaim: reclaim)
            }, onGarbage: { [unowned self, weak w] why in
                guard let w else { return }
                self.ipcGarbage(w, why, count: 0, cutOff: true)
            })
        } catch {
            closeFD(handoff)
        }
    }

    /// `uid` / `gid`: who the app's workers run as; only a daemon running as root can switch.
    func workerAccount(_ spec: AppSpec) throws(SpawnError) -> Account? {
        guard spec.user != nil || spec.group != nil else { return nil }
        guard geteuid() == 0 else {
            throw SpawnError("uid/gid need pml's daemon to run as root (it runs as uid \(geteuid()))")
        }
        return try Account.resolve(user: spec.user, group: spec.group)
    }

    /// `pid_file`: the worker's pid, replaced whole so a reader never sees half a number.
    private func writePidFile(_ w: Worker, pid: Int32) {
        guard let path = w.app.spec.pidFile(instance: w.instance) else { return }
        do {
            let temp = path + ".tmp"
            let fd = try sys("open \(temp)") { open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
            defer { closeFD(fd) }
            try writeAll(fd, "\(pid)\n")
            try sys("rename \(path)") { rename(temp, path) }
        } catch {
            w.app.logs.note("cannot write pid_file: \(error)")
        }
    }

    /// Removes a worker's pid file if it still names `pid` (a replacement may have written its own).
    private func removePidFile(_ w: Worker, pid: Int32) {
        guard let path = w.app.spec.pidFile(instance: w.instance),
              let text = readFile(path, limit: 64), String(decoding: text, as: UTF8.self) == "\(pid)\n" else { return }
        unlink(path)
    }

    /// Spawns, turning a failure to start into a crash (so backoff and errored apply).
    func spawnOrCrash(_ w: Worker) {
        do {
            try spawn(w)
        } catch {
            crashed(w, exit: ExitInfo(code: 127, signal: nil, uptimeMs: 0), spawnError: "\(error)")
        }
    }

    // MARK: exits

    /// Reaps exited children and decides what happens to their workers. `reported`: exits the
    /// keeper reaped (adopted workers are its children, not this daemon's).
    func childrenExited(reported: [ChildExit] = []) {
        // The keeper reaps orphans too: its report counts only for an adopted worker, never for this
        // daemon's own child that happens to have the recycled pid.
        for exit in reapChildren() + reported.filter({ workersByPID[$0.pid]?.adopted == true }) {
            guard let w = workersByPID.removeValue(forKey: exit.pid) else { continue } // pml.spawn or an adopted orphan
            // Not its reclaim end: the keeper's copy of it goes once all it holds is taken back
            // (`releasing`), so that a successor finds what this daemon had no room for yet.
            keeper?.dropAllButReclaim(of: exit.pid)
            // Whatever the worker left behind in its group goes with it (no orphan keeps a port).
            signalGroup(exit.pid, SIGKILL)
            for t in [w.killTimer, w.readyTimer].compactMap({ $0 }) { loop.cancel(t) }
            w.killTimer = nil
            w.readyTimer = nil
            w.pid = nil
            runningWorkers[w.id] = nil
            removePidFile(w, pid: exit.pid)
            w.ipc?.close()
            w.ipc = nil
            w.handoff?.close()
            w.handoff = nil
            router.workerGone(worker: w.id, reclaim: w.reclaim.map { ($0, releasing(reclaim: $0, pid: exit.pid)) })
            w.reclaim = nil
            w.app.slots.exited(worker: w.id)
            updateSlots(w.app)
            let info = ExitInfo(code: exit.code.map(Int.init), signal: exit.signal.map(SignalNames.name),
                                uptimeMs: monotonicMs() - w.startedAt)
            w.lastExit = info
            logger.info("\(w.app.spec.name) worker \(w.id) (pid \(exit.pid)) \(info.summary) after \(info.uptimeMs) ms")
            callHook(w.app, "onExit", [w.scriptValue, info.scriptValue], worker: w)
            if let watch = w.startWatch, w.intent == nil {
                // A reload's replacement that died before it was ready: the reload decides.
                w.startWatch = nil
                finishStop(w, intent: .delete)
                watch("worker \(w.id) (instance \(w.instance)) crashed while starting: \(info.summary) after \(info.uptimeMs) ms")
            } else if let intent = w.intent {
                finishStop(w, intent: intent)
            } else {
                crashed(w, exit: info, spawnError: nil)
            }
        }
        checkWaiters()
    }

    func finishStop(_ w: Worker, intent: StopIntent) {
        w.intent = nil
        switch intent {
        case .stop:
            w.status = .stopped
            w.reason = "stopped by pml"
            closeListenersIfIdle(w.app)
        case .delete:
            w.status = .stopped
            let app = w.app
            app.workers.removeAll { $0 === w }
            if app.workers.isEmpty { remove(app) }
        case .restart:
            w.history.restarts += 1
            w.history.unstableRestarts = 0
            w.history.backoffStep = 0
            spawnOrCrash(w)
        }
    }

    /// An exit nobody asked for: the default policy (Lua) decides, then onCrash may overrule it —
    /// on the app's script thread, while everything else goes on. The worker waits meanwhile; if no
    /// answer comes within the decision deadline, `RestartDecision.fallback` (the same rules in
    /// Swift) decides.
    func crashed(_ w: Worker, exit: ExitInfo, spawnError: String?) {
        let app = w.app
        if let spawnError { app.logs.note("worker \(w.id): \(spawnError)") }
        w.history.recordCrash(uptimeMs: exit.uptimeMs, spec: app.spec)
        let fallback = RestartDecision.fallback(history: w.history, exitCode: exit.code, spec: app.spec)
        var what = "worker \(w.id) \(exit.summary) after \(exit.uptimeMs) ms"
        if w.failedToStart { what += " (not ready within ready_timeout \(app.spec.readyTimeout) ms)" }
        let id = nextDecisionID
        nextDecisionID += 1
        w.pendingDecision = id
        w.status = .waiting
        w.restartDelayMs = nil
        w.reason = "\(what); deciding whether to restart"
        let name = app.spec.name
        let args = [app.spec.scriptValue, w.scriptValue, exit.scriptValue]
        let hookArgs = [w.scriptValue, exit.scriptValue]
        let spec = app.spec
        let onCrash = app.spec.hooks.contains("onCrash") && app.spec.appFile != nil
        scripts.ask(scriptOwner(app), about: name, { side in
            CrashVerdict.decide(side: side, app: name, spec: spec, policyArgs: args, hookArgs: onCrash ? hookArgs : nil,
                                fallback: fallback)
        }, answer: { [weak self, weak w] verdict in
            guard let self, let w, w.pendingDecision == id else { return }
            w.pendingDecision = nil
            if let verdict {
                for note in verdict.policyErrors { self.logger.error("\(note)") }
                if let error = verdict.hookError { self.hookFailed(w.app, w, "onCrash", error) }
            } else {
                self.hookFailed(w.app, w, "restart decision", "scripts did not answer within \(self.scripts.timeouts.decisionMs) ms")
            }
            let decision = verdict?.decision ?? fallback
            self.apply(decision, to: w, what: what)
            self.recordCrash(w, exit: exit, verdict: verdict, decision: decision)
            // Plugins hear of the crash once it is decided: what they read shows the outcome.
            self.notifyPlugins(w.app, "onCrash", hookArgs)
            self.checkWaiters()
        })
    }

    private func apply(_ decision: RestartDecision, to w: Worker, what: String) {
        let app = w.app
        switch decision {
        case .restart(let delay):
            w.history.recordRestart()
            w.status = .waiting
            w.restartDelayMs = delay
            w.reason = "\(what); restarting in \(delay) ms"
            app.logs.note(w.reason!)
            w.restartTimer = loop.schedule(after: delay) { [unowned self, unowned w] in
                w.restartTimer = nil
                guard w.status == .waiting else { return }
                self.spawnOrCrash(w)
                self.checkWaiters()
            }
        case .stop(let reason):
            w.status = .stopped
            w.reason = "\(what); not restarted: \(reason)"
            app.logs.note(w.reason!)
            closeListenersIfIdle(app)
        case .errored(let reason):
            w.status = .errored
            w.reason = "\(what); errored: \(reason)"
            app.logs.note(w.reason!)
            logger.warning("\(app.spec.name) worker \(w.id) errored: \(reason)")
            closeListenersIfIdle(app)
        }
    }

    /// How a worker is asked to exit.
    struct StopStyle {
        /// Sent over IPC first; then the signal only after `graceMs` (nil: signal at once).
        var message: ScriptValue?
        var graceMs: Int?
        /// nil: the app's kill_signal.
        var signal: Int32?

        static let immediate = StopStyle()
    }

    /// Asks workers to exit. Each leaves the rotation first; then gets `style.message` (if any)
    /// and time to finish; then the signal to its whole group; then SIGKILL after kill_timeout.
    func stop(_ workers: [Worker], intent: StopIntent, style: StopStyle = .immediate) {
        for w in workers {
            w.pendingDecision = nil
            if let t = w.restartTimer { loop.cancel(t); w.restartTimer = nil }
            if let t = w.readyTimer { loop.cancel(t); w.readyTimer = nil }
            if let watch = w.startWatch {
                w.startWatch = nil
                watch("worker \(w.id) was stopped before it was ready")
            }
            guard let pid = w.pid else {
                // No process: the intent takes effect at once.
                finishStop(w, intent: intent)
                continue
            }
            // A delete outranks a pending stop or restart; a restart does not undo a delete.
            if w.intent != .delete { w.intent = intent }
            if w.status == .stopping { continue }
            w.status = .stopping
            router.retire(worker: w.id)
            w.app.slots.notServing(worker: w.id)
            updateSlots(w.app)
            let app = w.app
            let signal = style.signal ?? SignalNames.number(app.spec.killSignal) ?? SIGTERM
            let sendKillSignal = { [unowned self, unowned w] in
                guard w.pid == pid else { return }
                signalGroup(pid, signal)
                w.killTimer = self.loop.schedule(after: app.spec.killTimeout) { [unowned self, unowned w] in
                    w.killTimer = nil
                    guard w.pid == pid else { return }
                    self.logger.warning("\(app.spec.name) worker \(w.id) (pid \(pid)) ignored \(SignalNames.name(signal)) for \(app.spec.killTimeout) ms; sending SIGKILL")
                    signalGroup(pid, SIGKILL)
                }
            }
            if let message = style.message, w.ipc?.send(message) == true {
                w.killTimer = loop.schedule(after: style.graceMs ?? app.spec.killTimeout) { sendKillSignal() }
            } else {
                sendKillSignal()
            }
        }
        checkWaiters()
    }

    // MARK: apps

    func resize(_ app: ManagedApp, to count: Int) {
        while app.workers.count > count { app.workers.removeLast() }
        while app.workers.count < count { addWorker(to: app) }
    }

    @discardableResult
    func addWorker(to app: ManagedApp) -> Worker {
        let used = Set(app.workers.map(\.instance))
        let instance = (0...).first { !used.contains($0) }!
        let id: Int
        if let adopted = adoptedWorkerID(app, instance: instance) {
            id = adopted
        } else {
            id = nextWorkerID
            nextWorkerID += 1
        }
        let w = Worker(id: id, instance: instance, app: app)
        app.workers.append(w)
        app.workers.sort { $0.instance < $1.instance }
        return w
    }

    func remove(_ app: ManagedApp) {
        closeListeners(app)
        for t in [app.autoscaleTimer, app.cronTimer].compactMap({ $0 }) { loop.cancel(t) }
        app.autoscaleTimer = nil
        app.cronTimer = nil
        app.watcher?.close()
        app.watcher = nil
        apps.removeAll { $0 === app }
        let name = app.spec.name
        if let file = app.spec.appFile { scripts.tell(.appFile(file)) { $0.unbind(app: name) } }
        // Its questions (a decision its hook is stuck in, say) no longer hold the state.
        scripts.forget(app: name, of: scriptOwner(app))
        retireUnusedScriptStates()
    }

    // MARK: hooks

    /// A notification: the app's own hook, then every plugin with that hook, on their script
    /// threads, in the order hooks were called; nothing waits for them.
    func callHook(_ app: ManagedApp, _ hook: String, _ args: [ScriptValue], worker: Worker?) {
        if app.spec.hooks.contains(hook), let file = app.spec.appFile {
            let name = app.spec.name
            let id = worker?.id
            scripts.tell(.appFile(file)) { side in
                if case .failed(let message) = side.callHook(app: name, hook: hook, args: args) {
                    side.report(.hookFailed(app: name, worker: id, hook: hook, message: message))
                }
            }
        }
        notifyPlugins(app, hook, args)
    }

    /// A decision: the app's own hook answers `answer` (nil when it has no such hook, failed, or
    /// did not answer within the decision deadline: the default applies); plugins hear it too.
    func askHook(_ app: ManagedApp, _ hook: String, _ args: [ScriptValue], worker: Worker?,
                 answer: @escaping (ScriptValue?) -> Void) {
        notifyPlugins(app, hook, args)
        guard app.spec.hooks.contains(hook), let file = app.spec.appFile else { return answer(nil) }
        let name = app.spec.name
        scripts.ask(.appFile(file), about: name, { side in side.callHook(app: name, hook: hook, args: args) }, answer: { [weak self, weak app, weak worker] outcome in
            guard let self, let app else { return }
            // A deleted app's question is dropped with it: nothing failed, the caller only learns.
            guard self.apps.contains(where: { $0 === app }) else { return answer(nil) }
            switch outcome {
            case .returned(let v)?: return answer(v)
            case .failed(let message)?: self.hookFailed(app, worker, hook, message)
            case .notDefined?: break
            case nil: self.hookFailed(app, worker, hook, "no answer within \(self.scripts.timeouts.decisionMs) ms")
            }
            answer(nil)
        })
    }

    /// The state an app's scripts run in: its app file's, or pml's library state.
    func scriptOwner(_ app: ManagedApp) -> ScriptOwner {
        app.spec.appFile.map(ScriptOwner.appFile) ?? .library
    }

    func hookFailed(_ app: ManagedApp, _ worker: Worker?, _ hook: String, _ message: String) {
        logger.warning("\(app.spec.name): hook \(hook) failed: \(message); the default applies")
        app.logs.note("hook \(hook) failed: \(message); the default applies")
        worker?.lastHookError = "\(hook): \(message)"
    }

    func appValue(_ app: ManagedApp) -> ScriptValue {
        guard case .object(var t) = app.spec.scriptValue else { return app.spec.scriptValue }
        t["status"] = .string(app.status.rawValue)
        t["out_log"] = .string(app.logs.outPath)
        t["err_log"] = .string(app.logs.errPath)
        t["workers"] = .int(Int64(app.workers.count))
        return .object(t)
    }

    // MARK: reporting

    func rows() -> [ProcessRow] {
        apps.flatMap { $0.workers.map { w in
            // A worker spawned since the last sample is read now: `ls` right after a start shows its memory, not 0b.
            if w.cpuSample == nil { sample(w, now: monotonicMs()) }
            return w.row
        } }
    }

    /// What `pml metrics` prints, for the metrics endpoint.
    func prometheusText() -> String {
        PrometheusText.render(rows: rows(), descriptions: Dictionary(apps.map { ($0.spec.name, describe($0)) }) { a, _ in a })
    }

    func describe(_ app: ManagedApp) -> AppDescription {
        AppDescription(
            name: app.spec.name, mode: app.mode, status: app.status, spec: app.spec,
            outLog: app.logs.outPath, errLog: app.logs.errPath,
            workers: app.workers.map { w in
                // reuseport: a worker serves every address on its slot, whether or not it also takes handed connections.
                w.description(serving: app.listeners.filter {
                    router.serves(worker: w.id, listener: $0.id) || app.slots.serves(worker: w.id)
                }.map(\.address.description))
            },
            listening: app.listeners.map(\.address.description),
            pendingConnections: app.listeners.reduce(0) { $0 + router.waiting(on: $1.id) },
            acceptHolds: app.listeners.reduce(0) { $0 + $1.holds },
            autoscaleDecision: app.autoscaleDecision, reloads: app.reloads, scaleEvents: app.scaleEvents,
            outLogs: workerLogFiles(app).map(\.outPath), errLogs: workerLogFiles(app).map(\.errPath),
            scripts: scripts.describe(scriptOwner(app)))
    }

    /// The files an app's workers write to: the app's own, or each instance's.
    func workerLogFiles(_ app: ManagedApp) -> [AppLogFiles] {
        app.spec.mergeLogs ? [app.logs] : app.workers.map { app.logFiles(instance: $0.instance) }
    }

    /// Closes every log file; each is opened again by path at its next line (`pml reloadLogs`,
    /// SIGUSR2). daemon.log, this daemon's stderr and its keeper's, is opened again at once.
    func reopenLogs() -> Int {
        let files = apps.flatMap(\.allLogFiles)
        files.forEach { $0.reopen() }
        if let keeper, keeper.logsToDaemonLog {
            do {
                try reopenStandardError(paths.daemonLog)
            } catch {
                logger.error("cannot reopen \(paths.daemonLog): \(error)")
            }
            keeper.send(.reopenLog)
        }
        logger.info("reopened the log files of \(apps.count) app(s)")
        return files.count
    }

    private func scheduleSampling() {
        loop.schedule(after: Self.sampleEveryMs) { [unowned self] in
            self.sample()
            self.scheduleSampling()
        }
    }

    /// One worker's CPU % since its previous sample and its current RSS, from /proc; false if it has none to read.
    @discardableResult
    private func sample(_ w: Worker, now: Int) -> Bool {
        guard let pid = w.pid, let stats = ProcStats.read(pid: pid) else { return false }
        if let prev = w.cpuSample, now > prev.at {
            w.cpuPercent = Double(stats.cpuTimeMs - prev.cpuMs) * 100 / Double(now - prev.at)
        }
        w.cpuSample = (stats.cpuTimeMs, now)
        w.rssBytes = stats.rssBytes
        return true
    }

    /// Every worker's CPU % and RSS, from /proc.
    private func sample() {
        let now = monotonicMs()
        for w in apps.flatMap(\.workers) {
            if sample(w, now: now) { enforceMemoryLimit(w) }
        }
        recordSample()
        for app in apps {
            let dispatched = app.workers.reduce(0) { $0 + $1.dispatched }
            if let s = app.dispatchSample, now > s.at { app.rps = Double(dispatched - s.count) * 1000 / Double(now - s.at) }
            app.dispatchSample = (dispatched, now)
        }
        // Timers see metrics at most a sample old.
        publishSnapshot()
    }
}
