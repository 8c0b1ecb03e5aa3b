import Glibc
import Logging
import PMLCore
import PMLLua
import PMLPosix

/// The supervisor: keeps apps' workers alive according to their specs, hooks and the
/// default policy, and answers control requests. Lives on the event loop's thread.
final class Supervisor {
    let loop: EventLoop
    let paths: PMLPaths
    let lua: LuaRuntime
    let logger: Logger
    private(set) var apps: [ManagedApp] = []
    private var workersByPID: [Int32: Worker] = [:]
    private var nextWorkerID = 0
    private var waiters: [(isDone: () -> Bool, done: () -> Void)] = []
    private let startedAt = monotonicMs()
    private let cpuCount = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    private static let sampleEveryMs = 1000

    init(loop: EventLoop, paths: PMLPaths, lua: LuaRuntime, logger: Logger) {
        self.loop = loop
        self.paths = paths
        self.lua = lua
        self.logger = logger
        lua.host = self
        scheduleSampling()
    }

    // MARK: control requests

    /// Answers one control request; `respond` is called exactly once, maybe later (stop waits for exits).
    func handle(_ request: ControlRequest, respond: @escaping (ControlResponse) -> Void) {
        switch request.cmd {
        case .ping:
            respond(ControlResponse(ok: true, daemon: DaemonInfo(pid: getpid(), version: PMLVersion.string,
                                                                 home: paths.home, uptimeMs: monotonicMs() - startedAt)))
        case .list:
            respond(ControlResponse(ok: true, processes: rows()))
        case .start:
            guard let args = request.start else { return respond(.failure("start needs \"start\" arguments")) }
            respond(start(args))
        case .stop, .restart, .delete:
            guard let target = request.target else { return respond(.failure("\(request.cmd.rawValue) needs a target")) }
            act(request.cmd, target: target, respond: respond)
        case .describe:
            guard let target = request.target else { return respond(.failure("describe needs a target")) }
            switch select(target) {
            case .failure(let e): respond(.failure(e.message))
            case .success(let workers):
                guard let app = workers.first?.app else { return respond(.failure("nothing to describe")) }
                respond(ControlResponse(ok: true, app: describe(app)))
            }
        case .flush:
            let targets: [ManagedApp]
            if let t = request.target, t != "all" {
                guard let app = apps.first(where: { $0.spec.name == t }) else { return respond(.failure("no app named \"\(t)\"")) }
                targets = [app]
            } else {
                targets = apps
            }
            targets.forEach { $0.logs.flush() }
            respond(ControlResponse(ok: true, message: "flushed logs of \(targets.map(\.spec.name).joined(separator: ", "))"))
        case .signal:
            guard let target = request.target, let name = request.signal else {
                return respond(.failure("signal needs a signal and a target"))
            }
            guard let number = SignalNames.number(name) else { return respond(.failure("unknown signal \"\(name)\"")) }
            switch select(target) {
            case .failure(let e): respond(.failure(e.message))
            case .success(let workers):
                let running = workers.filter { $0.pid != nil }
                if running.isEmpty { return respond(.failure("no running worker matches \"\(target)\"")) }
                running.forEach { signalGroup($0.pid!, number) }
                respond(ControlResponse(ok: true, message: "sent \(SignalNames.name(number)) to \(running.count) worker(s)",
                                        processes: rows()))
            }
        case .kill:
            stopEverything {
                respond(ControlResponse(ok: true, message: "stopped every app; daemon exiting"))
                self.loop.schedule(after: 0) { self.loop.stop() }
            }
        }
    }

    /// Stops and deletes every app, then calls `done` (daemon shutdown).
    func stopEverything(_ done: @escaping () -> Void) {
        let all = apps.flatMap(\.workers)
        for app in apps { callHook(app, "onStop", [appValue(app)], worker: nil) }
        stop(all, intent: .delete)
        wait(until: { self.apps.isEmpty }, then: done)
    }

