import Glibc
import PMLCore
import PMLPosix

/// Cluster mode: the sockets pml owns, readiness, and what workers say on their IPC channel.
extension Supervisor {
    // MARK: listeners

    /// Binds the app's `listen` addresses that are not bound yet (rr, least-busy: pml accepts on
    /// them; reuseport: one socket per slot, 0..<instances).
    func openListeners(_ app: ManagedApp) throws(SystemError) {
        adoptListeners(app)
        var opened: [AppListener] = []
        let dispatch = app.spec.dispatch
        for address in app.spec.listen where !app.listeners.contains(where: { $0.matchesSpec(address) }) {
            do {
                let l: AppListener
                if dispatch == .reusePort {
                    l = AppListener.reusePortGroup(id: nextListenerID, address: address)
                } else {
                    l = try AppListener.bind(id: nextListenerID, address: address, forSharing: dispatch == .shared)
                }
                nextListenerID += 1
                opened.append(l)
                app.listeners.append(l)
                if dispatch != .shared { try router.add(l, leastBusy: dispatch == .leastBusy) }
                keeperHold(listener: l)
                if dispatch == .reusePort {
                    for slot in 0..<app.spec.instances { _ = try slotSocket(app, l, slot) }
                }
            } catch {
                for l in opened { closeListener(l, of: app) }
                throw error
            }
        }
        updateSlots(app)
    }

    /// The socket of `slot` on a reuseport address, bound now if it is not yet.
    func slotSocket(_ app: ManagedApp, _ l: AppListener, _ slot: Int) throws(SystemError) -> SlotSocket {
        if let s = l.slots[slot] { return s }
        let s = try l.bindSlot(slot)
        do {
            try router.addSlot(s)
        } catch {
            l.slots[slot] = nil
            closeFD(s.fd)
            throw error
        }
        keeperHold(slot: s)
        if app.listeners.allSatisfy({ $0.slots[slot] != nil }) { app.slots.didBind(slot) }
        return s
    }

    /// reuseport: pml accepts on every slot socket no worker serves (while some worker takes
    /// handed connections, or the slot is being removed), and closes removed slots nobody holds
    /// any more, after taking in what is queued on them.
    func updateSlots(_ app: ManagedApp) {
        guard app.spec.dispatch == .reusePort else { return }
        _ = app.slots.resize(to: app.spec.instances)
        for slot in app.slots.closable {
            for l in app.listeners {
                guard let s = l.slots.removeValue(forKey: slot) else { continue }
                router.removeSlot(s)
                keeperRelease(slot: s)
                closeFD(s.fd)
            }
            app.slots.didClose(slot)
            logger.info("\(app.spec.name): closed the sockets of slot \(slot)")
        }
        for l in app.listeners {
            let handoff = router.hasServer(for: l.id)
            for (slot, s) in l.slots {
                router.setAccepting(s, app.slots.pmlAccepts(slot) && (handoff || slot >= app.slots.size))
            }
        }
    }

    func closeListeners(_ app: ManagedApp) {
        for l in app.listeners { closeListener(l, of: app) }
    }

    private func closeListener(_ l: AppListener, of app: ManagedApp) {
        router.remove(l)
        keeperRelease(listener: l)
        closeFD(l.fd)
        for s in l.slots.values {
            keeperRelease(slot: s)
            closeFD(s.fd)
            app.slots.didClose(s.slot)
        }
        l.slots = [:]
        if case .unix(let path) = l.address { unlink(path) }
        app.listeners.removeAll { $0 === l }
    }

    /// A stopped or errored app frees its ports (as PM2 does); they are bound again on start.
    func closeListenersIfIdle(_ app: ManagedApp) {
        if app.workers.allSatisfy({ $0.status == .stopped || $0.status == .errored }) { closeListeners(app) }
    }

    // MARK: readiness

