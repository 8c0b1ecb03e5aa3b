import Glibc
import Logging
import PMLCore
import PMLLua
import PMLPosix

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

    /// Runs the daemon in this process until `pml kill` or SIGTERM; returns the exit status.
    /// `readyFD` (if ≥ 0) gets "ready\n" once the control socket accepts connections.
    public static func run(paths: PMLPaths, readyFD: Int32) -> Int32 {
        // First: signals must be blocked before anything else could start a thread.
        let signals: SignalReceiver
        do {
            signals = try SignalReceiver(signals: [SIGCHLD, SIGTERM, SIGINT, SIGHUP])
        } catch {
            return fatal("cannot set up signals: \(error)")
        }
        ignoreSIGPIPE()
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = .info
            return h
        }
        let logger = Logger(label: "pml")

        do {
            try makeDirectories(paths.home, mode: 0o700)
            chmod(paths.home, 0o700)
            try makeDirectories(paths.logs, mode: 0o700)
        } catch {
            return fatal("cannot create \(paths.home): \(error)")
        }
        let pidFD = open(paths.pidFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard pidFD >= 0 else { return fatal("cannot open \(paths.pidFile): \(String(cString: strerror(errno)))") }
        // The lock lives as long as the daemon: a second daemon for the same home refuses to start.
        guard flock(pidFD, LOCK_EX | LOCK_NB) == 0 else {
            return fatal("another pml daemon is already running for \(paths.home)")
        }
        _ = ftruncate(pidFD, 0)
        try? writeAll(pidFD, "\(getpid())\n")

        let env = processEnvironment()
        guard let luaPath = luaLibraryPath(environment: env) else {
            return fatal("cannot find pml's Lua library (lua/pml/policy.lua); set PML_LUA_PATH")
        }
        let loop: EventLoop
        let lua: LuaRuntime
        do {
            loop = try EventLoop()
            lua = try LuaRuntime(libraryPaths: [luaPath])
        } catch {
            return fatal("cannot start: \(error)")
        }
        becomeChildSubreaper()
        let shim = resourceRoot().map { $0 + "/shims/node/preload.js" }.flatMap { pathExists($0) ? $0 : nil }
        if shim == nil { logger.warning("pml's Node preload (shims/node/preload.js) is missing: Node apps cannot listen through pml") }
        let supervisor = Supervisor(loop: loop, paths: paths, lua: lua, logger: logger, nodeShim: shim)
        let server: ControlServer
        do {
            server = try ControlServer(path: paths.socket, loop: loop, logger: logger, handler: supervisor.handle)
        } catch {
            return fatal("cannot listen on \(paths.socket): \(error)")
        }
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
                    default:
                        break // SIGHUP: no terminal to lose; nothing to reload yet.
                    }
                }
            }
        } catch {
            return fatal("cannot watch signals: \(error)")
        }
        logger.info("pml daemon \(PMLVersion.string) started (pid \(getpid()), home \(paths.home), lua \(luaPath))")
        if readyFD >= 0 {
            try? writeAll(readyFD, "ready\n")
            closeFD(readyFD)
        }
        loop.run()
        withExtendedLifetime(server) {}
        unlink(paths.socket)
        unlink(paths.pidFile)
        logger.info("pml daemon stopped")
        return 0
    }

    private static func fatal(_ message: String) -> Int32 {
        try? writeAll(2, "pml daemon: \(message)\n")
        return 1
    }
}