    private struct TargetError: Error { var message: String }

    private func select(_ target: String) -> Result<[Worker], TargetError> {
        switch TargetSelection(target) {
        case .all:
            let all = apps.flatMap(\.workers)
            return all.isEmpty ? .failure(TargetError(message: "no apps are running")) : .success(all)
        case .app(let name):
            guard let app = apps.first(where: { $0.spec.name == name }) else {
                return .failure(TargetError(message: "no app named \"\(name)\""))
            }
            return .success(app.workers)
        case .worker(let id):
            guard let w = apps.lazy.flatMap(\.workers).first(where: { $0.id == id }) else {
                return .failure(TargetError(message: "no worker with id \(id)"))
            }
            return .success([w])
        }
    }

    private func act(_ cmd: ControlCommand, target: String, respond: @escaping (ControlResponse) -> Void) {
        let workers: [Worker]
        switch select(target) {
        case .failure(let e): return respond(.failure(e.message))
        case .success(let w): workers = w
        }
        let ids = Set(workers.map(\.id))
        let touched = Set(workers.map { ObjectIdentifier($0.app) })
        let names = apps.filter { touched.contains(ObjectIdentifier($0)) }.map(\.spec.name)
        let what = "\(names.joined(separator: ", ")) (\(workers.count) worker\(workers.count == 1 ? "" : "s"))"
        switch cmd {
        case .stop:
            for app in apps where touched.contains(ObjectIdentifier(app)) { callHook(app, "onStop", [appValue(app)], worker: nil) }
            stop(workers, intent: .stop)
            wait(until: { workers.allSatisfy { !$0.status.hasProcess } }) {
                respond(ControlResponse(ok: true, message: "stopped \(what)", processes: self.rows()))
            }
        case .restart:
            stop(workers, intent: .restart)
            wait(until: { workers.allSatisfy { $0.intent == nil } }) {
                respond(ControlResponse(ok: true, message: "restarted \(what)", processes: self.rows()))
            }
        case .delete:
            for app in apps where touched.contains(ObjectIdentifier(app)) { callHook(app, "onStop", [appValue(app)], worker: nil) }
            stop(workers, intent: .delete)
            wait(until: { !self.apps.contains { $0.workers.contains { ids.contains($0.id) } } }) {
                respond(ControlResponse(ok: true, message: "deleted \(what)", processes: self.rows()))
            }
        default:
            respond(.failure("unexpected command \(cmd.rawValue)"))
        }
    }

    private func wait(until isDone: @escaping () -> Bool, then done: @escaping () -> Void) {
        if isDone() { return done() }
        waiters.append((isDone, done))
    }

    private func checkWaiters() {
        var i = 0
        while i < waiters.count {
            if waiters[i].isDone() {
                let w = waiters.remove(at: i)
                w.done()
            } else {
                i += 1
            }
        }
    }

    // MARK: start

