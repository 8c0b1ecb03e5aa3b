import Glibc
import Logging
import PMLCore
import PMLLua
import PMLPosix

/// What the daemon and `pml run` both set up before they supervise anything.
struct SupervisorSetup {
    let signals: SignalReceiver
    let logger: Logger
    let loop: EventLoop
    let luaPath: String
    /// pml's Node preload, if it is installed.
    let nodeShim: String?
    let environment: [String: String]

    /// A step of the set-up that failed, said in one line.
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Blocks `signals` first (before anything could start a thread and miss them), then sets up
    /// logging to stderr, the state folder, the event loop, and child-subreaping. (Lua states are
    /// made on their own threads, which inherit the blocked signals.)
    static func prepare(paths: PMLPaths, signals wanted: [Int32]) throws(Failure) -> SupervisorSetup {
        let signals: SignalReceiver
        do {
            signals = try SignalReceiver(signals: wanted)
        } catch {
            throw Failure(description: "cannot set up signals: \(error)")
        }
        ignoreSIGPIPE()
        // Each waiting connection, worker pipe and client holds a descriptor (the keeper did this
        // for the daemon already; `pml run` has no keeper).
        raiseFDLimit()
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = .info
            return h
        }
        let logger = Logger(label: "pml")
        if let problem = Daemon.homeProblem(paths) { throw Failure(description: problem) }
        do {
            try makeDirectories(paths.home, mode: 0o700)
        } catch {
            throw Failure(description: "cannot create \(paths.home): \(error)")
        }
        let env = processEnvironment()
        guard let luaPath = Daemon.luaLibraryPath(environment: env) else {
            throw Failure(description: "cannot find pml's Lua library (lua/pml/policy.lua); set PML_LUA_PATH")
        }
        let loop: EventLoop
        do {
            loop = try EventLoop()
        } catch {
            throw Failure(description: "cannot start: \(error)")
        }
        becomeChildSubreaper()
        let shim = Daemon.resourceRoot().map { $0 + "/shims/node/preload.js" }.flatMap { pathExists($0) ? $0 : nil }
        if shim == nil { logger.warning("pml's Node preload (shims/node/preload.js) is missing: Node apps cannot listen through pml") }
        return SupervisorSetup(signals: signals, logger: logger, loop: loop, luaPath: luaPath, nodeShim: shim,
                               environment: env)
    }
}

/// Starts and runs the per-user daemon: state folder, pid lock, signals, control socket, loop.
public enum Daemon {
    /// Where pml's Lua standard library lives: `$PML_LUA_PATH`, `<prefix>/share/pml/lua` beside an
    /// installed binary, or the `lua/` folder of the checkout the binary was built in.
    public static func luaLibraryPath(environment: [String: String]) -> String? {
        if let p = environment["PML_LUA_PATH"], pathExists(p + "/pml/policy.lua") { return p }
        return resourceRoot().map { $0 + "/lua" }
    }

    /// The folder holding `lua/` and `shims/`: the checkout the binary was built in (walking up
    /// from its real path), or `<prefix>/share/pml` for an installed binary.
    static func resourceRoot() -> String? {
        // A daemon its keeper started from the keeper's own (maybe since replaced) binary is told.
        if let given = processEnvironment()["PML_RESOURCE_ROOT"], pathExists(given + "/lua/pml/policy.lua") { return given }
        guard let exe = realPath("/proc/self/exe") else { return nil }
        var dir = exe
        while let slash = dir.lastIndex(of: "/"), slash != dir.startIndex {
            dir = String(dir[..<slash])
            for candidate in [dir, dir + "/share/pml"] where pathExists(candidate + "/lua/pml/policy.lua") {
                return candidate
            }
        }
        return nil
    }

    /// PML_HOME as the environment names it, else the user's home (see PMLPaths.fromEnvironment).
    public static func paths(environment: [String: String]) -> PMLPaths {
        PMLPaths.fromEnvironment(environment, accountHome: accountHomeDirectory())
    }

    /// Why pml must not use `paths.home` (see PMLPaths.homeProblem), or nil.
    public static func homeProblem(_ paths: PMLPaths) -> String? {
        var info = stat()
        let exists = !paths.home.isEmpty && stat(paths.home, &info) == 0
        return PMLPaths.homeProblem(paths.home, exists: exists, isDirectory: info.st_mode & S_IFMT == S_IFDIR,
                                    owner: info.st_uid, mode: info.st_mode, user: geteuid())
    }

