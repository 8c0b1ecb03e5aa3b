import FoundationEssentials
import Glibc
import Logging
import PMLCore
import PMLPosix

/// A socket pml holds for an app.
final class AppListener {
    let id: Int
    let address: ListenAddress
    /// The port asked for (0: any); `address` holds the port actually bound.
    let requestedPort: Int?
    let fd: Int32
    var handle: IOHandle?
    /// Under which tag the keeper holds a copy ("" while it holds none).
    var tag = ""
    /// The NODE_HANDLE line (with its newline) that carries each of its connections: the same
    /// every time, so encoded once.
    let handleLine: [UInt8]
    /// The line that carries its connections on a native handoff channel: `<address>\n`.
    let handoffLine: [UInt8]
    /// reuseport: pml's copy of each slot's socket for this address, by slot (`fd` is -1 then).
    var slots: [Int: SlotSocket] = [:]
    /// Whether to let its arrivals gather in the backlog before its next accept turn: its own, so
    /// another app's load never holds it, and one wake-up counts once per listener.
    var coalescing = ArrivalCoalescing(holdUs: ConnectionRouter.acceptHold.holdUs)
    /// The loop timer that ends its hold (nil: not held), and what it runs (made once).
    var holdTimer: TimerHandle?
    /// Holds so far (`pml describe --json`'s `accept_holds`).
    private(set) var holds = 0
    var holdEnd: () -> Void = {}
    /// Its socket is in the loop's interest list now (`ConnectionRouter.rewatch` decides).
    var watched = false
    /// Accept ran out of descriptors: out of the loop until `AcceptBackoff` retries.
    var outOfDescriptors = false

    init(id: Int, address: ListenAddress, requestedPort: Int?, fd: Int32) {
        self.id = id
        self.address = address
        self.requestedPort = requestedPort
        self.fd = fd
        let msg: ScriptValue = .object([
            "cmd": .string("NODE_HANDLE"),
            "type": .string("net.Socket"),
            "msg": .object([
                "type": .string("pml:connection"),
                "port": address.port.map { .int(Int64($0)) } ?? .null,
                "address": .string(address.description),
            ]),
        ])
        handleLine = (try? JSONEncoder().encode(msg)).map { Array($0) + [UInt8(ascii: "\n")] } ?? []
        handoffLine = Array((address.description + "\n").utf8)
    }

    /// A reuseport address: no socket of its own; its slot sockets are bound one by one (`bindSlot`).
    static func reusePortGroup(id: Int, address: ListenAddress) -> AppListener {
        AppListener(id: id, address: address, requestedPort: address.port, fd: -1)
    }

    /// Binds this address's SO_REUSEPORT socket for `slot`, non-blocking (pml accepts on it while
    /// the slot has no worker; Node, Go and asyncio servers set it so themselves anyway).
    func bindSlot(_ slot: Int) throws(SystemError) -> SlotSocket {
        guard case .tcp(let host, let port) = address else { throw SystemError("reuseport on \(address)", errno: EINVAL) }
        let (fd, _) = try ListeningSocket.tcp(host: host, port: port, nonBlocking: true, reusePort: true)
        let s = SlotSocket(slot: slot, fd: fd, listener: self)
        slots[slot] = s
        return s
    }

    /// Binds `address`: non-blocking for `rr` (pml accepts), blocking for `shared` (workers accept,
    /// and inherited sockets should look as systemd passes them).
    static func bind(id: Int, address: ListenAddress, forSharing: Bool) throws(SystemError) -> AppListener {
        switch address {
        case .tcp(let host, let port):
            let (fd, bound) = try ListeningSocket.tcp(host: host, port: port, nonBlocking: !forSharing)
            return AppListener(id: id, address: .tcp(host: host, port: bound), requestedPort: port, fd: fd)
        case .unix(let path):
            let fd = try ListeningSocket.unix(path: path, nonBlocking: !forSharing)
            return AppListener(id: id, address: address, requestedPort: nil, fd: fd)
        }
    }

    /// Out of the loop until `timer` fires.
    func hold(_ timer: TimerHandle) {
        holdTimer = timer
        holds += 1
    }

    /// Whether a worker's `listen()` for this host/port/path means this socket.
    func matches(host: String?, port: Int?, path: String?) -> Bool {
        switch address {
        case .unix(let p): return path == p
        case .tcp(let h, let bound):
            guard let port, path == nil else { return false }
            // listen(port) on every interface takes the app file's address for that port, whatever its host.
            let anyHost = host == nil || host == "::" || host == "0.0.0.0"
            let hostMatches = anyHost || host == h
            return hostMatches && (port == bound || port == requestedPort)
        }
    }
}

/// One worker's `HeldHandles`, boxed so that it changes in place behind the dictionary's getter:
/// stored in the dictionary as a struct, each push and credit went through Dictionary's modify
/// coroutine, whose frames are allocated (three mallocs each, two per connection).
private final class HeldBox {
    /// Unchecked like the router's own state (it is part of it, pushed and credited per connection).
    @exclusivity(unchecked) var ring: HeldHandles
    init(_ ring: HeldHandles) { self.ring = ring }
    /// Sent and not credited back: in the ring, or expired unread (their credits still due).
    var sent: Int { ring.count + ring.due }
}

/// One reuseport slot socket of an address, as pml holds it.
final class SlotSocket {
    let slot: Int
    let fd: Int32
    unowned let listener: AppListener
    var handle: IOHandle?
    /// pml accepts on it (no worker serves the slot, or the slot is being removed).
    var accepting = false
    /// In the loop's interest list now (`ConnectionRouter.rewatch` decides).
    var watched = false

    init(slot: Int, fd: Int32, listener: AppListener) {
        self.slot = slot
        self.fd = fd
        self.listener = listener
    }
}

