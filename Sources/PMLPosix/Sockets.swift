import CSystemShim
import Glibc

/// Listening sockets an app's workers are served from, and the fd passing that feeds them.
public enum ListeningSocket {
    /// A TCP listener; host nil means every interface (dual-stack). Returns the fd and bound port.
    /// `reusePort`: a member of an SO_REUSEPORT group (the kernel spreads connections over the group).
    public static func tcp(host: String?, port: Int, nonBlocking: Bool, reusePort: Bool = false) throws(SystemError) -> (fd: Int32, port: Int) {
        var bound: Int32 = 0
        let fd: Int32
        if let host {
            fd = pml_tcp_listen(host, Int32(port), 511, nonBlocking ? 1 : 0, reusePort ? 1 : 0, &bound)
        } else {
            fd = pml_tcp_listen(nil, Int32(port), 511, nonBlocking ? 1 : 0, reusePort ? 1 : 0, &bound)
        }
        if fd < 0 { throw SystemError("listen on \(host ?? "*"):\(port)", errno: errno) }
        return (fd, Int(bound))
    }

    /// A unix-socket listener, readable and writable by everyone the folder lets in.
    public static func unix(path: String, nonBlocking: Bool) throws(SystemError) -> Int32 {
        let fd = try UnixSocket.listen(path: path, mode: 0o666)
        if !nonBlocking { setNonBlocking(fd, false) }
        return fd
    }

    /// Sends `bytes` with `fd` attached (SCM_RIGHTS), without blocking. Returns bytes sent, 0 if the
    /// socket is full (try later), or throws.
    public static func send(_ socket: Int32, _ bytes: UnsafeRawBufferPointer, attaching fd: Int32) throws(SystemError) -> Int {
        let n = pml_send_with_fd(socket, bytes.baseAddress, bytes.count, fd)
        if n >= 0 { return n }
        if errno == EAGAIN || errno == EWOULDBLOCK { return 0 }
        throw SystemError("sendmsg", errno: errno)
    }

    /// Sends `bytes` with `fds` (at most 8) attached in one message, without blocking. Returns bytes
    /// sent, 0 if the socket is full (try later), or throws.
    public static func send(_ socket: Int32, _ bytes: UnsafeRawBufferPointer, attaching fds: UnsafeBufferPointer<Int32>) throws(SystemError) -> Int {
        let n = pml_send_record(socket, bytes.baseAddress, bytes.count, fds.baseAddress, Int32(fds.count), 1)
        if n >= 0 { return n }
        if errno == EAGAIN || errno == EWOULDBLOCK { return 0 }
        throw SystemError("sendmsg", errno: errno)
    }
}

/// The NOTIFY_SOCKET pml gives workers: sd_notify datagrams, with the sender's pid.
public final class NotifySocket {
    public let fd: Int32
    public let path: String

    public init(path: String) throws(SystemError) {
        fd = pml_notify_socket(path)
        if fd < 0 { throw SystemError("notify socket \(path)", errno: errno) }
        self.path = path
    }

    /// The socket a daemon before this one bound at `path` (handed over by the keeper).
    public init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit {
        closeFD(fd)
        unlink(path)
    }

    /// The next pending datagram and its sender's pid, or nil when none is pending.
    public func receive() -> (pid: Int32, text: String)? {
        var buf = [UInt8](repeating: 0, count: 4096)
        var pid: pid_t = 0
        let n = buf.withUnsafeMutableBytes { pml_recv_notify(fd, $0.baseAddress, $0.count, &pid) }
        guard n >= 0 else { return nil }
        return (pid, String(decoding: buf[0..<n], as: UTF8.self))
    }
}

/// The process group of a pid (workers lead their own), or nil if it is gone.
public func processGroup(of pid: Int32) -> Int32? {
    let g = getpgid(pid)
    return g >= 0 ? g : nil
}
