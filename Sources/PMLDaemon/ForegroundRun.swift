import Glibc
import Logging
import PMLCore
import PMLLua
import PMLPosix

extension Daemon {
    /// `pml run`: the supervisor in this process, in the foreground, with no daemon and no control
    /// socket — for containers and systemd units. Safe as PID 1: it reaps every child it adopts and
    /// forwards SIGHUP/SIGUSR1/SIGUSR2 to the workers. SIGTERM/SIGINT stop every app gracefully.
    /// Sends READY=1 to its own NOTIFY_SOCKET once every worker is online. Returns 0, or 1 if an
    /// app ended errored (also when nothing is left to supervise).
    public static func runForeground(paths: PMLPaths, start: StartArguments) -> Int32 {
        let setup: SupervisorSetup
        do {
            setup = try SupervisorSetup.prepare(paths: paths, signals: [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])
        } catch {
            return fail("\(error)")
        }
        let (signals, logger, loop, env) = (setup.signals, setup.logger, setup.loop, setup.environment)
        let supervisor = Supervisor(loop: loop, paths: paths, luaPath: setup.luaPath, logger: logger, nodeShim: setup.nodeShim, foreground: true)
        var status: Int32 = 0
        var stopping = false
        supervisor.onAllReady = {
            logger.info("every app is ready")
            if let notifySocket = env["NOTIFY_SOCKET"] {
                try? UnixSocket.sendDatagram(path: notifySocket, text: "READY=1\nMAINPID=\(getpid())")
            }
        }
        supervisor.onNothingLeft = { code in
            guard !stopping else { return }
            logger.warning("no worker is left running or waiting to restart; exiting")
            status = code
            loop.stop()
        }
        do {
            try loop.register(fd: signals.fd, events: [.readable]) { _ in
                for signal in signals.drain() {
                    switch signal {
                    case SIGCHLD:
                        supervisor.childrenExited()
                    case SIGTERM, SIGINT:
                        guard !stopping else { continue }
                        stopping = true
                        // Errored apps make the exit non-zero: the orchestrator should know.
                        if supervisor.apps.contains(where: { $0.workers.contains { $0.status == .errored } }) { status = 1 }
                        logger.info("received \(SignalNames.name(signal)): stopping every app")
                        supervisor.stopEverything { loop.stop() }
                    default:
                        for w in supervisor.apps.flatMap(\.workers) {
                            if let pid = w.pid { signalGroup(pid, signal) }
                        }
                    }
                }
            }
        } catch {
            return fail("cannot watch signals: \(error)")
        }
        // /metrics, /healthz and /readyz when config.json or PML_METRICS_LISTEN names a listener.
        let metricsServer = supervisor.serveMetrics(environment: env)
        var startError: String?
        supervisor.startPending = true
        supervisor.start(start) { started in
            supervisor.startPending = false
            guard started.ok else {
                startError = started.error ?? "cannot start"
                return loop.stop()
            }
            logger.info("pml run \(PMLVersion.string) (pid \(getpid())): \(started.message ?? "")")
        }
        loop.run()
        supervisor.scripts.finish(within: 1000)
        if let startError { return fail(startError) }
        // Children still exiting (and adopted orphans) are reaped before pml itself goes.
        _ = reapChildren()
        withExtendedLifetime(metricsServer) {}
        if let notify = supervisor.notify { unlink(notify.path) }
        return status
    }

    private static func fail(_ message: String) -> Int32 {
        try? writeAll(2, "pml: \(message)\n")
        return 1
    }
}