    private func start(_ args: StartArguments) -> ControlResponse {
        var value: ScriptValue
        var parser: AppSpecParser
        var loaded: LoadedAppFile?
        let cpus = Int(cpuCount)
        if let file = args.file {
            do {
                loaded = try lua.evaluateAppFile(path: file)
            } catch {
                return .failure("\(error)")
            }
            value = loaded!.value
            parser = AppSpecParser(file: file, source: loaded!.source, baseDirectory: parentFolder(file), cpuCount: cpus)
        } else if let app = args.app {
            value = app
            parser = AppSpecParser(file: "command line", source: nil, baseDirectory: args.clientCwd, cpuCount: cpus)
        } else {
            return .failure("start needs an app file or a command")
        }
        let releaseAll = { loaded?.tableRefs.forEach { self.lua.release(tableRef: $0) } }

        // Command-line overrides go into the app tables so the parser validates them too.
        func override(_ v: ScriptValue) -> ScriptValue {
            guard case .object(var t) = v else { return v }
            if let name = args.name { t["name"] = .string(name) }
            if let n = args.instances { t["instances"] = n }
            if !args.env.isEmpty {
                var env: [String: ScriptValue] = [:]
                if case .object(let e)? = t["env"] { env = e }
                for (k, v) in args.env { env[k] = .string(v) }
                t["env"] = .object(env)
            }
            return .object(t)
        }
        if case .array(let items) = value {
            if args.name != nil, items.count != 1 {
                releaseAll()
                return .failure("--name needs an app file that declares one app, not \(items.count)")
            }
            value = .array(items.map(override))
        } else {
            value = override(value)
        }
        var specs: [AppSpec]
        do {
            specs = try parser.parse(value)
        } catch {
            releaseAll()
            return .failure("\(error)")
        }
        for i in specs.indices { specs[i].appFile = args.file }
        for spec in specs {
            if let existing = apps.first(where: { $0.spec.name == spec.name }), existing.workers.contains(where: { $0.status != .stopped && $0.status != .errored }) {
                releaseAll()
                return .failure("app \"\(spec.name)\" is already running (use \"pml restart \(spec.name)\")")
            }
        }

        var started: [String] = []
        for (index, spec) in specs.enumerated() {
            let app: ManagedApp
            let isNew: Bool
            if let existing = apps.first(where: { $0.spec.name == spec.name }) {
                app = existing
                isNew = false
                app.spec = spec
                app.baseEnv = args.clientEnv
                app.logs.timestamps = spec.timestamps
            } else {
                app = ManagedApp(spec: spec, baseEnv: args.clientEnv, paths: paths)
                isNew = true
                apps.append(app)
            }
            if let refs = loaded?.tableRefs, index < refs.count {
                lua.bind(app: spec.name, tableRef: refs[index])
            } else {
                lua.unbind(app: spec.name)
            }
            resize(app, to: spec.instances)
            for w in app.workers { w.history = CrashHistory(); w.reason = nil; w.lastExit = nil }
            callHook(app, "onStart", [appValue(app)], worker: nil)
            var failures: [String] = []
            for w in app.workers {
                do { try spawn(w) } catch { failures.append("\(error)") }
            }
            if failures.count == app.workers.count, let first = failures.first {
                // Nothing could start: leave no trace of a new app, keep an old one stopped.
                for w in app.workers { w.status = .stopped; w.reason = first }
                if isNew { remove(app) }
                for ref in (loaded?.tableRefs ?? []).dropFirst(index + 1) { lua.release(tableRef: ref) }
                return .failure("cannot start \(spec.name): \(first)")
            }
            for (w, f) in zip(app.workers.filter { $0.pid == nil }, failures) { crashed(w, exit: ExitInfo(code: 127, signal: nil, uptimeMs: 0), spawnError: f) }
            started.append("\(spec.name) (\(app.workers.count) worker\(app.workers.count == 1 ? "" : "s"))")
        }
        logger.info("started \(started.joined(separator: ", "))")
        return ControlResponse(ok: true, message: "started \(started.joined(separator: ", "))", processes: rows())
    }

    private func resize(_ app: ManagedApp, to count: Int) {
        while app.workers.count > count { app.workers.removeLast() }
        while app.workers.count < count {
            app.workers.append(Worker(id: nextWorkerID, instance: app.workers.count, app: app))
            nextWorkerID += 1
        }
    }

    private func remove(_ app: ManagedApp) {
        apps.removeAll { $0 === app }
        lua.unbind(app: app.spec.name)
    }

    // MARK: spawning and exits