    /// Runs the daemon in this process (started by its keeper, `Keeper.run`) until `pml kill`,
    /// SIGTERM or `pml update`; returns the exit status. `readyFD` (if ≥ 0) gets "ready\n" once the
    /// control socket accepts connections — followed by a sentence when it took up the apps of a
    /// daemon that died. `resurrect`: start what `pml save` saved (boot, via `pml startup`).
    /// Under systemd (NOTIFY_SOCKET), READY=1 follows too, naming the keeper as the main pid.
    public static func run(paths: PMLPaths, readyFD: Int32, resurrect: Bool = false) -> Int32 {
        let setup: SupervisorSetup
        do {
            setup = try SupervisorSetup.prepare(paths: paths, signals: [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR2])
            chmod(paths.home, 0o700)
            try makeDirectories(paths.logs, mode: 0o700)
        } catch {
            return fatal("\(error)")
        }
        let (signals, logger, loop, env) = (setup.signals, setup.logger, setup.loop, setup.environment)
        let pidFD = open(paths.pidFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard pidFD >= 0 else { return fatal("cannot open \(paths.pidFile): \(String(cString: strerror(errno)))") }
        // The lock lives as long as the daemon: a second daemon for the same home refuses to start.
        guard flock(pidFD, LOCK_EX | LOCK_NB) == 0 else {
            return fatal("another pml daemon is already running for \(paths.home)")
        }
        _ = ftruncate(pidFD, 0)
        try? writeAll(pidFD, "\(getpid())\n")

        guard let keeper = KeeperLink(environment: env, logger: logger) else {
            return fatal("pml daemon-supervisor is started by pml daemon (the keeper), not by hand")
        }
        // What the daemon before this one left with the keeper: sockets, channels, log pipes.
        var handover = keeper.handover()
        let supervisor = Supervisor(loop: loop, paths: paths, luaPath: setup.luaPath, logger: logger, nodeShim: setup.nodeShim,
                                    notifyFD: handover.take(KeeperTag.notify))
        supervisor.keeper = keeper
        if let notify = supervisor.notify { keeper.hold(KeeperTag.notify, notify.fd) }
        let dashboard = Dashboard(supervisor: supervisor, paths: paths)
        let server: ControlServer
        do {
            let controlFD: Int32
            if let fd = handover.take(KeeperTag.control) {
                controlFD = fd
            } else {
                controlFD = try UnixSocket.listen(path: paths.socket, mode: 0o600)
                keeper.hold(KeeperTag.control, controlFD)
            }
            server = try ControlServer(listening: controlFD, loop: loop, logger: logger, handler: dashboard.handle)
        } catch {
            return fatal("cannot listen on \(paths.socket): \(error)")
        }
        keeper.send(.up)
        let metricsServer = supervisor.serveMetrics(environment: env, held: handover.take(KeeperTag.metrics))
        dashboard.serveIfConfigured(held: handover.take(KeeperTag.dashboard))
        var shuttingDown = false
        do {
            try loop.register(fd: signals.fd, events: [.readable]) { _ in
                for signal in signals.drain() {
                    switch signal {
                    case SIGCHLD:
                        supervisor.childrenExited()
                    case SIGTERM, SIGINT:
                        guard !shuttingDown else { continue }
                        shuttingDown = true
                        logger.info("received \(SignalNames.name(signal)): stopping every app")
                        supervisor.stopEverything { loop.stop() }
                    case SIGUSR2:
                        _ = supervisor.reopenLogs() // as `pml reloadLogs`, PM2's signal for it
                    default:
                        break // SIGHUP: no terminal to lose; nothing to reload yet.
                    }
                }
            }
        } catch {
            return fatal("cannot watch signals: \(error)")
        }
        logger.info("pml daemon \(PMLVersion.string) started (pid \(getpid()), keeper \(keeper.keeperPID), home \(paths.home), lua \(setup.luaPath))")
        let predecessor = env["PML_PREDECESSOR"].flatMap(Predecessor.parse)
        // Ready once the apps to take up are started (their app files are evaluated on script
        // threads, so this finishes inside the loop).
        let ready = { (note: String?) in
            if readyFD >= 0 {
                try? writeAll(readyFD, "ready\n" + (note.map { $0 + "\n" } ?? ""))
                closeFD(readyFD)
            } else {
                // A successor: the next command, whatever it is, tells the user.
                supervisor.notice = note
            }
            if let notifySocket = env["NOTIFY_SOCKET"] {
                try? UnixSocket.sendDatagram(path: notifySocket, text: "READY=1\nMAINPID=\(keeper.keeperPID)")
            }
            supervisor.answerHeldRequests()
        }
        supervisor.holdRequests()
        supervisor.takeOver(handover, predecessor: predecessor) { note in
            keeper.watch(loop: loop) { exit in supervisor.childrenExited(reported: [exit]) }
            guard resurrect, note == nil else { return ready(note) }
            supervisor.resurrect(from: paths.dump) { r in
                logger.info("resurrect at start: \(r.message ?? r.error ?? "")")
                ready(r.ok ? nil : r.error)
            }
        }
        loop.run()
        if supervisor.handingOver {
            // pml update: sockets, channels and pipes stay with the keeper and the workers; nothing
            // is closed or unlinked on the way out (no deinit runs past exit).
            logger.info("pml daemon handed over; exiting")
            exit(0)
        }
        // The last notification hooks (onStop, onExit) get a moment to run.
        supervisor.scripts.finish(within: 1000)
        // Every app is stopped by now: an empty state tells the next daemon there is nothing to take up.
        supervisor.persistStateNow()
        keeper.send(.bye)
        withExtendedLifetime(server) {}
        withExtendedLifetime(metricsServer) {}
        withExtendedLifetime(dashboard) {}
        unlink(paths.socket)
        unlink(paths.pidFile)
        logger.info("pml daemon stopped")
        return 0
    }

    /// Kills the process groups of workers of `home` still running — those marked with the
    /// supervisor pid `daemonPID` (a keeper, or `pml run`), or of any supervisor of `home` that is
    /// no longer alive if nil — except the workers in `sparing` (and their groups and sessions),
    /// and returns how many processes carried the mark (PML_SUPERVISOR=<home>:<supervisor pid>).
    /// Used at a daemon's start, by a successor for what it could not adopt, by a keeper that
    /// gives up, and by the sentinel once its keeper is gone.
    public static func sweepOrphans(home: String, daemonPID: Int32?, sparing: Set<Int32> = []) -> Int {
        let prefix = Array("PML_SUPERVISOR=\(home):".utf8)
        let exact = daemonPID.map { Array("PML_SUPERVISOR=\(home):\($0)".utf8) }
        var killed = 0
        for name in directoryEntries("/proc") {
            guard let pid = Int32(name), pid != getpid(),
                  let environ = readFile("/proc/\(pid)/environ", limit: 1 << 20) else { continue }
            let marked = environ.split(separator: 0).contains { v in
                if let exact { return v.elementsEqual(exact) }
                // Any supervisor of this home — but only if it is gone: a `pml run` sharing the home
                // is alive and keeps its workers.
                guard v.starts(with: prefix), let owner = Int32(String(decoding: v.dropFirst(prefix.count), as: UTF8.self)) else {
                    return false
                }
                return !processIsAlive(owner)
            }
            guard marked else { continue }
            // A worker in `sparing`, and what runs in its group or session, stays.
            let group = processGroup(of: pid)
            if sparing.contains(pid) || group.map(sparing.contains) == true || sparing.contains(getsid(pid)) { continue }
            if let group, group > 1 { signalGroup(group, SIGKILL) }
            signalProcess(pid, SIGKILL)
            killed += 1
        }
        return killed
    }

    /// The sentinel: waits for its keeper to be gone (EOF on `fd`, whose write end only the keeper
    /// holds), then kills every worker marked with the keeper's pid, and their groups — so a keeper
    /// killed with SIGKILL (its daemon dies with it by PDEATHSIG) leaves nothing serving unsupervised.
    public static func runSentinel(home: String, daemonPID: Int32, fd: Int32) -> Int32 {
        var byte: UInt8 = 0
        while true {
            let n = read(fd, &byte, 1)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
        }
        // Twice: a worker the daemon was spawning as it died may appear just after the first pass.
        _ = sweepOrphans(home: home, daemonPID: daemonPID)
        usleep(100_000)
        _ = sweepOrphans(home: home, daemonPID: daemonPID)
        return 0
    }

    private static func fatal(_ message: String) -> Int32 {
        try? writeAll(2, "pml daemon: \(message)\n")
        return 1
    }
}
