import Glibc
import PMLCore
import PMLPosix

/// What a successor daemon takes over: the fds its keeper held and the records of state.json.
final class Adoption {
    var handover: KeeperLink.Handover
    /// Workers that had a process, by app and instance.
    var workers: [String: [Int: SavedWorker]] = [:]
    var listeners: [String: [SavedListener]] = [:]
    var adopted = 0
    /// Workers whose process was gone (exited while no daemon watched): started afresh.
    var lost = 0

    init(handover: KeeperLink.Handover, state: SavedState) {
        self.handover = handover
        for app in state.apps {
            workers[app.name] = Dictionary((app.workers ?? []).map { ($0.instance, $0) }) { a, _ in a }
            listeners[app.name] = app.listeners ?? []
        }
    }
}

/// The keeper's side of supervision: what the daemon hands it as things appear and go, what
/// state.json records for a successor, and how a successor adopts a dead daemon's workers.
extension Supervisor {
    // MARK: what the keeper holds

    /// Hands the keeper copies of a new worker's channel, log pipes and handoff channel (pml's end,
    /// and the worker's end: the reclaim end, for a successor to take back what it never read).
    func keeperHold(worker pid: Int32, ipc: Int32, out: Int32, err: Int32, handoff: (Int32, Int32)?) {
        guard let keeper else { return }
        keeper.hold(KeeperTag.ipc(pid: pid), ipc)
        if let handoff {
            keeper.hold(KeeperTag.handoff(pid: pid), handoff.0)
            keeper.hold(KeeperTag.reclaim(pid: pid), handoff.1)
        }
        keeper.hold(KeeperTag.out(pid: pid), out)
        keeper.hold(KeeperTag.err(pid: pid), err)
    }

    /// What ends a worker's reclaim end once nothing is left in it: pml's copy and the keeper's.
    func releasing(reclaim end: Int32, pid: Int32) -> () -> Void {
        { [unowned self] in
            closeFD(end)
            self.keeper?.drop(KeeperTag.reclaim(pid: pid))
        }
    }

    /// This daemon's token in the tags of the listeners it binds (never its pid: see KeeperTag.listener).
    static let listenerGeneration = KeeperTag.generation(UInt64.random(in: .min ... .max))
    /// This daemon's mark on the first message to each adopted worker that echoes (docs/PROTOCOL.md):
    /// random, so it differs from a daemon before's whose echo may still come.
    static let handoffEpoch = Int.random(in: 1...999_999_999)

    /// Hands the keeper a copy of a new listening socket.
    func keeperHold(listener l: AppListener) {
        guard let keeper else { return }
        l.tag = KeeperTag.listener(generation: Self.listenerGeneration, id: l.id)
        // A reuseport group has no socket of its own: its slots' sockets are held as they are bound.
        if l.fd >= 0 { keeper.hold(l.tag, l.fd) }
    }

    /// Hands the keeper a copy of a reuseport slot's socket (what is queued on it outlives the daemon).
    func keeperHold(slot s: SlotSocket) {
        guard let keeper, !s.listener.tag.isEmpty else { return }
        keeper.hold(KeeperTag.slot(listener: s.listener.tag, slot: s.slot), s.fd)
    }

    /// A reuseport slot's socket is closed: it leaves the port's group for every holder (else the
    /// kernel would keep queueing connections on the keeper's copy), and the keeper lets it go.
    func keeperRelease(slot s: SlotSocket) {
        stopListening(s.fd)
        if !s.listener.tag.isEmpty { keeper?.drop(KeeperTag.slot(listener: s.listener.tag, slot: s.slot)) }
    }

    /// A listener is closed: it stops listening for every holder first, so the keeper's copy
    /// does not keep the port answering, and the keeper lets its copy go.
    func keeperRelease(listener l: AppListener) {
        if l.fd >= 0 { stopListening(l.fd) }
        if !l.tag.isEmpty { keeper?.drop(l.tag) }
    }

    // MARK: what state.json records

    func savedWorkers(_ app: ManagedApp) -> [SavedWorker] {
        app.workers.compactMap { w in
            guard let pid = w.pid else { return nil }
            return SavedWorker(id: w.id, instance: w.instance, pid: pid, startTime: w.startTicks, startedAtMs: w.startedAt,
                               status: w.status, restarts: w.history.restarts, unstableRestarts: w.history.unstableRestarts,
                               backoffStep: w.history.backoffStep,
                               listening: app.listeners.filter { w.requestedListeners.contains($0.id) }.map(\.tag),
                               dispatched: w.dispatched, intent: w.intent.map { "\($0)" },
                               handoff: w.handoff?.hello.map { [$0.maxFDs, $0.window] + ($0.echoes ? [HandoffRecord.revision] : []) })
        }
    }

