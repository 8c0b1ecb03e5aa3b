import Glibc
import PMLCore
import PMLPosix

/// pml's end of a worker's native handoff channel (`PML_HANDOFF_FD`, a unix stream socket): the
/// worker opts in and credits connections back with short ASCII lines (`HandoffRecord`); pml sends
/// connections as `<address>\n` with 1…maxFDs fds (SCM_RIGHTS) per message, never more than the
/// worker's credits. No ACK per connection: credits come back in batches.
final class HandoffChannel {
    /// More lines than this in one second is a flood (a worker crediting in a loop): cut off. A
    /// worker writes about one line per batch of connections it took, fewer than pml can send.
    static let maxLinesPerSecond = 50_000
    /// More hellos than this in one second is a flood too (a worker says hello once).
    static let maxHellosPerSecond = 20
    /// Bytes read per wake-up: a few hundred lines at most, so one worker never holds the loop
    /// (what is left stays in its socket; the level-triggered loop comes back for it).
    static let readBytesPerWakeUp = 4096

    /// pml's send buffer on each new worker's channel, in bytes (nil: the system's): set by
    /// `PML_HANDOFF_SNDBUF` in the daemon's environment (read once, at start), for tests that need
    /// a channel full after a few messages rather than a few hundred.
    static let sendBufferBytes: Int32? = {
        let n = HomeConfig.environmentInteger("PML_HANDOFF_SNDBUF", in: 0...(1 << 24), default: 0)
        return n > 0 ? Int32(n) : nil
    }()

    /// What a send did. `refused`: the kernel refused the fds for now (ETOOMANYREFS: too many fds
    /// in flight for pml's user, past its RLIMIT_NOFILE without CAP_SYS_RESOURCE; ENOBUFS): nothing
    /// went, the channel is fine, and a later send may go.
    enum SendResult { case sent, full, refused, closed }

    /// Whether a failed sendmsg's `errno` is a refusal for now, not a channel gone.
    static func refusedForNow(_ errno: Int32?) -> Bool { errno == ETOOMANYREFS || errno == ENOBUFS }

    private let fd: Int32
    private weak var loop: EventLoop?
    private var handle: IOHandle?
    /// Readable in the loop's interest list (`rewatch`), and whether the router wants it so.
    private var watched = true
    private var promptly = true
    /// The last read took a whole chunk: more may be waiting.
    private var lastReadFull = false
    private var input: [UInt8] = []
    private let scratch: ReadBuffer
    private var lineWindow = (start: 0, count: 0, hellos: 0)
    /// Adopted: a daemon before read this channel and may have read the head of a line.
    private var resync: Bool
    private(set) var isOpen = true
    /// What the worker said in its hello (nil: it has not opted in); `echoes`: it echoes marks.
    private(set) var hello: (maxFDs: Int, window: Int, echoes: Bool)?
    /// After a take-over, for a worker that echoes: `E <epoch> `, put before the next message sent.
    private var mark: [UInt8]?
    /// After a take-over: the epoch whose echo is awaited. Credits read before it are for what the
    /// daemon before sent (its copies died with it): they close none of this daemon's copies.
    private var awaitedEcho: Int?
    /// The echo awaited never came in time: this worker is on revision 1's rules (`pml describe` says so).
    private(set) var echoNeverCame = false
    private let onHello: (_ maxFDs: Int, _ window: Int) -> Void
    private let onCredit: (Int) -> Void
    /// A credit ignored while the echo is awaited: the worker read, so a full socket has room again
    /// (the marked message, kept when the socket was full, can go).
    private let onLateCredit: () -> Void
    /// `receiverGone`: the worker will not read what is queued for it (its end is closed, or shut
    /// down both ways). While pml holds the reclaim end, its end never closes and that queue stays.
    private let onClosed: (_ receiverGone: Bool) -> Void
    private let onGarbage: (_ why: String) -> Void

