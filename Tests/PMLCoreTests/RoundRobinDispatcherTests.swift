import Testing
@testable import PMLCore

@Suite struct RoundRobinDispatcherTests {
    func dispatcher(_ workers: [Int], listener: Int = 0) -> RoundRobinDispatcher {
        var d = RoundRobinDispatcher()
        for w in workers { d.add(worker: w, listener: listener) }
        return d
    }

    @Test func sequentialConnectionsAreExactlyEven() {
        var d = dispatcher([10, 11, 12, 13])
        var served: [Int: Int] = [:]
        for _ in 0..<100 {
            let w = d.next(for: 0)!
            served[w, default: 0] += 1
            d.acknowledged(worker: w)
        }
        #expect(served == [10: 25, 11: 25, 12: 25, 13: 25])
    }

    @Test func orderIsRoundRobin() {
        var d = dispatcher([1, 2, 3])
        var order: [Int] = []
        for _ in 0..<6 {
            let w = d.next(for: 0)!
            order.append(w)
            d.acknowledged(worker: w)
        }
        #expect(order == [1, 2, 3, 1, 2, 3])
    }

    @Test func oneHandleInFlightPerWorker() {
        var d = dispatcher([1, 2])
        #expect(d.next(for: 0) == 1)
        #expect(d.next(for: 0) == 2)
        #expect(d.next(for: 0) == nil, "both await their ACK")
        d.acknowledged(worker: 2)
        #expect(d.next(for: 0) == 2)
        d.acknowledged(worker: 1)
        #expect(d.next(for: 0) == 1)
    }

    @Test func removedWorkersAreSkippedAndCursorStaysFair() {
        var d = dispatcher([1, 2, 3])
        #expect(d.next(for: 0) == 1); d.acknowledged(worker: 1)
        #expect(d.next(for: 0) == 2); d.acknowledged(worker: 2)
        d.remove(worker: 1)
        #expect(d.next(for: 0) == 3); d.acknowledged(worker: 3)
        #expect(d.next(for: 0) == 2); d.acknowledged(worker: 2)
        d.remove(worker: 2)
        d.remove(worker: 3)
        #expect(d.next(for: 0) == nil)
        #expect(d.rotation.isEmpty)
    }

    @Test func removingAWorkerClearsItsPendingAck() {
        var d = dispatcher([1])
        #expect(d.next(for: 0) == 1)
        d.remove(worker: 1)
        #expect(d.awaitingAck.isEmpty)
        d.add(worker: 1, listener: 0)
        #expect(d.next(for: 0) == 1)
    }

    @Test func listenersHaveTheirOwnRotation() {
        var d = RoundRobinDispatcher()
        d.add(worker: 1, listener: 0)
        d.add(worker: 2, listener: 0)
        d.add(worker: 2, listener: 1)
        #expect(d.next(for: 1) == 2); d.acknowledged(worker: 2)
        #expect(d.next(for: 1) == 2); d.acknowledged(worker: 2)
        #expect(d.next(for: 0) == 1); d.acknowledged(worker: 1)
        #expect(d.next(for: 0) == 2); d.acknowledged(worker: 2)
        #expect(d.next(for: 2) == nil)
        d.remove(worker: 2, listener: 1)
        #expect(d.serves(worker: 2, listener: 0))
        #expect(!d.serves(worker: 2, listener: 1))
        d.remove(worker: 2, listener: 0)
        #expect(d.rotation == [1])
    }

    @Test func newWorkersJoinTheRotation() {
        var d = dispatcher([1, 2])
        #expect(d.next(for: 0) == 1); d.acknowledged(worker: 1)
        d.add(worker: 3, listener: 0)
        #expect(d.next(for: 0) == 2); d.acknowledged(worker: 2)
        #expect(d.next(for: 0) == 3); d.acknowledged(worker: 3)
        #expect(d.next(for: 0) == 1)
    }
}

@Suite struct LeastBusyDispatcherTests {
    func dispatcher(_ workers: [Int]) -> RoundRobinDispatcher {
        var d = RoundRobinDispatcher()
        for w in workers { d.add(worker: w, listener: 0) }
        d.setLeastBusy(true, listener: 0)
        return d
    }

    /// Hands `n` connections to `worker` (each acknowledged), whatever the others' loads.
    func give(_ d: inout RoundRobinDispatcher, _ worker: Int, _ n: Int) {
        for _ in 0..<n {
            // Make `worker` the only candidate: everyone else awaits an ACK for a moment.
            let others = d.rotation.filter { $0 != worker }
            var held: [Int] = []
            while let w = d.next(for: 0), w != worker { held.append(w) }
            d.acknowledged(worker: worker)
            for w in held { d.acknowledged(worker: w) }
            #expect(Set(held).isSubset(of: Set(others)))
        }
    }

