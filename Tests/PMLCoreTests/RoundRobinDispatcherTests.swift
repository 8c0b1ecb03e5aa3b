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