    init(fd: Int32, loop: EventLoop, scratch: ReadBuffer, resync: Bool, onHello: @escaping (Int, Int) -> Void,
         onCredit: @escaping (Int) -> Void, onLateCredit: @escaping () -> Void, onClosed: @escaping (Bool) -> Void, onGarbage: @escaping (String) -> Void) throws(SystemError) {
        self.fd = fd
        self.loop = loop
        self.scratch = scratch
        self.resync = resync
        self.onHello = onHello
        self.onCredit = onCredit
        self.onLateCredit = onLateCredit
        self.onClosed = onClosed
        self.onGarbage = onGarbage
        setNonBlocking(fd)
        input.reserveCapacity(64)
        handle = try loop.register(fd: fd, events: [.readable]) { [unowned self] _ in self.readable() }
    }

    /// A successor's view of a worker that opted in under the daemon before (state.json says so).
    /// One that echoes gets this daemon's `epoch` as a mark on the next message sent.
    func assume(maxFDs: Int, window: Int, echoes: Bool, epoch: Int) {
        hello = (maxFDs, window, echoes)
        guard echoes else { return }
        mark = Array("E \(epoch) ".utf8)
        awaitedEcho = epoch
    }

    /// What this daemon sent expired uncredited while the echo of its mark was still awaited: the worker said
    /// revision 2 but does not echo (or reads too slowly to tell). Its credits count from now on, as
    /// in revision 1 (an echo that comes after all is ignored). The epoch awaited; nil if none was.
    func giveUpOnEcho() -> Int? {
        guard let epoch = awaitedEcho else { return nil }
        (mark, awaitedEcho) = (nil, nil)
        echoNeverCame = true
        return epoch
    }

    /// Whether the loop reads the channel as lines come, or lets them wait in the socket
    /// (`ConnectionRouter.paceCredits`, which also has them read each second: `catchUp`).
    func readPromptly(_ on: Bool) {
        promptly = on
        rewatch()
    }

    /// Reads what waits in the socket now (`readPromptly(false)` left it there).
    func catchUp() {
        if isOpen { readable() }
    }

    /// Watched unless the router lets the lines wait; always before the hello and while an echo is
    /// awaited (those lines change how the rest are read), and while a read fills its whole chunk:
    /// a worker writing more than credits (a flood) is read at once, and cut off as it should be.
    private func rewatch() {
        let on = promptly || hello == nil || awaitedEcho != nil || lastReadFull
        guard isOpen, let h = handle, on != watched else { return }
        watched = on
        // Unwatched, a hang-up or an error is still reported (epoll always reports them).
        loop?.modify(h, events: on ? [.readable] : [])
    }

    /// One small chunk per wake-up, so a flooding worker shares the loop with everyone else.
    private func readable() {
        defer { rewatch() }
        switch scratch.read(fd, max: Self.readBytesPerWakeUp) {
        case .wouldBlock:
            lastReadFull = false
            return
        case .eof: return closeAndTell(receiverGone: peerClosed())
        case .data(let n):
            input.append(contentsOf: scratch.bytes.prefix(n))
            lastReadFull = n == Self.readBytesPerWakeUp
        }
        let now = monotonicMs()
        if now - lineWindow.start >= 1000 { lineWindow = (now, 0, 0) }
        var start = 0
        // Credit lines in a row are told as one (`tell`): the router's work per credit (its queue
        // drained, credits paced) is done once per read, not once per line (about one a connection).
        var credits: Int?
        while let nl = input[start...].firstIndex(of: UInt8(ascii: "\n")) {
            let line = input[start..<nl]
            start = nl + 1
            let wasResyncing = resync
            resync = false
            lineWindow.count += 1
            if lineWindow.count > Self.maxLinesPerSecond {
                guard tell(&credits) else { return }
                return cutOff("it wrote over \(Self.maxLinesPerSecond) lines a second on its handoff channel")
            }
            let record = HandoffRecord.parse(line)
            if case .credit(let n)? = record, awaitedEcho == nil {
                credits = (credits ?? 0) + n
                continue
            }
            guard tell(&credits) else { return }
            switch record {
            case .hello(let maxFDs, let window, let echoes)?:
                lineWindow.hellos += 1
                if lineWindow.hellos > Self.maxHellosPerSecond {
                    return cutOff("it said hello over \(Self.maxHellosPerSecond) times a second on its handoff channel")
                }
                // The same hello again changes nothing (and costs nothing).
                if let h = hello, h == (maxFDs, window, echoes) { break }
                hello = (maxFDs, window, echoes)
                // One that no longer echoes would never be heard again: its credits count from now on.
                if !echoes { (mark, awaitedEcho) = (nil, nil) }
                onHello(maxFDs, window)
            case .credit(let n)?:
                if awaitedEcho == nil { onCredit(n) } else { onLateCredit() }
            case .echo(let epoch)?:
                // Another epoch's echo is a daemon before's, which marked a message and died.
                if epoch == awaitedEcho { awaitedEcho = nil }
            case nil:
                if wasResyncing { continue } // the tail of a line the daemon before read the head of
                return cutOff("its handoff channel sent a line that is not a record: \(IPCChannel.sample(line))")
            }
            if !isOpen { return }
        }
        guard tell(&credits) else { return }
        input.removeFirst(start)
        if input.count > HandoffRecord.maxLineBytes { cutOff("its handoff channel sent a line over \(HandoffRecord.maxLineBytes) bytes") }
    }

