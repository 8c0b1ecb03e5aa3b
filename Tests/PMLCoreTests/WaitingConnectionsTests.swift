import PMLCore
import Testing

@Suite struct WaitingConnectionsTests {
    @Test func theBoundFollowsTheLimitBelowTheCap() {
        // 1024 (a common default): 512 kept in reserve, half of the other 512.
        #expect(WaitingConnections(fdLimit: 1024).bound == 256)
        #expect(WaitingConnections(fdLimit: 4096).bound == 1792)
        #expect(WaitingConnections(fdLimit: 8704).bound == 4096)
        #expect(WaitingConnections(fdLimit: 20_000).bound == WaitingConnections.cap)
        #expect(WaitingConnections(fdLimit: Int.max).bound == WaitingConnections.cap)
    }

    @Test func smallLimitsKeepHalfInReserveAndAtLeastOne() {
        #expect(WaitingConnections(fdLimit: 256).bound == 64)
        #expect(WaitingConnections(fdLimit: 3).bound == 1)
        #expect(WaitingConnections(fdLimit: 0).bound == 1)
        #expect(WaitingConnections(fdLimit: -5).bound == 1)
        for limit in [8, 64, 100, 600, 1024, 5000, 50_000] {
            let b = WaitingConnections(fdLimit: limit).bound
            #expect(b >= 1 && b <= limit / 2, "limit \(limit): bound \(b) stays well below it")
        }
    }

    @Test func acceptingPausesAtTheBoundAndResumesAtHalf() {
        let w = WaitingConnections(fdLimit: 1024)
        #expect(!w.full(waiting: 255, held: 0) && w.full(waiting: 256, held: 0) && w.full(waiting: 300, held: 0))
        #expect(!w.roomAgain(waiting: 129, held: 0) && w.roomAgain(waiting: 128, held: 0) && w.roomAgain(waiting: 0, held: 0))
        // A bound of 1 still resumes once the queue is empty (never stuck paused).
        let one = WaitingConnections(fdLimit: 2)
        #expect(one.bound == 1 && one.full(waiting: 1, held: 0) && one.roomAgain(waiting: 0, held: 0))
    }

    @Test func heldCopiesCountAsDescriptors() {
        // 1024: 256 descriptors for connections in all; 8 silent workers at window 64 hold 512.
        let w = WaitingConnections(fdLimit: 1024)
        #expect(w.descriptors == 256)
        #expect(!w.full(waiting: 0, held: 255) && w.full(waiting: 0, held: 256) && w.full(waiting: 0, held: 8 * 64))
        #expect(w.full(waiting: 100, held: 156) && !w.full(waiting: 100, held: 155))
        // Resumes once waiting and held together are down to half.
        #expect(!w.roomAgain(waiting: 0, held: 129) && w.roomAgain(waiting: 0, held: 128))
        #expect(!w.roomAgain(waiting: 64, held: 65) && w.roomAgain(waiting: 64, held: 64))
        // Room for a batch (several fds per message): never past either bound.
        #expect(w.room(waiting: 0, held: 0) == 256 && w.room(waiting: 0, held: 250) == 6 && w.room(waiting: 10, held: 250) == 0)
        #expect(w.room(waiting: 255, held: 0) == 1 && w.room(waiting: 256, held: 0) == 0)
        for limit in [8, 64, 256, 1024, 5000] {
            let b = WaitingConnections(fdLimit: limit)
            #expect(b.descriptors >= 1 && b.descriptors <= limit / 2 && b.bound <= b.descriptors, "limit \(limit)")
            #expect(b.full(waiting: 0, held: b.descriptors) && b.room(waiting: 0, held: b.descriptors) == 0)
        }
    }

    @Test func heldCopiesAreNotCappedLikeTheQueue() {
        // A high limit: the queue stays capped (the backlog is the better queue), but many workers'
        // windows in flight are not throttled at the queue's cap.
        let w = WaitingConnections(fdLimit: 1 << 20)
        #expect(w.bound == WaitingConnections.cap && w.descriptors > 500_000)
        #expect(!w.full(waiting: 0, held: 128 * 64) && w.full(waiting: WaitingConnections.cap, held: 0))
        #expect(WaitingConnections(fdLimit: Int.max).descriptors >= 1)
    }
}
