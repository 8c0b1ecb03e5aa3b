/// Chooses the worker for each accepted connection, per listener, over the workers serving it,
/// skipping any worker that has not yet acknowledged its last handle (Node's discipline: one
/// handle in flight per worker) or, on pml's native handoff channel, that has no credit left
/// (several in flight, up to the window it granted): strict round-robin, or (least-busy listeners) the worker with
/// the fewest open connections, ties in round-robin order. Pure bookkeeping; the daemon holds the fds.
public struct RoundRobinDispatcher: Sendable, Equatable {
    /// One worker's state, kept in `states` at its slot: the dispatcher's questions per connection
    /// look a worker up once by id at most (the rotation holds slots), instead of once per table.
    private struct WorkerState: Sendable, Equatable {
        let id: Int
        /// Listeners it serves (an app's few addresses); empty: not in the rotation.
        var serving: [Int] = []
        var awaitingAck = false
        /// Connections handed to it, and how many of those it has said are closed.
        /// Open = handed − closed. A report on its way while pml hands over another connection only
        /// lags behind (the new one still counts); it never makes a busy worker look idle.
        var handed = 0
        var closed = 0
        /// Native handoff: the window it granted (nil: not on credits) and the credits left
        /// (window − in flight). Kept apart from the rotation: a worker that leaves and rejoins keeps its channel.
        var window: Int?
        var credits = 0
        /// Its handoff socket was full: nothing more until it credits some back.
        var blocked = false

        init(id: Int) { self.id = id }

        var isFree: Bool { window != nil ? credits > 0 && !blocked : !awaitingAck }
    }

    /// Per listener: the index in the rotation to try first, and whether it goes to the least busy worker.
    private struct ListenerState: Sendable, Equatable {
        var cursor = 0
        var leastBusy = false
    }

    private var states: [WorkerState] = []
    private var slots: [Int: Int] = [:]            // worker → its index in `states`
    private var freeSlots: [Int] = []
    private var order: [Int] = []                  // the rotation, as slots
    private var listeners: [Int: ListenerState] = [:]

    public init() {}

    /// Workers in the order they joined the rotation.
    public var rotation: [Int] { order.map { states[$0].id } }

    /// Workers whose NODE_HANDLE has not been acknowledged yet.
    public var awaitingAck: Set<Int> { Set(order.lazy.filter { self.states[$0].awaitingAck }.map { self.states[$0].id }) }

    /// `worker`'s slot, made if it has none.
    private mutating func slot(_ worker: Int) -> Int {
        if let s = slots[worker] { return s }
        let s: Int
        if let free = freeSlots.popLast() {
            s = free
            states[s] = WorkerState(id: worker)
        } else {
            s = states.count
            states.append(WorkerState(id: worker))
        }
        slots[worker] = s
        return s
    }

    /// Frees slot `s` once nothing is kept for it (out of the rotation, not on credits, no count).
    private mutating func release(_ s: Int) {
        let w = states[s]
        guard w.serving.isEmpty, w.window == nil, !w.awaitingAck, w.handed == 0, w.closed == 0 else { return }
        slots[states[s].id] = nil
        freeSlots.append(s)
    }

    /// Puts `worker` in rotation for `listener` (idempotent).
    public mutating func add(worker: Int, listener: Int) {
        let s = slot(worker)
        if states[s].serving.isEmpty { order.append(s) }
        if !states[s].serving.contains(listener) { states[s].serving.append(listener) }
    }

    /// Stops sending `worker` connections of `listener`.
    public mutating func remove(worker: Int, listener: Int) {
        guard let s = slots[worker], let i = states[s].serving.firstIndex(of: listener) else { return }
        states[s].serving.remove(at: i)
        if states[s].serving.isEmpty { takeOut(s) }
    }

    /// Takes `worker` out of rotation entirely (retiring, stopping, gone).
    public mutating func remove(worker: Int) {
        guard let s = slots[worker], !states[s].serving.isEmpty else { return }
        takeOut(s)
    }

