/// Decides, after each turn of the event loop that accepted connections, whether pml should let
/// the next arrivals gather in the kernel's backlog for a short while before it accepts again, so
/// that one wake-up serves several connections instead of one (a wake-up costs more than the
/// accept, the handoff and the close together on a virtual machine).
///
/// It never holds back a connection on a lightly loaded daemon: holding starts only after
/// `busyTurns` accept turns in a row came less than `busyGapUs` after the one before (arrivals
/// faster than one per gap, sustained), and stops when `sparseTurns` held turns in a row found
/// fewer than `minBatch` connections each (holds that gather no batch only add latency; one such
/// turn alone is chance). A batch is more than a few clients sending requests back to back can
/// bring in one hold (2–4 such clients are never held for long: each of their requests would wait).
/// Each time holding ends so, twice as many busy turns are needed to start it again (up to
/// `maxBusyTurns`), until a hold gathers a batch: a client that sends one request at a time, fast,
/// looks busy but can never fill a batch, and is held back ever more rarely; `quietUs` after the
/// back-off last grew it is forgotten (a heavy load that follows a light one is held again soon).
/// A first connection after a quiet spell is always accepted at once. A turn that stopped because
/// no worker could take another connection neither counts as busy nor ends a hold (the caller holds
/// the listener until the workers' credits come); for `saturatedUs` after it, holding starts at
/// once and no hold counts as sparse (it takes many clients to fill every worker's window: the
/// workers, not the hold, are what arrivals wait for). A turn of a listener that some worker serves over
/// NODE_HANDLE (one connection in flight, ACKed: holding it only delays the ACKs that free it) ends
/// any hold, and the busy count starts over.
/// While holding, the hold grows (doubling, up to `longestHoldUs`) as long as longer holds keep the
/// arrival rate: after `probeTurns` held turns at one length it tries twice that, and keeps it for
/// as long as each `probeTurns` turns gather at least `keepRatePercent` of the rate (connections
/// per µs held) that holds of `holdUs` last had; otherwise it goes back to the shorter one (and on
/// down, judged the same way), and no longer one is tried for `quietUs`. Where the hold is
/// not what the clients wait for (the workers are), a longer one gathers proportionally more: fewer
/// wake-ups for the same work, at no cost in throughput. Where it is (a few clients, each waiting
/// for its answer before its next connection), a longer one gathers no more, and is dropped.
/// One per listener: a hold takes only that listener out of the loop, and its turns are its own.
/// Pure: the caller measures time.
public struct ArrivalCoalescing: Sendable, Equatable {
    /// The longest hold anyone may set (µs).
    public static let maxHoldUs = 10_000
    /// The longest hold (µs); 0 turns coalescing off.
    public let holdUs: Int
    /// Accept turns closer than this (µs) to the one before count as busy.
    public let busyGapUs: Int
    /// Busy turns in a row before holding starts.
    public let busyTurns: Int
    /// A held turn that finds fewer connections than this is sparse.
    public let minBatch: Int
    /// Sparse held turns in a row that end holding.
    public let sparseTurns: Int
    /// The most busy turns ever needed to start holding again.
    public let maxBusyTurns: Int
    /// This long (µs) after it last grew, the back-off is forgotten.
    public let quietUs: Int
    /// The longest a hold grows to (µs): `growth` times `holdUs` at most, and never over `maxHoldUs`.
    public let longestHoldUs: Int
    /// Held turns at one hold length before it is judged, or a longer one tried.
    public static let probeTurns = 8
    /// A longer hold is kept if its turns gathered at least this share (in percent) of the rate of
    /// holds of `holdUs`: under it, the hold is what the clients wait for.
    public static let keepRatePercent = 80
    /// The hold when `PML_ACCEPT_HOLD_US` is not set (µs).
    public static let defaultHoldUs = 250

