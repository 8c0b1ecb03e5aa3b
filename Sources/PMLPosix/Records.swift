import CSystemShim
import Glibc

/// Records over a unix SOCK_SEQPACKET socket: each send is one message, its fds travel with it.
/// The keeper link uses them (a stream socket could merge messages and blur whose fd is whose).
public enum RecordSocket {
    /// A connected pair, both CLOEXEC.
    public static func pair() throws(SystemError) -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        try sys("socketpair") { pml_socketpair_seqpacket(&fds) }
        return (fds[0], fds[1])
    }

    /// What a receive gave.
    public enum Received {
        case record(bytes: [UInt8], fds: [Int32])
        case wouldBlock
        /// The peer closed its end (or the socket failed).
        case closed
    }

    /// Sends one record; false if it could not (the peer is gone, or the socket is full when `dontWait`).
    public static func send(_ socket: Int32, _ text: String, fds: [Int32] = [], dontWait: Bool = false) -> Bool {
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { b in
            fds.withUnsafeBufferPointer { f in pml_send_record(socket, b.baseAddress, b.count, f.baseAddress, Int32(f.count), dontWait ? 1 : 0) }
        }
        return n == bytes.count
    }

    /// Receives one record of at most `limit` bytes with at most 8 fds (CLOEXEC). A record that
    /// was cut short is dropped (its fds closed) and reported as an empty record.
    public static func receive(_ socket: Int32, limit: Int, dontWait: Bool) -> Received {
        receive(socket, limit: limit, dontWait: dontWait, cut: nil)
    }

    /// As `receive(_:limit:dontWait:)`, but a record whose fds alone were cut (out of descriptors)
    /// comes with those that arrived, and `fdsCut` says so.
    public static func receive(_ socket: Int32, limit: Int, dontWait: Bool, fdsCut: inout Bool) -> Received {
        var cut: Int32 = 0
        let r = receive(socket, limit: limit, dontWait: dontWait, cut: &cut)
        fdsCut = cut != 0
        return r
    }

    private static func receive(_ socket: Int32, limit: Int, dontWait: Bool, cut: UnsafeMutablePointer<Int32>?) -> Received {
        var buf = [UInt8](repeating: 0, count: limit + 1)
        var fds = [Int32](repeating: -1, count: 8)
        var count: Int32 = 0
        let n = buf.withUnsafeMutableBytes { b in
            fds.withUnsafeMutableBufferPointer { f in
                pml_recv_record(socket, b.baseAddress, b.count, f.baseAddress, Int32(f.count), &count, dontWait ? 1 : 0, cut)
            }
        }
        if n > 0 { return .record(bytes: Array(buf[0..<n]), fds: Array(fds[0..<Int(count)])) }
        if n == 0 { return .closed }
        switch errno {
        case EAGAIN, EWOULDBLOCK: return .wouldBlock
        case EMSGSIZE: return .record(bytes: [], fds: [])
        default: return .closed
        }
    }

    /// Bounds how long a blocking send waits for room (a peer that stops reading must not hang us).
    public static func limitSendWait(_ socket: Int32, seconds: Int) {
        var limit = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(socket, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Waits up to `ms` for `fd` to be readable; false on timeout.
    public static func waitReadable(_ fd: Int32, ms: Int) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let deadline = monotonicMs() + ms
        while true {
            let r = poll(&p, 1, Int32(clamping: max(0, deadline - monotonicMs())))
            if r > 0 { return true }
            if r == 0 || errno != EINTR { return false }
        }
    }
}

/// Connections waiting in a listening TCP socket's accept queue; nil for other sockets.
public func listenQueueLength(_ fd: Int32) -> Int? {
    let n = pml_listen_queue_length(fd)
    return n >= 0 ? Int(n) : nil
}

/// Whether `fd` is a listening socket (SO_ACCEPTCONN): only such an fd is accepted on.
public func isListeningSocket(_ fd: Int32) -> Bool {
    var on: Int32 = 0
    var size = socklen_t(MemoryLayout<Int32>.size)
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &size) == 0 && on != 0
}

/// Whether the TCP socket `fd` is bound to `host:port` as `ListeningSocket.tcp` would bind it
/// (port 0: any port); with the port it is bound to.
public func tcpBinding(_ fd: Int32, matches host: String, port: Int) -> (matches: Bool, port: Int) {
    (pml_tcp_bound_to(fd, host, Int32(clamping: port)) == 1, Int(pml_bound_port(fd)))
}

/// Stops `fd` listening for every process that holds a copy of it (new connections are refused).
public func stopListening(_ fd: Int32) {
    _ = pml_stop_listening(fd)
}

/// The soft limit on open files.
public func openFileLimit() -> Int {
    var r = rlimit()
    guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &r) == 0 else { return 1024 }
    return Int(clamping: r.rlim_cur)
}

/// Raises the soft limit on open files to the hard one.
public func raiseFDLimit() {
    pml_raise_fd_limit()
}

/// The path of this process's binary as installed now: /proc/self/exe, minus " (deleted)" when
/// the file was replaced since (a new binary at the same path is the one `pml update` wants).
public func installedExecutablePath() -> String? {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { return nil }
    var path = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    if path.hasSuffix(" (deleted)") { path.removeLast(" (deleted)".count) }
    return access(path, X_OK) == 0 ? path : nil
}
