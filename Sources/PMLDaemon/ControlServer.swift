import FoundationEssentials
import Glibc
import Logging
import PMLCore
import PMLPosix

/// Serves the control socket: one JSON request per line, one JSON response per line.
final class ControlServer {
    /// More clients than this at once are answered with an error and closed.
    static let maxConnections = 256
    /// A client with no request under way and nothing sent or received for this long is closed
    /// (one that waits for a long operation is not idle: its request is under way). 60 s, or
    /// `PML_CONTROL_IDLE_MS` in the daemon's environment (read once, at start).
    static let idleTimeoutMs = HomeConfig.environmentInteger("PML_CONTROL_IDLE_MS", in: 100...CheckedNumber.maxDelayMs, default: 60_000)

    private let fd: Int32
    private let loop: EventLoop
    private let logger: Logger
    private let handler: (ControlRequest, @escaping (ControlResponse) -> Void) -> Void
    private var handle: IOHandle?
    private var connections: [ObjectIdentifier: ControlConnection] = [:]
    private let backoff: AcceptBackoff

    /// Serves the listening socket `fd` (bound at `pml.sock`, 0600, non-blocking).
    init(listening fd: Int32, loop: EventLoop, logger: Logger,
         handler: @escaping (ControlRequest, @escaping (ControlResponse) -> Void) -> Void) throws(SystemError) {
        self.fd = fd
        self.loop = loop
        self.logger = logger
        self.handler = handler
        backoff = AcceptBackoff(loop: loop, logger: logger, what: "control socket")
        handle = try loop.register(fd: fd, events: [.readable]) { [unowned self] _ in self.acceptAll() }
        scheduleIdleSweep()
    }

    private func scheduleIdleSweep() {
        loop.schedule(after: Self.idleTimeoutMs / 4) { [weak self] in
            guard let self else { return }
            let now = monotonicMs()
            for c in self.connections.values where c.idle(since: now - Self.idleTimeoutMs) { c.closeIdle() }
            self.scheduleIdleSweep()
        }
    }

    private func acceptAll() {
        while true {
            guard let client = UnixSocket.accept(fd) else {
                backoff.pauseIfOutOfDescriptors(handle) { [weak self] in
                    if let self, let h = self.handle { self.loop.modify(h, events: [.readable]) }
                }
                return
            }
            if connections.count >= Self.maxConnections {
                // A best-effort answer (the socket buffer of a new connection has room), then closed.
                let line = (try? JSONEncoder().encode(ControlResponse.failure("the daemon has \(Self.maxConnections) clients already; try again"))) ?? Data()
                _ = (line + Data([UInt8(ascii: "\n")])).withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
                closeFD(client)
                continue
            }
            // The socket is 0600 already; the uid check also covers a home folder with loose permissions.
            guard UnixSocket.peerUID(client) == getuid() else {
                logger.warning("refused a control connection from another user")
                closeFD(client)
                continue
            }
            do {
                let c = try ControlConnection(fd: client, loop: loop, handler: handler) { [unowned self] c in
                    self.connections[ObjectIdentifier(c)] = nil
                }
                connections[ObjectIdentifier(c)] = c
            } catch {
                closeFD(client)
            }
        }
    }
}

/// One client of the control socket. Requests are answered in order; a malformed one gets an
/// error response and the connection is closed after it is written. A client that does not read
/// its answers is not read either while more than `maxOutputBytes` wait for it, and is closed once
/// they have not moved for the idle time.
final class ControlConnection {
    /// Past this many unsent bytes, no further request is read or answered until the client reads.
    static let maxOutputBytes = 1 << 20

    private let fd: Int32
    private let loop: EventLoop
    private var handle: IOHandle?
    private var input: [UInt8] = []
    private var output: [UInt8] = []
    private var busy = false
    private var lastActivityMs = monotonicMs()
    /// When unsent output last shrank (or appeared): a client that stops reading is closed by it.
    private var lastOutputProgressMs = monotonicMs()
    /// Inside `processInput`: an answer given at once continues its loop instead of recursing.
    private var processing = false
    private var closeWhenFlushed = false
    private var closed = false
    private let handler: (ControlRequest, @escaping (ControlResponse) -> Void) -> Void
    private let onClose: (ControlConnection) -> Void

