/// The slot bookkeeping of a `reuseport` app: slot i is one SO_REUSEPORT socket per listen
/// address, given to the worker with instance i (and to its replacement on a reload). pml holds a
/// copy of every slot socket and accepts on it itself while no worker serves it, so nothing queued
/// there is lost. Pure decisions: which slots to bind, which pml accepts on, which to close.
public struct ReusePortSlots: Sendable, Equatable {
    /// Slots the app wants (its instance count).
    public private(set) var size = 0
    /// Slots with sockets.
    public private(set) var bound: Set<Int> = []
    /// Live processes that inherited the slot's socket (they keep its queue alive as pml does).
    private var holders: [Int: Set<Int>] = [:]
    /// Holders that accept on it now.
    private var servers: [Int: Set<Int>] = [:]
    private var slotOf: [Int: Int] = [:]            // worker → slot

    public init() {}

    /// The app now wants `n` slots. Returns the slots to bind now; slots beyond `n` are no longer
    /// given to new workers, and close once drained (see `closable`).
    public mutating func resize(to n: Int) -> [Int] {
        size = max(0, n)
        return (0..<size).filter { !bound.contains($0) }
    }

    /// The sockets of `slot` exist now.
    public mutating func didBind(_ slot: Int) { bound.insert(slot) }

    /// `worker` was spawned holding `slot`'s sockets.
    public mutating func spawned(worker: Int, slot: Int) {
        if let old = slotOf[worker] { forget(worker, from: old) }
        slotOf[worker] = slot
        holders[slot, default: []].insert(worker)
    }

    /// `worker` accepts on its slot's sockets now (it is ready / listening).
    public mutating func serving(worker: Int) {
        guard let slot = slotOf[worker] else { return }
        servers[slot, default: []].insert(worker)
    }

    /// `worker` no longer accepts (retiring, stopping, closed its server), but may still hold the socket.
    public mutating func notServing(worker: Int) {
        guard let slot = slotOf[worker] else { return }
        servers[slot]?.remove(worker)
    }

    /// `worker`'s process is gone.
    public mutating func exited(worker: Int) {
        guard let slot = slotOf.removeValue(forKey: worker) else { return }
        forget(worker, from: slot)
    }

    private mutating func forget(_ worker: Int, from slot: Int) {
        holders[slot]?.remove(worker)
        servers[slot]?.remove(worker)
        if holders[slot]?.isEmpty == true { holders[slot] = nil }
        if servers[slot]?.isEmpty == true { servers[slot] = nil }
    }

    /// Whether `worker` accepts on its slot now.
    public func serves(worker: Int) -> Bool {
        slotOf[worker].map { servers[$0]?.contains(worker) == true } ?? false
    }

    /// The slot a worker holds, if any.
    public func slot(of worker: Int) -> Int? { slotOf[worker] }

    /// Whether pml must accept on `slot` itself: it has sockets and either no worker serves it
    /// (dead, restarting, not listening yet) or it is being removed (its queue drains into the others).
    public func pmlAccepts(_ slot: Int) -> Bool {
        bound.contains(slot) && (slot >= size || servers[slot]?.isEmpty != false)
    }

    /// Bound slots pml accepts on, in order.
    public var pmlAccepting: [Int] { bound.sorted().filter(pmlAccepts) }

    /// Removed slots that no process holds any more: pml drains what is queued and closes them.
    public var closable: [Int] { bound.sorted().filter { $0 >= size && holders[$0] == nil } }

    /// Its sockets are closed.
    public mutating func didClose(_ slot: Int) { bound.remove(slot) }

    /// Workers holding `slot`'s sockets.
    public func holders(of slot: Int) -> Set<Int> { holders[slot] ?? [] }
}
