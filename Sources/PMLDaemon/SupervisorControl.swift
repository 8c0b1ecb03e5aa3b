import Glibc
import PMLCore
import PMLLua
import PMLPosix

/// Control requests: what `pml <command>` asks of the daemon.
extension Supervisor {
    /// Answers one control request; `respond` is called exactly once, maybe later (stop waits for exits).
    func handle(_ request: ControlRequest, respond answer: @escaping (ControlResponse) -> Void) {
        if heldRequests != nil { return heldRequests!.append { [unowned self] in self.handle(request, respond: answer) } }
        // What a command changed is on disk before the client hears it is done: a daemon killed
        // right after `pml start` returns still leaves that app to be taken up.
        let changesApps: Set<ControlCommand> = [.start, .stop, .restart, .delete, .scale, .reload, .resurrect]
        let respond: (ControlResponse) -> Void = { [unowned self] response in
            if changesApps.contains(request.cmd) { self.persistStateNow() }
            var response = response
            response.notice = self.notice
            self.notice = nil
            answer(response)
        }
        switch request.cmd {
        case .ping:
            respond(ControlResponse(ok: true, daemon: DaemonInfo(pid: getpid(), version: PMLVersion.string,
                                                                 home: paths.home, uptimeMs: monotonicMs() - startedAt)))
        case .list:
            respond(ControlResponse(ok: true, processes: rows()))
        case .start:
            guard let args = request.start else { return respond(.failure("start needs \"start\" arguments")) }
            start(args, respond: respond)
        case .stop, .restart, .delete:
            let targets = request.targets ?? request.target.map { [$0] } ?? []
            if targets.isEmpty { return respond(.failure("\(request.cmd.rawValue) needs a target")) }
            if request.cmd == .restart, let failure = redefine(request) ?? updateEnvironment(request, targets) {
                return respond(.failure(failure))
            }
            act(request.cmd, targets: targets, respond: respond)
        case .reset:
            let targets = request.targets ?? request.target.map { [$0] } ?? []
            switch select(targets) {
            case .failure(let e): respond(.failure(e.message))
            case .success(let workers):
                for w in workers { w.history.restarts = 0; w.history.unstableRestarts = 0 }
                respond(ControlResponse(ok: true, message: "reset the restart counters of \(workers.count) worker\(workers.count == 1 ? "" : "s")", processes: rows()))
            }
        case .env:
            guard let target = request.target, let id = Int(target) else { return respond(.failure("env takes a worker id (see pml ls)")) }
            guard let w = worker(id: id) else { return respond(.failure("no worker with id \(id)")) }
            guard let env = w.environment else { return respond(.failure("the environment of worker \(id) is not known (not started by this daemon)")) }
            respond(ControlResponse(ok: true, environment: env))
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
            targets.forEach { $0.allLogFiles.forEach { $0.flush() } }
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
        case .send:
            guard let target = request.target, let message = request.message else {
                return respond(.failure("send needs a target and a message"))
            }
            switch select(target) {
            case .failure(let e): respond(.failure(e.message))
            case .success(let workers):
                let reached = workers.filter { $0.pid != nil && $0.ipc?.send(message) == true }
                if reached.isEmpty { return respond(.failure("no running worker of \"\(target)\" has an open IPC channel")) }
                respond(ControlResponse(ok: true, message: "sent to \(reached.count) worker\(reached.count == 1 ? "" : "s")"))
            }
        case .scale:
            guard let target = request.target, let count = request.count else {
                return respond(.failure("scale needs an app and a count"))
            }
            guard let app = apps.first(where: { $0.spec.name == target }) else {
                return respond(.failure("no app named \"\(target)\""))
            }
            if app.reloading { return respond(.failure("a reload of \(target) is running; scale it when the reload is done")) }
            let current = app.workers.count
            guard let n = CheckedNumber.count(count, current: current, in: 1...CheckedNumber.maxInstances) else {
                return respond(.failure("scale takes N, +N or -N giving 1 to 1024 workers (now \(current)), got \"\(count)\"; pml stop stops them all"))
            }
            if let bounds = app.spec.autoscale, !(bounds.min...bounds.max).contains(n) {
                return respond(.failure("\(target) autoscales between \(bounds.min) and \(bounds.max) workers; \(n) is outside (change autoscale.min/max in its app file)"))
            }
            scale(app, to: n) { respond(ControlResponse(ok: true, message: "scaled \(target) from \(current) to \(n)", processes: self.rows())) }
        case .reload:
            let names = request.targets ?? request.target.map { [$0] } ?? []
            if names.isEmpty { return respond(.failure("reload needs an app or all")) }
            if let id = names.first(where: { Int($0) != nil }) {
                return respond(.failure("reload takes app names, namespaces or all, not a worker id (\(id))"))
            }
            let targets: [ManagedApp]
            switch select(names) {
            case .failure(let e): return respond(.failure(e.message))
            case .success(let workers): targets = apps.filter { app in workers.contains { $0.app === app } }
            }
            if let failure = redefine(request) ?? updateEnvironment(request, names) { return respond(.failure(failure)) }
            let files = targets.compactMap(\.spec.appFile)
            let sharing = SharedReloadEvaluations(files: Set(files.filter { f in files.count { $0 == f } > 1 }))
            reloadEach(targets[...], graceful: request.graceful ?? false, parallel: request.parallel ?? 1, sharing: sharing,
                       messages: [], respond: respond)
        case .plugins:
            if request.target == "reload" {
                loadPlugins()
                return whenPluginsLoaded { [unowned self] in
                    let list = self.pluginList()
                    respond(ControlResponse(ok: true, message: "reloaded plugins: \(list.filter { $0.error == nil }.count) loaded, \(list.filter { $0.error != nil }.count) failed", plugins: list))
                }
            }
            if let t = request.target { return respond(.failure("plugins takes no argument or \"reload\", not \"\(t)\"")) }
            whenPluginsLoaded { [unowned self] in respond(ControlResponse(ok: true, plugins: self.pluginList())) }
        case .save:
            do {
                let n = try saveDump()
                respond(ControlResponse(ok: true, message: "saved \(n) app\(n == 1 ? "" : "s") to \(paths.dump)"))
            } catch {
                respond(.failure("cannot save to \(paths.dump): \(error)"))
            }
        case .resurrect:
            resurrect(from: paths.dump, respond: respond)
        case .reloadLogs:
            let n = reopenLogs()
            respond(ControlResponse(ok: true, message: "reopened the log files of \(apps.count) app\(apps.count == 1 ? "" : "s") (\(n) set\(n == 1 ? "" : "s"))"))
        case .dashboard:
            respond(.failure("the dashboard is served by the daemon, not by pml run"))
        case .update:
            respond(handOver())
        case .kill:
            stopEverything {
                respond(ControlResponse(ok: true, message: "stopped every app; daemon exiting"))
                self.loop.schedule(after: 0) { self.loop.stop() }
            }
        }
    }

