import Testing
@testable import PMLCore

/// The dispatcher against the one it replaced (one dictionary or set per table, looked up per
/// question), kept here as the model: the same random operations on both, every answer compared.
@Suite struct DispatcherModelTests {
    /// A fixed sequence (SplitMix64): a failure is the same on every run.
    struct Seeded: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    @Test func sameAnswersAsTheDictionaryModelOverRandomOperations() {
        let workers = Array(1...5), listeners = Array(0...2)
        for seed in 0..<200 {
            var rng = Seeded(state: UInt64(seed))
            var d = RoundRobinDispatcher(), m = ReferenceDispatcher()
            for step in 0..<300 {
                let w = workers.randomElement(using: &rng)!, l = listeners.randomElement(using: &rng)!
                let n = Int.random(in: -1...4, using: &rng)
                let context = "seed \(seed) step \(step)"
                switch Int.random(in: 0..<17, using: &rng) {
                case 0, 1: d.add(worker: w, listener: l); m.add(worker: w, listener: l)
                case 2: d.remove(worker: w, listener: l); m.remove(worker: w, listener: l)
                case 3: d.remove(worker: w); m.remove(worker: w)
                case 4: let on = Bool.random(using: &rng); d.setLeastBusy(on, listener: l); m.setLeastBusy(on, listener: l)
                case 5, 6, 7: #expect(d.next(for: l) == m.next(for: l), "\(context)")
                case 8: let window = Int.random(in: 1...4, using: &rng), out = Int.random(in: 0...5, using: &rng)
                    d.grant(worker: w, window: window, outstanding: out); m.grant(worker: w, window: window, outstanding: out)
                case 9: #expect(d.take(worker: w, listener: l) == m.take(worker: w, listener: l), "\(context)")
                case 10: d.returned(worker: w, n); m.returned(worker: w, n)
                case 11: d.untake(worker: w, listener: l, n); m.untake(worker: w, listener: l, n)
                case 12: d.notHanded(worker: w, listener: l, n); m.notHanded(worker: w, listener: l, n)
                case 13: if Bool.random(using: &rng) { d.exhaust(worker: w); m.exhaust(worker: w) } else { d.unblock(worker: w); m.unblock(worker: w) }
                case 14: d.forgetCredits(worker: w); m.forgetCredits(worker: w)
                case 15: d.acknowledged(worker: w); m.acknowledged(worker: w)
                default:
                    if Bool.random(using: &rng) {
                        d.report(worker: w, openConnections: n); m.report(worker: w, openConnections: n)
                    } else {
                        d.report(worker: w, closedConnections: n); m.report(worker: w, closedConnections: n)
                    }
                }
                #expect(d.rotation == m.rotation && d.awaitingAck == m.awaitingAck, "\(context)")
                for l in listeners {
                    #expect(d.hasFreeWorker(for: l) == m.hasFreeWorker(for: l), "\(context)")
                    #expect(d.onlyCredits(serving: l) == m.onlyCredits(serving: l), "\(context)")
                    #expect(d.onlyCredits(serving: l, minWindow: 3) == m.onlyCredits(serving: l, minWindow: 3), "\(context)")
                }
                for w in workers {
                    #expect(d.load(of: w) == m.load(of: w) && d.credits(of: w) == m.credits(of: w), "\(context)")
                    #expect(d.usesCredits(w) == m.usesCredits(w) && d.mostlyFree(w) == m.mostlyFree(w), "\(context)")
                    #expect([true, false].allSatisfy { d.creditsMayWait(w, connectionsWait: $0) == m.creditsMayWait(w, connectionsWait: $0) }, "\(context)")
                    #expect(listeners.allSatisfy { d.serves(worker: w, listener: $0) == m.serves(worker: w, listener: $0) }, "\(context)")
                }
            }
        }
    }
}

/// RoundRobinDispatcher as it was before its per-worker state moved into one slot per worker.
struct ReferenceDispatcher {
    var rotation: [Int] = []
    private var serving: [Int: Set<Int>] = [:]     // worker → listeners it serves
    private var cursor: [Int: Int] = [:]           // listener → index in rotation to try first
    var awaitingAck: Set<Int> = []
    private var leastBusy: Set<Int> = []           // listeners that go to the least busy worker
    private var handed: [Int: Int] = [:]
    private var closed: [Int: Int] = [:]
    private var window: [Int: Int] = [:]
    private var credits: [Int: Int] = [:]
    private var blocked: Set<Int> = []

