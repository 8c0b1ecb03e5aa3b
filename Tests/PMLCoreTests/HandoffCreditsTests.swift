import Testing
@testable import PMLCore

@Suite struct HandoffCreditsTests {
    func parse(_ s: String) -> HandoffRecord? { HandoffRecord.parse(Array(s.utf8)) }

    @Test func recordsParse() {
        #expect(parse("H 1 8") == .hello(maxFDs: 1, window: 8, echoes: false))
        #expect(parse("H 4 16") == .hello(maxFDs: 4, window: 16, echoes: false))
        #expect(parse("C 3") == .credit(3))
        #expect(parse("C 0") == .credit(0))
    }

    @Test func revision2EchoesMarks() {
        #expect(parse("H 1 16 2") == .hello(maxFDs: 1, window: 16, echoes: true))
        #expect(parse("H 8 32 7") == .hello(maxFDs: 8, window: 32, echoes: true), "a later revision echoes too")
        #expect(parse("H 1 16 1") == .hello(maxFDs: 1, window: 16, echoes: false))
        #expect(parse("H 1 16 0") == .hello(maxFDs: 1, window: 16, echoes: false))
        #expect(parse("E 123456789") == .echo(123_456_789))
        #expect(parse("E 0") == .echo(0))
        // An absurd epoch saturates: it matches no epoch pml draws (at most 999,999,999).
        #expect(parse("E 99999999999999999999") == .echo(1_000_000_000))
    }

    @Test func absurdNumbersAreClamped() {
        #expect(parse("H 1000 99999999999999999999") == .hello(maxFDs: HandoffRecord.maxFDsPerMessage, window: HandoffRecord.maxWindow, echoes: false))
        #expect(parse("H 0 0") == .hello(maxFDs: 1, window: 1, echoes: false))
        #expect(parse("C 123456789012345") == .credit(HandoffRecord.maxWindow))
    }

    @Test func garbageIsRefused() {
        for bad in ["", "H", "H 1", "H 1 2 3 4", "C", "E", "E 1 2", "E x", "C -1", "C 1 2", "X 1", "C 1x", "{\"cmd\":\"NODE_HANDLE_ACK\"}",
                    "C " + String(repeating: "1", count: 40)] {
            #expect(parse(bad) == nil, "\(bad)")
        }
    }

    @Test func reclaimedChunksNameTheirLastLine() {
        func address(_ s: String) -> String? { HandoffRecord.reclaimedAddress(ArraySlice(s.utf8)).map { String(decoding: $0, as: UTF8.self) } }
        #expect(address("8080\n") == "8080")
        #expect(address("127.0.0.1:8080\n") == "127.0.0.1:8080")
        #expect(address("unix:/run/web.sock\n") == "unix:/run/web.sock")
        #expect(address("E 123456789 [::1]:8080\n") == "[::1]:8080", "a successor's mark is not part of the address")
        #expect(address("80\n8081\n") == "8081", "the tail of a message the worker read in part comes first")
        #expect(address("1\nE 7 unix:/a b\n") == "unix:/a b")
        for bad in ["", "\n", "8080", "8080\n80", "E 12 \n", "E x 8080\n", "E  8080\n", "E 12\n"] {
            #expect(address(bad) == nil, "\(bad.debugDescription)")
        }
    }

    @Test func entriesWithoutCopiesKeepTheWindowAndTheExpiry() {
        // pml holds a worker's reclaim end, not copies: entries carry fd -1, counted all the same.
        var h = HeldHandles(capacity: 4)
        let pushed = (21...23).map { h.push(-1, listener: 0, atMs: $0) }
        #expect(pushed == [true, true, true])
        var given: [Int32] = []
        h.credit(1, atMs: 10) { given.append($0.fd) }
        #expect(given == [-1] && h.count == 2 && h.oldestMs == 22)
        let (closed, returned) = h.expire(before: 100) { given.append($0.fd) }
        #expect(closed == 2 && returned == 0 && h.due == 2, "sent after its last credit: unread, their credits due")
    }

    @Test func heldHandlesAreFirstInFirstOut() {
        var h = HeldHandles(capacity: 3)
        let pushed = [h.push(10, listener: 1, atMs: 1), h.push(11, listener: 2, atMs: 2), h.push(12, listener: 1, atMs: 3),
                      h.push(13, listener: 1, atMs: 4)]
        #expect(pushed == [true, true, true, false], "the 4th does not fit")
        #expect(h.oldestMs == 1)
        let first = h.pop()
        #expect(first == .init(fd: 10, listener: 1, sinceMs: 1))
        let wrapped = h.push(13, listener: 3, atMs: 5)
        #expect(wrapped, "wraps around")
        let rest = [h.pop(), h.pop(), h.pop()].map { $0?.fd }
        #expect(rest == [11, 12, 13])
        let empty = h.pop()
        #expect(empty == nil && h.oldestMs == nil && h.count == 0)
    }

