/// Chooses the worker for each accepted connection, per listener, over the workers serving it,
/// skipping any worker that has not yet acknowledged its last handle (Node's discipline: one
/// handle in flight per worker) or, on pml's native handoff channel, that has no credit left
/// (several in flight, up to the window it granted): strict round-robin, or (least-busy listeners) the worker with
/// the fewest open connections, ties in round-robin order. Pure bookkeeping; the daemon holds the fds.
public struct RoundRobinDispatcher: Sendable, Equatable {
    /// Workers in the order they joined the rotation.
    public private(set) var rotation: [Int] = []
    private var serving: [Int: Set<Int>] = [:]     // worker → listeners it serves
    private var cursor: [Int: Int] = [:]           // listener → index in rotation to try first
    public private(set) var awaitingAck: Set<Int> = []
    private var leastBusy: Set<Int> = []           // listeners that go to the least busy worker
    /// Per worker: connections handed to it, and how many of those it has said are closed.
    /// Open = handed − closed. A report on its way while pml hands over another connection only
    /// lags behind (the new one still counts); it never makes a busy worker look idle.
    private var handed: [Int: Int] = [:]
    private var closed: [Int: Int] = [:]
    /// Native handoff: per worker, the window it granted and the credits left (window − in flight).
    /// Kept apart from the rotation: a worker that leaves and rejoins keeps its channel.
    private var window: [Int: Int] = [:]
    private var credits: [Int: Int] = [:]
    /// Workers whose handoff socket was full: nothing more until they credit some back.
    private var blocked: Set<Int> = []

    public init() {}

    /// Puts `worker` in rotation for `listener` (idempotent).
    public mutating func add(worker: Int, listener: Int) {
        if serving[worker] == nil { rotation.append(worker) }
        serving[worker, default: []].insert(listener)
    }

    /// Stops sending `worker` connections of `listener`.
    public mutating func remove(worker: Int, listener: Int) {
        serving[worker]?.remove(listener)
        if serving[worker]?.isEmpty == true { remove(worker: worker) }
    }

    /// Takes `worker` out of rotation entirely (retiring, stopping, gone).
    public mutating func remove(worker: Int) {
        guard let index = rotation.firstIndex(of: worker) else { return }
        rotation.remove(at: index)
        serving[worker] = nil
        awaitingAck.remove(worker)
        handed[worker] = nil
        closed[worker] = nil
        for (listener, c) in cursor where c > index { cursor[listener] = c - 1 }
    }

    /// Whether `worker` serves `listener`.
    public func serves(worker: Int, listener: Int) -> Bool { serving[worker]?.contains(listener) == true }

    /// Connections of `listener` go to the least busy worker (true) or round-robin (false).
    public mutating func setLeastBusy(_ on: Bool, listener: Int) {
        if on { leastBusy.insert(listener) } else { leastBusy.remove(listener) }
    }

    /// A worker's own count of its open connections now (clamped to 0...1_000_000): a program's
    /// metric. It may hold connections pml never handed it; those count too.
    public mutating func report(worker: Int, openConnections: Int) {
        guard serving[worker] != nil else { return }
        closed[worker] = (handed[worker] ?? 0) - min(max(openConnections, 0), 1_000_000)
    }

    /// How many of the connections handed to it a worker has closed so far (pml's preload counts
    /// them); never goes back, never above what it was handed.
    public mutating func report(worker: Int, closedConnections: Int) {
        guard serving[worker] != nil else { return }
        closed[worker] = max(0, min(max(closedConnections, closed[worker] ?? 0), handed[worker] ?? 0))
    }

    /// Connections of `worker` that are open as far as pml knows.
    public func load(of worker: Int) -> Int { (handed[worker] ?? 0) - (closed[worker] ?? 0) }

    /// The worker the next connection of `listener` goes to, marked as awaiting its ACK;
    /// nil when every serving worker still has a handle in flight (or none serves it).
    public mutating func next(for listener: Int) -> Int? {
        guard !rotation.isEmpty else { return nil }
        let start = min(cursor[listener] ?? 0, rotation.count - 1)
        let byLoad = leastBusy.contains(listener)
        var best: (index: Int, load: Int)?
        for step in 0..<rotation.count {
            let index = (start + step) % rotation.count
            let worker = rotation[index]
            guard serving[worker]?.contains(listener) == true, isFree(worker) else { continue }
            let l = byLoad ? load(of: worker) : 0
            if best == nil || l < best!.load { best = (index, l) }
            if !byLoad || l == 0 { break } // round-robin takes the first; nobody is less busy than idle
        }
        guard let best else { return nil }
        let worker = rotation[best.index]
        if let c = credits[worker] { credits[worker] = c - 1 } else { awaitingAck.insert(worker) }
        if byLoad { handed[worker, default: 0] += 1 }
        cursor[listener] = (best.index + 1) % rotation.count
        return worker
    }

