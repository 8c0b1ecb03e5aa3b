import PMLCore
import Testing

@Suite struct EventWindowTests {
    @Test func aFewEventsAreNoFlood() {
        var w = EventWindow(limit: 3, windowMs: 1000)
        #expect(w.record(atMs: 0) == (1, false))
        #expect(w.record(atMs: 10) == (2, false))
        #expect(w.record(atMs: 999) == (3, false))
        // The window is over: counting starts again.
        #expect(w.record(atMs: 1000) == (1, false))
    }

    @Test func moreThanTheLimitWithinAWindowIsAFlood() {
        var w = EventWindow(limit: 3, windowMs: 1000)
        for t in [100, 200, 300] { #expect(w.record(atMs: t).flood == false) }
        #expect(w.record(atMs: 400) == (4, true))
        #expect(w.record(atMs: 500) == (5, true))
    }

    @Test func aSteadyTrickleNeverFloods() {
        var w = EventWindow(limit: 3, windowMs: 1000)
        for t in stride(from: 0, to: 100_000, by: 400) { #expect(w.record(atMs: t).flood == false) }
    }

    @Test func aClockThatGoesBackStartsANewWindow() {
        var w = EventWindow(limit: 1, windowMs: 1000)
        #expect(w.record(atMs: 5000) == (1, false))
        #expect(w.record(atMs: 10) == (1, false))
        #expect(w.record(atMs: 20) == (2, true))
    }
}