    private func spawn(_ w: Worker) throws(SpawnError) {
        let app = w.app
        var env = app.baseEnv
        for (k, v) in app.spec.env { env[k] = v }
        env["PML_APP"] = app.spec.name
        env["PML_ID"] = String(w.id)
        env["PML_INSTANCE"] = String(w.instance)
        env["NODE_APP_INSTANCE"] = String(w.instance)
        env["PML_IPC_FD"] = "3"
        env["NODE_CHANNEL_FD"] = "3"
        env["NODE_CHANNEL_SERIALIZATION_MODE"] = "json"
        env["PML_HOME"] = nil

        var opened: [Int32] = []
        func closeAll() { opened.forEach(closeFD) }
        let out: (read: Int32, write: Int32), err: (read: Int32, write: Int32), ipc: (Int32, Int32)
        do {
            out = try makePipe(nonblockingRead: true); opened += [out.read, out.write]
            err = try makePipe(nonblockingRead: true); opened += [err.read, err.write]
            ipc = try makeSocketPair(); opened += [ipc.0, ipc.1]
        } catch {
            closeAll()
            throw SpawnError("cannot create pipes: \(error)")
        }
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { closeFD(devNull) }
        let pid: Int32
        do {
            pid = try spawnProcess(SpawnRequest(
                argv: app.spec.argv, env: env, cwd: app.spec.cwd,
                fds: [(devNull, 0), (out.write, 1), (err.write, 2), (ipc.1, 3)], newSession: true))
        } catch {
            closeAll()
            throw error
        }
        closeFD(out.write)
        closeFD(err.write)
        closeFD(ipc.1)
        // Each pipe keeps itself registered until EOF (see OutputPipe).
        if (try? OutputPipe(fd: out.read, stream: .out, files: app.logs, loop: loop)) == nil { closeFD(out.read) }
        if (try? OutputPipe(fd: err.read, stream: .err, files: app.logs, loop: loop)) == nil { closeFD(err.read) }
        w.ipc = try? IPCChannel(fd: ipc.0, loop: loop, onMessage: { [unowned self, unowned w] msg in
            self.logger.debug("message from \(w.app.spec.name)#\(w.id): \(msg.brief)")
        }, onGarbage: { [unowned self, unowned w] why in
            self.logger.warning("\(w.app.spec.name) worker \(w.id): \(why); channel closed")
            w.app.logs.note("worker \(w.id): \(why); pml closed the channel")
        })
        w.pid = pid
        w.status = .online
        w.startedAt = monotonicMs()
        w.cpuSample = nil
        w.cpuPercent = 0
        w.rssBytes = ProcStats.read(pid: pid)?.rssBytes ?? 0
        w.reason = nil
        w.restartDelayMs = nil
        workersByPID[pid] = w
        logger.info("\(app.spec.name) worker \(w.id) started as pid \(pid)")
        callHook(app, "onSpawn", [w.scriptValue], worker: w)
    }

    /// Reaps exited children and decides what happens to their workers.
    func childrenExited() {
        for exit in reapChildren() {
            guard let w = workersByPID.removeValue(forKey: exit.pid) else { continue } // pml.spawn or an adopted orphan
            // Whatever the worker left behind in its group goes with it (no orphan keeps a port).
            signalGroup(exit.pid, SIGKILL)
            if let t = w.killTimer { loop.cancel(t) }
            w.killTimer = nil
            w.pid = nil
            w.ipc?.close()
            w.ipc = nil
            let info = ExitInfo(code: exit.code.map(Int.init), signal: exit.signal.map(SignalNames.name),
                                uptimeMs: monotonicMs() - w.startedAt)
            w.lastExit = info
            logger.info("\(w.app.spec.name) worker \(w.id) (pid \(exit.pid)) \(info.summary) after \(info.uptimeMs) ms")
            callHook(w.app, "onExit", [w.scriptValue, info.scriptValue], worker: w)
            if let intent = w.intent {
                finishStop(w, intent: intent)
            } else {
                crashed(w, exit: info, spawnError: nil)
            }
        }
        checkWaiters()
    }

