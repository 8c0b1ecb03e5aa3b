import Glibc
import Logging
import PMLCore
import PMLPosix

/// A small HTTP/1.1 server on the daemon's event loop, for the dashboard and the metrics listener:
/// non-blocking sockets, one request per connection (`Connection: close`), and bounds on
/// everything a client controls — connections, streams, request size, time to send a request,
/// and output a slow reader leaves unread (the connection is dropped rather than buffered for).
/// Out of descriptors, the listener leaves the loop for a moment (`AcceptBackoff`).
final class HTTPListener {
    /// What clients cannot exceed.
    struct Limits {
        var maxConnections = 32
        /// Server-sent-event streams open at once (each holds a connection).
        var maxStreams = 8
        /// Time to send a whole request (a browser on loopback needs milliseconds).
        var requestTimeoutMs = 5000
        var maxHead = 16 * 1024
        var maxBody = 16 * 1024
        /// Output queued for a connection beyond which its reader counts as gone.
        var maxPending = 256 * 1024
        /// The kernel's send buffer for a stream: small, so a reader that stops reading is noticed
        /// after `maxPending` more bytes rather than after megabytes of kernel memory.
        var streamSendBuffer: Int32 = 64 * 1024
    }

    let fd: Int32
    let host: String
    let port: Int
    let limits: Limits
    let loop: EventLoop
    private var handle: IOHandle?
    private var connections: [ObjectIdentifier: HTTPConnection] = [:]
    private let backoff: AcceptBackoff
    var handler: (HTTPRequest, HTTPConnection) -> Void = { _, c in c.respond(.text(404, "not found")) }

    var streamCount: Int { connections.values.filter(\.isStreaming).count }

    /// Binds `host:port` (0: any free port); `what` names it in daemon.log.
    convenience init(host: String, port: Int, loop: EventLoop, limits: Limits = Limits(), logger: Logger, what: String) throws(SystemError) {
        let bound = try ListeningSocket.tcp(host: host, port: port, nonBlocking: true)
        try self.init(listening: bound.fd, host: host, port: bound.port, loop: loop, limits: limits, logger: logger, what: what)
    }

    /// Serves on `fd`, a non-blocking socket listening on `host:port` (one a daemon before bound);
    /// it is closed if it cannot be watched.
    init(listening fd: Int32, host: String, port: Int, loop: EventLoop, limits: Limits = Limits(), logger: Logger, what: String) throws(SystemError) {
        self.fd = fd
        self.host = host
        self.port = port
        self.loop = loop
        self.limits = limits
        backoff = AcceptBackoff(loop: loop, logger: logger, what: what)
        // Should this throw, deinit closes fd (every stored property has its value by now).
        handle = try loop.register(fd: fd, events: [.readable]) { [unowned self] _ in self.acceptAll() }
    }

    deinit {
        if let handle { loop.unregister(handle) }
        handle = nil
        for c in connections.values { c.close() }
        closeFD(fd)
    }

    /// Leaves new connections in the backlog (for a successor daemon: `pml update`).
    func stopAccepting() {
        if let handle { loop.unregister(handle) }
        handle = nil
    }

    /// Some connection has not had its whole answer yet (a stream never does: it is left out).
    var answering: Bool { connections.values.contains { !$0.isStreaming } }

    private func acceptAll() {
        // Bounded per wake-up, so a flood of connections cannot hold the loop.
        for _ in 0..<64 {
            guard let client = UnixSocket.accept(fd) else {
                backoff.pauseIfOutOfDescriptors(handle) { [weak self] in
                    if let self, let h = self.handle { self.loop.modify(h, events: [.readable]) }
                }
                return
            }
            if connections.count >= limits.maxConnections {
                let busy = HTTPResponse.text(503, "too many connections").bytes
                _ = busy.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
                closeFD(client)
                continue
            }
            guard let c = HTTPConnection(fd: client, listener: self) else { closeFD(client); continue }
            connections[ObjectIdentifier(c)] = c
        }
    }

    fileprivate func closed(_ c: HTTPConnection) {
        connections[ObjectIdentifier(c)] = nil
    }
}

/// One client connection: reads one request (bounded in size and time), hands it to the
/// listener's handler, then writes one response — or, for a stream, events until either side
/// goes away.
final class HTTPConnection {
    private let fd: Int32
    private unowned let listener: HTTPListener
    private var loop: EventLoop { listener.loop }
    private var handle: IOHandle?
    private var input: [UInt8] = []
    /// The blank line that ends the head has arrived (see `ready`).
    private var headSeen = false
    /// Bytes in all before the request can be complete (its declared body), once the head is in.
    private var needed = 0
    private var output: [UInt8] = []
    private var outputStart = 0
    private var timer: TimerHandle?
    private var handled = false
    private var closeWhenWritten = false
    private(set) var isStreaming = false
    private(set) var isClosed = false
    /// Called once when the connection closes (a stream stops its feeds).
    var onClose: (() -> Void)?

