import FoundationEssentials
import Glibc
import PMLCore
import PMLPosix

/// pml's end of a worker's IPC socket: one JSON value per line, Node's own format, both ways.
/// Handles (accepted connections) ride as SCM_RIGHTS on the write that starts their line.
final class IPCChannel {
    /// A line longer than this is garbage: the channel is cut off rather than buffered without bound.
    static let maxLineBytes = 1 << 20
    /// A worker that leaves this much unread is not reading its channel: cut off.
    static let maxQueuedBytes = 16 << 20
    /// Lines that are not JSON are dropped (a worker's stray write to the wrong fd); more than
    /// this many in 10 s is a flood, and the channel is cut off.
    static let maxGarbageLines = 100

    private struct Outgoing {
        var bytes: [UInt8]
        var offset = 0
        /// A duplicate of the handle, sent with the first byte of the line and then closed (-1);
        /// pml keeps its own copy until the ACK.
        var fd: Int32
    }

    private let fd: Int32
    private weak var loop: EventLoop?
    private var handle: IOHandle?
    private var input: [UInt8] = []
    private var output: [Outgoing] = []
    private var queuedBytes = 0
    private let scratch: ReadBuffer
    private var wantsWritable = false
    private let onMessage: (ScriptValue) -> Void
    private let onAck: () -> Void
    private let onLoad: (Int) -> Void
    private let onGarbage: (_ why: String, _ count: Int, _ cutOff: Bool) -> Void
    private var garbage = EventWindow(limit: IPCChannel.maxGarbageLines, windowMs: 10_000)
    private(set) var isOpen = true
    /// Whether a handle was still queued, not sent, when the channel closed: a handle sent before
    /// sits in the worker's socket buffer, and the worker may take it even after the close.
    private(set) var closedWithUnsentHandle = false
    /// Adopted from a daemon that died: it may have read part of the first line; an unreadable
    /// first line is that line's tail and is skipped rather than taken for garbage.
    private var resync: Bool
    /// Node's acknowledgement, by far the most frequent line: recognised without a JSON parser.
    private static let ackLine = Array(#"{"cmd":"NODE_HANDLE_ACK"}"#.utf8)
    /// pml's preload reporting how many handed connections it has closed in all (least-busy), the
    /// next most frequent: `{"type":"pml:load","closed":12}`, also recognised without a JSON parser.
    private static let loadPrefix = Array(#"{"type":"pml:load","closed":"#.utf8)

    init(fd: Int32, loop: EventLoop, scratch: ReadBuffer, resync: Bool = false, onMessage: @escaping (ScriptValue) -> Void,
         onAck: @escaping () -> Void, onLoad: @escaping (Int) -> Void,
         onGarbage: @escaping (_ why: String, _ count: Int, _ cutOff: Bool) -> Void) throws(SystemError) {
        self.fd = fd
        self.resync = resync
        self.loop = loop
        self.scratch = scratch
        self.onMessage = onMessage
        self.onAck = onAck
        self.onLoad = onLoad
        self.onGarbage = onGarbage
        setNonBlocking(fd)
        handle = try loop.register(fd: fd, events: [.readable]) { [unowned self] events in self.ready(events) }
    }

    private func ready(_ events: IOEvents) {
        if events.contains(.writable) { flush() }
        if isOpen, events.contains(.readable) || events.contains(.hangup) { readable() }
    }

    /// Reads one chunk per wake-up, so a flooding worker shares the loop with everyone else.
    private func readable() {
        let result = scratch.read(fd)
        switch result {
        case .wouldBlock:
            return
        case .eof:
            close()
            return
        case .data(let n):
            input.append(contentsOf: scratch.bytes.prefix(n))
        }
        var start = 0
        while let nl = input[start...].firstIndex(of: UInt8(ascii: "\n")) {
            let line = input[start..<nl]
            start = nl + 1
            if line.isEmpty { continue }
            if line.elementsEqual(Self.ackLine) {
                resync = false
                onAck()
                if !isOpen { return }
                continue
            }
            if let n = Self.loadReport(line) {
                onLoad(n)
                if !isOpen { return }
                continue
            }
            let wasResyncing = resync
            resync = false
            guard let value = try? JSONDecoder().decode(ScriptValue.self, from: Data(line)) else {
                // The tail of a line the daemon before read the head of: not the worker's fault.
                if wasResyncing { continue }
                let (count, flood) = garbage.record(atMs: monotonicMs())
                if flood {
                    return cutOff("its IPC channel sent more than \(Self.maxGarbageLines) lines that are not JSON within 10 s", count: count)
                }
                onGarbage("a line on its IPC channel is not JSON (dropped): \(Self.sample(line))", count, false)
                if !isOpen { return }
                continue
            }
            onMessage(value)
            if !isOpen { return }
        }
        input.removeFirst(start)
        if input.count > Self.maxLineBytes { cutOff("its IPC channel sent a line over 1 MiB", count: 1) }
    }

    /// The start of a bad line, printable, for the log.
    static func sample(_ line: ArraySlice<UInt8>) -> String {
        let text = String(decoding: line.prefix(60), as: UTF8.self).unicodeScalars
            .map { $0.properties.generalCategory == .control ? "?" : String($0) }.joined()
        return "\"" + text + (line.count > 60 ? "…" : "") + "\""
    }

    /// The count in `{"type":"pml:load","closed":<digits>}` (at most 15), or nil if the line is
    /// anything else (then it goes through the JSON parser like any message).
    static func loadReport(_ line: ArraySlice<UInt8>) -> Int? {
        guard line.count > loadPrefix.count + 1, line.count <= loadPrefix.count + 16, line.last == UInt8(ascii: "}"),
              line.starts(with: loadPrefix) else { return nil }
        var n = 0
        for b in line.dropFirst(loadPrefix.count).dropLast() {
            guard b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") else { return nil }
            n = n * 10 + Int(b - UInt8(ascii: "0"))
        }
        return n
    }

    /// Queues one JSON value as a line. False if the channel is closed.
    @discardableResult
    func send(_ value: ScriptValue) -> Bool {
        guard let data = try? JSONEncoder().encode(value) else { return false }
        return send(line: Array(data), attaching: -1)
    }

    /// Queues a line, with `fd` passed alongside its first byte (-1: none). False if closed.
    @discardableResult
    func send(line: [UInt8], attaching handleFD: Int32) -> Bool {
        send(terminatedLine: line + [UInt8(ascii: "\n")], attaching: handleFD)
    }

    /// Sends a line that already ends in a newline, with `fd` alongside its first byte (-1: none).
    /// False if closed (or refused for now: see `offer`).
    @discardableResult
    func send(terminatedLine line: [UInt8], attaching handleFD: Int32) -> Bool {
        offer(terminatedLine: line, attaching: handleFD) == .sent
    }

    /// Sends (or queues) a line that already ends in a newline, with `fd` alongside its first byte
    /// (-1: none). The usual case, nothing queued, is one sendmsg straight from the caller's bytes
    /// (no copy, no allocation: the per-connection path). `refused`: the kernel would not take the
    /// fd now (ETOOMANYREFS, ENOBUFS): nothing went, and the channel stays open.
    func offer(terminatedLine line: [UInt8], attaching handleFD: Int32) -> HandoffChannel.SendResult {
        guard isOpen else { return .closed }
        var offset = 0
        let wasIdle = output.isEmpty
        if wasIdle {
            do {
                offset = try line.withUnsafeBytes { try ListeningSocket.send(fd, $0, attaching: handleFD) }
            } catch {
                if HandoffChannel.refusedForNow((error as? SystemError)?.errno) { return .refused }
                close()
                return .closed
            }
            if offset == line.count { return .sent }
        }
        // A queued handle keeps its own duplicate: pml's copy may be closed (ACK timeout) before the
        // line goes out, and its number reused for another socket.
        let queuedFD = offset > 0 || handleFD < 0 ? -1 : fcntl(handleFD, F_DUPFD_CLOEXEC, 0)
        output.append(Outgoing(bytes: line, offset: offset, fd: queuedFD))
        queuedBytes += line.count - offset
        if queuedBytes > Self.maxQueuedBytes {
            let why = "it left \(queuedBytes) bytes of its IPC channel unread"
            close()
            // Told from the loop, not from inside this send: the caller (a hand-out in the middle of
            // the router's drain) finishes first.
            _ = loop?.schedule(after: 0) { [weak self] in self?.onGarbage(why, 0, true) }
            return .closed
        }
        if wasIdle { flush() } // the socket is full: this registers for writability
        return isOpen ? .sent : .closed
    }

    private func flush() {
        while isOpen, !output.isEmpty {
            let n: Int
            do {
                n = try output[0].bytes.withUnsafeBytes { buf in
                    try ListeningSocket.send(fd, UnsafeRawBufferPointer(rebasing: buf[output[0].offset...]), attaching: output[0].fd)
                }
            } catch {
                // EPIPE / ECONNRESET: the worker closed its end or died; its exit is handled elsewhere.
                close()
                return
            }
            if n == 0 {
                if let handle, !wantsWritable {
                    wantsWritable = true
                    loop?.modify(handle, events: [.readable, .writable])
                }
                return
            }
            if output[0].fd >= 0 { closeFD(output[0].fd) }
            output[0].fd = -1
            output[0].offset += n
            queuedBytes -= n
            if output[0].offset == output[0].bytes.count { output.removeFirst() }
        }
        // Only touch epoll when the socket had filled up: the usual send is a single sendmsg.
        if let handle, wantsWritable {
            wantsWritable = false
            loop?.modify(handle, events: [.readable])
        }
    }

    private func cutOff(_ why: String, count: Int) {
        close()
        onGarbage(why, count, true)
    }

    /// Stops reading and writing and closes pml's end; the worker sees EOF on its channel.
    func close() {
        guard isOpen else { return }
        isOpen = false
        closeChannelEnd(fd, &handle, loop: loop, input: &input)
        closedWithUnsentHandle = output.contains { $0.fd >= 0 }
        for o in output where o.fd >= 0 { closeFD(o.fd) }
        output.removeAll()
    }

    deinit { close() }
}

/// Closes pml's end `fd` of a worker's channel: out of `loop`, shut down first (the keeper may hold
/// a copy of the socket, and the worker must see EOF all the same), closed; unparsed `input` is dropped.
func closeChannelEnd(_ fd: Int32, _ handle: inout IOHandle?, loop: EventLoop?, input: inout [UInt8]) {
    if let h = handle { loop?.unregister(h) }
    handle = nil
    _ = shutdown(fd, Int32(SHUT_RDWR))
    closeFD(fd)
    input.removeAll()
}