    private func finishStop(_ w: Worker, intent: StopIntent) {
        w.intent = nil
        switch intent {
        case .stop:
            w.status = .stopped
            w.reason = "stopped by pml"
        case .delete:
            w.status = .stopped
            let app = w.app
            app.workers.removeAll { $0 === w }
            if app.workers.isEmpty { remove(app) }
        case .restart:
            w.history.restarts += 1
            w.history.unstableRestarts = 0
            w.history.backoffStep = 0
            do {
                try spawn(w)
            } catch {
                crashed(w, exit: ExitInfo(code: 127, signal: nil, uptimeMs: 0), spawnError: "\(error)")
            }
        }
    }

    /// An exit nobody asked for: the default policy (Lua) decides, then onCrash may overrule it.
    private func crashed(_ w: Worker, exit: ExitInfo, spawnError: String?) {
        let app = w.app
        if let spawnError { app.logs.note("worker \(w.id): \(spawnError)") }
        w.history.recordCrash(uptimeMs: exit.uptimeMs, spec: app.spec)
        let fallback = RestartDecision.fallback(history: w.history, exitCode: exit.code, spec: app.spec)
        var decision = fallback
        switch lua.callLibrary(module: "pml.policy", function: "restart",
                               args: [app.spec.scriptValue, w.scriptValue, exit.scriptValue]) {
        case .returned(let v):
            do {
                decision = try RestartDecision.interpret(v, defaultDelay: app.spec.restartDelay, hook: "pml.policy.restart") ?? fallback
            } catch {
                logger.error("default restart policy: \(error)")
            }
        case .failed(let message):
            logger.error("default restart policy failed: \(message)")
        case .notDefined:
            logger.error("default restart policy (lua/pml/policy.lua) has no restart function")
        }
        if app.spec.hooks.contains("onCrash") {
            var defaultDelay = app.spec.restartDelay
            if case .restart(let d) = decision { defaultDelay = d }
            if let v = callHook(app, "onCrash", [w.scriptValue, exit.scriptValue], worker: w) {
                do {
                    if let d = try RestartDecision.interpret(v, defaultDelay: defaultDelay, hook: "onCrash") { decision = d }
                } catch {
                    hookFailed(app, w, "onCrash", "\(error)")
                }
            }
        }
        let what = "worker \(w.id) \(exit.summary) after \(exit.uptimeMs) ms"
        switch decision {
        case .restart(let delay):
            w.history.recordRestart()
            w.status = .waiting
            w.restartDelayMs = delay
            w.reason = "\(what); restarting in \(delay) ms"
            app.logs.note(w.reason!)
            w.restartTimer = loop.schedule(after: delay) { [unowned self, unowned w] in
                w.restartTimer = nil
                guard w.status == .waiting else { return }
                do {
                    try self.spawn(w)
                } catch {
                    self.crashed(w, exit: ExitInfo(code: 127, signal: nil, uptimeMs: 0), spawnError: "\(error)")
                }
                self.checkWaiters()
            }
        case .stop(let reason):
            w.status = .stopped
            w.reason = "\(what); not restarted: \(reason)"
            app.logs.note(w.reason!)
        case .errored(let reason):
            w.status = .errored
            w.reason = "\(what); errored: \(reason)"
            app.logs.note(w.reason!)
            logger.warning("\(app.spec.name) worker \(w.id) errored: \(reason)")
        }
    }

    /// Asks workers to exit: the app's kill signal to the whole group, SIGKILL after kill_timeout.
    private func stop(_ workers: [Worker], intent: StopIntent) {
        for w in workers {
            if let t = w.restartTimer { loop.cancel(t); w.restartTimer = nil }
            guard let pid = w.pid else {
                // No process: the intent takes effect at once.
                finishStop(w, intent: intent)
                continue
            }
            // A delete outranks a pending stop or restart; a restart does not undo a delete.
            if w.intent != .delete { w.intent = intent }
            if w.status == .stopping { continue }
            w.status = .stopping
            let signal = SignalNames.number(w.app.spec.killSignal) ?? SIGTERM
            signalGroup(pid, signal)
            w.killTimer = loop.schedule(after: w.app.spec.killTimeout) { [unowned self, unowned w] in
                w.killTimer = nil
                guard w.pid == pid else { return }
                self.logger.warning("\(w.app.spec.name) worker \(w.id) (pid \(pid)) ignored \(SignalNames.name(signal)) for \(w.app.spec.killTimeout) ms; sending SIGKILL")
                signalGroup(pid, SIGKILL)
            }
        }
        checkWaiters()
    }