/// Accepts connections on `rr` and `least-busy` listeners (and on reuseport slot sockets no
/// worker serves) and hands each to a ready worker, as the `RoundRobinDispatcher` decides: as a
/// NODE_HANDLE line on its IPC channel (one in flight, ACKed), or on its native handoff channel
/// (several in flight, up to the credits it granted; several fds per message if it takes them).
/// A worker that dies first does not take with it a connection it never took: pml keeps its copy of
/// a NODE_HANDLE until the ACK, and on a handoff channel it keeps the worker's own end of the channel
/// (the reclaim end) and reads back, once the worker is gone, what it never read (`takeBack`); copies
/// of those connections are kept only for a worker adopted without a reclaim end (from an older daemon).
/// Accepts only what a worker can take now: while none can, the listener (or slot socket) leaves
/// the loop and connections wait in the kernel's backlog, which outlives the daemon (the keeper
/// holds a copy); one app's waiting connections never stop another's. Past `waitingBound` every
/// listener pauses: it counts pml's queue and every connection sent on a handoff channel and not
/// credited back (with or without pml's copy: an unread one is in flight, charged to pml's user by
/// the kernel, and comes back into pml's own descriptors if its worker dies), since many workers'
/// windows can hold more than the descriptors pml has. What is taken back from a gone worker's
/// reclaim end is read only while the bound has room; the rest stays in it until there is.
final class ConnectionRouter {
    /// Connections accepted but not handed out wait this long at most, then are closed.
    static let maxWaitMs = 30_000
    /// How long a worker whose send the kernel refused for now waits for the next try.
    static let refusedRetryMs = 50
    /// A handle not acknowledged (or credited) within this long is dropped: pml closes its copy (if
    /// it keeps one), and the worker gets no other until it answers (a late ACK, NACK or credit proves it alive).
    /// `PML_HANDOFF_EXPIRY_MS` in the daemon's environment (read once, at start) changes it, for tests.
    static let ackTimeoutMs = HomeConfig.environmentInteger("PML_HANDOFF_EXPIRY_MS", in: 100...600_000, default: 10_000)
    /// The smallest window of a worker whose listener is ever held (the Node preload's is 16).
    static let holdableWindow = 8

    /// How long (µs) pml lets connections gather in a listener's backlog between its accept turns
    /// under sustained load (`ArrivalCoalescing`): 250 unless `PML_ACCEPT_HOLD_US` in the daemon's
    /// environment (read once, at start) says otherwise (0: off), or the loop's timeouts are whole
    /// milliseconds (then off unless set). Only that listener waits, and only one whose workers all
    /// take connections on the native handoff channel, with windows of `holdableWindow` or more.
    static let acceptHold = ArrivalCoalescing.holdSetting(processEnvironment()["PML_ACCEPT_HOLD_US"], max: ArrivalCoalescing.maxHoldUs,
                                                          microsecondTimeouts: EventLoop.microsecondTimeouts)

    private let loop: EventLoop
    private let logger: Logger
    // `@exclusivity(unchecked)`: the state each connection's path touches. The router runs on the
    // loop's thread only, and no access to these is held across a call that could reach them again
    // (`ask`'s closures only question the dispatcher), so the runtime's check of each access could
    // find nothing and cost a call into it each time: 18 -> 7 per connection (Benchmarks/README.md).
    @exclusivity(unchecked) private var dispatcher = RoundRobinDispatcher()
    @exclusivity(unchecked) private var listeners: [Int: AppListener] = [:]
    @exclusivity(unchecked) private var pending: [Int: [(fd: Int32, since: Int)]] = [:]
    private var inFlight: [Int: (fd: Int32, listener: Int, since: Int)] = [:]
    /// Workers whose handle timed out unacknowledged: out of the rotation's reach until they answer.
    private var silent: Set<Int> = []
    @exclusivity(unchecked) private var pendingCount = 0
    @exclusivity(unchecked) private var acceptingPaused = false
    /// Listeners not watched because no worker serving them can take a connection now.
    private var starved: Set<Int> = []
    /// Writes the handle line for `listener`'s connection `fd` to `worker` (`full` is never said:
    /// an IPC channel queues what it cannot write now).
    /// What went out counts as dispatched to the worker (`ls`, metrics): counted by the sender, which
    /// has the worker at hand, rather than looked up again per connection.
    var sendHandle: (_ worker: Int, _ fd: Int32, _ listener: AppListener) -> HandoffChannel.SendResult = { _, _, _ in .closed }
    /// Sends `listener`'s connections `fds` in one message on `worker`'s handoff channel (counted as
    /// dispatched if they went, like `sendHandle`).
    @exclusivity(unchecked) var passConnections: (_ worker: Int, _ fds: UnsafeBufferPointer<Int32>, _ listener: AppListener) -> HandoffChannel.SendResult = { _, _, _ in .closed }
    /// Native handoff: what each worker has not credited back yet (with pml's copies, for a worker
    /// in `keepsCopies`), and how many fds it takes per message.
    @exclusivity(unchecked) private var held: [Int: HeldBox] = [:]
    /// All workers' connections sent and not credited back (`HeldBox.sent`), counted in `waitingBound`.
    @exclusivity(unchecked) private var heldCount = 0
    /// Reclaim ends of gone workers that may still hold unread messages, oldest first: read as the
    /// bound has room (`takeBackWhileRoom`); `release` closes pml's end and the keeper's copy once
    /// nothing is left in it.
    @exclusivity(unchecked) private var reclaiming: [(worker: Int, end: Int32, release: () -> Void, countsLoad: Bool)] = []
    /// Workers whose last send the kernel refused for now (ETOOMANYREFS, ENOBUFS): tried again by
    /// one short timer, not at once (the refusal lasts until fds in flight are read or taken back).
    private var refused: Set<Int> = []
    private var refusedRetry: TimerHandle?
    private var lastRefusalLogMs = Int.min / 2
    @exclusivity(unchecked) private var maxFDs: [Int: Int] = [:]
    /// Workers pml has no reclaim end for (adopted from a daemon that kept none): pml keeps its copy
    /// of each connection sent to them until credited, as the only way to serve it if they die.
    @exclusivity(unchecked) private var keepsCopies: Set<Int> = []
    /// One message's fds, gathered before its sendmsg (fixed storage: nothing allocated per connection).
    private let batch = UnsafeMutableBufferPointer<Int32>.allocate(capacity: HandoffRecord.maxFDsPerMessage)
    /// The last batch's extra accept found nothing queued (the accept loop stops there).
    @exclusivity(unchecked) private var batchFoundQueueEmpty = false
    /// Connections accepted in this accept turn, and whether it stopped for want of a free worker.
    @exclusivity(unchecked) private var acceptedThisTurn = 0
    private var starvedThisTurn = false
    /// Whether the loop reads `worker`'s handoff channel as credits come (true), or lets them wait
    /// in its socket (false; `catchUpCredits` reads them). See `paceCredits`.
    var readCreditsPromptly: (_ worker: Int, _ promptly: Bool) -> Void = { _, _ in }
    /// Reads what `worker` has written on its handoff channel so far (its credits), now.
    var catchUpCredits: (_ worker: Int) -> Void = { _ in }
    /// Workers whose credits wait in their socket (`paceCredits`).
    private var creditsWait: Set<Int> = []
    /// Asked when what a worker was sent expires uncredited: true if the echo of this daemon's mark
    /// was still awaited and it is now on revision 1's rules; then what expired is not due (the
    /// credits it wrote for those were ignored and will not come again): their credits come back.
    var echoOverdue: (_ worker: Int) -> Bool = { _ in false }
    /// Asked when a worker that pml holds a reclaim end for leaves connections uncredited past the
    /// expiry: true if it closed its end of the handoff channel (then `handoffClosed` was called).
    var channelAbandoned: (_ worker: Int) -> Bool = { _ in false }

