import Glibc
import PMLCore
import PMLPosix

/// The keeper: `pml daemon`, the small process that outlives daemons. It runs no Lua and makes
/// almost no decisions: it starts the daemon (`pml daemon-supervisor`, its child, killed by
/// PDEATHSIG if the keeper dies), is the child subreaper the workers fall back to when the daemon
/// dies, holds duplicates of the fds that must outlive a daemon (tagged by the daemon), starts a
/// successor at once when the daemon dies or asks to be replaced (`pml update`), hands it those
/// fds, and reports the exits of the workers it reaped. If the keeper itself dies, its sentinel
/// kills every worker (nothing serves unsupervised).
public enum Keeper {
    /// Deaths within `crashWindowMs` after which the keeper gives up (stops every worker, exits 1).
    static let crashLimit = 5
    static let crashWindowMs = 60_000

    /// Runs the keeper until its daemon stops cleanly; returns the exit status.
    /// `readyFD` goes to the first daemon (it says "ready" there); `resurrect` too.
    public static func run(paths: PMLPaths, readyFD: Int32, resurrect: Bool) -> Int32 {
        let signals: SignalReceiver
        do {
            signals = try SignalReceiver(signals: [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])
            try makeDirectories(paths.home, mode: 0o700)
        } catch {
            return say("cannot start: \(error)", status: 1)
        }
        ignoreSIGPIPE()
        raiseFDLimit()
        let lockFD = open(paths.keeperPidFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0, flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
            return say("another pml daemon is already running for \(paths.home)", status: 1)
        }
        _ = ftruncate(lockFD, 0)
        try? writeAll(lockFD, "\(getpid())\n")
        becomeChildSubreaper()
        guard let loop = try? EventLoop() else { return say("cannot create an event loop", status: 1) }
        let keeper = KeeperProcess(paths: paths, loop: loop, readyFD: readyFD, resurrect: resurrect,
                                   logsToDaemonLog: standardErrorIs(paths.daemonLog))
        do {
            try loop.register(fd: signals.fd, events: [.readable]) { _ in
                for s in signals.drain() { keeper.signal(s) }
            }
        } catch {
            return say("cannot watch signals: \(error)", status: 1)
        }
        keeper.startSentinel()
        keeper.startDaemon(predecessor: nil)
        if keeper.status == nil { loop.run() }
        unlink(paths.keeperPidFile)
        closeFD(lockFD)
        return keeper.status ?? 0
    }

    /// A line in daemon.log (the keeper's stderr).
    @discardableResult
    static func say(_ text: String, status: Int32 = 0) -> Int32 {
        try? writeAll(2, "\(AppLogFiles.timestamp()) pml keeper: \(text)\n")
        return status
    }
}

/// The keeper's state, on its one thread.
final class KeeperProcess {
    private let paths: PMLPaths
    private let loop: EventLoop
    private var readyFD: Int32
    private let resurrect: Bool
    /// Its stderr (and its daemons') is daemon.log, reopened by path when logs are (not under systemd).
    private let logsToDaemonLog: Bool
    /// Duplicates of what must outlive the daemon, by the daemon's tags.
    private var held: [String: Int32] = [:]
    private var daemon: (pid: Int32, link: Int32, handle: IOHandle?, spoke: Bool, up: Bool, ending: Ending)?
    /// Exits of adopted workers the current daemon has not heard of yet (it has not said hello).
    private var undelivered: [KeeperMessage] = []
    private var deaths: [Int] = []
    private var sentinel: (pid: Int32, pipe: Int32)?
    /// When the current sentinel started (monotonic ms): one that ends at once is not restarted in a loop.
    private var sentinelStartedAt = 0
    /// Daemons started so far.
    private var generation = 0
    /// Where `lua/` and `shims/` were when the keeper started (for a daemon run from its own binary).
    private let resourceRoot = Daemon.resourceRoot()
    private var stopping = false
    /// Set when the keeper is done; `run` returns it.
    private(set) var status: Int32?

    /// How the current daemon said it would end.
    enum Ending { case died, bye, update }

    init(paths: PMLPaths, loop: EventLoop, readyFD: Int32, resurrect: Bool, logsToDaemonLog: Bool) {
        self.paths = paths
        self.loop = loop
        self.readyFD = readyFD
        self.resurrect = resurrect
        self.logsToDaemonLog = logsToDaemonLog
    }