    /// Every combination of 0...3 open connections on 3 workers: the choice has the fewest.
    @Test func alwaysTheLeastLoadedWorker() {
        for a in 0...3 { for b in 0...3 { for c in 0...3 {
            var d = dispatcher([1, 2, 3])
            for w in [1, 2, 3] { give(&d, w, 3) }
            for (w, n) in [(1, a), (2, b), (3, c)] { d.report(worker: w, openConnections: n) }
            let loads = [1: d.load(of: 1), 2: d.load(of: 2), 3: d.load(of: 3)]
            #expect(loads == [1: a, 2: b, 3: c])
            let w = d.next(for: 0)!
            #expect(loads[w] == [a, b, c].min(), "loads \(loads) chose \(w)")
            #expect(d.load(of: w) == loads[w]! + 1, "a handed connection counts at once")
        } } }
    }

    @Test func tiesGoRoundRobin() {
        var d = dispatcher([1, 2, 3])
        var order: [Int] = []
        for i in 1...6 {
            let w = d.next(for: 0)!
            order.append(w)
            d.acknowledged(worker: w)
            d.report(worker: w, closedConnections: (i + 2) / 3) // served and closed at once
        }
        #expect(order == [1, 2, 3, 1, 2, 3])
    }

    @Test func aStaleReportNeverMakesABusyWorkerLookIdle() {
        var d = dispatcher([1, 2])
        #expect(d.next(for: 0) == 1); d.acknowledged(worker: 1)   // a slow request on 1
        #expect(d.next(for: 0) == 2); d.acknowledged(worker: 2)
        d.report(worker: 2, closedConnections: 1)
        // 1 closed nothing; a report sent before the slow one arrived says so: still 1 open.
        d.report(worker: 1, closedConnections: 0)
        for _ in 0..<5 {
            #expect(d.next(for: 0) == 2, "the idle worker gets it")
            d.acknowledged(worker: 2)
            d.report(worker: 2, closedConnections: d.load(of: 2) == 1 ? 99 : 0) // clamped to what it was handed
        }
        #expect(d.load(of: 1) == 1 && d.load(of: 2) == 0)
    }

    @Test func closedCountsNeverGoBackNorExceedWhatWasHanded() {
        var d = dispatcher([1])
        for _ in 0..<3 { _ = d.next(for: 0); d.acknowledged(worker: 1) }
        d.report(worker: 1, closedConnections: 2)
        d.report(worker: 1, closedConnections: 1)
        #expect(d.load(of: 1) == 1)
        d.report(worker: 1, closedConnections: Int.max)
        #expect(d.load(of: 1) == 0)
        d.report(worker: 1, openConnections: -4)
        #expect(d.load(of: 1) == 0)
        d.report(worker: 1, openConnections: Int.max)
        #expect(d.load(of: 1) == 1_000_000, "a program's own count, clamped")
        d.report(worker: 1, openConnections: 7)
        _ = d.next(for: 0)
        #expect(d.load(of: 1) == 8, "its count plus what was handed since")
        d.report(worker: 99, closedConnections: 3)
        #expect(d.load(of: 99) == 0)
    }

    @Test func aWorkerAwaitingItsAckIsSkippedEvenIfIdle() {
        var d = dispatcher([1, 2])
        give(&d, 2, 4)
        #expect(d.next(for: 0) == 1)
        #expect(d.next(for: 0) == 2, "1 awaits its ACK")
        #expect(d.next(for: 0) == nil)
    }

    @Test func removedWorkersForgetTheirCounts() {
        var d = dispatcher([1, 2])
        give(&d, 1, 2)
        d.remove(worker: 1)
        d.add(worker: 1, listener: 0)
        #expect(d.load(of: 1) == 0)
    }

    @Test func roundRobinListenersIgnoreLoad() {
        var d = dispatcher([1, 2])
        d.setLeastBusy(false, listener: 0)
        #expect(d.next(for: 0) == 1); d.acknowledged(worker: 1)
        #expect(d.next(for: 0) == 2); d.acknowledged(worker: 2)
        #expect(d.next(for: 0) == 1)
        #expect(d.load(of: 1) == 0, "rr keeps no counts")
    }
}