    private let backoff: AcceptBackoff
    private var expiryTimer: TimerHandle?
    /// Past this many waiting connections pml stops accepting; the kernel backlog holds the rest.
    private let waitingBound: WaitingConnections

    /// `waitingBound` defaults to what the soft limit on open files (raised at start) allows.
    init(loop: EventLoop, logger: Logger, waitingBound: WaitingConnections = WaitingConnections(fdLimit: openFileLimit())) {
        self.loop = loop
        self.logger = logger
        self.waitingBound = waitingBound
        backoff = AcceptBackoff(loop: loop, logger: logger, what: "app listeners")
        if let problem = Self.acceptHold.problem { logger.warning("\(problem)") }
        scheduleExpiry()
    }

    deinit {
        if let expiryTimer { loop.cancel(expiryTimer) }
        if let refusedRetry { loop.cancel(refusedRetry) }
        for l in listeners.values { if let t = l.holdTimer { loop.cancel(t) } }
        batch.deallocate()
    }

    var waitingConnections: Int { pendingCount }

    /// Connections waiting for a worker: in pml's queue and in the kernel's accept queue.
    func waiting(on listener: Int) -> Int {
        (pending[listener]?.count ?? 0) + (listeners[listener].flatMap { listenQueueLength($0.fd) } ?? 0)
    }

    /// Starts accepting on a listener (a reuseport group has no socket of its own: its slots come
    /// with `addSlot`). `leastBusy`: its connections go to the worker with the fewest open ones.
    func add(_ listener: AppListener, leastBusy: Bool = false) throws(SystemError) {
        listeners[listener.id] = listener
        dispatcher.setLeastBusy(leastBusy, listener: listener.id)
        // The router unowned: deinit cancels every hold timer (see scheduleExpiry for why not weak).
        listener.holdEnd = { [unowned self, weak listener] in
            guard let listener else { return }
            self.holdEnded(listener)
        }
        guard listener.fd >= 0 else { return }
        listener.handle = try loop.register(fd: listener.fd, events: []) { [unowned self] _ in
            // Readiness reported in the same wake-up in which it left the loop (held, starved, paused): later.
            guard listener.watched else { return }
            self.acceptTurn(listener)
        }
        rewatch(listener)
    }

    /// Watches a reuseport slot socket; pml accepts on it only after `setAccepting(_, true)`.
    func addSlot(_ slot: SlotSocket) throws(SystemError) {
        slot.handle = try loop.register(fd: slot.fd, events: []) { [unowned self, unowned slot] _ in
            guard slot.watched else { return }
            self.acceptTurn(slot.listener)
        }
        slot.watched = false
    }

    /// pml accepts on a slot socket (its connections go to the workers serving its address), or stops.
    func setAccepting(_ slot: SlotSocket, _ on: Bool) {
        guard slot.accepting != on, slot.handle != nil else { return }
        slot.accepting = on
        // Its worker may have made the shared socket blocking; pml's accept must never block.
        if on { setNonBlocking(slot.fd) }
        rewatch(slot.listener)
    }

    /// A removed slot: takes in what is still queued on it (for the other workers), then stops
    /// watching it. The caller closes the socket.
    func removeSlot(_ slot: SlotSocket) {
        if listeners[slot.listener.id] != nil {
            setNonBlocking(slot.fd)
            // Bounded: what the backlog holds (511), with room for what arrives meanwhile, and never
            // past the bound on waiting connections (what is left is reset when the socket closes).
            for _ in 0..<4096 {
                guard !waitingBound.full(waiting: pendingCount, held: heldCount), let fd = UnixSocket.accept(slot.fd, nonBlocking: false) else { break }
                if !handOut(fd, slot.listener) { enqueue(fd, slot.listener.id) }
            }
        }
        if let h = slot.handle { loop.unregister(h) }
        slot.handle = nil
        slot.accepting = false
        slot.watched = false
    }

    /// Whether some worker takes handed connections of `listener`.
    func hasServer(for listener: Int) -> Bool {
        dispatcher.rotation.contains { dispatcher.serves(worker: $0, listener: listener) }
    }

    /// A worker's own count of its open connections (least-busy; a program's metric).
    func report(worker: Int, openConnections: Int) {
        dispatcher.report(worker: worker, openConnections: openConnections)
    }

    /// How many handed connections a worker has closed in all (least-busy; pml's preload).
    func report(worker: Int, closedConnections: Int) {
        dispatcher.report(worker: worker, closedConnections: closedConnections)
    }

    /// Stops accepting on a listener and closes it and every connection still waiting for it.
    func remove(_ listener: AppListener) {
        if let t = listener.holdTimer { loop.cancel(t) }
        listener.holdTimer = nil
        if let h = listener.handle { loop.unregister(h) }
        listener.handle = nil
        for s in listener.slots.values {
            if let h = s.handle { loop.unregister(h) }
            s.handle = nil
        }
        listeners[listener.id] = nil
        starved.remove(listener.id)
        for c in pending.removeValue(forKey: listener.id) ?? [] {
            closeFD(c.fd)
            pendingCount -= 1
        }
        resumeIfRoom()
    }

    /// `worker` now takes connections of `listener`.
    func serve(worker: Int, listener: Int) {
        dispatcher.add(worker: worker, listener: listener)
        drain()
    }

    /// `worker` stops taking connections of `listener` (its server closed).
    func stopServing(worker: Int, listener: Int) {
        dispatcher.remove(worker: worker, listener: listener)
    }