    /// Tells the credits gathered from lines in a row (nil: none; a `C 0` is told too, as a read),
    /// then forgets them; false if the channel closed meanwhile (a send the credits let go failed).
    private func tell(_ credits: inout Int?) -> Bool {
        guard let n = credits else { return isOpen }
        credits = nil
        onCredit(n)
        return isOpen
    }

    /// Sends `line` with `fds` (1…8) in one message, without blocking. Partial sends cannot be
    /// resumed (the fds went with the first byte), so the line is tiny and goes whole or not at all.
    func send(_ line: [UInt8], fds: UnsafeBufferPointer<Int32>) -> SendResult {
        guard isOpen else { return .closed }
        if let m = mark {
            // The first message after a take-over carries the mark; it stays for the next if this one did not go.
            mark = nil
            let result = send(m + line, fds: fds)
            if result == .full || result == .refused { mark = m }
            return result
        }
        let n: Int
        do {
            n = try line.withUnsafeBytes { b throws(SystemError) in try ListeningSocket.send(fd, b, attaching: fds) }
        } catch {
            // Nothing of this message went out. ETOOMANYREFS, ENOBUFS: not now, but the channel is
            // fine. EPIPE, ECONNRESET: the worker's end is closed (only possible without a reclaim
            // end). Anything else: its end is there and may still be read.
            let e = (error as? SystemError)?.errno
            if Self.refusedForNow(e) { return .refused }
            closeAndTell(receiverGone: e == EPIPE || e == ECONNRESET)
            return .closed
        }
        if n == 0 { return .full }
        // Part of a line went out: the fds went with its first byte (the worker may take them), but
        // the stream is out of step: the worker is cut off like one that wrote garbage.
        if n < line.count { cutOffLater("pml could write only part of a handoff message") }
        return .sent
    }

    /// Whether the worker closed its end entirely (POLLHUP), not just shut down its writing side
    /// (SHUT_WR: it may still read what is queued for it).
    private func peerClosed() -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        return poll(&p, 1, 0) == 1 && p.revents & Int16(POLLHUP) != 0
    }

    private func cutOff(_ why: String) {
        close()
        onGarbage(why)
    }

    private func cutOffLater(_ why: String) {
        close()
        // Told from the loop, not from inside a send the router is in the middle of.
        let tell = onGarbage
        _ = loop?.schedule(after: 0) { tell(why) }
    }

    private func closeAndTell(receiverGone: Bool) {
        guard isOpen else { return }
        close()
        let tell = onClosed
        _ = loop?.schedule(after: 0) { tell(receiverGone) }
    }

    /// Stops reading and closes pml's end (shut down first: the keeper may hold a copy).
    func close() {
        guard isOpen else { return }
        isOpen = false
        closeChannelEnd(fd, &handle, loop: loop, input: &input)
    }

    deinit { close() }
}
