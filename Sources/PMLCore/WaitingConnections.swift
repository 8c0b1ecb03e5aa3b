/// How many connections the router may hold descriptors of: those accepted and waiting for a
/// worker, and pml's copies of those sent on a worker's native handoff channel and not credited
/// back yet (up to a window per worker). Each holds a descriptor, so the bounds follow the
/// daemon's limit on open files: a reserve is kept for what must never run short (the control
/// socket and its clients, metrics and dashboard, log files, workers' channels and pipes, the
/// keeper link), and these connections get at most half of the rest. Past a bound pml stops
/// accepting and the kernel's backlog holds the connections.
public struct WaitingConnections: Sendable, Equatable {
    /// Never more waiting than this, however high the limit: the kernel's backlog is the better queue.
    public static let cap = 4096
    /// Descriptors kept for everything else (at most half the limit, for small limits).
    public static let reserve = 512

    /// Past this many waiting connections pml stops accepting (at least 1).
    public let bound: Int
    /// Past this many descriptors of connections in all, waiting and held (pml's copies of
    /// connections a worker has not credited back), pml stops accepting too (at least 1). Not
    /// capped: held copies are bounded by the workers' windows, not by a queue.
    public let descriptors: Int

    /// The bounds for a soft limit of `fdLimit` open files (the daemon's, after raising it).
    public init(fdLimit: Int) {
        let limit = max(0, fdLimit)
        let usable = limit - min(Self.reserve, limit / 2)
        descriptors = max(1, usable / 2)
        bound = min(Self.cap, descriptors)
    }

    /// Whether `waiting` connections in pml's queue and `held` copies on handoff channels are too
    /// many: stop accepting.
    public func full(waiting: Int, held: Int) -> Bool { room(waiting: waiting, held: held) == 0 }

    /// How many more connections may be accepted now (0 when full).
    public func room(waiting: Int, held: Int) -> Int {
        max(0, min(bound - waiting, descriptors - waiting - held))
    }

    /// Whether accepting may start again after a pause: both went down to half their bound, so a
    /// count at the edge does not flip accepting on and off with each connection.
    public func roomAgain(waiting: Int, held: Int) -> Bool {
        waiting <= bound / 2 && waiting + held <= descriptors / 2
    }
}