    func serves(worker: Int, listener: Int) -> Bool { dispatcher.serves(worker: worker, listener: listener) }

    /// Takes a worker out of rotation (retiring, stopping). A handle it has not acknowledged yet
    /// stays with it: it is alive and may still take it.
    func retire(worker: Int) {
        dispatcher.remove(worker: worker)
    }

    /// Who gets what a worker was sent on its handoff channel and has not credited back.
    enum SentConnections {
        /// Others, now (the worker exited: its receive queue went with it).
        case others
        /// The worker (it lives on and may read them): pml's copies are closed.
        case worker
        /// Others, once the worker has exited (it is being killed): pml keeps its copies till then.
        case untilExit
    }

    /// The worker is gone (exited, channel closed): a handle it never acknowledged goes to another,
    /// unless it `keepsHandle` (sent to a worker still alive: it may have taken it) — then pml's
    /// copy is closed and the connection is the worker's. What its handoff channel holds goes as `sent` says;
    /// `reclaim`: the worker's reclaim end, once it has exited: what it never read is taken back.
    func workerGone(worker: Int, keepsHandle: Bool = false, sent: SentConnections = .others, reclaim: Reclaim? = nil) {
        dispatcher.remove(worker: worker)
        silent.remove(worker)
        refused.remove(worker)
        switch sent {
        case .others: requeueHeld(worker: worker)
        case .worker: closeHeld(worker: worker)
        case .untilExit: break
        }
        if let reclaim { takeBack(worker: worker, from: reclaim) }
        dispatcher.forgetCredits(worker: worker)
        maxFDs[worker] = nil
        keepsCopies.remove(worker)
        creditsWait.remove(worker)
        if let f = inFlight.removeValue(forKey: worker) {
            if keepsHandle {
                logger.info("worker \(worker) was cut off with a connection handed to it and not acknowledged; it stays with that worker")
                closeFD(f.fd)
            } else if listeners[f.listener] != nil {
                logger.info("worker \(worker) died before taking its connection; handing it to another")
                requeue(f.fd, f.listener)
            } else {
                closeFD(f.fd)
            }
        }
        drain()
    }

    /// The worker opted in on its handoff channel (or granted again): from now on it gets up to
    /// `window` connections in flight there, `maxFDs` per message. `keepingCopies`: pml has no
    /// reclaim end for it (adopted from an older daemon), so it keeps a copy of each until credited.
    func grant(worker: Int, maxFDs m: Int, window: Int, keepingCopies: Bool) {
        if held[worker] == nil { held[worker] = HeldBox(HeldHandles(capacity: HandoffRecord.maxWindow)) }
        if keepingCopies { keepsCopies.insert(worker) } else { keepsCopies.remove(worker) }
        maxFDs[worker] = m
        dispatcher.grant(worker: worker, window: window, outstanding: held[worker]?.ring.count ?? 0)
        paceCredits(worker)
        drain()
    }

    /// The worker credited back `n` connections: it owns them; what is due for copies pml no longer
    /// holds is paid first, then pml's oldest copies are closed.
    func credited(worker: Int, _ n: Int) {
        if let box = held[worker] {
            let before = box.sent
            box.ring.credit(n, atMs: monotonicMs(), close: closeHeldCopy)
            heldCount -= before - box.sent
        }
        dispatcher.returned(worker: worker, n)
        // Credits only grow here: reading them can only come to wait.
        if !creditsWait.contains(worker) { paceCredits(worker) }
        drain()
    }

    /// A credit line each time the worker reads a message woke the loop on its own (more than half
    /// the loop's wake-ups under a close load), and it is needed only when connections wait for a
    /// worker. So the worker's credits wait in its socket (the loop does not watch it): they are
    /// read at the start of an accept turn once half its window is used (`catchUpHalfUsed`: a read,
    /// no wake-up), by `expire` each second, or at its end (a hang-up is always reported). Read as
    /// they come instead: once it has none left while connections wait (`connectionsWait`: they
    /// may be waiting for its credits), for a worker pml keeps copies for (credits close them), for
    /// one whose channel is full (`creditsMayWait`), and (`HandoffChannel.rewatch`) before its
    /// hello, while the echo of a mark is awaited, or while it writes more than a read takes; also
    /// while accept is paused or a gone worker's reclaim end is read as room comes
    /// (`readAllCredits`): then any credit may be the room that ends the wait.
    private func paceCredits(_ worker: Int) {
        let wait = !acceptingPaused && reclaiming.isEmpty && !keepsCopies.contains(worker)
            && ask { $0.creditsMayWait(worker, connectionsWait: connectionsWait) }
        guard wait != creditsWait.contains(worker) else { return }
        if wait { creditsWait.insert(worker) } else { creditsWait.remove(worker) }
        readCreditsPromptly(worker, !wait)
    }

    /// Connections wait for a worker, for a listener not held: in pml's queue, or in its backlog while
    /// no worker can take one (starved). Updated by `noteWaiting`.
    private var connectionsWait = false

    /// Once connections start waiting, workers out of credits are read as their credits come
    /// (`paceCredits`); once none wait, each goes back to waiting at its next credit.
    private func noteWaiting() {
        // A held listener's workers are caught up with when its hold ends.
        let now = starved.contains { listeners[$0]?.holdTimer == nil } || pending.contains { !$0.value.isEmpty && listeners[$0.key]?.holdTimer == nil }
        guard now != connectionsWait else { return }
        connectionsWait = now
        if now { readAllCredits() }
    }

    /// Before an accept turn, reads the waiting credits of workers that have used half their window
    /// or more, so that the turn's connections go round-robin on what they really have in flight
    /// (unread credits would leave them out of rotation sooner). One read each, only for those.
    private func catchUpHalfUsed() {
        for worker in creditsWait where !ask({ $0.mostlyFree(worker) }) { catchUpCredits(worker) }
    }

    /// The worker read its handoff channel, crediting none of pml's copies (late credits for what
    /// a daemon before sent, read before the echo of this daemon's mark): its socket has room again.
    /// Not a credit: `HeldHandles.lastCreditMs` stays, so expiry never takes unread copies for read.
    func readWithoutCredit(worker: Int) {
        dispatcher.unblock(worker: worker)
        paceCredits(worker)
        drain()
    }

