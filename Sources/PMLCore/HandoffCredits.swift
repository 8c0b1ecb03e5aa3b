/// What a worker writes on pml's native handoff channel (`PML_HANDOFF_FD`): one ASCII line per
/// record, parsed here without a JSON parser (docs/PROTOCOL.md, "Native handoff").
public enum HandoffRecord: Equatable, Sendable {
    /// `H <max fds per message> <window> [<revision>]`: the worker takes connections on this
    /// channel from now on, at most `window` not yet credited back, at most `maxFDs` per message.
    /// `echoes`: revision 2 or later, it echoes the mark a successor daemon puts on its first message.
    case hello(maxFDs: Int, window: Int, echoes: Bool)
    /// `C <n>`: the worker took `n` more connections; pml may send `n` more.
    case credit(Int)
    /// `E <epoch>`: the worker read the message marked `E <epoch> `; its credits for everything it
    /// read before that message came before this line, those for that message and later after it.
    case echo(Int)

    /// The revision of this protocol pml speaks, told to workers as `PML_HANDOFF_REVISION`; a
    /// worker that says 2 or more in its hello echoes marks (a hello without one is revision 1).
    public static let revision = 2

    /// The most fds pml sends in one message (what one sendmsg carries in pml's C shim).
    public static let maxFDsPerMessage = 8
    /// The most connections a worker may have in flight: what it loses at worst if it dies.
    public static let maxWindow = 64
    /// A longer line is garbage.
    public static let maxLineBytes = 32

    /// The most messages pml reads back from a worker's reclaim end at once: more than any socket's
    /// send buffer queues (a few hundred messages), so never reached but by a bug; the rest are reset.
    public static let maxReclaimedMessages = 1024

    /// The address a chunk read back from a worker's reclaim end names: the fds of a `recvmsg` on a
    /// unix stream socket came with its last message (the kernel stops after the one that carries
    /// fds, and may have glued before it the fd-less tail of one the worker read in part), so they
    /// belong to the chunk's last line, `<address>\n` or `E <epoch> <address>\n` (a successor's mark;
    /// no address starts with `E `). Nil if the chunk does not end a line or names nothing.
    public static func reclaimedAddress(_ chunk: ArraySlice<UInt8>) -> ArraySlice<UInt8>? {
        guard chunk.last == UInt8(ascii: "\n") else { return nil }
        let body = chunk.dropLast()
        var line = body[(body.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? body.startIndex)...]
        if line.starts(with: "E ".utf8) {
            let rest = line.dropFirst(2)
            guard let space = rest.firstIndex(of: UInt8(ascii: " ")), space > rest.startIndex,
                  rest[..<space].allSatisfy({ (48...57).contains($0) }) else { return nil }
            line = rest[(space + 1)...]
        }
        return line.isEmpty ? nil : line
    }

    /// Parses one line (without its newline); nil if it is not a record. Absurd numbers are
    /// clamped (window 1...maxWindow, fds 1...maxFDsPerMessage, credits 0...maxWindow), not refused.
    /// Inlinable: specialized in the daemon for its byte slices (unspecialized, the generic calls
    /// per byte cost more than the read of the line).
    @inlinable
    public static func parse(_ line: some Collection<UInt8>) -> HandoffRecord? {
        guard line.count <= maxLineBytes, let kind = line.first else { return nil }
        // At most three numbers, kept in locals: this runs once per credit batch.
        var numbers = (0, 0, 0)
        var found = 0
        var current: Int?
        func finish() -> Bool {
            guard let c = current else { return true }
            current = nil
            found += 1
            switch found {
            case 1: numbers.0 = c
            case 2: numbers.1 = c
            case 3: numbers.2 = c
            default: return false
            }
            return true
        }
        for b in line.dropFirst() {
            if b == UInt8(ascii: " ") {
                guard finish() else { return nil }
                continue
            }
            guard b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") else { return nil }
            // Saturates: a 30-digit credit is absurd, not an overflow.
            current = min((current ?? 0) * 10 + Int(b - UInt8(ascii: "0")), 1_000_000_000)
        }
        guard finish() else { return nil }
        switch (kind, found) {
        case (UInt8(ascii: "H"), 2), (UInt8(ascii: "H"), 3):
            return .hello(maxFDs: min(max(numbers.0, 1), maxFDsPerMessage), window: min(max(numbers.1, 1), maxWindow),
                          echoes: numbers.2 >= revision)
        case (UInt8(ascii: "C"), 1):
            return .credit(min(numbers.0, maxWindow))
        case (UInt8(ascii: "E"), 1):
            return .echo(numbers.0)
        default:
            return nil
        }
    }
}

