import CSystemShim
import Glibc

/// Unix-domain stream sockets for the control channel.
public enum UnixSocket {
    private static func address(_ path: String) throws(SystemError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw SystemError("socket path too long (\(bytes.count) bytes): \(path)", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return addr
    }

    /// Binds and listens at `path` (replacing a stale socket file), non-blocking, with `mode`.
    public static func listen(path: String, mode: mode_t) throws(SystemError) -> Int32 {
        var addr = try address(path)
        // Only a stale socket is replaced; any other file at the path is the user's, never deleted.
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw SystemError("\(path) exists and is not a socket", errno: EEXIST) }
            unlink(path)
        }
        let fd = try sys("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0) }
        // Created under a tight umask so there is no moment where the socket is open to others.
        let old = umask(0o177)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(old)
        if r < 0 {
            let e = errno
            closeFD(fd)
            throw SystemError("bind \(path)", errno: e)
        }
        chmod(path, mode)
        if Glibc.listen(fd, 128) < 0 {
            let e = errno
            closeFD(fd)
            throw SystemError("listen \(path)", errno: e)
        }
        return fd
    }

    /// Connects (blocking) to the socket at `path`.
    public static func connect(path: String) throws(SystemError) -> Int32 {
        var addr = try address(path)
        let fd = try sys("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if r < 0 {
            let e = errno
            closeFD(fd)
            throw SystemError("connect \(path)", errno: e)
        }
        return fd
    }

    /// Accepts one pending connection (CLOEXEC; non-blocking unless it is for a worker, which
    /// expects what accept() gives); nil when none is pending.
    public static func accept(_ fd: Int32, nonBlocking: Bool = true) -> Int32? {
        let c = pml_accept(fd, nonBlocking ? 1 : 0)
        return c >= 0 ? c : nil
    }

    /// Whether the accept that just answered nil ran out of file descriptors (EMFILE, ENFILE, or
    /// memory for one): the connection is still pending, so a level-triggered listener would wake
    /// the loop again at once. Read it right after `accept`, before errno changes.
    public static func acceptRanOutOfDescriptors() -> Bool {
        errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM
    }

    /// Sends one datagram to a unix socket (sd_notify). "@name" is an abstract-namespace address.
    public static func sendDatagram(path: String, text: String) throws(SystemError) {
        let abstract = path.hasPrefix("@")
        var addr = try address(abstract ? "\0" + path.dropFirst() : path)
        let fd = try sys("socket") { socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        defer { closeFD(fd) }
        // An abstract address is exactly as long as its name; a path one includes the terminator.
        let length = MemoryLayout<sa_family_t>.size + path.utf8.count + (abstract ? 0 : 1)
        let bytes = Array(text.utf8)
        let n = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, socklen_t(length)) }
            }
        }
        if n < 0 { throw SystemError("sendto \(path)", errno: errno) }
    }

    /// The uid of the process at the other end.
    public static func peerUID(_ fd: Int32) -> uid_t? {
        var uid: uid_t = 0
        var pid: pid_t = 0
        return pml_peer_credentials(fd, &uid, &pid) == 0 ? uid : nil
    }
}