    /// The worker's handoff channel closed while it lives, and it is back on NODE_HANDLE. What it was
    /// not credited for goes to others only if it will not read it (`receiverGone`: its end is closed
    /// or shut down both ways): then pml's copies go, or what is unread in `reclaim` is taken back
    /// (the router owns it then).
    /// Otherwise it may still read those connections, so pml's copies are closed (serving one twice
    /// is worse than losing it: see the IPC channel's cut-off); from a reclaim end, what it leaves
    /// unread is taken back when it exits.
    func handoffClosed(worker: Int, receiverGone: Bool, reclaim: Reclaim?) {
        if receiverGone {
            requeueHeld(worker: worker)
            if let reclaim { takeBack(worker: worker, from: reclaim, countingLoad: true) }
        } else {
            closeHeld(worker: worker)
        }
        // Its retry would be for credits it no longer has.
        refused.remove(worker)
        dispatcher.forgetCredits(worker: worker)
        maxFDs[worker] = nil
        keepsCopies.remove(worker)
        creditsWait.remove(worker)
        drain()
    }

    /// Closes pml's copies of what `worker` was sent and has not credited: the connections are its own.
    private func closeHeld(worker: Int) {
        guard let box = held.removeValue(forKey: worker) else { return }
        heldCount -= box.sent
        while let e = box.ring.pop() { closeHeldCopy(e) }
    }

    /// Closes pml's copy, if it kept one; the caller counts what is no longer sent.
    private func closeHeldCopy(_ e: HeldHandles.Entry) {
        if e.fd >= 0 { closeFD(e.fd) }
    }

    /// Connections sent on a worker's handoff channel and never credited back go to the front of
    /// the line: the worker died or closed the channel before taking them. Only copies: without
    /// them (a reclaim end), what the worker never read comes back by `takeBack`.
    private func requeueHeld(worker: Int) {
        guard let box = held.removeValue(forKey: worker) else { return }
        heldCount -= box.sent
        var back: [Int: [(fd: Int32, since: Int)]] = [:]
        while let e = box.ring.pop() {
            guard e.fd >= 0 else { continue }
            dispatcher.notHanded(worker: worker, listener: e.listener, 1)
            if listeners[e.listener] != nil { back[e.listener, default: []].append((e.fd, monotonicMs())) } else { closeFD(e.fd) }
        }
        putBack(back, from: worker, "it had not credited back")
    }

    /// A gone worker's reclaim end handed over for a take-back, and what ends it (closes pml's end
    /// and the keeper's copy) once nothing is left in it.
    typealias Reclaim = (end: Int32, release: () -> Void)

    /// Takes back from `reclaim`, `worker`'s reclaim end, the messages it never read: their
    /// connections go to the front of the line. Read without blocking, and only while
    /// `waitingBound` has room: what is left stays in the end (a successor finds the keeper's copy)
    /// and is read as the queue drains. Only once the worker will not read them (exited, or its end
    /// closed): a `recvmsg` takes whole messages, so a worker reading at the same time would get
    /// none twice, but one that reads on would find them gone. `countingLoad`: the worker lives on
    /// (least-busy counted what it never read as its load); a gone worker's load went with it, and
    /// its id may be its replacement's by the time the end is read.
    func takeBack(worker: Int, from reclaim: Reclaim, countingLoad: Bool = false) {
        reclaiming.append((worker, reclaim.end, reclaim.release, countingLoad))
        _ = takeBackWhileRoom()
        if !reclaiming.isEmpty { readAllCredits() }
    }

    /// Reads the reclaim ends handed over, oldest first, while the bound has room; true if it put
    /// connections back in line.
    private func takeBackWhileRoom() -> Bool {
        var putAny = false
        while let r = reclaiming.first {
            var back: [Int: [(fd: Int32, since: Int)]] = [:]
            let emptied = readBack(r.worker, r.end, countingLoad: r.countsLoad, into: &back)
            putAny = putAny || !back.isEmpty
            putBack(back, from: r.worker, "it never read")
            guard emptied else { break }
            reclaiming.removeFirst()
            r.release()
        }
        return putAny
    }

    /// Reads `worker`'s unread messages out of `end` into `back`, bounded per call
    /// (`HandoffRecord.maxReclaimedMessages`) and by the room left; true once nothing is left.
    private func readBack(_ worker: Int, _ end: Int32, countingLoad: Bool, into back: inout [Int: [(fd: Int32, since: Int)]]) -> Bool {
        var orphans = 0, taken = 0
        defer { if orphans > 0 { logger.info("\(Self.named(worker)) left \(orphans) connection(s) unread for a listener that is gone; closed") } }
        let now = monotonicMs()
        for _ in 0..<HandoffRecord.maxReclaimedMessages {
            guard waitingBound.room(waiting: pendingCount + taken, held: heldCount) > 0 else { return false }
            // pml's messages are a few dozen bytes: 4 KiB holds one with the tail of another before it.
            var cut = false
            guard case .record(let bytes, let fds) = RecordSocket.receive(end, limit: 4096, dontWait: true, fdsCut: &cut) else { return true }
            if !fds.isEmpty {
                let address = HandoffRecord.reclaimedAddress(bytes[...])
                if let l = address.flatMap({ a in listeners.values.first { $0.handoffLine.dropLast().elementsEqual(a) } }) {
                    if countingLoad { dispatcher.notHanded(worker: worker, listener: l.id, fds.count) }
                    back[l.id, default: []].append(contentsOf: fds.map { ($0, now) })
                    taken += fds.count
                } else {
                    // Its listener is gone (closed meanwhile), or the chunk names none: nobody can serve them.
                    fds.forEach(closeFD)
                    orphans += fds.count
                }
            }
            // Out of descriptors: the fds that did not fit are gone with the kernel's copy; those that
            // came are served, and the rest waits in the end for a later turn.
            if cut { return false }
        }
        return false
    }

    /// How the log names `worker`: -1 is one that exited under the daemon before, its reclaim end
    /// left to this one.
    private static func named(_ worker: Int) -> String { worker >= 0 ? "worker \(worker)" : "a worker that exited under the daemon before" }

