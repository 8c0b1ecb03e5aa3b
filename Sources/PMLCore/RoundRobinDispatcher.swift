/// Chooses the worker for each accepted connection: strict round-robin, per listener, over the
/// workers serving it, skipping any worker that has not yet acknowledged its last handle
/// (Node's discipline: one handle in flight per worker). Pure bookkeeping; the daemon holds the fds.
public struct RoundRobinDispatcher: Sendable, Equatable {
    /// Workers in the order they joined the rotation.
    public private(set) var rotation: [Int] = []
    private var serving: [Int: Set<Int>] = [:]     // worker → listeners it serves
    private var cursor: [Int: Int] = [:]           // listener → index in rotation to try first
    public private(set) var awaitingAck: Set<Int> = []

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
        for (listener, c) in cursor where c > index { cursor[listener] = c - 1 }
    }

    /// Whether `worker` serves `listener`.
    public func serves(worker: Int, listener: Int) -> Bool { serving[worker]?.contains(listener) == true }

    /// The worker the next connection of `listener` goes to, marked as awaiting its ACK;
    /// nil when every serving worker still has a handle in flight (or none serves it).
    public mutating func next(for listener: Int) -> Int? {
        guard !rotation.isEmpty else { return nil }
        let start = min(cursor[listener] ?? 0, rotation.count - 1)
        for step in 0..<rotation.count {
            let index = (start + step) % rotation.count
            let worker = rotation[index]
            guard serving[worker]?.contains(listener) == true, !awaitingAck.contains(worker) else { continue }
            awaitingAck.insert(worker)
            cursor[listener] = (index + 1) % rotation.count
            return worker
        }
        return nil
    }

    /// The worker acknowledged (or refused) its handle: it can take another.
    public mutating func acknowledged(worker: Int) {
        awaitingAck.remove(worker)
    }
}
