/// How many accepted connections the router may keep waiting for a worker. Each holds a
/// descriptor, so the bound follows the daemon's limit on open files: a reserve is kept for what
/// must never run short (the control socket and its clients, metrics and dashboard, log files,
/// workers' channels and pipes, the keeper link), and the waiting connections get at most half of
/// the rest. Past the bound pml stops accepting and the kernel's backlog holds the connections.
public struct WaitingConnections: Sendable, Equatable {
    /// Never more than this, however high the limit: the kernel's backlog is the better queue.
    public static let cap = 4096
    /// Descriptors kept for everything else (at most half the limit, for small limits).
    public static let reserve = 512

    /// Past this many waiting connections pml stops accepting (at least 1).
    public let bound: Int

    /// The bound for a soft limit of `fdLimit` open files (the daemon's, after raising it).
    public init(fdLimit: Int) {
        let limit = max(0, fdLimit)
        let usable = limit - min(Self.reserve, limit / 2)
        bound = max(1, min(Self.cap, usable / 2))
    }

    /// Whether `count` waiting connections are too many: stop accepting.
    public func full(_ count: Int) -> Bool { count >= bound }

    /// Whether accepting may start again after a pause: the queue went down to half the bound, so
    /// a queue at the edge does not flip accepting on and off with each connection.
    public func roomAgain(_ count: Int) -> Bool { count <= bound / 2 }
}