    /// Connections a worker never took, by listener, to the front of the line.
    private func putBack(_ back: [Int: [(fd: Int32, since: Int)]], from worker: Int, _ why: String) {
        for (id, fds) in back {
            logger.info("\(Self.named(worker)) left \(fds.count) connection(s) \(why); handing them to others")
            pending[id, default: []].insert(contentsOf: fds, at: 0)
            pendingCount += fds.count
        }
        if waitingBound.full(waiting: pendingCount, held: heldCount) { pauseAccepting() }
    }

    /// NODE_HANDLE_ACK: the worker owns the connection now; pml's copy is closed.
    func acknowledged(worker: Int) {
        guard let f = inFlight.removeValue(forKey: worker) else { return answeredLate(worker) }
        closeFD(f.fd)
        dispatcher.acknowledged(worker: worker)
        drain()
    }

    /// An answer from a worker whose handle timed out: it is alive, and takes connections again.
    private func answeredLate(_ worker: Int) {
        guard silent.remove(worker) != nil else { return }
        dispatcher.acknowledged(worker: worker)
        drain()
    }

    /// NODE_HANDLE_NACK: the handle did not arrive; the connection goes to the front of the line.
    func refused(worker: Int) {
        guard let f = inFlight.removeValue(forKey: worker) else { return answeredLate(worker) }
        dispatcher.notHanded(worker: worker, listener: f.listener, 1)
        requeue(f.fd, f.listener)
        dispatcher.acknowledged(worker: worker)
        drain()
    }

    /// Reads now the credits waiting in these workers' sockets (`paceCredits`), so that what is in
    /// flight (`hasHandleInFlight`) is up to date. Not from within a drain (a credit drains).
    func catchUpCredits(workers: [Int]) {
        for worker in workers where creditsWait.contains(worker) { catchUpCredits(worker) }
    }

    /// Whether the worker still has a handle it has not acknowledged (or credited back).
    func hasHandleInFlight(worker: Int) -> Bool { inFlight[worker] != nil || (held[worker]?.ring.count ?? 0) > 0 }

    /// One accept turn of `l`: on its socket and on the slot sockets pml accepts on for it (one
    /// wake-up counts once per listener, whichever of them woke it); then its `ArrivalCoalescing`
    /// decides whether it leaves the loop for a hold, alone: a loop timer ends it (`holdEnded`).
    private func acceptTurn(_ l: AppListener, gathered: Int? = nil, caughtUp: Bool = false) {
        // Not within a drain (a credit drains): a turn starts from the loop, a listener's or a hold's.
        if !caughtUp { catchUpHalfUsed() }
        acceptedThisTurn = 0
        starvedThisTurn = false
        if l.fd >= 0 { acceptAll(l.fd, l) }
        for s in l.slots.values where s.accepting && canAccept(l) { acceptAll(s.fd, l) }
        // No hold set: nothing to decide, and no clock read per turn.
        if l.coalescing.holdUs > 0 {
            // Only a listener whose workers all take connections with credits, several in flight, is
            // held: a NODE_HANDLE worker gets one at a time, as does one with a small window, and a
            // hold would only delay the ACK or credit that frees it.
            let holdable = ask { $0.onlyCredits(serving: l.id, minWindow: Self.holdableWindow) }
            let hold = l.coalescing.turn(nowUs: monotonicUs(), accepted: acceptedThisTurn, gathered: gathered,
                                         starved: starvedThisTurn, holdable: holdable)
            if hold > 0, canAccept(l) {
                l.hold(loop.schedule(afterUs: hold, l.holdEnd))
            } else if starvedThisTurn, holdable, gathered == nil || acceptedThisTurn > 0 {
                // Every worker's window is full: their credits come a line per event-loop turn, and
                // reading each as it comes woke pml about once per connection. They are read
                // together after a hold instead (twice the accept hold: a full window of at least
                // `holdableWindow` is more work than that); if it brought none, as they come (`holdEnded`).
                l.hold(loop.schedule(afterUs: 2 * l.coalescing.holdUs, l.holdEnd))
            }
        }
        rewatch(l)
        noteWaiting()
    }

    /// `l`'s hold is over: the credits that came meanwhile are read (they may free a worker), and
    /// what gathered is accepted in one turn (it stays out of the loop if that turn holds again),
    /// unless it left the loop meanwhile for another reason; then it comes back when that reason
    /// ends (`rewatch`), and a starved listener's workers are read as their credits come.
    private func holdEnded(_ l: AppListener) {
        l.holdTimer = nil
        catchUpHalfUsed()
        guard canAccept(l) else {
            rewatch(l)
            return noteWaiting()
        }
        // What gathered during the hold, as the kernel counts it (a unix socket does not say: then
        // what the turn accepts stands for it).
        var gathered = l.fd >= 0 ? listenQueueLength(l.fd) : 0
        for s in l.slots.values where s.accepting { gathered = gathered.flatMap { g in listenQueueLength(s.fd).map { g + $0 } } }
        acceptTurn(l, gathered: gathered, caughtUp: true)
    }

    /// Whether pml may accept for `l` now (apart from a hold).
    private func canAccept(_ l: AppListener) -> Bool {
        listeners[l.id] === l && !acceptingPaused && !starved.contains(l.id) && !l.outOfDescriptors
    }

    /// Accepts on `socket`, one of `listener`'s, what workers can take now.
    private func acceptAll(_ socket: Int32, _ listener: AppListener) {
        // A bounded batch per wake-up keeps other fds served under a connection storm.
        for _ in 0..<64 {
            // Paused (too many waiting) by the previous connection of this batch: stop here.
            guard listeners[listener.id] != nil, !acceptingPaused else { return }
            // Nothing is accepted that no worker can take now: it waits in the backlog instead, the
            // listener's or the reuseport slot's (one whose worker is gone, which pml drains).
            if pending[listener.id]?.isEmpty == false || !ask({ $0.hasFreeWorker(for: listener.id) }) {
                starved.insert(listener.id)
                starvedThisTurn = true
                return
            }
            guard let fd = UnixSocket.accept(socket, nonBlocking: false) else {
                // Every accept turn ends here (the queue is empty): the back-off is looked at, and
                // its closure made, only when out of descriptors.
                if UnixSocket.acceptRanOutOfDescriptors() { pauseOutOfDescriptors(socket, listener) }
                return
            }
            acceptedThisTurn += 1
            if !handOut(fd, listener, from: socket) { enqueue(fd, listener.id) }
            // A batch for a worker taking several fds per message found the queue empty: so would
            // the next accept.
            if batchFoundQueueEmpty {
                batchFoundQueueEmpty = false
                return
            }
        }
    }