    /// Starts `pml daemon-supervisor`; the first gets the ready pipe and --resurrect. From the
    /// installed binary, unless `ownBinary`: then from the keeper's own (the one it runs, even if
    /// replaced on disk since), for when a daemon from the installed binary could not start.
    func startDaemon(predecessor: Predecessor?, ownBinary: Bool = false) {
        guard let exe = ownBinary ? "/proc/self/exe" : installedExecutablePath() else {
            // Mid-upgrade the installed binary may be missing for a moment: the keeper's own still runs.
            return startDaemon(predecessor: predecessor, ownBinary: true)
        }
        let link: (Int32, Int32)
        do {
            link = try RecordSocket.pair()
        } catch {
            return giveUp("cannot create the daemon's link: \(error)")
        }
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer {
            closeFD(devNull)
            closeFD(link.1)
        }
        var env = processEnvironment()
        env["PML_HOME"] = paths.home
        env["PML_KEEPER_FD"] = "3"
        env["PML_KEEPER_PID"] = String(getpid())
        env["PML_READY_FD"] = readyFD >= 0 ? "4" : nil
        env["PML_PREDECESSOR"] = predecessor?.encoded
        env["PML_RESOURCE_ROOT"] = ownBinary ? resourceRoot : nil
        env["PML_DAEMON_LOG"] = logsToDaemonLog ? "1" : nil
        var fds: [(source: Int32, target: Int32)] = [(devNull, 0), (1, 1), (2, 2), (link.1, 3)]
        if readyFD >= 0 { fds.append((readyFD, 4)) }
        let argv = [exe, "daemon-supervisor"] + (resurrect && predecessor == nil ? ["--resurrect"] : [])
        let pid: Int32
        do {
            // If the keeper dies, so does its daemon; the sentinel then clears the workers.
            pid = try spawnProcess(SpawnRequest(argv: argv, env: env, cwd: "/", fds: fds, newSession: true,
                                                parentDeathSignal: SIGKILL))
        } catch {
            closeFD(link.0)
            if !ownBinary { return startDaemon(predecessor: predecessor, ownBinary: true) }
            return giveUp("cannot start a daemon: \(error)")
        }
        RecordSocket.limitSendWait(link.0, seconds: 2)
        // Only the first daemon tells the client that started pml that it is up.
        closeFD(readyFD)
        readyFD = -1
        let handle = try? loop.register(fd: link.0, events: [.readable]) { [unowned self] _ in self.linkReadable() }
        daemon = (pid, link.0, handle, false, false, .died)
        generation += 1
        if let predecessor { Keeper.say("started daemon pid \(pid) to succeed pid \(predecessor.pid)") }
    }

    /// Reads every record waiting on the link (records a dead daemon sent before it died included).
    private func linkReadable() {
        guard let d = daemon else { return }
        KeeperWire.readWaiting(d.link, closed: {
            // The daemon is going; its exit (SIGCHLD) decides what follows.
            if let h = d.handle { loop.unregister(h) }
            daemon?.handle = nil
        }) { message, fds in handle(message, fds: fds) }
    }

    private func handle(_ message: KeeperMessage?, fds: [Int32]) {
        guard let message, fds.count == (message.carriesFD ? 1 : 0) else {
            fds.forEach(closeFD) // malformed: ignored, and nothing it carried is kept
            return
        }
        switch message {
        case .hold(let tag):
            if let old = held.updateValue(fds[0], forKey: tag) { closeFD(old) }
        case .drop(let prefix):
            for tag in held.keys where tag.hasPrefix(prefix) { closeFD(held.removeValue(forKey: tag)!) }
        case .hello:
            guard let d = daemon else { return }
            for (tag, fd) in held { send(.held(tag: tag), fd: fd, to: d.link) }
            undelivered.forEach { send($0, to: d.link) }
            undelivered.removeAll()
            send(.end, to: d.link)
            daemon?.spoke = true
        case .up:
            daemon?.up = true
        case .bye:
            daemon?.ending = .bye
        case .update:
            daemon?.ending = .update
        case .reopenLog:
            // The daemon reopened its own; a successor inherits this one.
            guard logsToDaemonLog else { return }
            do {
                try reopenStandardError(paths.daemonLog)
            } catch {
                Keeper.say("cannot reopen \(paths.daemonLog): \(error)")
            }
        case .held, .end, .exit:
            break // keeper → daemon records; a daemon never sends them
        }
    }

    @discardableResult
    private func send(_ message: KeeperMessage, fd: Int32? = nil, to link: Int32) -> Bool {
        if !KeeperWire.send(message, fd: fd, on: link) {
            Keeper.say("could not tell the daemon \"\(message.encoded)\": \(String(cString: strerror(errno)))")
            return false
        }
        return true
    }

    func signal(_ signal: Int32) {
        switch signal {
        case SIGCHLD:
            for exit in reapChildren() { childExited(exit) }
        case SIGTERM, SIGINT:
            // Stop as the daemon stops on SIGTERM: every app, then the daemon, then the keeper.
            stopping = true
            if let d = daemon { signalProcess(d.pid, SIGTERM) } else { finish(0) }
        case SIGUSR2:
            // PM2's signal to reopen log files: the daemon writes them.
            if let d = daemon { signalProcess(d.pid, SIGUSR2) }
        default:
            break // SIGHUP, SIGUSR1: nothing to do — and the keeper must not die of a stray signal.
        }
    }