    // MARK: hooks

    @discardableResult
    private func callHook(_ app: ManagedApp, _ hook: String, _ args: [ScriptValue], worker: Worker?) -> ScriptValue? {
        guard app.spec.hooks.contains(hook) else { return nil }
        switch lua.callHook(app: app.spec.name, hook: hook, args: args) {
        case .notDefined: return nil
        case .returned(let v): return v
        case .failed(let message):
            hookFailed(app, worker, hook, message)
            return nil
        }
    }

    private func hookFailed(_ app: ManagedApp, _ worker: Worker?, _ hook: String, _ message: String) {
        logger.warning("\(app.spec.name): hook \(hook) failed: \(message); the default applies")
        app.logs.note("hook \(hook) failed: \(message); the default applies")
        worker?.lastHookError = "\(hook): \(message)"
    }

    func appValue(_ app: ManagedApp) -> ScriptValue {
        guard case .object(var t) = app.spec.scriptValue else { return app.spec.scriptValue }
        t["status"] = .string(app.status.rawValue)
        return .object(t)
    }

    // MARK: reporting

    func rows() -> [ProcessRow] { apps.flatMap { $0.workers.map(\.row) } }

    private func describe(_ app: ManagedApp) -> AppDescription {
        AppDescription(name: app.spec.name, mode: app.spec.mode, status: app.status, spec: app.spec,
                       outLog: app.logs.outPath, errLog: app.logs.errPath, workers: app.workers.map(\.description))
    }

    private func scheduleSampling() {
        loop.schedule(after: Self.sampleEveryMs) { [unowned self] in
            self.sample()
            self.scheduleSampling()
        }
    }

    /// CPU % since the previous sample and current RSS, from /proc.
    private func sample() {
        let now = monotonicMs()
        for w in apps.flatMap(\.workers) {
            guard let pid = w.pid, let stats = ProcStats.read(pid: pid) else { continue }
            if let prev = w.cpuSample, now > prev.at {
                w.cpuPercent = Double(stats.cpuTimeMs - prev.cpuMs) * 100 / Double(now - prev.at)
            }
            w.cpuSample = (stats.cpuTimeMs, now)
            w.rssBytes = stats.rssBytes
        }
    }

    private func parentFolder(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return currentDirectory() }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}

extension Supervisor: LuaHost {
    func luaLog(level: LuaLogLevel, source: String, message: String) {
        switch level {
        case .info: logger.info("[lua] \(source): \(message)")
        case .warn: logger.warning("[lua] \(source): \(message)")
        }
    }

    func luaApps() -> ScriptValue { .array(apps.map(appValue)) }

    func luaWorkers(app: String) -> ScriptValue? {
        apps.first { $0.spec.name == app }.map { .array($0.workers.map(\.scriptValue)) }
    }

    func luaRestart(target: String) -> String? {
        if case .failure(let e) = select(target) { return e.message }
        // Not from inside the hook: the restart runs on the loop's next turn.
        loop.schedule(after: 0) { [unowned self] in self.act(.restart, target: target) { _ in } }
        return nil
    }

    func luaSpawn(argv: [String]) -> String? {
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { closeFD(devNull) }
        do {
            // Output goes to the daemon's own log; the child is reaped like any other.
            let pid = try spawnProcess(SpawnRequest(argv: argv, env: processEnvironment(),
                                                    fds: [(devNull, 0), (1, 1), (2, 2)], newSession: true))
            logger.info("pml.spawn: started \(argv.joined(separator: " ")) as pid \(pid)")
            return nil
        } catch {
            return "\(error)"
        }
    }
}
