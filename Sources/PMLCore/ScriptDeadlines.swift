/// How long the supervisor waits on scripts, derived from the per-call CPU time budget of a Lua call.
public struct ScriptTimeouts: Sendable, Equatable {
    /// The CPU time cap of one Lua call (the count hook stops Lua code at it).
    public let callBudgetMs: Int

    public init(callBudgetMs: Int) {
        self.callBudgetMs = max(1, callBudgetMs)
    }

    /// A decision (restart, beforeReload, onMessage's reply, autoscale.rule, an app file) waits this
    /// long in wall time for its answer, then the default applies: what protects the apps. A
    /// little past one call's budget: a script that answers within its budget on a calm machine is
    /// heard, one that runs past it (or waits behind one, or for a busy CPU) is not.
    public var decisionMs: Int { callBudgetMs + 500 }

    /// Evaluating an app file (`pml start`, `pml reload`, a fresh state's) or loading a plugin
    /// waits this long: the user's request waits, no app does, and on a busy machine scripts get
    /// only the CPU the apps leave. As long as a call may last before it is taken for stuck.
    public var evaluationMs: Int { stuckAfterWallMs }

    /// A script thread that used more CPU than this during one call is inside a C function the
    /// count hook cannot interrupt (only C can run past the budget): it is abandoned and replaced.
    /// In CPU time, so that a state starved of CPU on a busy machine is not taken for a stuck one.
    public var stuckAfterMs: Int { callBudgetMs + 1000 }

    /// ... and one busy with one call this long in wall time, whatever CPU it used: a call that
    /// waits (no script call should block, but a deadlock must not lose the scripts for good).
    public var stuckAfterWallMs: Int { stuckAfterMs * 10 }

    /// Whether a call that has run `busyMs` (wall time) and used `cpuMs` of CPU so far is stuck.
    public func isStuck(busyMs: Int, cpuMs: Int) -> Bool {
        cpuMs > stuckAfterMs || busyMs > stuckAfterWallMs
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