    private var lastTurnUs: Int?
    /// When `needed` last grew (nil: it is `busyTurns`).
    private var backedOffAtUs: Int?
    private var streak = 0
    private var sparse = 0
    /// Busy turns in a row needed now to start holding: `busyTurns`, doubled after each hold that gathered nothing.
    public private(set) var needed: Int
    /// The hold asked for after the last accept turn (0: none).
    public private(set) var holding = 0
    /// The held turns at the current length so far, what they gathered, and over how long (µs from
    /// the turn before each: the hold as it really lasted, and the turn).
    private var sampleTurns = 0
    private var sampleGathered = 0
    private var sampleUs = 0
    /// While the hold is longer than `holdUs`: the rate holds of `holdUs` had before it grew, what
    /// their last `probeTurns` turns gathered over how long (every longer hold is judged by it).
    private var base: Rate?
    private struct Rate: Equatable, Sendable { var gathered: Int; var us: Int }
    /// When a turn last stopped for want of a free worker (µs).
    private var lastStarvedUs: Int?
    /// For this long (µs) after a starved turn, the workers count as saturated.
    public static let saturatedUs = 10_000
    /// No longer hold is tried before this time (µs).
    private var noTrialBeforeUs = Int.min

    /// The defaults: holds of 250 µs, once three accept turns in a row came within 1 ms of each
    /// other, for as long as holds gather five connections or more; growing up to 1 ms while longer
    /// holds keep the arrival rate.
    public init(holdUs: Int = ArrivalCoalescing.defaultHoldUs, busyGapUs: Int = 1000, busyTurns: Int = 3, minBatch: Int = 5, sparseTurns: Int = 2,
                maxBusyTurns: Int = 1024, quietUs: Int = 1_000_000, growth: Int = 4) {
        self.holdUs = min(max(0, holdUs), Self.maxHoldUs)
        longestHoldUs = max(self.holdUs, min(self.holdUs * min(max(1, growth), 64), Self.maxHoldUs))
        self.busyGapUs = max(0, busyGapUs)
        self.busyTurns = max(1, busyTurns)
        self.minBatch = max(1, minBatch)
        self.sparseTurns = max(1, sparseTurns)
        self.maxBusyTurns = max(self.busyTurns, maxBusyTurns)
        self.quietUs = max(0, quietUs)
        needed = self.busyTurns
    }

    /// `PML_ACCEPT_HOLD_US`'s text read: the hold (µs; `defaultHoldUs` when unset, 0 turns it off)
    /// and, for a value not taken as given, one line saying what was used instead. Out of
    /// `0...max`: the nearest bound; not a whole number: off. Without `microsecondTimeouts` (the
    /// kernel refuses epoll_pwait2) a hold would last a whole millisecond: off unless set, and said.
    public static func holdSetting(_ text: String?, max: Int, microsecondTimeouts: Bool = true) -> (holdUs: Int, problem: String?) {
        let setting = parsedHold(text, max: max)
        guard !microsecondTimeouts else { return setting }
        let coarse = "the kernel refuses epoll_pwait2, so accept holds round up to 1 ms"
        guard text != nil else { return (0, "\(coarse); accept hold off (PML_ACCEPT_HOLD_US=N turns it on)") }
        guard setting.holdUs > 0 else { return setting }
        return (setting.holdUs, [setting.problem, coarse].compactMap { $0 }.joined(separator: "; "))
    }

