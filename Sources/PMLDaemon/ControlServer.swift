import FoundationEssentials
import Glibc
import Logging
import PMLCore
import PMLPosix

/// Serves the control socket: one JSON request per line, one JSON response per line.
final class ControlServer {
    private let fd: Int32
    private let loop: EventLoop
    private let logger: Logger
    private let handler: (ControlRequest, @escaping (ControlResponse) -> Void) -> Void
    private var handle: IOHandle?
    private var connections: [ObjectIdentifier: ControlConnection] = [:]

    /// Serves the listening socket `fd` (bound at `pml.sock`, 0600, non-blocking).
    init(listening fd: Int32, loop: EventLoop, logger: Logger,
         handler: @escaping (ControlRequest, @escaping (ControlResponse) -> Void) -> Void) throws(SystemError) {
        self.fd = fd
        self.loop = loop
        self.logger = logger
        self.handler = handler
        handle = try loop.register(fd: fd, events: [.readable]) { [unowned self] _ in self.acceptAll() }
    }

    private func acceptAll() {
        while let client = UnixSocket.accept(fd) {
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
/// error response and the connection is closed after it is written.
final class ControlConnection {
    private let fd: Int32
    private let loop: EventLoop
    private var handle: IOHandle?
    private var input: [UInt8] = []
    private var output: [UInt8] = []
    private var busy = false
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
        if closed { return }
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
        }
        processInput()
    }

    private func processInput() {
        while !busy, !closeWhenFlushed, let nl = input.firstIndex(of: UInt8(ascii: "\n")) {
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
        if input.count > ControlProtocol.maxRequestBytes { fail("request longer than \(ControlProtocol.maxRequestBytes) bytes") }
    }

    private func fail(_ message: String) {
        input.removeAll()
        closeWhenFlushed = true
        enqueue(.failure(message))
    }

    private func send(_ response: ControlResponse) {
        busy = false
        enqueue(response)
        if !closed { processInput() }
    }

    private func enqueue(_ response: ControlResponse) {
        guard !closed else { return }
        if let data = try? JSONEncoder().encode(response) {
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
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                guard let handle else { return close() }
                loop.modify(handle, events: [.readable, .writable])
                return
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return close()
            }
        }
        if closeWhenFlushed && !busy { return close() }
        if let handle { loop.modify(handle, events: [.readable]) }
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