    @Test func creditsAllowSeveralInFlight() {
        var d = RoundRobinDispatcher()
        d.add(worker: 1, listener: 0)
        d.add(worker: 2, listener: 0)
        d.grant(worker: 1, window: 3, outstanding: 0)
        // Worker 1 takes up to 3 before crediting back; worker 2 (NODE_HANDLE) one at a time.
        var order: [Int] = []
        while let w = d.next(for: 0) { order.append(w) }
        #expect(order == [1, 2, 1, 1])
        #expect(!d.hasFreeWorker(for: 0))
        d.returned(worker: 1, 2)
        #expect(d.credits(of: 1) == 2)
        #expect(d.hasFreeWorker(for: 0))
    }

    @Test func returnsNeverExceedTheWindow() {
        var d = RoundRobinDispatcher()
        d.add(worker: 1, listener: 0)
        d.grant(worker: 1, window: 4, outstanding: 1)
        #expect(d.credits(of: 1) == 3)
        d.returned(worker: 1, 1000)
        #expect(d.credits(of: 1) == 4)
        d.returned(worker: 1, -5)
        #expect(d.credits(of: 1) == 4)
    }

    @Test func aBatchTakesCreditsAndCountsLoad() {
        var d = RoundRobinDispatcher()
        d.setLeastBusy(true, listener: 0)
        d.add(worker: 1, listener: 0)
        d.grant(worker: 1, window: 2, outstanding: 0)
        #expect(d.next(for: 0) == 1)
        let took = [d.take(worker: 1, listener: 0), d.take(worker: 1, listener: 0)]
        #expect(took == [true, false], "one more, then no credit left")
        #expect(d.load(of: 1) == 2)
    }

    @Test func aWorkerWithoutCreditsGetsNothingOthersServe() {
        var d = RoundRobinDispatcher()
        d.add(worker: 1, listener: 0)
        d.add(worker: 2, listener: 0)
        d.grant(worker: 1, window: 2, outstanding: 0)
        d.grant(worker: 2, window: 2, outstanding: 0)
        d.exhaust(worker: 1)
        var order: [Int] = []
        while let w = d.next(for: 0) { order.append(w) }
        #expect(order == [2, 2])
    }

    @Test func forgettingCreditsFallsBackToAcks() {
        var d = RoundRobinDispatcher()
        d.add(worker: 1, listener: 0)
        d.grant(worker: 1, window: 5, outstanding: 0)
        d.forgetCredits(worker: 1)
        #expect(!d.usesCredits(1))
        #expect(d.next(for: 0) == 1)
        #expect(d.next(for: 0) == nil, "one in flight until its ACK")
        d.acknowledged(worker: 1)
        #expect(d.next(for: 0) == 1)
    }

    /// What the accept hold asks before holding a listener: a NODE_HANDLE worker among its servers forbids it.
    @Test func onlyCreditsWhenEveryServerOfTheListenerIsOnTheHandoffChannel() {
        var d = RoundRobinDispatcher()
        #expect(!d.onlyCredits(serving: 0), "nobody serves it")
        d.add(worker: 1, listener: 0)
        d.add(worker: 2, listener: 0)
        d.add(worker: 3, listener: 1)
        d.grant(worker: 1, window: 4, outstanding: 0)
        #expect(!d.onlyCredits(serving: 0), "worker 2 is on NODE_HANDLE")
        d.grant(worker: 2, window: 4, outstanding: 0)
        #expect(d.onlyCredits(serving: 0))
        #expect(!d.onlyCredits(serving: 1), "worker 3, NODE_HANDLE, serves the other listener")
        // Out of credits for now is still the handoff channel.
        while d.next(for: 0) != nil {}
        #expect(d.onlyCredits(serving: 0))
        d.forgetCredits(worker: 2)
        #expect(!d.onlyCredits(serving: 0), "its handoff channel closed: back on NODE_HANDLE")
        d.remove(worker: 2)
        #expect(d.onlyCredits(serving: 0), "the NODE_HANDLE worker left the rotation")
        d.remove(worker: 1, listener: 0)
        #expect(!d.onlyCredits(serving: 0))
    }

    /// A listener is held only if every worker serving it has several connections in flight to work on.
    @Test func onlyCreditsWithAWindowOfAtLeast() {
        var d = RoundRobinDispatcher()
        d.add(worker: 1, listener: 0)
        d.add(worker: 2, listener: 0)
        d.grant(worker: 1, window: 16, outstanding: 0)
        d.grant(worker: 2, window: 4, outstanding: 0)
        #expect(d.onlyCredits(serving: 0) && !d.onlyCredits(serving: 0, minWindow: 8), "worker 2's window is 4")
        d.grant(worker: 2, window: 8, outstanding: 0)
        #expect(d.onlyCredits(serving: 0, minWindow: 8))
        #expect(!d.onlyCredits(serving: 0, minWindow: 17))
    }