@Suite struct ReusePortSlotsTests {
    @Test func startBindsEverySlotAndPMLAcceptsUntilWorkersServe() {
        var s = ReusePortSlots()
        #expect(s.resize(to: 3) == [0, 1, 2])
        for i in 0..<3 { s.didBind(i) }
        #expect(s.pmlAccepting == [0, 1, 2], "nobody serves yet")
        for i in 0..<3 { s.spawned(worker: 10 + i, slot: i) }
        #expect(s.pmlAccepting == [0, 1, 2], "spawned is not serving")
        s.serving(worker: 10); s.serving(worker: 12)
        #expect(s.pmlAccepting == [1])
        s.serving(worker: 11)
        #expect(s.pmlAccepting.isEmpty)
        #expect(s.closable.isEmpty)
    }

    @Test func aDeadWorkersSlotIsServedByPMLUntilTheReplacementServes() {
        var s = ReusePortSlots()
        _ = s.resize(to: 2); s.didBind(0); s.didBind(1)
        s.spawned(worker: 1, slot: 0); s.serving(worker: 1)
        s.spawned(worker: 2, slot: 1); s.serving(worker: 2)
        s.exited(worker: 2)
        #expect(s.pmlAccepting == [1])
        #expect(s.closable.isEmpty, "the slot stays: its replacement comes")
        s.spawned(worker: 2, slot: 1) // same worker id, new process
        #expect(s.pmlAccepting == [1])
        s.serving(worker: 2)
        #expect(s.pmlAccepting.isEmpty)
    }

    @Test func aReloadHandsTheSameSlotOverWithoutAGap() {
        var s = ReusePortSlots()
        _ = s.resize(to: 1); s.didBind(0)
        s.spawned(worker: 1, slot: 0); s.serving(worker: 1)
        s.spawned(worker: 2, slot: 0)           // the replacement, same instance
        #expect(s.pmlAccepting.isEmpty, "the old one still serves")
        s.serving(worker: 2)
        s.notServing(worker: 1)                 // old one retires
        #expect(s.pmlAccepting.isEmpty)
        #expect(s.holders(of: 0) == [1, 2])
        s.exited(worker: 1)
        #expect(s.holders(of: 0) == [2])
        #expect(s.slot(of: 2) == 0 && s.slot(of: 1) == nil)
    }

    @Test func scalingDownDrainsARemovedSlotThenClosesItWhenNobodyHoldsIt() {
        var s = ReusePortSlots()
        _ = s.resize(to: 3); (0..<3).forEach { s.didBind($0) }
        for i in 0..<3 { s.spawned(worker: i, slot: i); s.serving(worker: i) }
        #expect(s.resize(to: 1).isEmpty)
        #expect(s.pmlAccepting == [1, 2], "removed slots drain through pml at once, alongside their retiring workers")
        #expect(s.closable.isEmpty, "their workers still hold them")
        s.exited(worker: 2)
        #expect(s.closable == [2])
        s.didClose(2)
        #expect(s.pmlAccepting == [1])
        s.exited(worker: 1); s.didClose(1)
        #expect(s.bound == [0] && s.pmlAccepting.isEmpty && s.closable.isEmpty)
    }

    @Test func scalingUpBindsOnlyTheNewSlotsAndARemovedSlotCanComeBack() {
        var s = ReusePortSlots()
        _ = s.resize(to: 2); s.didBind(0); s.didBind(1)
        #expect(s.resize(to: 4) == [2, 3])
        s.didBind(2); s.didBind(3)
        _ = s.resize(to: 2)
        #expect(s.closable == [2, 3])
        s.spawned(worker: 7, slot: 3)
        #expect(s.resize(to: 4).isEmpty, "still bound: reused as they are")
        #expect(s.pmlAccepting == [0, 1, 2, 3])
        #expect(s.closable.isEmpty)
    }

    @Test func notServingWithoutASlotIsHarmless() {
        var s = ReusePortSlots()
        s.serving(worker: 5); s.notServing(worker: 5); s.exited(worker: 5)
        #expect(s.pmlAccepting.isEmpty && s.slot(of: 5) == nil)
        #expect(s.resize(to: -1).isEmpty && s.size == 0)
    }
}

@Suite struct FreeWorkerTests {
    @Test func aFreeWorkerIsOneServingTheListenerWithNoHandleInFlight() {
        var d = RoundRobinDispatcher()
        #expect(!d.hasFreeWorker(for: 0), "nobody serves")
        d.add(worker: 1, listener: 0)
        d.add(worker: 2, listener: 1)
        #expect(d.hasFreeWorker(for: 0) && d.hasFreeWorker(for: 1))
        let w = d.next(for: 0)
        #expect(w == 1 && !d.hasFreeWorker(for: 0), "worker 1 awaits its ACK")
        #expect(d.hasFreeWorker(for: 1), "another listener's worker is unaffected")
        d.acknowledged(worker: 1)
        #expect(d.hasFreeWorker(for: 0))
        d.remove(worker: 1)
        #expect(!d.hasFreeWorker(for: 0))
    }
}