    func savedListeners(_ app: ManagedApp) -> [SavedListener] {
        app.listeners.filter { !$0.tag.isEmpty }.map {
            SavedListener(tag: $0.tag, address: $0.address, requestedPort: $0.requestedPort,
                          slots: $0.fd < 0 ? $0.slots.keys.sorted() : nil)
        }
    }

    // MARK: taking over

    /// At a successor's start: adopts the workers of the daemon before it when this keeper held
    /// its fds (state.json says so), else takes up a dead daemon's apps as before. `done` gets the
    /// sentence for the user, if there is one (app files are evaluated on their script threads
    /// first, so this finishes inside the loop).
    func takeOver(_ handover: KeeperLink.Handover, predecessor: Predecessor?, done: @escaping (String?) -> Void) {
        guard let keeper, let state = try? readState(statePath), state.keeperPID == keeper.keeperPID,
              let old = state.daemonPID, old != getpid() else {
            release(handover)
            childrenExited(reported: handover.exits)
            return recoverFromDeadDaemon(done: done)
        }
        let adoption = Adoption(handover: handover, state: state)
        let savedIDs = adoption.workers.values.flatMap(\.values).map(\.id)
        nextWorkerID = max(nextWorkerID, (savedIDs.max() ?? -1) + 1)
        self.adoption = adoption
        restore(state) { [unowned self] _, failed in
            self.adoption = nil
            // Whatever nobody claimed (an app that failed to come back, a worker gone meanwhile) goes.
            self.release(adoption.handover)
            let swept = Daemon.sweepOrphans(home: self.paths.home, daemonPID: keeper.keeperPID, sparing: Set(self.workersByPID.keys))
            self.childrenExited(reported: handover.exits)
            self.persistStateNow()

            let n = adoption.adopted
            var sentence = predecessor?.updated == true
                ? "daemon pid \(old) handed over to pid \(getpid()); \(n) worker\(n == 1 ? "" : "s") kept"
                : "the daemon (pid \(old)) died at \(AppLogFiles.formatLocalTime("HH:mm:ss", atMs: predecessor?.endedAtMs ?? wallClockMs()))"
                    + "; its successor adopted \(n) worker\(n == 1 ? "" : "s")"
            if adoption.lost > 0 { sentence += "; \(adoption.lost) had exited meanwhile and were started again" }
            if !failed.isEmpty { sentence += "; could not take up \(self.failedLine(failed))" }
            if swept > 0 { sentence += "; killed \(swept) process(es) nobody could adopt" }
            self.logger.warning("\(sentence)")
            done(predecessor?.updated == true ? nil : sentence)
        }
    }

    /// Closes hand-over fds nobody claimed, and lets the keeper's copies go. But for a reclaim end
    /// whose worker exited under the daemon before, which had not taken back all of it (no room):
    /// what is left in it is taken back here (its keeper's copy goes once it is empty).
    private func release(_ handover: KeeperLink.Handover) {
        for (tag, fd) in handover.fds where tag != KeeperTag.control && tag != KeeperTag.notify {
            if let pid = KeeperTag.reclaimPID(tag) {
                router.takeBack(worker: -1, from: (fd, releasing(reclaim: fd, pid: pid)))
                continue
            }
            keeper?.drop(tag)
            if tag.hasPrefix("l.") { stopListening(fd) }
            closeFD(fd)
        }
    }

    /// The listeners an app had under the daemon before: the keeper's copies, accepting again.
    func adoptListeners(_ app: ManagedApp) {
        guard let adoption, let saved = adoption.listeners.removeValue(forKey: app.spec.name) else { return }
        for s in saved {
            let l: AppListener
            if let slots = s.slots {
                // reuseport: the group, and each slot's socket as the keeper kept it.
                l = AppListener.reusePortGroup(id: nextListenerID, address: s.address)
                for slot in slots {
                    guard let fd = takeListening(KeeperTag.slot(listener: s.tag, slot: slot), app) else { continue }
                    l.slots[slot] = SlotSocket(slot: slot, fd: fd, listener: l)
                }
            } else {
                guard let fd = takeListening(s.tag, app) else { continue }
                l = AppListener(id: nextListenerID, address: s.address, requestedPort: s.requestedPort, fd: fd)
            }
            l.tag = s.tag
            nextListenerID += 1
            do {
                if app.spec.dispatch != .shared { try router.add(l, leastBusy: app.spec.dispatch == .leastBusy) }
                for slot in l.slots.values { try router.addSlot(slot) }
            } catch {
                logger.error("\(app.spec.name): cannot accept on \(s.address.description) again: \(error)")
            }
            app.listeners.append(l)
        }
        let slots = Set(app.listeners.flatMap(\.slots.keys))
        for slot in slots where app.listeners.allSatisfy({ $0.slots[slot] != nil }) { app.slots.didBind(slot) }
    }