    func awaitReadiness(_ w: Worker) {
        let app = w.app
        switch app.spec.ready {
        case .automatic:
            // A Node worker of an app that already has sockets is ready when its server listens.
            if app.usesNodeShim && nodeShim != nil && !app.listeners.isEmpty { break }
            // A reload's replacement must at least survive min_uptime: a version that crashes at
            // start is caught before the old worker goes.
            if w.startWatch != nil && app.spec.minUptime > 0 {
                w.readyTimer = loop.schedule(after: app.spec.minUptime) { [unowned self, unowned w] in
                    w.readyTimer = nil
                    self.markReady(w)
                }
                return
            }
            return markReady(w)
        case .message:
            break
        case .delay(let ms):
            w.readyTimer = loop.schedule(after: ms) { [unowned self, unowned w] in
                w.readyTimer = nil
                self.markReady(w)
            }
            return
        }
        w.readyTimer = loop.schedule(after: app.spec.readyTimeout) { [unowned self, unowned w] in
            w.readyTimer = nil
            guard w.status == .starting, w.pid != nil else { return }
            self.logger.warning("\(app.spec.name) worker \(w.id) was not ready within \(app.spec.readyTimeout) ms")
            if let watch = w.startWatch {
                w.startWatch = nil
                self.stop([w], intent: .delete)
                return watch("worker \(w.id) (instance \(w.instance)) was not ready within ready_timeout (\(app.spec.readyTimeout) ms)")
            }
            w.failedToStart = true
            // Its exit counts as a crash: the restart policy decides what comes next.
            let pid = w.pid!
            signalGroup(pid, SignalNames.number(app.spec.killSignal) ?? SIGTERM)
            w.killTimer = self.loop.schedule(after: app.spec.killTimeout) { [unowned w] in
                w.killTimer = nil
                if w.pid == pid { signalGroup(pid, SIGKILL) }
            }
        }
    }

    /// The worker is ready: into rotation (unless it serves through the Node preload, which asks
    /// for each address itself) and onReady.
    func markReady(_ w: Worker) {
        guard w.status == .starting else { return }
        if let t = w.readyTimer { loop.cancel(t); w.readyTimer = nil }
        w.status = .online
        let app = w.app
        joinRotation(w)
        callHook(app, "onReady", [w.scriptValue], worker: w)
        if let watch = w.startWatch {
            w.startWatch = nil
            watch(nil)
        }
        checkWaiters()
    }

    /// An online worker takes the connections of its app's listeners (a Node worker through the
    /// preload: those it asked for); under reuseport, it serves its slot.
    func joinRotation(_ w: Worker) {
        let app = w.app
        if app.spec.dispatch.passesConnections {
            for l in app.listeners where !app.usesNodeShim || w.requestedListeners.contains(l.id) {
                router.serve(worker: w.id, listener: l.id)
            }
        } else if app.spec.dispatch == .reusePort {
            // It accepts on its slot socket now (a Node worker: once it listened on it). Handed
            // connections only if it asked for them (the preload does, `pml:handoff` for others).
            if !app.usesNodeShim || w.listensOnSlot { app.slots.serving(worker: w.id) }
            for l in app.listeners where w.requestedListeners.contains(l.id) { router.serve(worker: w.id, listener: l.id) }
            updateSlots(app)
        }
    }

    // MARK: IPC

    func sendHandle(worker id: Int, fd: Int32, listener: AppListener) -> HandoffChannel.SendResult {
        guard let w = runningWorkers[id], let ipc = w.ipc, ipc.isOpen else { return .closed }
        let result = ipc.offer(terminatedLine: listener.handleLine, attaching: fd)
        if result == .sent { w.dispatched += 1 }
        return result
    }

    /// Messages per second a worker may send to hooks; beyond it they are dropped, and far beyond
    /// it the worker is flooding and is stopped (see ipcGarbage). Handle ACKs are not counted.
    static let messageRate = 1000
    static let floodRate = 20000