    /// Holds control requests until `answerHeldRequests` (while a successor takes the apps over:
    /// its first answer, `pml update`'s included, shows them all).
    func holdRequests() {
        if heldRequests == nil { heldRequests = [] }
    }

    func answerHeldRequests() {
        let held = heldRequests ?? []
        heldRequests = nil
        held.forEach { $0() }
    }

    /// Reloads apps one after another, apps of one file from one evaluation of it; the first
    /// failure ends the command.
    private func reloadEach(_ targets: ArraySlice<ManagedApp>, graceful: Bool, parallel: Int, sharing: SharedReloadEvaluations,
                            messages: [String], respond: @escaping (ControlResponse) -> Void) {
        let end = { [unowned self] (response: ControlResponse) in
            for (file, refs) in sharing.finish() where !refs.isEmpty {
                self.scripts.tell(.appFile(file)) { side in refs.forEach(side.release(tableRef:)) }
            }
            respond(response)
        }
        guard let app = targets.first else {
            return end(ControlResponse(ok: true, message: messages.joined(separator: "\n"), processes: rows()))
        }
        reload(app, graceful: graceful, parallel: parallel, sharing: sharing) { [unowned self] result in
            switch result {
            case .success(let m):
                self.reloadEach(targets.dropFirst(), graceful: graceful, parallel: parallel, sharing: sharing,
                                messages: messages + [m], respond: respond)
            case .failure(let e):
                end(.failure(e.message))
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

    struct TargetError: Error { var message: String }

    /// The workers any of `targets` names, each once, in app order; one unknown target fails them all.
    func select(_ targets: [String]) -> Result<[Worker], TargetError> {
        var chosen: [Worker] = []
        for target in targets {
            switch select(target) {
            case .failure(let e): return .failure(e)
            case .success(let ws): chosen += ws.filter { w in !chosen.contains { $0 === w } }
            }
        }
        if chosen.isEmpty { return .failure(TargetError(message: "no workers match \(targets.joined(separator: " "))")) }
        return .success(chosen)
    }

    func select(_ target: String) -> Result<[Worker], TargetError> {
        switch TargetSelection(target) {
        case .all:
            let all = apps.flatMap(\.workers)
            return all.isEmpty ? .failure(TargetError(message: "no apps are running")) : .success(all)
        case .app(let name):
            // An app's name first, then a namespace (PM2's order).
            if let app = apps.first(where: { $0.spec.name == name }) { return .success(app.workers) }
            let members = apps.filter { ($0.spec.namespace ?? "default") == name }
            if members.isEmpty { return .failure(TargetError(message: "no app or namespace named \"\(name)\"")) }
            return .success(members.flatMap(\.workers))
        case .worker(let id):
            guard let w = worker(id: id) else { return .failure(TargetError(message: "no worker with id \(id)")) }
            return .success([w])
        }
    }

    /// restart/reload with `start` (an ecosystem file's apps, mapped by the CLI): those apps take their
    /// new definition first; `updateEnv` also gives them the client's environment. Nil, or why not.
    func redefine(_ request: ControlRequest) -> String? {
        guard let args = request.start, let value = args.app else { return nil }
        guard let ecosystem = args.ecosystem else { return "only an ecosystem file's apps can be redefined" }
        let parser = AppSpecParser.forAppFile(ecosystem, source: nil, cpuCount: Int(cpuCount))
        let specs: [AppSpec]
        do { specs = try parser.parse(value, startedWith: args) } catch { return error.description }
        for spec in specs {
            guard let app = apps.first(where: { $0.spec.name == spec.name }) else { continue }
            if app.spec.appFile != nil { return "\(spec.name) was started from \(app.spec.appFile!), not from \(ecosystem)" }
            if app.reloading { return "a reload of \(spec.name) is running" }
        }
        for spec in specs {
            guard let app = apps.first(where: { $0.spec.name == spec.name }) else { continue }
            var kept = spec
            kept.ecosystemFile = ecosystem
            // A restart keeps the worker count (pml scale changes it); a reload takes the file's.
            if request.cmd == .restart { kept.instances = app.workers.count }
            app.spec = kept
            app.configureLogs()
            var startArgs = args
            startArgs.only = spec.name
            startArgs.instances = nil
            app.startArgs = startArgs
        }
        return nil
    }

    /// `--update-env`: the targeted apps take the client's environment (kept by save/resurrect too).
    func updateEnvironment(_ request: ControlRequest, _ targets: [String]) -> String? {
        guard request.updateEnv == true else { return nil }
        guard let env = request.start?.clientEnv else { return "--update-env needs the client's environment" }
        guard case .success(let workers) = select(targets) else { return nil }  // act reports the bad target
        for app in apps where workers.contains(where: { $0.app === app }) {
            app.baseEnv = env
            app.startArgs?.clientEnv = env
        }
        return nil
    }

    func act(_ cmd: ControlCommand, targets: [String], respond: @escaping (ControlResponse) -> Void) {
        let workers: [Worker]
        switch select(targets) {
        case .failure(let e): return respond(.failure(e.message))
        case .success(let w): workers = w
        }
        let ids = Set(workers.map(\.id))
        let touched = Set(workers.map { ObjectIdentifier($0.app) })
        let touchedApps = apps.filter { touched.contains(ObjectIdentifier($0)) }
        let what = "\(touchedApps.map(\.spec.name).joined(separator: ", ")) (\(workers.count) worker\(workers.count == 1 ? "" : "s"))"
        recordAction(cmd, workers: workers)
        switch cmd {
        case .stop:
            touchedApps.forEach { callHook($0, "onStop", [appValue($0)], worker: nil) }
            stop(workers, intent: .stop)
            wait(until: { workers.allSatisfy { !$0.status.hasProcess } }) {
                respond(ControlResponse(ok: true, message: "stopped \(what)", processes: self.rows()))
            }
        case .restart:
            for app in touchedApps {
                do {
                    try openListeners(app)
                } catch {
                    return respond(.failure("cannot restart \(app.spec.name): \(error)"))
                }
            }
            stop(workers, intent: .restart)
            wait(until: { workers.allSatisfy { $0.intent == nil } }) {
                respond(ControlResponse(ok: true, message: "restarted \(what)", processes: self.rows()))
            }
        case .delete:
            touchedApps.forEach { callHook($0, "onStop", [appValue($0)], worker: nil) }
            stop(workers, intent: .delete)
            wait(until: { !self.apps.contains { $0.workers.contains { ids.contains($0.id) } } }) {
                respond(ControlResponse(ok: true, message: "deleted \(what)", processes: self.rows()))
            }
        default:
            respond(.failure("unexpected command \(cmd.rawValue)"))
        }
    }

    /// Grows or shrinks an app. Shrinking retires the newest workers: out of rotation first, then a
    /// graceful stop, so no connection is dropped.
    func scale(_ app: ManagedApp, to n: Int, done: @escaping () -> Void) {
        let from = app.workers.count
        app.spec.instances = n
        if n != from {
            app.scaleEvents += 1
            recordScale(app, from: from, to: n)
            callHook(app, "onScale", [appValue(app), .int(Int64(from)), .int(Int64(n))], worker: nil)
        }
        if n > from {
            for _ in from..<n { spawnOrCrash(addWorker(to: app)) }
            checkWaiters()
            return done()
        }
        let retiring = Array(app.workers.sorted { $0.instance < $1.instance }.suffix(from - n))
        let ids = Set(retiring.map(\.id))
        // pml's Node preload drains and exits on "shutdown"; other programs get the kill signal.
        stop(retiring, intent: .delete, style: app.usesNodeShim ? StopStyle(message: .string("shutdown")) : .immediate)
        wait(until: { !app.workers.contains { ids.contains($0.id) } }, then: done)
    }

    // MARK: start

    /// `pml start`: an app file is evaluated on its script thread first (other requests go on
    /// meanwhile); `respond` gets the answer once the apps are started or refused.
    func start(_ args: StartArguments, respond: @escaping (ControlResponse) -> Void) {
        guard let file = args.file else { return respond(start(args, loaded: nil)) }
        scripts.ask(.appFile(file), deadlineMs: scripts.timeouts.evaluationMs, { side in side.evaluate(path: file) }, answer: { [unowned self] result in
            switch result {
            case .success(let loaded)?: respond(self.start(args, loaded: loaded))
            case .failure(let error)?: respond(.failure(error.description))
            case nil: respond(.failure("\(file): the app file did not finish within \(self.scripts.timeouts.evaluationMs) ms"))
            }
            self.retireUnusedScriptStates()
        })
    }

    /// Whether `path` is in PML_HOME (through symbolic links too): no app may bind a socket there.
    func isInsideHome(_ path: String) -> Bool {
        guard let home = realPath(paths.home) else { return false }
        let slash = path.lastIndex(of: "/") ?? path.startIndex
        let folder = realPath(slash == path.startIndex ? "/" : String(path[..<slash])) ?? String(path[..<slash])
        return folder == home || folder.hasPrefix(home + "/")
    }

    /// Starts what an evaluated app file (or the command line, when `loaded` is nil) declares.
    private func start(_ args: StartArguments, loaded: LoadedAppFile?) -> ControlResponse {
        let cpus = Int(cpuCount)
        let owner = args.file.map(ScriptOwner.appFile)
        let release = { [unowned self] (refs: [LuaTableRef]) in
            guard let owner, !refs.isEmpty else { return }
            self.scripts.tell(owner) { side in refs.forEach(side.release(tableRef:)) }
        }
        let releaseAll = { release(loaded?.tableRefs ?? []) }

        if case .array(let items)? = loaded?.value ?? args.app, args.name != nil, items.count != 1 {
            releaseAll()
            return .failure("--name needs an app file that declares one app, not \(items.count)")
        }
        var specs: [AppSpec]
        do {
            if let file = args.file, let loaded {
                specs = try AppSpecParser.appFile(file, value: loaded.value, source: loaded.source, cpuCount: cpus, startedWith: args)
            } else if let app = args.app, let ecosystem = args.ecosystem {
                // A PM2 file's apps, mapped by the CLI: paths are relative to the file's folder.
                specs = try AppSpecParser.forAppFile(ecosystem, source: nil, cpuCount: cpus).parse(app, startedWith: args)
                for i in specs.indices { specs[i].ecosystemFile = ecosystem }
            } else if let app = args.app {
                specs = try AppSpecParser(file: "command line", source: nil, baseDirectory: args.clientCwd, cpuCount: cpus)
                    .parse(app, startedWith: args)
            } else {
                return .failure("start needs an app file or a command")
            }
        } catch {
            releaseAll()
            return .failure(error.description)
        }
        // Each app with its own table (one per app, in the file's order), before --only picks some.
        let refs = loaded?.tableRefs ?? []
        var declared = specs.enumerated().map { (spec: $0.element, ref: $0.offset < refs.count ? refs[$0.offset] : nil) }
        if let only = args.only {
            let names = only.split(separator: ",").map(String.init)
            let picked = declared.filter { names.contains($0.spec.name) }
            if picked.isEmpty {
                releaseAll()
                return .failure("\(args.file ?? "the command line") declares no app named \"\(only)\"")
            }
            release(declared.filter { !names.contains($0.spec.name) }.compactMap(\.ref))
            declared = picked
        }
        specs = declared.map(\.spec)
        let releaseDeclared = { (from: Int) in release(declared.dropFirst(from).compactMap(\.ref)) }
        for spec in specs {
            for case .unix(let path) in spec.listen where isInsideHome(path) {
                releaseDeclared(0)
                return .failure("cannot start \(spec.name): unix:\(path) is inside PML_HOME (\(paths.home)), which holds pml's own socket")
            }
            do {
                _ = try workerAccount(spec)
            } catch {
                releaseDeclared(0)
                return .failure("cannot start \(spec.name): \(error)")
            }
            if let existing = apps.first(where: { $0.spec.name == spec.name }),
               existing.workers.contains(where: { $0.status != .stopped && $0.status != .errored }) {
                releaseDeclared(0)
                return .failure("app \"\(spec.name)\" is already running (use \"pml restart \(spec.name)\")")
            }
        }

        var started: [String] = []
        for (index, (spec, ref)) in declared.enumerated() {
            let app: ManagedApp
            let isNew: Bool
            let previous: (spec: AppSpec, env: [String: String])?
            if let existing = apps.first(where: { $0.spec.name == spec.name }) {
                app = existing
                isNew = false
                previous = (existing.spec, existing.baseEnv)
                if let oldFile = existing.spec.appFile, oldFile != spec.appFile {
                    let name = spec.name
                    scripts.tell(.appFile(oldFile)) { $0.unbind(app: name) }
                }
                let oldOwner = scriptOwner(existing)
                closeListeners(app)
                app.spec = spec
                // Another file now: a late answer of the old one's state must not decide for it.
                if scriptOwner(app) != oldOwner { scripts.forget(app: spec.name, of: oldOwner) }
                app.baseEnv = args.clientEnv
                app.configureLogs()
            } else {
                app = ManagedApp(spec: spec, baseEnv: args.clientEnv, paths: paths, console: foreground)
                isNew = true
                previous = nil
                apps.append(app)
            }
            // A start that fails leaves a stopped app as it was.
            func restorePrevious() {
                guard let previous else { return }
                app.spec = previous.spec
                app.baseEnv = previous.env
                app.configureLogs()
                resize(app, to: previous.spec.instances)
            }
            do {
                try openListeners(app)
            } catch {
                if isNew { remove(app) } else { restorePrevious() }
                releaseDeclared(index)
                return .failure("cannot start \(spec.name): \(error)")
            }
            let name = spec.name
            if let owner, let ref {
                scripts.tell(owner) { $0.bind(app: name, tableRef: ref) }
            } else if let owner {
                scripts.tell(owner) { $0.unbind(app: name) }
            }
            var startArgs = args
            startArgs.only = spec.name
            startArgs.instances = nil
            app.startArgs = startArgs
            resize(app, to: spec.instances)
            do {
                for w in app.workers { try app.logFiles(instance: w.instance).open() }
                try app.logs.open()
            } catch {
                if isNew { remove(app) } else { closeListeners(app); restorePrevious() }
                releaseDeclared(index + 1)
                return .failure("cannot start \(spec.name): cannot open its log file: \(error)")
            }
            do {
                try configureWatch(app)
            } catch {
                if isNew { remove(app) } else { closeListeners(app); restorePrevious() }
                releaseDeclared(index + 1)
                return .failure("cannot start \(spec.name): \(error)")
            }
            for w in app.workers { w.history = CrashHistory(); w.reason = nil; w.lastExit = nil; w.lastHookError = nil }
            noteAppFolder(spec.appFile)
            scheduleCronRestart(app)
            callHook(app, "onStart", [appValue(app)], worker: nil)
            if !spec.autostart {
                for w in app.workers { w.status = .stopped; w.reason = "autostart = false: \"pml start \(spec.name)\" starts it" }
                started.append("\(spec.name) (registered, not started: autostart = false)")
                continue
            }
            var failures: [(Worker, String)] = []
            for w in app.workers {
                do { try spawn(w) } catch { failures.append((w, "\(error)")) }
            }
            if failures.count == app.workers.count, let first = failures.first {
                // Nothing could start: leave no trace of a new app, keep an old one stopped.
                for w in app.workers { w.status = .stopped; w.reason = first.1 }
                if isNew { remove(app) } else { closeListeners(app); restorePrevious() }
                releaseDeclared(index + 1)
                return .failure("cannot start \(spec.name): \(first.1)")
            }
            for (w, why) in failures { crashed(w, exit: ExitInfo(code: 127, signal: nil, uptimeMs: 0), spawnError: why) }
            startAutoscale(app)
            started.append("\(spec.name) (\(app.workers.count) worker\(app.workers.count == 1 ? "" : "s"))")
        }
        logger.info("started \(started.joined(separator: ", "))")
        return ControlResponse(ok: true, message: "started \(started.joined(separator: ", "))", processes: rows())
    }
}