    /// Out of descriptors: `socket` (the listener's, or a slot's it drains) leaves the loop for a while.
    private func pauseOutOfDescriptors(_ socket: Int32, _ listener: AppListener) {
        let slot = listener.slots.values.first { $0.fd == socket }
        guard let handle = slot?.handle ?? listener.handle else { return }
        listener.outOfDescriptors = true
        backoff.pause(handle) { [weak self, weak listener] in
            guard let self, let listener else { return }
            listener.outOfDescriptors = false
            self.rewatch(listener)
        }
    }

    /// Asks the dispatcher a question where it is stored. A plain call of its non-mutating methods
    /// on this class's stored struct copies the struct first (its ten collections retained, then
    /// released, about twenty calls into the runtime per connection); through an inout access the
    /// dispatcher is read in place.
    private func ask<T>(_ question: (inout RoundRobinDispatcher) -> T) -> T { question(&dispatcher) }

    private func enqueue(_ fd: Int32, _ listener: Int) {
        pending[listener, default: []].append((fd, monotonicMs()))
        pendingCount += 1
        if waitingBound.full(waiting: pendingCount, held: heldCount) { pauseAccepting() }
    }

    /// A connection given back (NACK, the worker gone before its ACK): first in line.
    private func requeue(_ fd: Int32, _ listener: Int) {
        pending[listener, default: []].insert((fd, monotonicMs()), at: 0)
        pendingCount += 1
        if waitingBound.full(waiting: pendingCount, held: heldCount) { pauseAccepting() }
    }

    /// Gives `fd` to the next worker in rotation; false if none can take it now. `socket`: the
    /// listening socket it came from, for a worker that takes several fds per message (more are
    /// accepted for the same message while it has credits; -1: none).
    private func handOut(_ fd: Int32, _ listener: AppListener, from socket: Int32 = -1) -> Bool {
        while let worker = dispatcher.next(for: listener.id) {
            if ask({ $0.usesCredits(worker) }) {
                if pass(fd, listener, to: worker, from: socket) { return true }
                continue
            }
            // A worker that left the rotation and came back (pml:unlisten, pml:listen) before
            // acknowledging its handle is still awaiting it: it gets no other, and its record stays.
            if inFlight[worker] != nil || silent.contains(worker) { continue }
            switch sendHandle(worker, fd, listener) {
            case .sent:
                inFlight[worker] = (fd, listener.id, monotonicMs())
                return true
            case .refused, .full:
                // Left awaiting an ACK (not free) until the retry.
                dispatcher.notHanded(worker: worker, listener: listener.id, 1)
                refusedForNow(worker)
            case .closed:
                // Its channel is gone: out of rotation; its exit will follow.
                dispatcher.remove(worker: worker)
            }
        }
        return false
    }

    /// Sends `fd` (and, for a worker taking several per message, more accepted on `socket` while it
    /// has credits) on `worker`'s handoff channel. pml closes its copies at once (the message holds
    /// the connections until the worker reads it, and pml can read it back if the worker dies
    /// first), or keeps them until credited for a worker in `keepsCopies`.
    private func pass(_ fd: Int32, _ listener: AppListener, to worker: Int, from socket: Int32) -> Bool {
        batch[0] = fd
        var n = 1
        // Never past the bound on descriptors: `fd` is one already.
        let most = min(maxFDs[worker] ?? 1, batch.count, 1 + waitingBound.room(waiting: pendingCount, held: heldCount + 1))
        while n < most, socket >= 0, ask({ $0.credits(of: worker) }) > 0 {
            guard let more = UnixSocket.accept(socket, nonBlocking: false) else {
                batchFoundQueueEmpty = true
                break
            }
            acceptedThisTurn += 1
            _ = dispatcher.take(worker: worker, listener: listener.id)
            batch[n] = more
            n += 1
        }
        let result = passConnections(worker, UnsafeBufferPointer(rebasing: batch[0..<n]), listener)
        switch result {
        case .sent:
            let now = monotonicMs()
            let copies = keepsCopies.contains(worker)
            for i in 0..<n {
                // Never more than the window (the dispatcher counts credits); past it, as after a
                // take-over, nothing is recorded and no copy kept. Closing it now is cheap: the
                // message still holds the connection (the worker's last close later pays its
                // teardown, not pml).
                if held[worker]?.ring.push(copies ? batch[i] : -1, listener: listener.id, atMs: now) == true {
                    heldCount += 1
                    if copies { continue }
                }
                closeFD(batch[i])
            }
            // Credits only shrink here: only waiting ones can have to be read promptly again.
            if creditsWait.contains(worker) { paceCredits(worker) }
            if waitingBound.full(waiting: pendingCount, held: heldCount) { pauseAccepting() }
            return true
        case .full, .refused, .closed:
            // Not sent: their credits come back. Its socket is full: no more for it until it credits
            // some back; or the kernel refused the fds for now: until the retry; or its handoff
            // channel is gone: handoffClosed follows from the loop.
            dispatcher.untake(worker: worker, listener: listener.id, n)
            dispatcher.exhaust(worker: worker)
            if result == .refused { refusedForNow(worker) }
            // Its credits are what unblocks it: they cannot wait.
            if creditsWait.contains(worker) { paceCredits(worker) }
        }
        // The extra ones accepted for this message wait for another worker.
        for i in 1..<n { enqueue(batch[i], listener.id) }
        return false
    }

    /// The kernel refused `worker`'s last send for now: it gets nothing until a short retry (each
    /// refusal again would cost a sendmsg per connection for nothing), the others go on.
    private func refusedForNow(_ worker: Int) {
        // Said once a minute at most: under a sustained refusal this runs every retry.
        let now = monotonicMs()
        if now - lastRefusalLogMs >= 60_000 {
            lastRefusalLogMs = now
            logger.warning("the kernel refused to pass connections to worker \(worker) for now (too many descriptors in flight, or no buffers); trying again every \(Self.refusedRetryMs) ms")
        }
        refused.insert(worker)
        guard refusedRetry == nil else { return }
        refusedRetry = loop.schedule(after: Self.refusedRetryMs) { [unowned self] in
            self.refusedRetry = nil
            for w in self.refused {
                if self.ask({ $0.usesCredits(w) }) { self.dispatcher.unblock(worker: w) } else if self.inFlight[w] == nil { self.dispatcher.acknowledged(worker: w) }
            }
            self.refused.removeAll()
            self.drain()
        }
    }

