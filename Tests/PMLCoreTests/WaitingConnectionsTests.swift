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
        #expect(!w.full(255) && w.full(256) && w.full(300))
        #expect(!w.roomAgain(129) && w.roomAgain(128) && w.roomAgain(0))
        // A bound of 1 still resumes once the queue is empty (never stuck paused).
        let one = WaitingConnections(fdLimit: 2)
        #expect(one.bound == 1 && one.full(1) && one.roomAgain(0))
    }
}
