/// Whether a thread burns CPU: the CPU time it used over about the last `windowMs`, from samples of
/// its CPU clock taken every so often (pure: the caller supplies both clocks). A script thread that
/// burns (a loop at its budget, again and again; a C call stuck computing) is made to yield the CPU
/// to the apps, while one heavy hook now and then is not.
public struct CPUBurnWindow: Sendable {
    public let windowMs: Int
    public let thresholdNs: UInt64
    private var samples: [(at: Int, ns: UInt64)] = []

    public init(windowMs: Int, thresholdNs: UInt64) {
        self.windowMs = max(1, windowMs)
        self.thresholdNs = thresholdNs
    }

    /// Adds a sample (monotonic ms, the thread's CPU ns); returns whether the thread used at least
    /// `thresholdNs` since the newest sample that is `windowMs` old or more (the oldest one while
    /// none is that old yet).
    public mutating func add(at ms: Int, cpuNs: UInt64) -> Bool {
        if let last = samples.last, ms < last.at || cpuNs < last.ns {
            samples.removeAll() // a clock went back: start again rather than trust a difference
        }
        samples.append((ms, cpuNs))
        while samples.count > 1, samples[1].at <= ms - windowMs { samples.removeFirst() }
        return cpuNs - samples[0].ns >= thresholdNs
    }
}