    private func childExited(_ exit: ChildExit) {
        if let d = daemon, exit.pid == d.pid {
            return daemonEnded(d, exit)
        }
        if let s = sentinel, exit.pid == s.pid {
            closeFD(s.pipe)
            sentinel = nil
            let lived = monotonicMs() - sentinelStartedAt
            guard lived < 1000 else {
                Keeper.say("the sentinel (pid \(s.pid)) ended; starting another")
                return startSentinel()
            }
            Keeper.say("the sentinel (pid \(s.pid)) ended after \(lived) ms; starting another in 1 s")
            loop.schedule(after: 1000) { [weak self] in
                if let self, self.sentinel == nil { self.startSentinel() }
            }
            return
        }
        // An adopted worker (or an orphan): the daemon decides what its exit means.
        let report = KeeperMessage.exit(pid: exit.pid, code: exit.code, signal: exit.signal)
        // One the daemon could not be told (its link full) waits for the next daemon rather than be lost.
        if let d = daemon, d.spoke, send(report, to: d.link) { return }
        undelivered.append(report)
    }

    private func daemonEnded(_ d: (pid: Int32, link: Int32, handle: IOHandle?, spoke: Bool, up: Bool, ending: Ending), _ exit: ChildExit) {
        // What it said just before it died still counts (a `hold` for a worker it had just spawned).
        linkReadable()
        if let h = daemon?.handle { loop.unregister(h) }
        closeFD(d.link)
        let ending = daemon?.ending ?? d.ending
        let up = daemon?.up ?? d.up
        daemon = nil
        let how = exit.signal.map { "killed by \(SignalNames.name($0))" } ?? "exited with code \(exit.code ?? 0)"
        if stopping || ending == .bye { return finish(exit.code == 0 || stopping ? 0 : 1) }
        let now = monotonicMs()
        if ending == .update {
            Keeper.say("daemon pid \(d.pid) handed over (pml update); starting its successor")
        } else {
            // A first daemon that never came up failed to start: its own last line says why.
            if !up && generation == 1 { return finish(1) }
            deaths = deaths.filter { now - $0 < Keeper.crashWindowMs } + [now]
            // One that died before it served could not even start (a broken binary installed for
            // `pml update`?): its successor runs the keeper's own binary, which is known to work.
            Keeper.say("the daemon (pid \(d.pid)) \(how)" + (up ? "; starting a successor" : " before it served; starting a successor from the keeper's own binary"))
            if deaths.count >= Keeper.crashLimit {
                return giveUp("the daemon died \(deaths.count) times within \(Keeper.crashWindowMs / 1000) s")
            }
        }
        startDaemon(predecessor: Predecessor(pid: d.pid, endedAtMs: wallClockMs(), updated: ending == .update), ownBinary: !up)
    }

    /// Nothing can supervise the workers any more: they are stopped (killed), and the keeper exits.
    private func giveUp(_ why: String) {
        Keeper.say("\(why); giving up: stopping every worker")
        if let d = daemon { signalProcess(d.pid, SIGKILL) }
        finish(1)
    }

    /// Ends the keeper. After a clean stop nothing is left to sweep; a daemon that died while it
    /// stopped the apps (or handed over) may have left workers, which go now. Then the sentinel:
    /// what remains of pml after `pml kill` is nothing at all.
    private func finish(_ code: Int32) {
        let killed = Daemon.sweepOrphans(home: paths.home, daemonPID: getpid())
        if killed > 0 { Keeper.say("killed \(killed) worker process(es) left by the daemon") }
        for fd in held.values { closeFD(fd) }
        held.removeAll()
        if let s = sentinel {
            signalProcess(s.pid, SIGKILL)
            var st: Int32 = 0
            while waitpid(s.pid, &st, 0) < 0 && errno == EINTR {}
            closeFD(s.pipe)
            sentinel = nil
        }
        status = code
        loop.stop()
    }

    /// The sentinel sweeps the workers marked with this keeper's pid once the keeper is gone.
    func startSentinel() {
        guard let exe = installedExecutablePath(), let pipe = try? makePipe(nonblockingRead: false) else {
            Keeper.say("no sentinel: if the keeper is killed, its workers may outlive it")
            return
        }
        defer { closeFD(pipe.read) }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { closeFD(devNull) }
        var env = processEnvironment()
        env["PML_HOME"] = paths.home
        env["PML_SENTINEL_FD"] = "3"
        env["PML_SENTINEL_DAEMON"] = String(getpid())
        env["NOTIFY_SOCKET"] = nil
        do {
            let pid = try spawnProcess(SpawnRequest(argv: [exe, "daemon-sentinel"], env: env, cwd: "/",
                                                    fds: [(devNull, 0), (devNull, 1), (2, 2), (pipe.read, 3)], newSession: true))
            sentinel = (pid, pipe.write)
            sentinelStartedAt = monotonicMs()
        } catch {
            closeFD(pipe.write)
            Keeper.say("no sentinel (\(error)): if the keeper is killed, its workers may outlive it")
        }
    }
}
