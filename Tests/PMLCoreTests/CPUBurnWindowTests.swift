import PMLCore
import Testing

@Suite("CPU burn window")
struct CPUBurnWindowTests {
    static let ms: UInt64 = 1_000_000

    @Test("a thread at full CPU burns once it has used the threshold within the window")
    func loopBurns() {
        var w = CPUBurnWindow(windowMs: 1000, thresholdNs: 300 * Self.ms)
        let first = w.add(at: 0, cpuNs: 0)
        #expect(!first)
        let second = w.add(at: 250, cpuNs: 250 * Self.ms)
        #expect(!second)
        let third = w.add(at: 500, cpuNs: 500 * Self.ms)
        #expect(third)
    }

    @Test("one heavy hook (200 ms of CPU) and then calm never burns; ordinary hooks never do")
    func heavyOnceDoesNot() {
        var w = CPUBurnWindow(windowMs: 1000, thresholdNs: 300 * Self.ms)
        var cpu: UInt64 = 0
        for t in stride(from: 0, through: 5000, by: 250) {
            if t == 250 { cpu += 200 * Self.ms }
            cpu += Self.ms / 10
            let step = w.add(at: t, cpuNs: cpu)
            #expect(!step, "at \(t) ms")
        }
    }

    @Test("only the last window counts: 100 ms of CPU every 500 ms (20 %) never burns, 200 ms every 500 ms (40 %) does")
    func rate() {
        var low = CPUBurnWindow(windowMs: 1000, thresholdNs: 300 * Self.ms)
        var high = CPUBurnWindow(windowMs: 1000, thresholdNs: 300 * Self.ms)
        var burnt = false
        for (i, t) in stride(from: 0, through: 10_000, by: 250).enumerated() {
            let lowCPU = UInt64(i / 2) * 100 * Self.ms, highCPU = UInt64(i / 2) * 200 * Self.ms
            let tick = low.add(at: t, cpuNs: lowCPU)
            #expect(!tick, "20 % at \(t) ms")
            burnt = high.add(at: t, cpuNs: highCPU) || burnt
        }
        #expect(burnt)
    }

    @Test("a clock that goes back starts the window again instead of wrapping around")
    func clockBack() {
        var w = CPUBurnWindow(windowMs: 1000, thresholdNs: 300 * Self.ms)
        let start = w.add(at: 1000, cpuNs: 900 * Self.ms)
        #expect(!start)
        let again = w.add(at: 1250, cpuNs: 10 * Self.ms)
        #expect(!again, "CPU clock back")
        let fresh = w.add(at: 1000, cpuNs: 20 * Self.ms)
        #expect(!fresh, "monotonic clock back")
        let later = w.add(at: 1500, cpuNs: 400 * Self.ms)
        #expect(later)
    }
}
