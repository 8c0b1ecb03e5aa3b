/// One record on the link between the keeper (`pml daemon`, which outlives daemons) and the
/// daemon it runs. Each record is one SOCK_SEQPACKET message of text; `hold` and `held` carry
/// exactly one fd as SCM_RIGHTS. See docs/ARCHITECTURE.md, "Life of a daemon death".
public enum KeeperMessage: Equatable, Sendable {
    // daemon → keeper
    /// Keep a duplicate of the attached fd under `tag` (replacing one of the same tag).
    case hold(tag: String)
    /// Close every fd whose tag starts with `prefix`.
    case drop(prefix: String)
    /// Send me everything you hold (a successor, at start), then `end`.
    case hello
    /// The daemon serves (its control socket is up): from now on its death is a crash.
    case up
    /// The daemon is about to exit cleanly (pml kill, SIGTERM): the keeper exits after it.
    case bye
    /// The daemon is about to exit so that a new one takes over at once (pml update).
    case update
    /// Logs were reopened (`pml reloadLogs`, SIGUSR2): the keeper reopens daemon.log, its stderr.
    case reopenLog
    // keeper → daemon
    /// One fd the keeper holds, under its tag.
    case held(tag: String)
    /// Every held fd has been sent.
    case end
    /// A process the keeper reaped (an adopted worker, or an orphan): waitpid's outcome.
    case exit(pid: Int32, code: Int32?, signal: Int32?)

    /// Longest record either side sends or accepts.
    public static let maxBytes = 1024

    /// Whether the record carries one fd.
    public var carriesFD: Bool {
        switch self {
        case .hold, .held: return true
        default: return false
        }
    }

    /// The record's text.
    public var encoded: String {
        switch self {
        case .hold(let tag): return "hold " + tag
        case .drop(let prefix): return "drop " + prefix
        case .hello: return "hello"
        case .up: return "up"
        case .bye: return "bye"
        case .update: return "update"
        case .reopenLog: return "reopen-log"
        case .held(let tag): return "held " + tag
        case .end: return "end"
        case .exit(let pid, let code, let signal):
            return "exit \(pid) \(code.map(String.init) ?? "-") \(signal.map(String.init) ?? "-")"
        }
    }

    /// Parses a record; nil for anything malformed (the receiver ignores it).
    public static func parse(_ bytes: ArraySlice<UInt8>) -> KeeperMessage? {
        guard bytes.count <= maxBytes, !bytes.contains(0), !bytes.contains(UInt8(ascii: "\n")) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        let (word, rest): (Substring, Substring)
        if let space = text.firstIndex(of: " ") {
            (word, rest) = (text[..<space], text[text.index(after: space)...])
        } else {
            (word, rest) = (text[...], "")
        }
        switch word {
        case "hold": return validTag(rest) ? .hold(tag: String(rest)) : nil
        case "held": return validTag(rest) ? .held(tag: String(rest)) : nil
        case "drop": return rest.isEmpty ? nil : .drop(prefix: String(rest))
        case "hello": return text == "hello" ? .hello : nil
        case "up": return text == "up" ? .up : nil
        case "bye": return text == "bye" ? .bye : nil
        case "update": return text == "update" ? .update : nil
        case "reopen-log": return text == "reopen-log" ? .reopenLog : nil
        case "end": return text == "end" ? .end : nil
        case "exit":
            let f = rest.split(separator: " ", omittingEmptySubsequences: false)
            guard f.count == 3, let pid = Int32(f[0]), pid > 0 else { return nil }
            func field(_ s: Substring) -> Int32?? { s == "-" ? .some(nil) : Int32(s).map { .some($0) } }
            guard let code = field(f[1]), let signal = field(f[2]), (code == nil) != (signal == nil) else { return nil }
            return .exit(pid: pid, code: code, signal: signal)
        default: return nil
        }
    }

    private static func validTag(_ tag: Substring) -> Bool { !tag.isEmpty && tag.utf8.count <= 256 }
}

/// The tags under which a daemon asks its keeper to hold fds.
public enum KeeperTag {
    /// The control socket `pml.sock` (listening).
    public static let control = "control"
    /// The workers' NOTIFY_SOCKET.
    public static let notify = "notify"
    /// The metrics listener (`metrics_listen`) and the dashboard's (`dashboard_listen`).
    public static let metrics = "metrics"
    public static let dashboard = "dashboard"
    /// A worker process's fds: pml's end of its IPC channel, the read ends of its stdout/stderr.
    public static func worker(pid: Int32) -> String { "w.\(pid)." }
    public static func ipc(pid: Int32) -> String { worker(pid: pid) + "ipc" }
    /// pml's end of the worker's native handoff channel (rr, least-busy).
    public static func handoff(pid: Int32) -> String { worker(pid: pid) + "hof" }
    /// pml's copy of the worker's own end of that channel (the reclaim end): what the worker never
    /// read is taken back from it once the worker is gone, by this daemon or a successor.
    public static func reclaim(pid: Int32) -> String { worker(pid: pid) + "rcl" }
    /// The pid in a tag `reclaim(pid:)` makes; nil for any other tag.
    public static func reclaimPID(_ tag: String) -> Int32? {
        guard tag.hasPrefix("w."), tag.hasSuffix(".rcl"), let pid = Int32(tag.dropFirst(2).dropLast(4)), pid > 0 else { return nil }
        return pid
    }
    public static func out(pid: Int32) -> String { worker(pid: pid) + "out" }
    public static func err(pid: Int32) -> String { worker(pid: pid) + "err" }
    /// A listening socket; unique across daemons: `generation` is the daemon's own random token
    /// (a daemon's pid can be recycled by a later one while listeners tagged under it are still
    /// held, adopted from daemon to daemon), `id` its listener id. Ends in a dot, so that dropping
    /// it as a prefix drops its reuseport slots and no other listener.
    public static func listener(generation: String, id: Int) -> String { "l.\(generation).\(id)." }
    /// A daemon's generation token: 64 random bits, in hex.
    public static func generation(_ bits: UInt64) -> String { String(bits, radix: 16) }
    /// The SO_REUSEPORT socket of `slot` of a reuseport listener.
    public static func slot(listener: String, slot: Int) -> String { "\(listener)s\(slot)." }