    /// Takes slot `s` out of the rotation: it forgets what it served and its counts, not its credits.
    private mutating func takeOut(_ s: Int) {
        guard let index = order.firstIndex(of: s) else { return }
        order.remove(at: index)
        states[s].serving = []
        states[s].awaitingAck = false
        states[s].handed = 0
        states[s].closed = 0
        for (listener, l) in listeners where l.cursor > index { listeners[listener]!.cursor = l.cursor - 1 }
        release(s)
    }

    /// Whether `worker` serves `listener`.
    public func serves(worker: Int, listener: Int) -> Bool { slots[worker].map { states[$0].serving.contains(listener) } ?? false }

    /// Connections of `listener` go to the least busy worker (true) or round-robin (false).
    public mutating func setLeastBusy(_ on: Bool, listener: Int) {
        listeners[listener, default: ListenerState()].leastBusy = on
    }

    /// A worker's own count of its open connections now (clamped to 0...1_000_000): a program's
    /// metric. It may hold connections pml never handed it; those count too.
    public mutating func report(worker: Int, openConnections: Int) {
        guard let s = slots[worker], !states[s].serving.isEmpty else { return }
        states[s].closed = states[s].handed - min(max(openConnections, 0), 1_000_000)
    }

    /// How many of the connections handed to it a worker has closed so far (pml's preload counts
    /// them); never goes back, never above what it was handed.
    public mutating func report(worker: Int, closedConnections: Int) {
        guard let s = slots[worker], !states[s].serving.isEmpty else { return }
        states[s].closed = max(0, min(max(closedConnections, states[s].closed), states[s].handed))
    }

    /// Connections of `worker` that are open as far as pml knows.
    public func load(of worker: Int) -> Int { slots[worker].map { states[$0].handed - states[$0].closed } ?? 0 }

    /// The worker the next connection of `listener` goes to, marked as awaiting its ACK;
    /// nil when every serving worker still has a handle in flight (or none serves it).
    public mutating func next(for listener: Int) -> Int? {
        guard !order.isEmpty else { return nil }
        // One lookup of the listener, read here and written back below.
        let li = listeners.index(forKey: listener)
        let l = li.map { listeners.values[$0] } ?? ListenerState()
        let start = min(l.cursor, order.count - 1)
        var best: (index: Int, load: Int)?
        for step in 0..<order.count {
            let index = (start + step) % order.count
            let s = order[index]
            guard states[s].serving.contains(listener), states[s].isFree else { continue }
            let load = l.leastBusy ? states[s].handed - states[s].closed : 0
            if best == nil || load < best!.load { best = (index, load) }
            if !l.leastBusy || load == 0 { break } // round-robin takes the first; nobody is less busy than idle
        }
        guard let best else { return nil }
        let s = order[best.index]
        if states[s].window != nil { states[s].credits -= 1 } else { states[s].awaitingAck = true }
        if l.leastBusy { states[s].handed += 1 }
        let cursor = (best.index + 1) % order.count
        if let li { listeners.values[li].cursor = cursor } else { listeners[listener] = ListenerState(cursor: cursor) }
        return states[s].id
    }

    /// Whether some worker serving `listener` could take a connection now.
    public func hasFreeWorker(for listener: Int) -> Bool {
        order.contains { states[$0].serving.contains(listener) && states[$0].isFree }
    }

    private func leastBusy(_ listener: Int) -> Bool { listeners[listener]?.leastBusy ?? false }

    // MARK: native handoff credits

    /// The worker takes connections on its handoff channel, at most `window` in flight; `outstanding`
    /// of them are already (a grant again: the window changes, what is in flight stays counted).
    public mutating func grant(worker: Int, window w: Int, outstanding: Int) {
        let s = slot(worker)
        states[s].window = w
        states[s].credits = max(0, w - outstanding)
    }

    /// The worker is on the handoff channel (credits), not on NODE_HANDLE ACKs.
    public func usesCredits(_ worker: Int) -> Bool { slots[worker].map { states[$0].window != nil } ?? false }