    /// What the router asks to let a worker's credits wait unread: more than half its window free.
    @Test func mostlyFreeWhileMoreThanHalfTheWindowIsFree() {
        var d = RoundRobinDispatcher()
        d.add(worker: 1, listener: 0)
        #expect(!d.mostlyFree(1), "on NODE_HANDLE: no credits to wait")
        d.grant(worker: 1, window: 4, outstanding: 0)
        #expect(d.mostlyFree(1))
        _ = d.next(for: 0)
        #expect(d.mostlyFree(1), "3 of 4 free")
        _ = d.next(for: 0)
        #expect(!d.mostlyFree(1), "2 of 4: half is not more than half")
        d.returned(worker: 1, 1)
        #expect(d.mostlyFree(1))
        d.grant(worker: 1, window: 1, outstanding: 0)
        #expect(d.mostlyFree(1), "a window of 1, nothing in flight")
        _ = d.next(for: 0)
        #expect(!d.mostlyFree(1))
        d.forgetCredits(worker: 1)
        #expect(!d.mostlyFree(1))
    }

    /// What the router asks to let a worker's credits wait unread: it has credits left, or nothing
    /// waits for a worker; never for a full channel or a worker not on credits.
    @Test func creditsMayWaitUnlessTheyAreWhatConnectionsWaitFor() {
        var d = RoundRobinDispatcher()
        d.add(worker: 1, listener: 0)
        #expect(!d.creditsMayWait(1, connectionsWait: false), "on NODE_HANDLE: no credits to wait")
        d.grant(worker: 1, window: 2, outstanding: 0)
        #expect(d.creditsMayWait(1, connectionsWait: true) && d.creditsMayWait(1, connectionsWait: false))
        _ = d.next(for: 0)
        #expect(d.creditsMayWait(1, connectionsWait: true), "1 of 2 left: sends go on without its credits")
        _ = d.next(for: 0)
        #expect(!d.creditsMayWait(1, connectionsWait: true), "none left while connections wait: its credits free it")
        #expect(d.creditsMayWait(1, connectionsWait: false), "none left, nothing waits: the next accept turn reads them")
        d.returned(worker: 1, 1)
        d.exhaust(worker: 1)
        #expect(!d.creditsMayWait(1, connectionsWait: false), "its socket is full: only a read shows room again")
        d.unblock(worker: 1)
        #expect(d.creditsMayWait(1, connectionsWait: true))
        d.forgetCredits(worker: 1)
        #expect(!d.creditsMayWait(1, connectionsWait: false), "its channel closed: back on NODE_HANDLE")
    }

    /// A worker whose channel is full is read promptly, however much of its window is free: its
    /// next credit (or read) is what lets sends resume.
    @Test func aFullChannelIsNeverMostlyFree() {
        var d = RoundRobinDispatcher()
        d.add(worker: 1, listener: 0)
        d.grant(worker: 1, window: 8, outstanding: 0)
        _ = d.next(for: 0)
        #expect(d.mostlyFree(1), "7 of 8 free")
        d.exhaust(worker: 1)
        #expect(!d.mostlyFree(1), "its socket is full")
        d.unblock(worker: 1)
        #expect(d.mostlyFree(1), "it read: room again")
        d.exhaust(worker: 1)
        d.returned(worker: 1, 1)
        #expect(d.mostlyFree(1), "a credit unblocks it")
    }

    @Test func lateCreditsPayWhatIsDueFirst() {
        var h = HeldHandles(capacity: 4)
        _ = h.push(10, listener: 1, atMs: 0)
        _ = h.push(11, listener: 1, atMs: 0)
        // Neither was read in time (no credit since): closed, their credits due.
        var closed: [Int32] = []
        let r = h.expire(before: 100) { closed.append($0.fd) }
        #expect(r.closed == 2 && r.returned == 0 && h.due == 2 && closed == [10, 11])
        _ = h.push(12, listener: 1, atMs: 200)
        // The late credit for 10 and 11 closes nothing; the next one closes 12.
        closed = []
        h.credit(2, atMs: 300) { closed.append($0.fd) }
        #expect(closed.isEmpty && h.due == 0 && h.count == 1)
        h.credit(1, atMs: 310) { closed.append($0.fd) }
        #expect(closed == [12] && h.count == 0)
    }