    /// The keeper's copy of the socket `tag` names, if it is a listening socket: anything else
    /// (a tampered state.json naming a worker's channel) would be accepted on forever, in vain.
    private func takeListening(_ tag: String, _ app: ManagedApp) -> Int32? {
        guard let adoption, let fd = adoption.handover.take(tag) else { return nil }
        guard isListeningSocket(fd) else {
            logger.error("\(app.spec.name): the keeper's fd for \(tag) is not a listening socket; not accepted on")
            closeFD(fd)
            keeper?.drop(tag)
            return nil
        }
        return fd
    }

    /// The id the worker of `instance` had under the daemon before.
    func adoptedWorkerID(_ app: ManagedApp, instance: Int) -> Int? {
        adoption?.workers[app.spec.name]?[instance]?.id
    }

    /// Takes over the running process of `w` if the daemon before had one for it and it is still
    /// that process (same start time); false if `w` needs a new process.
    func adopt(_ w: Worker) -> Bool {
        guard let adoption, let record = adoption.workers[w.app.spec.name]?.removeValue(forKey: w.instance) else { return false }
        let app = w.app
        let pid = record.pid
        let ipc = adoption.handover.take(KeeperTag.ipc(pid: pid))
        let out = adoption.handover.take(KeeperTag.out(pid: pid))
        let err = adoption.handover.take(KeeperTag.err(pid: pid))
        let handoff = adoption.handover.take(KeeperTag.handoff(pid: pid))
        let reclaim = adoption.handover.take(KeeperTag.reclaim(pid: pid))
        w.history.restarts = record.restarts
        w.history.unstableRestarts = record.unstableRestarts
        w.history.backoffStep = record.backoffStep
        w.dispatched = record.dispatched
        let alive = processIsAlive(pid) && readFile("/proc/\(pid)/stat", limit: 4096).flatMap(procStartTime) == record.startTime
        guard alive, let ipc, let out, let err else {
            // What it never read while no daemon watched is served by the others.
            if let reclaim { router.takeBack(worker: w.id, from: (reclaim, releasing(reclaim: reclaim, pid: pid))) }
            [ipc, out, err, handoff].compactMap { $0 }.forEach(closeFD)
            keeper?.dropAllButReclaim(of: pid)
            adoption.lost += 1
            // It ended unseen: counted as a restart, and started again now.
            w.history.recordRestart()
            app.logs.note("worker \(w.id) (pid \(pid)) ended while no daemon watched; starting it again")
            return false
        }
        // Without a reclaim end (a daemon before kept none), pml keeps copies of what it sends.
        w.reclaim = handoff == nil ? nil : reclaim
        if handoff == nil, let reclaim { releasing(reclaim: reclaim, pid: pid)() }
        attachStreams(w, ipc: ipc, out: out, err: err, handoff: handoff, resync: true)
        if let h = record.handoff, (2...3).contains(h.count), let channel = w.handoff {
            // It opted in under the daemon before and will not say so again. Whatever that daemon
            // sent and the worker has not credited yet counts as free here (at most one window more).
            // A worker that echoes marks says where their late credits end (the echo of this
            // daemon's mark). One that does not (revision 1): its late credits close this daemon's
            // oldest copies early (not owed: how many are still to come is unknown, and owing a
            // whole window kept copies of answered connections open, their clients waiting for
            // EOF); a worker crediting as it reads has next to none in flight.
            let maxFDs = min(max(h[0], 1), HandoffRecord.maxFDsPerMessage), window = min(max(h[1], 1), HandoffRecord.maxWindow)
            let echoes = h.count == 3 && h[2] >= HandoffRecord.revision
            channel.assume(maxFDs: maxFDs, window: window, echoes: echoes, epoch: Self.handoffEpoch)
            router.grant(worker: w.id, maxFDs: maxFDs, window: window, keepingCopies: w.reclaim == nil)
        }
        w.pid = pid
        w.adopted = true
        w.startTicks = record.startTime
        w.startedAt = record.startedAtMs
        w.requestedListeners = Set(app.listeners.filter { record.listening.contains($0.tag) }.map(\.id))
        workersByPID[pid] = w
        runningWorkers[w.id] = w
        if app.spec.dispatch == .reusePort && !app.listeners.isEmpty {
            // It holds its slot's sockets (inherited at spawn); a Node worker listened on them.
            app.slots.spawned(worker: w.id, slot: w.instance)
            w.listensOnSlot = !w.requestedListeners.isEmpty
        }
        adoption.adopted += 1
        logger.info("\(app.spec.name) worker \(w.id) (pid \(pid)) adopted")
        switch record.status {
        case .starting where !(app.usesNodeShim && !w.requestedListeners.isEmpty):
            w.status = .starting
            awaitReadiness(w)
        case .stopping:
            w.status = .online
            let intent: StopIntent = record.intent == "delete" ? .delete : record.intent == "stop" ? .stop : .restart
            stop([w], intent: intent)
        default:
            w.status = .online
            joinRotation(w)
        }
        return true
    }