    /// What a worker said on its channel.
    func ipcMessage(_ w: Worker, _ msg: ScriptValue) {
        let now = monotonicMs()
        if now - w.messageWindow.start >= 1000 { w.messageWindow = (now, 0) }
        w.messageWindow.count += 1
        if w.messageWindow.count > Self.floodRate {
            return ipcGarbage(w, "it sent over \(Self.floodRate) messages in a second on its IPC channel", count: 0, cutOff: true)
        }
        if case .object(let t) = msg, let cmd = t["cmd"]?.stringValue, cmd.hasPrefix("NODE_") {
            switch cmd {
            case "NODE_HANDLE_ACK": router.acknowledged(worker: w.id)
            case "NODE_HANDLE_NACK": router.refused(worker: w.id)
            default: break // Node's own housekeeping
            }
            return
        }
        let type = msg["type"]?.stringValue
        if msg == .string("ready") || type == "ready" {
            return markReady(w)
        }
        switch type {
        case "metric":
            if let name = msg["name"]?.stringValue, let value = msg["value"]?.doubleValue, value.isFinite {
                w.metrics[name] = value
                // least-busy: a program's own count of its open connections.
                if name == "connections" { router.report(worker: w.id, openConnections: Int(max(0, min(value, 1e6)))) }
            }
        case "pml:listen":
            listenRequest(w, msg)
        case "pml:unlisten":
            for l in w.app.listeners where l.matches(host: msg["host"]?.stringValue, port: msg["port"]?.intValue.map(Int.init),
                                                     path: msg["path"]?.stringValue) {
                w.requestedListeners.remove(l.id)
                router.stopServing(worker: w.id, listener: l.id)
                w.app.slots.notServing(worker: w.id)
            }
            updateSlots(w.app)
        case "pml:handoff":
            // reuseport, a program that is not Node: it also takes connections pml hands over
            // (those queued on a slot whose worker is gone), as NODE_HANDLE lines.
            guard w.app.spec.dispatch == .reusePort else { break }
            for l in w.app.listeners { w.requestedListeners.insert(l.id) }
            if w.status == .online {
                for l in w.app.listeners { router.serve(worker: w.id, listener: l.id) }
                updateSlots(w.app)
            }
        default:
            if w.messageWindow.count > Self.messageRate {
                if w.messageWindow.count == Self.messageRate + 1 {
                    w.app.logs.note("worker \(w.id) sends over \(Self.messageRate) messages a second; the rest of this second's are dropped")
                }
                return
            }
            // Anything else is the app's business; a value returned by onMessage goes back to the
            // worker when it comes, if that process still runs.
            let pid = w.pid
            askHook(w.app, "onMessage", [w.scriptValue, msg], worker: w) { [weak w] reply in
                guard let w, let reply, reply != .null, w.pid == pid else { return }
                w.ipc?.send(reply)
            }
        }
    }

    /// The most sockets pml binds for an app without `listen` on its workers' requests.
    static let maxRequestedListeners = 16

    /// `server.listen()` in a Node worker, through pml's preload: bind the address for the app
    /// (once) and put the worker in rotation for it. Only what the app declares in `listen`, or,
    /// for a Node app without `listen`, TCP ports (at most maxRequestedListeners): refusals are
    /// answered on the channel and logged.
    private func listenRequest(_ w: Worker, _ msg: ScriptValue) {
        let app = w.app
        let id = msg["id"] ?? .null
        let host = msg["host"]?.stringValue
        let port = msg["port"]?.intValue.map(Int.init)
        let path = msg["path"]?.stringValue
        func reply(_ fields: [String: ScriptValue]) {
            var t = fields
            t["cmd"] = .string("NODE_PML_LISTEN_REPLY")
            t["id"] = id
            w.ipc?.send(.object(t))
        }
        func refuse(_ code: String, _ why: String) {
            w.listenRefusals += 1
            if [1, 10, 100].contains(w.listenRefusals) {
                let nth = w.listenRefusals == 1 ? "" : " (\(w.listenRefusals) refusals)"
                logger.warning("\(app.spec.name) worker \(w.id): listen refused: \(why)\(nth)")
                app.logs.note("worker \(w.id): listen refused: \(why)\(nth)")
            }
            reply(["ok": .bool(false), "code": .string(code), "error": .string("\(code): \(why)")])
        }
        var listener = app.listeners.first { $0.matches(host: host, port: port, path: path) }
        if listener == nil && (app.spec.dispatch == .reusePort || !app.spec.listen.isEmpty) {
            // An app that declares its addresses gets those (a reuseport one has slot sockets for
            // nothing else; the preload binds anything else itself).
            return refuse("EADDRNOTAVAIL", "not one of the app's listen addresses")
        }
        if listener == nil {
            // An app without `listen`: a Node worker whose preload asks for a TCP port, no more.
            // A unix path could be any file of this user's, pml's own control socket included.
            let address: ListenAddress
            if path != nil {
                return refuse("EACCES", "pml binds a unix socket only when the app declares it in listen")
            } else if !app.usesNodeShim {
                return refuse("EADDRNOTAVAIL", "pml listens only on what the app declares in listen")
            } else if let port, (0...65535).contains(port) {
                let anyHost = host == nil || host == "::" || host == "0.0.0.0"
                address = .tcp(host: anyHost ? nil : host, port: port)
            } else {
                return refuse("EINVAL", "listen needs a port")
            }
            if app.listeners.count >= Self.maxRequestedListeners {
                return refuse("EMFILE", "the app already has \(Self.maxRequestedListeners) listening sockets")
            }
            do {
                let l = try AppListener.bind(id: nextListenerID, address: address, forSharing: false)
                nextListenerID += 1
                try router.add(l, leastBusy: app.spec.dispatch == .leastBusy)
                keeperHold(listener: l)
                app.listeners.append(l)
                listener = l
                logger.info("\(app.spec.name): listening on \(l.address.description) for its workers")
            } catch {
                let code = error.errno == EADDRINUSE ? "EADDRINUSE" : error.errno == EACCES ? "EACCES" : "EADDRNOTAVAIL"
                return refuse(code, "\(error)")
            }
        }
        guard let l = listener else { return }
        reply(["ok": .bool(true), "port": l.address.port.map { .int(Int64($0)) } ?? .null,
               "address": .string(l.address.description)])
        w.requestedListeners.insert(l.id)
        if msg["inherited"] == .bool(true) { w.listensOnSlot = true }
        // Only a ready worker takes connections; one still starting joins in markReady.
        if w.status == .starting && app.spec.ready == .automatic { markReady(w) }
        if w.status == .online {
            router.serve(worker: w.id, listener: l.id)
            if app.spec.dispatch == .reusePort, w.listensOnSlot {
                app.slots.serving(worker: w.id)
                updateSlots(app)
            }
        }
        // A successor must know the socket and who serves it even if the daemon dies now.
        if keeper != nil { persistStateNow() }
    }