    @Test func expiredCopiesOlderThanTheLastCreditGiveTheirCreditBack() {
        var h = HeldHandles(capacity: 4)
        _ = h.push(10, listener: 1, atMs: 0)   // its fd never arrived: never credited
        _ = h.push(11, listener: 1, atMs: 5)
        h.credit(1, atMs: 50) { _ in }           // the worker credits one (pml closes 10, the oldest)
        _ = h.push(12, listener: 1, atMs: 60)
        // 11 was sent before the last credit: the worker read past it, its credit was lost. 12 was
        // sent after: unread, due.
        var closed: [Int32] = []
        let r = h.expire(before: 1000) { closed.append($0.fd) }
        #expect(closed == [11, 12] && r.closed == 2 && r.returned == 1 && h.due == 1)
    }

    @Test func dueNeverExceedsCapacity() {
        var h = HeldHandles(capacity: 2)
        for round in 0..<3 {
            _ = h.push(Int32(round), listener: 1, atMs: round * 10)
            _ = h.push(Int32(round + 10), listener: 1, atMs: round * 10)
            _ = h.expire(before: round * 10 + 1) { _ in }
        }
        #expect(h.due == 2)
        var closed: [Int32] = []
        _ = h.push(20, listener: 1, atMs: 100)
        h.credit(-1, atMs: 101) { closed.append($0.fd) }
        #expect(h.due == 2 && closed.isEmpty, "a negative credit changes nothing")
        h.credit(3, atMs: 102) { closed.append($0.fd) }
        #expect(h.due == 0 && closed == [20])
    }

    @Test func aFullSocketKeepsCreditsOfWhatWasNotSent() {
        var d = RoundRobinDispatcher()
        d.setLeastBusy(true, listener: 0)
        d.add(worker: 1, listener: 0)
        d.grant(worker: 1, window: 4, outstanding: 0)
        #expect(d.next(for: 0) == 1)
        let took = d.take(worker: 1, listener: 0)
        #expect(took && d.credits(of: 1) == 2 && d.load(of: 1) == 2)
        // The message did not go: its 2 credits come back, not counted as load, and the worker is
        // blocked until it credits.
        d.untake(worker: 1, listener: 0, 2)
        d.exhaust(worker: 1)
        #expect(d.credits(of: 1) == 4 && d.load(of: 1) == 0)
        #expect(d.next(for: 0) == nil, "blocked while its socket is full")
        d.returned(worker: 1, 0)
        #expect(d.next(for: 0) == 1, "a credit unblocks it")
        #expect(d.credits(of: 1) == 3)
    }

    @Test func readingWithoutCreditUnblocksAFullSocketAndKeepsCredits() {
        var d = RoundRobinDispatcher()
        d.add(worker: 1, listener: 0)
        d.grant(worker: 1, window: 4, outstanding: 0)
        // A successor's marked message did not go: the socket is full of what the daemon before sent.
        #expect(d.next(for: 0) == 1)
        d.untake(worker: 1, listener: 0, 1)
        d.exhaust(worker: 1)
        #expect(d.next(for: 0) == nil, "blocked while its socket is full")
        // The worker reads and credits the daemon before's messages (ignored): room again, same credits.
        d.unblock(worker: 1)
        #expect(d.credits(of: 1) == 4)
        #expect(d.next(for: 0) == 1, "sends resume")
    }

    @Test func forgivenDueIsNotPaidByLaterCredits() {
        var h = HeldHandles(capacity: 4)
        _ = h.push(10, listener: 1, atMs: 0)
        _ = h.push(11, listener: 1, atMs: 0)
        let r = h.expire(before: 100) { _ in }
        #expect(r.returned == 0 && h.due == 2)
        // The credits the worker wrote for them were ignored (an echo awaited that never came).
        #expect(h.forgiveDue() == 2 && h.due == 0)
        _ = h.push(12, listener: 1, atMs: 200)
        var closed: [Int32] = []
        h.credit(1, atMs: 300) { closed.append($0.fd) }
        #expect(closed == [12], "the next credit closes the next copy")
    }

    @Test func requeuedConnectionsAreNotLoad() {
        var d = RoundRobinDispatcher()
        d.setLeastBusy(true, listener: 0)
        d.add(worker: 1, listener: 0)
        d.add(worker: 2, listener: 0)
        #expect(d.next(for: 0) == 1)
        d.acknowledged(worker: 1)
        #expect(d.next(for: 0) == 2)
        d.acknowledged(worker: 2)
        d.notHanded(worker: 1, listener: 0, 1)   // NACK: back in line
        #expect(d.load(of: 1) == 0 && d.load(of: 2) == 1)
        d.notHanded(worker: 1, listener: 0, 5)
        #expect(d.load(of: 1) == 0, "never below 0")
        #expect(d.next(for: 0) == 1, "the least busy")
    }
}