    private static func parsedHold(_ text: String?, max: Int) -> (holdUs: Int, problem: String?) {
        guard let text else { return (defaultHoldUs, nil) }
        let digits = text.first == "+" || text.first == "-" ? text.dropFirst() : Substring(text)
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            return (0, "PML_ACCEPT_HOLD_US=\(text.prefix(40)) is not a whole number of microseconds; accept hold off")
        }
        let negative = text.first == "-"
        // Too many digits for an Int: still out of range on its side.
        let n = Int(text) ?? (negative ? Int.min : Int.max)
        if n < 0 { return (0, "PML_ACCEPT_HOLD_US=\(text.prefix(40)) is below 0; accept hold off") }
        if n > max { return (max, "PML_ACCEPT_HOLD_US=\(text.prefix(40)) is over \(max) µs; using \(max)") }
        return (n, nil)
    }

    /// A turn at `nowUs` accepted `accepted` connections (it ran after the hold returned last, if
    /// any); `starved`: it stopped because no worker could take more; `holdable`: every worker
    /// serving the listener takes its connections on the native handoff channel, with credits;
    /// `gathered`: for a turn right after a hold, how many were queued when it began (nil: unknown,
    /// `accepted` stands for it) — a turn that takes long accepts what came during it too, and a few
    /// fast clients can bring five that way, not in one hold.
    /// Returns how long (µs) to hold off the next accept: 0 means accept as soon as one comes.
    public mutating func turn(nowUs: Int, accepted: Int, gathered: Int? = nil, starved: Bool = false, holdable: Bool = true) -> Int {
        guard holdUs > 0 else { return 0 }
        if !holdable {
            lastTurnUs = nowUs
            stopHolding()
            streak = 0
            return 0
        }
        // The workers are behind: the caller holds the listener until their credits come. Such a
        // turn neither counts toward holding nor ends it.
        if starved {
            lastTurnUs = nowUs
            lastStarvedUs = nowUs
            return 0
        }
        guard accepted > 0 else { return 0 }
        let gap = lastTurnUs.map { nowUs - $0 }
        lastTurnUs = nowUs
        // The back-off is old (or the clock went back): whatever made it, a load now starts afresh.
        if let t = backedOffAtUs, nowUs - t > quietUs || nowUs < t {
            needed = busyTurns
            backedOffAtUs = nil
        }
        // The workers were all behind a moment ago (many clients, not a few): they, not the hold,
        // are what arrivals wait for, so holding starts at once and few arrivals do not end it.
        let saturated = lastStarvedUs.map { nowUs >= $0 && nowUs - $0 <= Self.saturatedUs } ?? false
        // A turn long after the hold ended (the load stopped, then came back) starts afresh.
        if holding > 0, let gap, gap >= 0, gap <= holding + busyGapUs {
            // Holds that gather no batch, turn after turn: arrivals are too sparse for them to pay.
            let batch = gathered ?? accepted
            if batch >= minBatch || saturated {
                sparse = 0
                if batch >= minBatch {
                    needed = busyTurns
                    backedOffAtUs = nil
                }
                adjustLength(gathered: batch, overUs: gap, nowUs: nowUs)
                return holding
            }
            sparse += 1
            if sparse < sparseTurns {
                adjustLength(gathered: batch, overUs: gap, nowUs: nowUs)
                return holding
            }
            // A longer hold that gathered no batch either: none is tried again for a while.
            if base != nil { noTrialBeforeUs = nowUs &+ quietUs }
            stopHolding()
            streak = 0
            needed = min(needed * 2, maxBusyTurns)
            backedOffAtUs = nowUs
            return 0
        }
        stopHolding()
        if let gap, gap >= 0, gap <= busyGapUs { streak += 1 } else { streak = 1 }
        guard streak >= needed || saturated else { return 0 }
        holding = holdUs
        return holding
    }

    private mutating func stopHolding() {
        holding = 0
        sparse = 0
        (sampleTurns, sampleGathered, sampleUs) = (0, 0, 0)
        base = nil
    }

    /// A held turn that goes on holding gathered `gathered`: once `probeTurns` of them at this
    /// length are in, this length is judged against `base` (kept, or back to half as long), and a
    /// longer one is tried if there is one and no trial failed within `quietUs`.
    private mutating func adjustLength(gathered: Int, overUs: Int, nowUs: Int) {
        sampleTurns += 1
        sampleGathered += gathered
        sampleUs += overUs
        guard sampleTurns >= Self.probeTurns else { return }
        let now = Rate(gathered: sampleGathered, us: max(1, sampleUs))
        (sampleTurns, sampleGathered, sampleUs) = (0, 0, 0)
        // Kept if its rate (gathered per µs) is keepRatePercent of the base hold's, or more: judged
        // against the base, not the next shorter one, as a few per cent lost at each step add up.
        if let before = base, now.gathered * before.us * 100 < before.gathered * now.us * Self.keepRatePercent {
            holding /= 2
            if holding == holdUs { base = nil }
            noTrialBeforeUs = nowUs &+ quietUs
            return
        }
        guard holding * 2 <= longestHoldUs, nowUs >= noTrialBeforeUs else { return }
        if base == nil { base = now }
        holding *= 2
    }
}