    init(fd: Int32, loop: EventLoop, handler: @escaping (ControlRequest, @escaping (ControlResponse) -> Void) -> Void,
         onClose: @escaping (ControlConnection) -> Void) throws(SystemError) {
        self.fd = fd
        self.loop = loop
        self.handler = handler
        self.onClose = onClose
        handle = try loop.register(fd: fd, events: [.readable]) { [unowned self] events in self.ready(events) }
    }

    private func ready(_ events: IOEvents) {
        if events.contains(.writable) { flush() }
        if closed || output.count > Self.maxOutputBytes { return }
        if events.contains(.readable) || events.contains(.hangup) { readInput() }
    }

    private func readInput() {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let result = chunk.withUnsafeMutableBytes { (try? readSome(fd, into: $0)) ?? .eof }
        switch result {
        case .wouldBlock: return
        case .eof:
            // The client is gone (or half-closed): finish writing what is pending, then close.
            // Stop watching: a hung-up socket would wake the loop until the answer is ready.
            if output.isEmpty && !busy { return close() }
            closeWhenFlushed = true
            if let handle { loop.unregister(handle) }
            handle = nil
            return
        case .data(let n):
            input.append(contentsOf: chunk[0..<n])
            lastActivityMs = monotonicMs()
        }
        processInput()
    }

    /// No request under way, nothing left to write, and quiet since `cutoff`; or output waiting
    /// that the client has not taken any of since `cutoff`.
    func idle(since cutoff: Int) -> Bool {
        output.isEmpty ? !busy && lastActivityMs < cutoff : lastOutputProgressMs < cutoff
    }

    func closeIdle() { close() }

    private func processInput() {
        guard !processing else { return }
        processing = true
        defer { processing = false }
        while !busy, !closeWhenFlushed, !closed, output.count <= Self.maxOutputBytes,
              let nl = input.firstIndex(of: UInt8(ascii: "\n")) {
            let line = Data(input[..<nl])
            input.removeSubrange(...nl)
            let request: ControlRequest
            do {
                request = try JSONDecoder().decode(ControlRequest.self, from: line)
            } catch {
                return fail("malformed request: not a pml control message (protocol v\(ControlProtocol.version), one JSON object per line)")
            }
            guard request.v == ControlProtocol.version else {
                return fail("protocol version \(request.v) is not supported; this daemon speaks v\(ControlProtocol.version) (restart it with \"pml kill\")")
            }
            busy = true
            handler(request) { [weak self] response in self?.send(response) }
        }
        if !closed, input.count > ControlProtocol.maxRequestBytes { fail("request longer than \(ControlProtocol.maxRequestBytes) bytes") }
    }

    private func fail(_ message: String) {
        input.removeAll()
        closeWhenFlushed = true
        enqueue(.failure(message))
    }

    private func send(_ response: ControlResponse) {
        busy = false
        lastActivityMs = monotonicMs()
        enqueue(response)
        if !closed { processInput() }
    }

    private func enqueue(_ response: ControlResponse) {
        guard !closed else { return }
        if let data = try? JSONEncoder().encode(response) {
            if output.isEmpty { lastOutputProgressMs = monotonicMs() }
            output.append(contentsOf: data)
            output.append(UInt8(ascii: "\n"))
        }
        flush()
    }

    private func flush() {
        while !output.isEmpty {
            let n = output.withUnsafeBytes { send_nosignal($0) }
            if n > 0 {
                output.removeFirst(n)
                lastOutputProgressMs = monotonicMs()
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                guard let handle else { return close() }
                // Over the bound, only writing is watched: the client's next requests wait in its socket.
                loop.modify(handle, events: output.count > Self.maxOutputBytes ? [.writable] : [.readable, .writable])
                return
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return close()
            }
        }
        if closeWhenFlushed && !busy { return close() }
        if let handle { loop.modify(handle, events: [.readable]) }
        // Requests read before the bound was reached are answered now.
        if !busy && !input.isEmpty { processInput() }
    }

    private func send_nosignal(_ buf: UnsafeRawBufferPointer) -> Int {
        Glibc.send(fd, buf.baseAddress, buf.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
    }

    private func close() {
        guard !closed else { return }
        closed = true
        if let handle { loop.unregister(handle) }
        handle = nil
        closeFD(fd)
        onClose(self)
    }
}