    /// Garbage or a flood on the channel: pml stops listening to it and restarts the worker.
    /// A bad line is logged (the 1st, 10th and 100th of a window) and dropped. A channel cut off
    /// (a flood of bad lines, a line over 1 MiB, a worker not reading) ends the worker with
    /// SIGKILL and no intent: its exit is a crash like any other, so backoff, autorestart = false
    /// and errored apply (restarting it at once let a bad worker loop 600 times a second).
    func ipcGarbage(_ w: Worker, _ why: String, count: Int, cutOff: Bool) {
        guard cutOff else {
            if count == 1 || count == 10 || count == 100 {
                let nth = count == 1 ? "" : " (\(count) in 10 s)"
                logger.warning("\(w.app.spec.name) worker \(w.id): \(why)\(nth)")
                w.app.logs.note("worker \(w.id): \(why)\(nth)")
            }
            return
        }
        logger.warning("\(w.app.spec.name) worker \(w.id): \(why); pml closed the channel and kills the worker")
        w.app.logs.note("worker \(w.id): \(why); pml closed the channel and kills the worker")
        w.ipc?.close()
        // The worker lives on for a moment (or drains, being stopped): a handle that left pml is
        // in its socket buffer and may be taken; handing pml's copy to another would serve it twice.
        // What was sent on its handoff channel: a worker left to drain may take it (pml's copies are
        // closed); one killed now cannot, and pml's copies go to others when it has exited. From a
        // reclaim end, what either leaves unread is taken back when it exits.
        w.handoff?.close()
        let killed = w.pid != nil && w.intent == nil
        router.workerGone(worker: w.id, keepsHandle: w.ipc?.closedWithUnsentHandle == false, sent: killed ? .untilExit : .worker)
        if let pid = w.pid, killed { signalGroup(pid, SIGKILL) }
    }

    // MARK: NOTIFY_SOCKET

    func notifyReadable() {
        guard let notify else { return }
        while let (pid, text) = notify.receive() {
            // A worker's own children may notify for it (systemd's NotifyAccess=all): match by group.
            guard pid > 0, let w = workersByPID[pid] ?? processGroup(of: pid).flatMap({ workersByPID[$0] }) else { continue }
            for line in text.split(separator: "\n") {
                if line == "READY=1" {
                    markReady(w)
                } else if line == "STOPPING=1" {
                    router.retire(worker: w.id)
                    w.app.slots.notServing(worker: w.id)
                    updateSlots(w.app)
                } else if line.hasPrefix("STATUS=") {
                    w.statusText = String(line.dropFirst("STATUS=".count))
                }
            }
        }
    }
}

extension AppListener {
    /// Whether this socket is the one an app file's `listen` entry asks for.
    func matchesSpec(_ wanted: ListenAddress) -> Bool {
        switch (wanted, address) {
        case (.unix(let a), .unix(let b)): return a == b
        case (.tcp(let h1, let p1), .tcp(let h2, _)): return h1 == h2 && p1 == requestedPort
        default: return false
        }
    }
}