/// The connections sent to one worker on its handoff channel and not yet credited back, oldest
/// first, in fixed storage (no allocation per connection): when each was sent, for the window and
/// the expiry, and pml's copy of it where pml keeps one (fd -1 where it does not: pml holds the
/// worker's reclaim end instead, and takes back from it what the worker never read). A credit
/// removes the oldest (closing its copy); if the worker dies, the copies left go to another worker.
/// Credits still due for entries expired unread are counted apart and paid first, so a late credit
/// never removes the entry (or closes the copy) of a newer, unread connection.
public struct HeldHandles: Sendable {
    /// One connection in flight: pml's copy (-1: none), the listener it came from, when it was sent.
    public struct Entry: Sendable, Equatable {
        public var fd: Int32
        public var listener: Int
        public var sinceMs: Int
    }

    private var entries: [Entry]
    private var head = 0
    public private(set) var count = 0
    /// Credits the worker still owes for copies pml no longer holds (at most `capacity`).
    public private(set) var due = 0
    /// When the worker last credited (nil: never).
    public private(set) var lastCreditMs: Int?

    public init(capacity: Int) {
        entries = Array(repeating: Entry(fd: -1, listener: -1, sinceMs: 0), count: max(capacity, 1))
    }

    public var capacity: Int { entries.count }

    /// Keeps `fd` of `listener` (sent at `ms`); false when full.
    public mutating func push(_ fd: Int32, listener: Int, atMs ms: Int) -> Bool {
        guard count < entries.count else { return false }
        entries[(head + count) % entries.count] = Entry(fd: fd, listener: listener, sinceMs: ms)
        count += 1
        return true
    }

    /// The oldest, removed; nil when empty.
    public mutating func pop() -> Entry? {
        guard count > 0 else { return nil }
        let e = entries[head]
        entries[head].fd = -1
        head = (head + 1) % entries.count
        count -= 1
        return e
    }

    /// The worker credited `n` at `ms`: what is `due` is paid first, then the oldest copies are
    /// removed and given to `close`.
    public mutating func credit(_ n: Int, atMs ms: Int, close: (Entry) -> Void) {
        lastCreditMs = ms
        let paid = min(due, max(n, 0))
        due -= paid
        for _ in 0..<max(n - paid, 0) {
            guard let e = pop() else { break }
            close(e)
        }
    }

    /// Copies sent before `cutoff` and still not credited are removed and given to `close`. A copy
    /// older than the worker's last credit was read (the channel is in order) but its credit was
    /// lost (a message whose fd did not arrive): its credit comes back now (counted in `returned`).
    /// A younger one was not read yet: its credit is `due` when the worker gets to it.
    public mutating func expire(before cutoff: Int, close: (Entry) -> Void) -> (closed: Int, returned: Int) {
        var closed = 0, returned = 0
        while let oldest = oldestMs, oldest < cutoff, let e = pop() {
            close(e)
            closed += 1
            if let last = lastCreditMs, last > e.sinceMs { returned += 1 } else { due = min(due + 1, capacity) }
        }
        return (closed, returned)
    }

    /// Forgets the credits `due` (the worker's credits for them were ignored and will not come
    /// again); how many there were.
    public mutating func forgiveDue() -> Int {
        defer { due = 0 }
        return due
    }

    /// When the oldest was sent; nil when empty.
    public var oldestMs: Int? { count > 0 ? entries[head].sinceMs : nil }
}