    /// Hands waiting connections to workers that can take them, oldest first; what gone workers
    /// left unread is taken back as that makes room (bounded: each round fills the room it found).
    func drain() {
        repeat {
            for (id, queue) in pending where !queue.isEmpty {
                guard let listener = listeners[id] else { continue }
                var handed = 0
                while handed < queue.count, handOut(queue[handed].fd, listener) { handed += 1 }
                guard handed > 0 else { continue }
                // In place: no new array per drain (it runs after every ACK).
                pending[id]!.removeFirst(handed)
                pendingCount -= handed
            }
        } while !reclaiming.isEmpty && takeBackWhileRoom()
        for id in starved where ask({ $0.hasFreeWorker(for: id) }) && pending[id, default: []].isEmpty {
            starved.remove(id)
            if let l = listeners[id] { rewatch(l) }
        }
        resumeIfRoom()
        noteWaiting()
    }

    private func pauseAccepting() {
        guard !acceptingPaused else { return }
        acceptingPaused = true
        logger.warning("\(pendingCount) connections are waiting for a worker and \(heldCount) sent to workers are not credited back yet (at most \(waitingBound.bound) waiting, \(waitingBound.descriptors) in all, for a limit of \(openFileLimit()) open files); pausing accept")
        for l in listeners.values { rewatch(l) }
        readAllCredits()
    }

    /// Unread credits count as connections in flight toward `waitingBound`: left waiting (up to the
    /// next `expire`), they could keep every listener paused for a second; and while connections
    /// wait, they are what frees a worker. So `paceCredits` decides again for every waiting worker:
    /// the loop (level-triggered) reads what waits in the sockets of those now read promptly at its
    /// next turn, all at once. Not read here: this runs inside a send, and a credit drains the
    /// queue, which must not run within a drain.
    private func readAllCredits() {
        for worker in creditsWait { paceCredits(worker) }
    }

    /// Accepting resumes only once what gone workers left unread is all taken back: it came first.
    private func resumeIfRoom() {
        guard acceptingPaused, reclaiming.isEmpty, waitingBound.roomAgain(waiting: pendingCount, held: heldCount) else { return }
        acceptingPaused = false
        for l in listeners.values { rewatch(l) }
    }

    /// The one place that decides whether what pml accepts on for `l` (its socket, the slot sockets
    /// it accepts on) is in the loop: not while pml's own queue is full (paused, every listener),
    /// no worker serving it can take a connection (starved), it is held, or accept ran out of
    /// descriptors. Changes the loop's interest only where it differs.
    private func rewatch(_ l: AppListener) {
        let on = !acceptingPaused && !starved.contains(l.id) && l.holdTimer == nil && !l.outOfDescriptors
        if let h = l.handle, l.watched != on {
            l.watched = on
            loop.modify(h, events: on ? [.readable] : [])
        }
        for s in l.slots.values {
            let want = on && s.accepting
            guard let h = s.handle, s.watched != want else { continue }
            s.watched = want
            loop.modify(h, events: want ? [.readable] : [])
        }
    }

    private func scheduleExpiry() {
        // Unowned, not weak: deinit cancels the timer, so it never runs without the router; and a
        // weak reference would give the router a side table, which sends every retain and release
        // of it (one per accept turn) through the runtime's slow path.
        expiryTimer = loop.schedule(after: 1000) { [unowned self] in
            self.expire()
            self.scheduleExpiry()
        }
    }

    /// Closes connections that waited too long for a worker (bounded wait, not refusal at once),
    /// and pml's copies of handles not acknowledged in time.
    private func expire() {
        // What waits unread (`paceCredits`) is read first: nothing is judged on unread credits, and
        // garbage or a flood from an idle worker is seen within a second.
        for worker in creditsWait { catchUpCredits(worker) }
        let ackCutoff = monotonicMs() - Self.ackTimeoutMs
        for (worker, box) in held {
            let overdue = (box.ring.oldestMs ?? .max) < ackCutoff
            // The drain below may have ended this worker's record (its connections went elsewhere,
            // already uncounted): a stale box is not expired again.
            guard overdue || box.ring.due > 0, held[worker] === box else { continue }
            // pml's reclaim end keeps the worker's end open, so a worker that closed its end shows
            // no EOF and looks silent: asked here (handoffClosed follows if it did), and again at
            // each tick while what expired unread is still due, as it may close its end only later.
            if !keepsCopies.contains(worker), channelAbandoned(worker) { continue }
            guard overdue else { continue }
            // The worker has them (in its socket) or never will. Read ones (it credited after them)
            // lost their credit: it comes back. Unread ones keep theirs spent (a silent worker gets
            // nothing more) and their late credits are due, not for newer ones.
            let before = box.sent
            var (closed, returned) = box.ring.expire(before: ackCutoff, close: closeHeldCopy)
            if echoOverdue(worker) { returned += box.ring.forgiveDue() }
            heldCount -= before - box.sent
            if returned > 0 {
                dispatcher.returned(worker: worker, returned)
                drain()
            }
            let left = keepsCopies.contains(worker) ? "pml closed its copies" : "what it has not read stays in its socket until it reads or exits"
            logger.warning("worker \(worker) did not credit back \(closed) connection(s) within \(Self.ackTimeoutMs) ms; \(left)")
        }
        for (worker, f) in inFlight where f.since < ackCutoff {
            inFlight[worker] = nil
            closeFD(f.fd)
            silent.insert(worker)
            logger.warning("worker \(worker) did not acknowledge a connection within \(Self.ackTimeoutMs) ms; pml closed its copy and sends it no more until it answers")
        }
        let cutoff = monotonicMs() - Self.maxWaitMs
        for (id, queue) in pending {
            let (old, fresh) = (queue.filter { $0.since < cutoff }, queue.filter { $0.since >= cutoff })
            guard !old.isEmpty else { continue }
            old.forEach { closeFD($0.fd) }
            pendingCount -= old.count
            pending[id] = fresh
            logger.warning("closed \(old.count) connection(s) that waited \(Self.maxWaitMs) ms for a worker")
        }
        // What expired made room: for what gone workers left unread first, then for accepting.
        drain()
    }
}
