/// A fixed-capacity buffer that forgets its oldest element when full.
public struct Ring<Element>: Sendable where Element: Sendable {
    public let capacity: Int
    private var storage: [Element] = []
    private var head = 0 // index of the oldest element once full

    public init(capacity: Int) { self.capacity = max(1, capacity) }

    public var count: Int { storage.count }
    public var last: Element? { storage.isEmpty ? nil : storage[(head + storage.count - 1) % storage.count] }

    public mutating func append(_ e: Element) {
        if storage.count < capacity {
            storage.append(e)
        } else {
            storage[head] = e
            head = (head + 1) % capacity
        }
    }

    /// Oldest first.
    public var elements: [Element] { Array(storage[head...] + storage[..<head]) }
}

/// One sample of a worker (or an app: its workers summed) at wall-clock time `t` (ms).
public struct MetricSample: Sendable, Equatable {
    public var t: Int
    public var cpu: Double
    public var memory: Int
    /// Connections pml handed over per second since the previous sample.
    public var connsPerSec: Double

    public init(t: Int, cpu: Double, memory: Int, connsPerSec: Double) {
        self.t = t
        self.cpu = cpu
        self.memory = memory
        self.connsPerSec = connsPerSec
    }
}

/// The last `window` samples of every worker and app, for the dashboard's graphs. Bounded: a
/// ring per series, and series of workers that are gone are dropped once their samples age out
/// (or sooner, oldest first, beyond `maxSeries`), so a reload loop cannot make it grow.
public struct MetricsHistory: Sendable {
    /// 15 minutes of one-second samples.
    public static let window = 900
    public static let maxSeries = 256

    /// One worker's series.
    public struct Series: Sendable {
        public var app: String
        public var instance: Int
        public var samples: Ring<MetricSample>
        var lastDispatched: (count: Int, t: Int)?
    }

    /// What a sample reads from one running worker.
    public struct Reading: Sendable {
        public var id: Int
        public var app: String
        public var instance: Int
        public var cpu: Double
        public var memory: Int
        /// Connections dispatched to it so far (a counter).
        public var dispatched: Int

        public init(id: Int, app: String, instance: Int, cpu: Double, memory: Int, dispatched: Int) {
            self.id = id
            self.app = app
            self.instance = instance
            self.cpu = cpu
            self.memory = memory
            self.dispatched = dispatched
        }
    }

    public private(set) var workers: [Int: Series] = [:]
    public private(set) var apps: [String: Ring<MetricSample>] = [:]
    private let window: Int

    public init(window: Int = MetricsHistory.window) { self.window = window }

    /// Records one sample of every running worker at `t` (wall ms); `appNames` are every app,
    /// running or not (an app with no running worker gets a zero sample: its graph shows the gap).
    public mutating func record(t: Int, readings: [Reading], appNames: [String]) {
        var sums: [String: MetricSample] = [:]
        for name in appNames { sums[name] = MetricSample(t: t, cpu: 0, memory: 0, connsPerSec: 0) }
        for r in readings {
            var series = workers[r.id] ?? Series(app: r.app, instance: r.instance, samples: Ring(capacity: window))
            var rate = 0.0
            if let prev = series.lastDispatched, t > prev.t, r.dispatched >= prev.count {
                rate = Double(r.dispatched - prev.count) * 1000 / Double(t - prev.t)
            }
            series.lastDispatched = (r.dispatched, t)
            let sample = MetricSample(t: t, cpu: r.cpu, memory: r.memory, connsPerSec: rate)
            series.samples.append(sample)
            workers[r.id] = series
            var sum = sums[r.app] ?? MetricSample(t: t, cpu: 0, memory: 0, connsPerSec: 0)
            sum.cpu += sample.cpu
            sum.memory += sample.memory
            sum.connsPerSec += sample.connsPerSec
            sums[r.app] = sum
        }
        for (name, sum) in sums { apps[name, default: Ring(capacity: window)].append(sum) }
        forget(before: t - window * 1000, keepingApps: Set(appNames))
    }

    /// Drops series whose newest sample is older than `cutoff`, and the oldest beyond `maxSeries`.
    private mutating func forget(before cutoff: Int, keepingApps: Set<String>) {
        workers = workers.filter { ($0.value.samples.last?.t ?? 0) >= cutoff }
        if workers.count > Self.maxSeries {
            let newest = workers.sorted { ($0.value.samples.last?.t ?? 0, $0.key) > ($1.value.samples.last?.t ?? 0, $1.key) }
            workers = Dictionary(uniqueKeysWithValues: newest.prefix(Self.maxSeries).map { ($0.key, $0.value) })
        }
        apps = apps.filter { keepingApps.contains($0.key) || ($0.value.last?.t ?? 0) >= cutoff }
    }
}

/// Something that happened to an app, for the dashboard's timeline: a crash and what was decided
/// about it (and by which hook), a restart, a reload, a scale, a stop, a button pressed.
public struct TimelineEvent: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case crash, restart, reload, scale, stop, action }

    public var seq: Int
    /// Wall-clock ms.
    public var t: Int
    public var app: String
    public var worker: Int?
    public var kind: Kind
    /// One line: "worker 3 killed by SIGSEGV after 1200 ms".
    public var title: String
    /// The decision and why: "onCrash: restart in 400 ms (default policy said 200 ms)".
    public var detail: String?
    /// Whether it went well: false for an errored worker, a rolled-back or vetoed reload, a refused action.
    public var ok: Bool

    public init(seq: Int = 0, t: Int, app: String, worker: Int? = nil, kind: Kind, title: String, detail: String? = nil, ok: Bool = true) {
        self.seq = seq
        self.t = t
        self.app = app
        self.worker = worker
        self.kind = kind
        self.title = title
        self.detail = detail
        self.ok = ok
    }
}

/// The last `capacity` timeline events, numbered so a client can ask for what is new.
public struct Timeline: Sendable {
    public static let capacity = 500
    private var ring = Ring<TimelineEvent>(capacity: Timeline.capacity)
    public private(set) var nextSeq = 1

    public init() {}

    public mutating func append(_ event: TimelineEvent) {
        var e = event
        e.seq = nextSeq
        nextSeq += 1
        ring.append(e)
    }

    /// Events with a sequence number above `seq`, oldest first.
    public func since(_ seq: Int) -> [TimelineEvent] { ring.elements.filter { $0.seq > seq } }
}
