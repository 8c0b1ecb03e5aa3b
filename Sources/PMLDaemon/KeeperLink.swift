import Glibc
import Logging
import PMLCore
import PMLPosix

/// How both ends of the keeper link (the keeper, `KeeperLink`) write and read its records.
enum KeeperWire {
    /// Sends `message` on `link`, with `fd` for `hold` and `held`; false (errno set) if it could not.
    static func send(_ message: KeeperMessage, fd: Int32? = nil, on link: Int32) -> Bool {
        RecordSocket.send(link, message.encoded, fds: fd.map { [$0] } ?? [])
    }

    /// Reads every record waiting on the non-blocking `link`: each goes to `record` parsed (nil
    /// if malformed) with the fds it carried (the receiver's to keep or close); `closed` is called
    /// when the other end has gone.
    static func readWaiting(_ link: Int32, closed: () -> Void, record: (KeeperMessage?, [Int32]) -> Void) {
        while true {
            switch RecordSocket.receive(link, limit: KeeperMessage.maxBytes, dontWait: true) {
            case .wouldBlock: return
            case .closed: return closed()
            case .record(let bytes, let fds): record(KeeperMessage.parse(bytes[...]), fds)
            }
        }
    }
}

/// The daemon's end of the link to its keeper (see `Keeper`): what must outlive this daemon is
/// handed to the keeper as it appears (`hold`) and let go when it goes (`drop`); at start the
/// daemon asks for everything the keeper holds (`handover`), and it hears of the exits of
/// adopted workers, which are the keeper's children now.
final class KeeperLink {
    let fd: Int32
    let keeperPID: Int32
    /// stderr is daemon.log (`PML_DAEMON_LOG`): reopened by path with the apps' logs.
    let logsToDaemonLog: Bool
    private var handle: IOHandle?
    private let logger: Logger

    /// The link the keeper gave this daemon (`PML_KEEPER_FD`, `PML_KEEPER_PID`), if any.
    init?(environment env: [String: String], logger: Logger) {
        guard let fd = env["PML_KEEPER_FD"].flatMap({ Int32($0) }), fd >= 0, fcntl(fd, F_GETFD) >= 0,
              let pid = env["PML_KEEPER_PID"].flatMap({ Int32($0) }), pid > 1 else { return nil }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        // A keeper that stops reading must not freeze the daemon for long.
        RecordSocket.limitSendWait(fd, seconds: 2)
        self.fd = fd
        keeperPID = pid
        logsToDaemonLog = env["PML_DAEMON_LOG"] == "1"
        self.logger = logger
    }

    /// Asks the keeper to keep a duplicate of `descriptor` under `tag`.
    func hold(_ tag: String, _ descriptor: Int32) {
        send(.hold(tag: tag), fd: descriptor)
    }

    /// Lets the keeper close every copy whose tag starts with `prefix`.
    func drop(_ prefix: String) {
        send(.drop(prefix: prefix))
    }

    /// Drops what it holds for worker `pid` but its reclaim end (dropped alone once taken back from).
    func dropAllButReclaim(of pid: Int32) {
        for tag in [KeeperTag.ipc(pid: pid), KeeperTag.handoff(pid: pid), KeeperTag.out(pid: pid), KeeperTag.err(pid: pid)] { drop(tag) }
    }

    func send(_ message: KeeperMessage, fd descriptor: Int32? = nil) {
        if !KeeperWire.send(message, fd: descriptor, on: fd) {
            logger.warning("cannot tell the keeper \"\(message.encoded)\": \(String(cString: strerror(errno)))")
        }
    }

    /// What the keeper held for the daemon before this one, and exits it reaped meanwhile.
    struct Handover {
        var fds: [String: Int32] = [:]
        var exits: [ChildExit] = []

        /// Takes the fd of `tag` out of the hand-over.
        mutating func take(_ tag: String) -> Int32? { fds.removeValue(forKey: tag) }
    }

    /// Says hello and reads every held fd until `end` (blocking, bounded: the keeper answers at once).
    func handover() -> Handover {
        var h = Handover()
        send(.hello)
        let deadline = monotonicMs() + 10_000
        while RecordSocket.waitReadable(fd, ms: deadline - monotonicMs()) {
            guard case .record(let bytes, let fds) = RecordSocket.receive(fd, limit: KeeperMessage.maxBytes, dontWait: true) else {
                break
            }
            switch KeeperMessage.parse(bytes[...]) {
            case .held(let tag)? where fds.count == 1:
                if let old = h.fds.updateValue(fds[0], forKey: tag) { closeFD(old) }
            case .exit(let pid, let code, let signal)? where fds.isEmpty:
                h.exits.append(ChildExit(pid: pid, code: code, signal: signal))
            case .end? where fds.isEmpty:
                return h
            default:
                fds.forEach(closeFD)
            }
        }
        logger.error("the keeper did not finish handing over; going on with \(h.fds.count) fd(s)")
        return h
    }

    /// Watches the link in the loop: each reported exit goes to `onExit`.
    func watch(loop: EventLoop, onExit: @escaping (ChildExit) -> Void) {
        handle = try? loop.register(fd: fd, events: [.readable]) { [unowned self, unowned loop] _ in
            KeeperWire.readWaiting(self.fd, closed: {
                // The keeper is gone: PDEATHSIG ends this daemon too; stop listening meanwhile.
                if let h = self.handle { loop.unregister(h) }
                self.handle = nil
            }) { message, fds in
                fds.forEach(closeFD)
                if case .exit(let pid, let code, let signal)? = message { onExit(ChildExit(pid: pid, code: code, signal: signal)) }
            }
        }
    }
}