    /// Whether some worker serving `listener` could take a connection now.
    public func hasFreeWorker(for listener: Int) -> Bool {
        rotation.contains { serving[$0]?.contains(listener) == true && isFree($0) }
    }

    private func isFree(_ worker: Int) -> Bool {
        if let c = credits[worker] { return c > 0 && !blocked.contains(worker) }
        return !awaitingAck.contains(worker)
    }

    // MARK: native handoff credits

    /// The worker takes connections on its handoff channel, at most `window` in flight; `outstanding`
    /// of them are already (a grant again: the window changes, what is in flight stays counted).
    public mutating func grant(worker: Int, window w: Int, outstanding: Int) {
        window[worker] = w
        credits[worker] = max(0, w - outstanding)
    }

    /// The worker is on the handoff channel (credits), not on NODE_HANDLE ACKs.
    public func usesCredits(_ worker: Int) -> Bool { credits[worker] != nil }

    /// Whether some worker serves `listener` and every one that does is on the handoff channel.
    public func onlyCredits(serving listener: Int) -> Bool {
        var any = false
        for w in rotation where serving[w]?.contains(listener) == true {
            guard credits[w] != nil else { return false }
            any = true
        }
        return any
    }

    /// Credits left: connections pml may still send the worker before it credits some back.
    public func credits(of worker: Int) -> Int { credits[worker] ?? 0 }

    /// Whether more than half the worker's window is free (nothing in flight counts as free): its
    /// credits need not be read as they come. False for a worker not on credits, and for one whose
    /// channel is full (`exhaust`): only reading it shows room again.
    public func mostlyFree(_ worker: Int) -> Bool {
        guard let c = credits[worker], let w = window[worker], !blocked.contains(worker) else { return false }
        return 2 * c > w
    }

    /// One more connection of `listener` for a worker that was just chosen by `next` (a batch of
    /// several fds in one message); false if it has no credit left.
    public mutating func take(worker: Int, listener: Int) -> Bool {
        guard let c = credits[worker], c > 0 else { return false }
        credits[worker] = c - 1
        if leastBusy.contains(listener) { handed[worker, default: 0] += 1 }
        return true
    }

    /// The worker credited back `n` connections (never above its window: returns beyond what is in
    /// flight, as after a daemon's take-over, are ignored).
    public mutating func returned(worker: Int, _ n: Int) {
        guard let c = credits[worker], let w = window[worker] else { return }
        credits[worker] = min(w, c + max(0, n))
        blocked.remove(worker)
    }

    /// `n` connections of `listener` chosen for `worker` (by `next`/`take`) were not sent after all:
    /// their credits come back, and they do not count as handed.
    public mutating func untake(worker: Int, listener: Int, _ n: Int) {
        if let c = credits[worker], let w = window[worker] { credits[worker] = min(w, c + max(0, n)) }
        notHanded(worker: worker, listener: listener, n)
    }

    /// `n` connections of `listener` counted as handed to `worker` went to the line again (refused,
    /// left behind): they are not its load.
    public mutating func notHanded(worker: Int, listener: Int, _ n: Int) {
        guard leastBusy.contains(listener), let h = handed[worker] else { return }
        handed[worker] = max(0, h - max(0, n))
        if let c = closed[worker], c > handed[worker]! { closed[worker] = handed[worker] }
    }

    /// Sending failed (its channel is full): nothing more until it credits some back (its credits
    /// are kept: what is in flight is counted as it is).
    public mutating func exhaust(worker: Int) {
        if credits[worker] != nil { blocked.insert(worker) }
    }

    /// The worker read from its full socket without crediting any of this daemon's connections
    /// (after a take-over, credits for what the daemon before sent): there is room again, so sends
    /// resume with the credits it has (a send that fails blocks it again).
    public mutating func unblock(worker: Int) {
        blocked.remove(worker)
    }

    /// The worker's handoff channel is gone: back to NODE_HANDLE (one in flight, ACKed).
    public mutating func forgetCredits(worker: Int) {
        window[worker] = nil
        credits[worker] = nil
        blocked.remove(worker)
    }

    /// The worker acknowledged (or refused) its handle: it can take another.
    public mutating func acknowledged(worker: Int) {
        awaitingAck.remove(worker)
    }
}