    mutating func add(worker: Int, listener: Int) {
        if serving[worker] == nil { rotation.append(worker) }
        serving[worker, default: []].insert(listener)
    }

    mutating func remove(worker: Int, listener: Int) {
        serving[worker]?.remove(listener)
        if serving[worker]?.isEmpty == true { remove(worker: worker) }
    }

    mutating func remove(worker: Int) {
        guard let index = rotation.firstIndex(of: worker) else { return }
        rotation.remove(at: index)
        serving[worker] = nil
        awaitingAck.remove(worker)
        handed[worker] = nil
        closed[worker] = nil
        for (listener, c) in cursor where c > index { cursor[listener] = c - 1 }
    }

    func serves(worker: Int, listener: Int) -> Bool { serving[worker]?.contains(listener) == true }

    mutating func setLeastBusy(_ on: Bool, listener: Int) {
        if on { leastBusy.insert(listener) } else { leastBusy.remove(listener) }
    }

    mutating func report(worker: Int, openConnections: Int) {
        guard serving[worker] != nil else { return }
        closed[worker] = (handed[worker] ?? 0) - min(max(openConnections, 0), 1_000_000)
    }

    mutating func report(worker: Int, closedConnections: Int) {
        guard serving[worker] != nil else { return }
        closed[worker] = max(0, min(max(closedConnections, closed[worker] ?? 0), handed[worker] ?? 0))
    }

    func load(of worker: Int) -> Int { (handed[worker] ?? 0) - (closed[worker] ?? 0) }

    mutating func next(for listener: Int) -> Int? {
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

    func hasFreeWorker(for listener: Int) -> Bool {
        rotation.contains { serving[$0]?.contains(listener) == true && isFree($0) }
    }

    private func isFree(_ worker: Int) -> Bool {
        if let c = credits[worker] { return c > 0 && !blocked.contains(worker) }
        return !awaitingAck.contains(worker)
    }

    mutating func grant(worker: Int, window w: Int, outstanding: Int) {
        window[worker] = w
        credits[worker] = max(0, w - outstanding)
    }

    func usesCredits(_ worker: Int) -> Bool { credits[worker] != nil }

    func onlyCredits(serving listener: Int, minWindow: Int = 1) -> Bool {
        var any = false
        for w in rotation where serving[w]?.contains(listener) == true {
            guard credits[w] != nil, let win = window[w], win >= minWindow else { return false }
            any = true
        }
        return any
    }

    func credits(of worker: Int) -> Int { credits[worker] ?? 0 }

    func mostlyFree(_ worker: Int) -> Bool {
        guard let c = credits[worker], let w = window[worker], !blocked.contains(worker) else { return false }
        return 2 * c > w
    }

    func creditsMayWait(_ worker: Int, connectionsWait: Bool) -> Bool {
        guard let c = credits[worker], !blocked.contains(worker) else { return false }
        return c > 0 || !connectionsWait
    }

    mutating func take(worker: Int, listener: Int) -> Bool {
        guard let c = credits[worker], c > 0 else { return false }
        credits[worker] = c - 1
        if leastBusy.contains(listener) { handed[worker, default: 0] += 1 }
        return true
    }

    mutating func returned(worker: Int, _ n: Int) {
        guard let c = credits[worker], let w = window[worker] else { return }
        credits[worker] = min(w, c + max(0, n))
        blocked.remove(worker)
    }

    mutating func untake(worker: Int, listener: Int, _ n: Int) {
        if let c = credits[worker], let w = window[worker] { credits[worker] = min(w, c + max(0, n)) }
        notHanded(worker: worker, listener: listener, n)
    }

    mutating func notHanded(worker: Int, listener: Int, _ n: Int) {
        guard leastBusy.contains(listener), let h = handed[worker] else { return }
        handed[worker] = max(0, h - max(0, n))
        if let c = closed[worker], c > handed[worker]! { closed[worker] = handed[worker] }
    }

    mutating func exhaust(worker: Int) {
        if credits[worker] != nil { blocked.insert(worker) }
    }

    mutating func unblock(worker: Int) {
        blocked.remove(worker)
    }

    mutating func forgetCredits(worker: Int) {
        window[worker] = nil
        credits[worker] = nil
        blocked.remove(worker)
    }

    mutating func acknowledged(worker: Int) {
        awaitingAck.remove(worker)
    }
}