    // MARK: the metrics and dashboard listeners

    /// An HTTP listener on `host:port` that the keeper holds under `tag`: the copy a daemon before
    /// left (`held`, taken) if it is still a socket listening on that address, so that what
    /// waited in its backlog meanwhile is answered; else a new socket (the keeper's copy of the
    /// old one is replaced, and it closes).
    func httpListener(_ tag: String, held: inout Int32?, host: String, port: Int, limits: HTTPListener.Limits = .init(),
                      what: String) throws(SystemError) -> HTTPListener {
        if let fd = held {
            let binding = tcpBinding(fd, matches: host, port: port)
            if isListeningSocket(fd) && binding.matches {
                held = nil
                setNonBlocking(fd)
                let l: HTTPListener
                do {
                    l = try HTTPListener(listening: fd, host: host, port: binding.port, loop: loop, limits: limits, logger: logger, what: what)
                } catch {
                    keeper?.drop(tag) // nobody serves it: the keeper's copy must not keep it queueing
                    throw error
                }
                httpListeners.append(l)
                return l
            }
            logger.info("the \(what) is now on \(host):\(port): the socket the daemon before listened on is closed")
            releaseHeld(tag, fd)
            held = nil
        }
        let l = try HTTPListener(host: host, port: port, loop: loop, limits: limits, logger: logger, what: what)
        keeper?.hold(tag, l.fd)
        httpListeners.append(l)
        return l
    }

    /// A listener the keeper held for a daemon before that nobody serves on now: it stops
    /// listening for every holder (connections waiting on it are refused, not left hanging) and closes.
    func releaseHeld(_ tag: String, _ fd: Int32?) {
        guard let fd else { return }
        stopListening(fd)
        closeFD(fd)
        keeper?.drop(tag)
    }

    // MARK: pml update

    /// `pml update`: this daemon hands everything to a new one started from the installed
    /// binary, then exits; the workers keep running and keep their pids.
    func handOver() -> ControlResponse {
        guard let keeper else { return .failure("this daemon has no keeper to hand over to") }
        guard let exe = installedExecutablePath() else { return .failure("the installed pml binary is missing; nothing to update to") }
        if let app = apps.first(where: \.reloading) {
            return .failure("a reload of \(app.spec.name) is running; update when it is done")
        }
        guard !handingOver else { return .failure("this daemon is handing over already") }
        handingOver = true
        // New scrapes and dashboard requests wait in the backlogs (the keeper holds the sockets)
        // for the successor; those accepted already are answered first, within a second.
        httpListeners.forEach { $0.stopAccepting() }
        finishHandOver(keeper, by: monotonicMs() + 1000, after: 0)
        logger.info("handing over to a new daemon from \(exe)")
        return ControlResponse(ok: true, message: "handing over to a new daemon from \(exe)",
                               daemon: DaemonInfo(pid: getpid(), version: PMLVersion.string, home: paths.home,
                                                  uptimeMs: monotonicMs() - startedAt))
    }

    /// Once no HTTP request is half answered (or at `deadline`): state.json, `update` to the
    /// keeper, and the loop ends (in a later turn, so the answer to `pml update` goes out).
    private func finishHandOver(_ keeper: KeeperLink, by deadline: Int, after delayMs: Int) {
        loop.schedule(after: delayMs) { [unowned self] in
            if self.httpListeners.contains(where: \.answering) && monotonicMs() < deadline {
                return self.finishHandOver(keeper, by: deadline, after: 5)
            }
            self.persistStateNow()
            keeper.send(.update)
            self.loop.stop()
        }
    }
}