    fileprivate init?(fd: Int32, listener: HTTPListener) {
        self.fd = fd
        self.listener = listener
        // The registration holds the connection while it runs a handler (which may close it);
        // unregistering on close lets it go.
        guard let h = try? listener.loop.register(fd: fd, events: [.readable], handler: { events in self.ready(events) }) else {
            return nil
        }
        handle = h
        timer = listener.loop.schedule(after: listener.limits.requestTimeoutMs) { [weak self] in
            guard let self else { return }
            self.timer = nil
            if self.handled { return }
            self.respond(.text(408, "request not received in time"))
        }
    }

    /// Whether `bytes` hold the blank line that ends a head ("\n\n" or "\n\r\n").
    private static func hasBlankLine(_ bytes: ArraySlice<UInt8>) -> Bool {
        var i = bytes.startIndex
        while i < bytes.endIndex {
            if bytes[i] == UInt8(ascii: "\n") {
                if i + 1 < bytes.endIndex, bytes[i + 1] == UInt8(ascii: "\n") { return true }
                if i + 2 < bytes.endIndex, bytes[i + 1] == UInt8(ascii: "\r"), bytes[i + 2] == UInt8(ascii: "\n") { return true }
            }
            i += 1
        }
        return false
    }

    private func ready(_ events: IOEvents) {
        if events.contains(.writable) { flush() }
        guard !isClosed, events.contains(.readable) || events.contains(.hangup) else { return }
        var chunk = [UInt8](repeating: 0, count: 8192)
        let result = chunk.withUnsafeMutableBytes { (try? readSome(fd, into: $0)) ?? .eof }
        switch result {
        case .wouldBlock:
            return
        case .eof:
            // The client is gone (or half-closed before we answered): nothing more to do.
            return close()
        case .data(let n):
            // After the request, whatever the client sends is ignored (bounded by the read size).
            guard !handled else { return }
            let from = max(0, input.count - 3)
            input.append(contentsOf: chunk[0..<n])
            // A client may trickle a request in byte by byte: parse only once what arrived can
            // change the answer (the blank line that ends the head, then the whole declared body),
            // not on every read.
            if input.count < needed { return }
            if !headSeen {
                guard Self.hasBlankLine(input[from...]) || input.count > listener.limits.maxHead else { return }
                headSeen = true
            }
        }
        switch HTTPRequest.parse(input[...], maxHead: listener.limits.maxHead, maxBody: listener.limits.maxBody) {
        case .incomplete:
            return
        case .needs(let total):
            needed = total
        case .invalid(let status, let reason):
            handled = true
            respond(.text(status, reason))
        case .complete(let request):
            handled = true
            input = []
            if let timer { loop.cancel(timer) }
            timer = nil
            listener.handler(request, self)
        }
    }

    /// Writes one response and closes. Ignored once closed or after a response.
    func respond(_ response: HTTPResponse) {
        guard !isClosed, !closeWhenWritten, !isStreaming else { return }
        handled = true
        closeWhenWritten = true
        output = response.bytes
        outputStart = 0
        flush()
    }

    /// Starts a `text/event-stream`. Returns false (after answering 503) when too many streams are open.
    func startStream() -> Bool {
        guard !isClosed, !closeWhenWritten, !isStreaming else { return false }
        guard listener.streamCount < listener.limits.maxStreams else {
            respond(.text(503, "too many live streams open (at most \(listener.limits.maxStreams))"))
            return false
        }
        isStreaming = true
        var size = listener.limits.streamSendBuffer
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-store\r\n"
            + "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
        output = Array(head.utf8)
        outputStart = 0
        flush()
        return !isClosed
    }

    /// Queues bytes on a stream. A reader that lets more than `maxPending` bytes pile up is dropped.
    func send(_ bytes: [UInt8]) {
        guard isStreaming, !isClosed else { return }
        if output.count - outputStart + bytes.count > listener.limits.maxPending { return close() }
        if outputStart > 0 {
            output.removeFirst(outputStart)
            outputStart = 0
        }
        output.append(contentsOf: bytes)
        flush()
    }

    private func flush() {
        guard !isClosed else { return }
        while outputStart < output.count {
            let n = output.withUnsafeBytes { buf in
                Glibc.send(fd, buf.baseAddress! + outputStart, buf.count - outputStart, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if n > 0 {
                outputStart += n
                continue
            }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                if let handle { loop.modify(handle, events: [.readable, .writable]) }
                return
            }
            if n < 0 && errno == EINTR { continue }
            return close()
        }
        output = []
        outputStart = 0
        if closeWhenWritten { return close() }
        if let handle { loop.modify(handle, events: [.readable]) }
    }

    func close() {
        guard !isClosed else { return }
        isClosed = true
        if let timer { loop.cancel(timer) }
        timer = nil
        if let handle { loop.unregister(handle) }
        handle = nil
        closeFD(fd)
        listener.closed(self)
        let done = onClose
        onClose = nil
        done?()
    }
}
