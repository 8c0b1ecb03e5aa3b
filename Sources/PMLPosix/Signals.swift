import CSystemShim
import Glibc

/// Signals delivered through a signalfd, so they arrive as ordinary events in the loop.
public final class SignalReceiver {
    public let fd: Int32

    /// Blocks `signals` in the calling thread (do this first in main, before threads start)
    /// and opens a signalfd for them.
    public init(signals: [Int32]) throws(SystemError) {
        fd = try sys("signalfd") { signals.withUnsafeBufferPointer { pml_signalfd_open($0.baseAddress, Int32($0.count)) } }
    }

    deinit { closeFD(fd) }

    /// Every signal pending now (SIGCHLD coalesces: one read may stand for many exits).
    public func drain() -> [Int32] {
        var out: [Int32] = []
        while true {
            let s = pml_signalfd_read(fd)
            if s <= 0 { return out }
            out.append(s)
        }
    }
}

/// How a child ended, decoded from waitpid's status.
public struct ChildExit: Sendable, Equatable {
    public var pid: Int32
    /// Exit code, if it exited.
    public var code: Int32?
    /// Signal number, if a signal killed it.
    public var signal: Int32?

    public init(pid: Int32, code: Int32?, signal: Int32?) {
        self.pid = pid
        self.code = code
        self.signal = signal
    }
}

/// Reaps every child that has exited, without blocking.
public func reapChildren() -> [ChildExit] {
    var out: [ChildExit] = []
    while true {
        var status: Int32 = 0
        let pid = waitpid(-1, &status, WNOHANG)
        if pid <= 0 {
            if pid < 0 && errno == EINTR { continue }
            return out
        }
        if pml_wifexited(status) != 0 {
            out.append(ChildExit(pid: pid, code: pml_wexitstatus(status), signal: nil))
        } else if pml_wifsignaled(status) != 0 {
            out.append(ChildExit(pid: pid, code: nil, signal: pml_wtermsig(status)))
        }
    }
}

/// Sends a signal to a whole process group; false if the group no longer exists.
@discardableResult
public func signalGroup(_ pgid: Int32, _ signal: Int32) -> Bool {
    Glibc.kill(-pgid, signal) == 0
}

/// Sends a signal to one process; false if it no longer exists.
@discardableResult
public func signalProcess(_ pid: Int32, _ signal: Int32) -> Bool {
    Glibc.kill(pid, signal) == 0
}

/// Whether a process with this pid is alive (a zombie waiting to be reaped counts as gone).
public func processIsAlive(_ pid: Int32) -> Bool {
    guard Glibc.kill(pid, 0) == 0 || errno == EPERM else { return false }
    guard let stat = readFile("/proc/\(pid)/stat", limit: 4096),
          let close = stat.lastIndex(of: UInt8(ascii: ")")), close + 2 < stat.count else { return true }
    return stat[close + 2] != UInt8(ascii: "Z")
}

/// Makes this process the reaper of orphaned descendants (PR_SET_CHILD_SUBREAPER).
public func becomeChildSubreaper() {
    _ = pml_set_child_subreaper()
}

/// Ignores SIGPIPE: a write to a closed pipe or socket must be an error, not death.
public func ignoreSIGPIPE() {
    signal(SIGPIPE, SIG_IGN)
}

/// Whether process `pid` still has the socket `fd` refers to among its descriptors, under any
/// number. Each entry is read as a link (`socket:[<inode>]`), never followed: a stat() of it would
/// reach whatever file it names, and one on NFS or FUSE can block the caller. True when it cannot
/// be told (its fd folder unreadable, over `limit` descriptors): callers take "no" as the process
/// having closed it.
public func process(_ pid: Int32, holds fd: Int32, limit: Int = 4096) -> Bool {
    var mine = stat()
    guard fstat(fd, &mine) == 0 else { return true }
    let folder = "/proc/\(pid)/fd"
    guard access(folder, R_OK) == 0 else { return true }
    // One more than the limit read at most: enough to tell it is over.
    let names = directoryEntries(folder, max: limit + 1)
    guard !names.isEmpty, names.count <= limit else { return true }
    let wanted = Array("socket:[\(mine.st_ino)]".utf8)
    var link = [UInt8](repeating: 0, count: wanted.count + 1)
    return names.contains { name in
        let n = link.withUnsafeMutableBufferPointer { b in
            b.baseAddress!.withMemoryRebound(to: CChar.self, capacity: b.count) { readlink(folder + "/" + name, $0, b.count) }
        }
        return n == wanted.count && link.prefix(n).elementsEqual(wanted)
    }
}
