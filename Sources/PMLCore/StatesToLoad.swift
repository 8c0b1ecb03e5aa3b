/// Script owners whose Lua state was lost (replaced while stuck) and whose scripts are not loaded
/// again yet, because no fresh thread could start then (the stuck-thread caps). The first thread
/// started for one later must load its scripts before anything runs there, or its apps would run
/// their hooks in an empty state. Pure bookkeeping: the caller starts threads and loads scripts.
public struct StatesToLoad<Owner: Hashable> {
    private var lost: Set<Owner> = []
    private var loading: Set<Owner> = []

    public init() {}

    /// `owner`'s state was lost; the caller now tries to load its scripts in a fresh one (`loaded`
    /// is called when that attempt ends, whether a thread could start or not).
    public mutating func lose(_ owner: Owner) {
        lost.insert(owner)
        loading.insert(owner)
    }

    public mutating func loaded(_ owner: Owner) { loading.remove(owner) }

    /// A thread was started for `owner`: true when its scripts must be loaded now (it was lost,
    /// and this is not the start made by the loading itself).
    public mutating func started(_ owner: Owner) -> Bool {
        lost.remove(owner) != nil && !loading.contains(owner)
    }

    /// Nobody needs `owner`'s scripts any more (its apps are gone, its plugin refused).
    public mutating func forget(_ owner: Owner) { lost.remove(owner) }
}
