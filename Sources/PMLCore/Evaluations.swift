/// Which evaluations of one app file still own the timers their top level started. Each
/// `pml start`/`pml reload` evaluates the file again in the same Lua state, and each app's hooks
/// close over the top level of the evaluation its table came from: that evaluation's timers run as
/// long as any of its tables is bound or may still be (apps started with `--only`, a `pml reload`
/// of one app and a resurrect leave apps of one file on different evaluations, each fed by its own
/// timers). An evaluation ends when its last table is released or replaced, and at once when it
/// handed out none (a file that failed). Pure bookkeeping: the caller owns the timers.
public struct Evaluations<Ref: Hashable> {
    private var refs: [Int: Set<Ref>] = [:]
    private var owner: [Ref: Int] = [:]
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

    /// `ref` was released, unbound or replaced by another table. When it was its evaluation's last, the result is that
    /// evaluation: its timers end.
    public mutating func dropped(_ ref: Ref) -> Int? {
        guard let id = owner.removeValue(forKey: ref) else { return nil }
        refs[id]?.remove(ref)
        guard refs[id]?.isEmpty == true else { return nil }
        refs[id] = nil
        return id
    }
}