    /// Whether some worker serves `listener` and every one that does is on the handoff channel,
    /// with a window of `minWindow` or more.
    public func onlyCredits(serving listener: Int, minWindow: Int = 1) -> Bool {
        var any = false
        for s in order where states[s].serving.contains(listener) {
            guard let w = states[s].window, w >= minWindow else { return false }
            any = true
        }
        return any
    }

    /// Credits left: connections pml may still send the worker before it credits some back.
    public func credits(of worker: Int) -> Int { slots[worker].map { states[$0].credits } ?? 0 }

    /// Whether more than half the worker's window is free (nothing in flight counts as free): its
    /// unread credits need not be caught up with before pml sends it more. False for a worker not
    /// on credits, and for one whose channel is full (`exhaust`): only reading it shows room again.
    public func mostlyFree(_ worker: Int) -> Bool {
        guard let s = slots[worker], let w = states[s].window, !states[s].blocked else { return false }
        return 2 * states[s].credits > w
    }

    /// Whether the worker's credits may wait unread in its socket (pml catches up with them before
    /// it needs them): it is on credits, its channel is not full (only a read shows room again), and
    /// it has credits left or no connection waits for a worker (`connectionsWait` false: the next
    /// accept turn reads them first). Otherwise its credits are what lets the waiting connections go.
    public func creditsMayWait(_ worker: Int, connectionsWait: Bool) -> Bool {
        guard let s = slots[worker], states[s].window != nil, !states[s].blocked else { return false }
        return states[s].credits > 0 || !connectionsWait
    }

    /// One more connection of `listener` for a worker that was just chosen by `next` (a batch of
    /// several fds in one message); false if it has no credit left.
    public mutating func take(worker: Int, listener: Int) -> Bool {
        guard let s = slots[worker], states[s].window != nil, states[s].credits > 0 else { return false }
        states[s].credits -= 1
        if leastBusy(listener) { states[s].handed += 1 }
        return true
    }

    /// The worker credited back `n` connections (never above its window: returns beyond what is in
    /// flight, as after a daemon's take-over, are ignored).
    public mutating func returned(worker: Int, _ n: Int) {
        guard let s = slots[worker], let w = states[s].window else { return }
        states[s].credits = min(w, states[s].credits + max(0, n))
        states[s].blocked = false
    }

    /// `n` connections of `listener` chosen for `worker` (by `next`/`take`) were not sent after all:
    /// their credits come back, and they do not count as handed.
    public mutating func untake(worker: Int, listener: Int, _ n: Int) {
        if let s = slots[worker], let w = states[s].window { states[s].credits = min(w, states[s].credits + max(0, n)) }
        notHanded(worker: worker, listener: listener, n)
    }

    /// `n` connections of `listener` counted as handed to `worker` went to the line again (refused,
    /// left behind): they are not its load.
    public mutating func notHanded(worker: Int, listener: Int, _ n: Int) {
        guard leastBusy(listener), let s = slots[worker] else { return }
        states[s].handed = max(0, states[s].handed - max(0, n))
        states[s].closed = min(states[s].closed, states[s].handed)
    }

    /// Sending failed (its channel is full): nothing more until it credits some back (its credits
    /// are kept: what is in flight is counted as it is).
    public mutating func exhaust(worker: Int) {
        if let s = slots[worker], states[s].window != nil { states[s].blocked = true }
    }

    /// The worker read from its full socket without crediting any of this daemon's connections
    /// (after a take-over, credits for what the daemon before sent): there is room again, so sends
    /// resume with the credits it has (a send that fails blocks it again).
    public mutating func unblock(worker: Int) {
        if let s = slots[worker] { states[s].blocked = false }
    }

    /// The worker's handoff channel is gone: back to NODE_HANDLE (one in flight, ACKed).
    public mutating func forgetCredits(worker: Int) {
        guard let s = slots[worker] else { return }
        states[s].window = nil
        states[s].credits = 0
        states[s].blocked = false
        release(s)
    }

    /// The worker acknowledged (or refused) its handle: it can take another.
    public mutating func acknowledged(worker: Int) {
        if let s = slots[worker] { states[s].awaitingAck = false }
    }
}
