/// Which evaluations of one app file still own the timers their top level started. Each
/// `pml start`/`pml reload` evaluates the file again in the same Lua state: the timers of the
/// evaluation whose tables the apps use run, older ones end when a newer evaluation's table is
/// bound, and an evaluation whose tables all went unused (a refused start, a rolled-back or vetoed
/// reload, a file that failed) ends at once. Pure bookkeeping: the caller owns the timers.
public struct Evaluations<Ref: Hashable> {
    private var refs: [Int: Set<Ref>] = [:]
    private var owner: [Ref: Int] = [:]
    private var latestBound = 0
    private var next = 1

    public init() {}

    /// A new evaluation begins: timers its top level starts carry this id.
    public mutating func begin() -> Int {
        defer { next += 1 }
        return next
    }

    /// Evaluation `id` ended handing out `tables`; true when it is already over (it failed or
    /// returned no table): its timers end now.
    public mutating func finished(_ id: Int, tables: [Ref]) -> Bool {
        guard !tables.isEmpty else { return true }
        refs[id] = Set(tables)
        for r in tables { owner[r] = id }
        return false
    }

    /// `ref` was bound to an app. When its evaluation is newer than any bound before, the timers of
    /// every older evaluation end: the result is that evaluation (end those below it).
    public mutating func bound(_ ref: Ref) -> Int? {
        guard let id = owner[ref], id > latestBound else { return nil }
        latestBound = id
        return id
    }

    /// `ref` was released or unbound. When it was its evaluation's last, the result is that
    /// evaluation: its timers end.
    public mutating func dropped(_ ref: Ref) -> Int? {
        guard let id = owner.removeValue(forKey: ref) else { return nil }
        refs[id]?.remove(ref)
        guard refs[id]?.isEmpty == true else { return nil }
        refs[id] = nil
        return id
    }
}