    /// Whether `tag` is one `listener(generation:id:)` makes: "l.", 1 to 16 hex digits, ".", a
    /// decimal id, ".". Only such a tag read back from state.json is used: the keeper drops by
    /// prefix, and "w." would name every worker's fds.
    public static func isListener(_ tag: String) -> Bool {
        let parts = tag.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        func all(_ part: String.UTF8View.SubSequence, max: Int, _ ok: (UInt8) -> Bool) -> Bool {
            (1...max).contains(part.count) && part.allSatisfy(ok)
        }
        return parts.count == 4 && parts[0].elementsEqual("l".utf8) && parts[3].isEmpty
            && all(parts[1], max: 16) { (48...57).contains($0) || (97...102).contains($0) }
            && all(parts[2], max: 19) { (48...57).contains($0) }
    }
}

/// What the keeper tells a daemon it starts about the one before it (`PML_PREDECESSOR`).
public struct Predecessor: Equatable, Sendable {
    public var pid: Int32
    /// When the keeper saw it end (ms since the epoch).
    public var endedAtMs: Int
    /// `pml update` asked for the hand-over; false: it died.
    public var updated: Bool

    public init(pid: Int32, endedAtMs: Int, updated: Bool) {
        self.pid = pid
        self.endedAtMs = endedAtMs
        self.updated = updated
    }

    public var encoded: String { "\(pid) \(endedAtMs) \(updated ? "update" : "died")" }

    public static func parse(_ text: String) -> Predecessor? {
        let f = text.split(separator: " ")
        guard f.count == 3, let pid = Int32(f[0]), pid > 0, let at = Int(f[1]), f[2] == "update" || f[2] == "died" else { return nil }
        return Predecessor(pid: pid, endedAtMs: at, updated: f[2] == "update")
    }
}

/// A running worker as state.json records it, so a successor daemon can adopt the process.
public struct SavedWorker: Codable, Sendable, Equatable {
    public var id: Int
    public var instance: Int
    public var pid: Int32
    /// Field 22 of /proc/<pid>/stat (clock ticks after boot): tells the process from a recycled pid.
    public var startTime: UInt64
    /// CLOCK_MONOTONIC ms when it started (system-wide, so uptime carries over).
    public var startedAtMs: Int
    public var status: WorkerStatus
    public var restarts: Int
    public var unstableRestarts: Int
    public var backoffStep: Int
    /// Listeners (their `tag`) this worker asked for through the Node preload.
    public var listening: [String]
    public var dispatched: Int
    /// Why pml was stopping it ("stop", "restart", "delete"), if it was.
    public var intent: String?
    /// It opted in on its native handoff channel: [max fds per message, window].
    public var handoff: [Int]?

    enum CodingKeys: String, CodingKey {
        case id, instance, pid, status, restarts, listening, dispatched, intent, handoff
        case startTime = "start_time", startedAtMs = "started_at_ms", unstableRestarts = "unstable_restarts"
        case backoffStep = "backoff_step"
    }

    public init(id: Int, instance: Int, pid: Int32, startTime: UInt64, startedAtMs: Int, status: WorkerStatus,
                restarts: Int, unstableRestarts: Int, backoffStep: Int, listening: [String], dispatched: Int, intent: String? = nil,
                handoff: [Int]? = nil) {
        self.id = id
        self.instance = instance
        self.pid = pid
        self.startTime = startTime
        self.startedAtMs = startedAtMs
        self.status = status
        self.restarts = restarts
        self.unstableRestarts = unstableRestarts
        self.backoffStep = backoffStep
        self.listening = listening
        self.dispatched = dispatched
        self.intent = intent
        self.handoff = handoff
    }
}

/// A socket pml holds for an app, as state.json records it: the keeper holds a copy under `tag`.
public struct SavedListener: Codable, Sendable, Equatable {
    public var tag: String
    /// The bound address (its port is the one actually bound).
    public var address: ListenAddress
    public var requestedPort: Int?
    /// reuseport: the slots whose sockets the keeper holds (the listener itself has no socket).
    public var slots: [Int]?

    enum CodingKeys: String, CodingKey { case tag, address, slots, requestedPort = "requested_port" }

    public init(tag: String, address: ListenAddress, requestedPort: Int?, slots: [Int]? = nil) {
        self.tag = tag
        self.address = address
        self.requestedPort = requestedPort
        self.slots = slots
    }
}

/// Field 22 (starttime) of a /proc/<pid>/stat line; nil if it cannot be read.
public func procStartTime(stat bytes: [UInt8]) -> UInt64? {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return nil }
    let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "))
    // After ')': state is field 3, so starttime (22) is index 19.
    guard fields.count > 19 else { return nil }
    return UInt64(String(decoding: fields[fields.startIndex + 19], as: UTF8.self))
}
