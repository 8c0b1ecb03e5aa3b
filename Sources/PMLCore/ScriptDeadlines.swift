/// How long the supervisor waits on scripts, derived from the per-call time budget of a Lua call.
public struct ScriptTimeouts: Sendable, Equatable {
    /// The wall-clock cap of one Lua call (the count hook stops Lua code at it).
    public let callBudgetMs: Int

    public init(callBudgetMs: Int) {
        self.callBudgetMs = max(1, callBudgetMs)
    }

    /// A decision (restart, beforeReload, onMessage's reply, autoscale.rule, an app file) waits this
    /// long for its answer, then the default applies. A little past one call's budget: a script
    /// that answers within its budget is heard, one that runs past it (or waits behind one) is not.
    public var decisionMs: Int { callBudgetMs + 500 }

    /// A script thread busy with one call longer than this is inside a C function the count hook
    /// cannot interrupt (only C can run past the budget): it is abandoned and replaced.
    public var stuckAfterMs: Int { callBudgetMs + 1000 }

    /// Whether a call that started at `busySince` is stuck at `now`.
    public func isStuck(busySince: Int, now: Int) -> Bool {
        now - busySince > stuckAfterMs
    }
}

/// Requests waiting for a script's answer, each with a deadline and the owner (script state) that
/// answers it. Pure bookkeeping: the caller supplies the clock and acts on what comes out.
public struct PendingAnswers<Payload, Owner: Hashable> {
    private var entries: [Int: (deadline: Int, owner: Owner, payload: Payload)] = [:]
    private var nextID = 1

    public init() {}

    /// Adds a request due at `deadline`; returns its id.
    public mutating func add(deadline: Int, owner: Owner, _ payload: Payload) -> Int {
        let id = nextID
        nextID += 1
        entries[id] = (deadline, owner, payload)
        return id
    }

    /// The request answered now: its payload, or nil when it expired or was dropped before.
    public mutating func answer(_ id: Int) -> Payload? {
        entries.removeValue(forKey: id)?.payload
    }

    /// Removes and returns the requests whose deadline is at or before `now`, oldest first.
    public mutating func expire(now: Int) -> [Payload] {
        take { $0.deadline <= now }
    }

    /// Removes and returns every request `owner` was to answer, oldest first (its state is gone).
    public mutating func drop(owner: Owner) -> [Payload] {
        drop { $0 == owner }
    }

    /// Removes and returns the requests whose owner matches, oldest first (what they were for is gone).
    public mutating func drop(where matches: (Owner) -> Bool) -> [Payload] {
        take { matches($0.owner) }
    }

    /// Whether `owner` has requests waiting.
    public func waits(on owner: Owner) -> Bool {
        waits { $0 == owner }
    }

    /// Whether a request whose owner matches is waiting.
    public func waits(where matches: (Owner) -> Bool) -> Bool {
        entries.values.contains { matches($0.owner) }
    }

    /// The owner of request `id`, if it still waits.
    public func owner(of id: Int) -> Owner? { entries[id]?.owner }

    /// The earliest deadline, if any request waits.
    public var nextDeadline: Int? { entries.values.map(\.deadline).min() }

    public var count: Int { entries.count }

    private mutating func take(where matches: ((deadline: Int, owner: Owner, payload: Payload)) -> Bool) -> [Payload] {
        let ids = entries.filter { matches($0.value) }.keys.sorted()
        return ids.map { entries.removeValue(forKey: $0)!.payload }
    }
}
