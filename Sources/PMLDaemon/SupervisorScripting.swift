import Glibc
import PMLCore
import PMLLua
import PMLPosix

/// A plugin file found in a plugin folder: loading, loaded, or refused with a reason.
struct PluginSlot {
    let path: String
    var plugin: LoadedPlugin?
    var error: String?
    var loading = true
}

/// What the scripts decided about a crash, worked out on the app's script thread.
struct CrashVerdict: Sendable {
    var decision: RestartDecision
    /// What the default policy alone proposed.
    var policy: RestartDecision
    /// Problems with pml's default policy (lua/pml/policy.lua), for daemon.log.
    var policyErrors: [String] = []
    /// onCrash failed or answered nonsense: the default stands.
    var hookError: String?

    /// The default policy proposes; `onCrash` (when `hookArgs` is given) may overrule it.
    static func decide(side: ScriptSide, app: String, spec: AppSpec, policyArgs: [ScriptValue], hookArgs: [ScriptValue]?,
                       fallback: RestartDecision) -> CrashVerdict {
        var verdict = CrashVerdict(decision: fallback, policy: fallback)
        switch side.callLibrary(module: "pml.policy", function: "restart", args: policyArgs, for: app) {
        case .returned(let v):
            do {
                verdict.decision = try RestartDecision.interpret(v, defaultDelay: spec.restartDelay, hook: "pml.policy.restart") ?? fallback
            } catch {
                verdict.policyErrors.append("default restart policy: \(error)")
            }
        case .failed(let message):
            verdict.policyErrors.append("default restart policy failed: \(message)")
        case .notDefined:
            verdict.policyErrors.append("default restart policy (lua/pml/policy.lua) has no restart function")
        }
        verdict.policy = verdict.decision
        guard let hookArgs else { return verdict }
        var defaultDelay = spec.restartDelay
        if case .restart(let d) = verdict.decision { defaultDelay = d }
        switch side.callHook(app: app, hook: "onCrash", args: hookArgs) {
        case .returned(let v):
            do {
                if let d = try RestartDecision.interpret(v, defaultDelay: defaultDelay, hook: "onCrash") { verdict.decision = d }
            } catch {
                verdict.hookError = "\(error)"
            }
        case .failed(let message):
            verdict.hookError = message
        case .notDefined:
            break
        }
        return verdict
    }
}

/// Plugins, what scripts send and read, metrics and autoscaling: the parts of pml that talk to
/// the script threads.
extension Supervisor {
    // MARK: plugins

    /// Folders plugins come from, in load order: `$PML_HOME/plugins`, `PML_PLUGINS`, then
    /// `plugins/` beside each app file started so far.
    func pluginFolders() -> [String] {
        var folders = [paths.plugins]
        if let extra = processEnvironment()["PML_PLUGINS"] {
            folders += extra.split(separator: ":").map(String.init).filter { !$0.isEmpty }
        }
        for f in appPluginFolders where !folders.contains(f) { folders.append(f) }
        return folders
    }

    /// (Re)loads every plugin, each in a fresh state on its own thread; a broken one is recorded and
    /// skipped, the rest load. Hooks called meanwhile reach a plugin after it has loaded.
    func loadPlugins() {
        for slot in plugins { scripts.stop(.plugin(slot.path)) }
        plugins = []
        for folder in pluginFolders() {
            for file in luaFiles(in: folder) { addPlugin(file) }
        }
        checkPluginWaiters()
    }

    /// Loads `plugins/` beside an app file the first time an app from that folder starts.
    func noteAppFolder(_ appFile: String?) {
        guard let appFile, let slash = appFile.lastIndex(of: "/") else { return }
        let folder = String(appFile[..<slash]) + "/plugins"
        guard !appPluginFolders.contains(folder), pathExists(folder) else { return }
        appPluginFolders.append(folder)
        for file in luaFiles(in: folder) where !plugins.contains(where: { $0.path == file }) { addPlugin(file) }
    }

    private func addPlugin(_ file: String) {
        plugins.append(PluginSlot(path: file))
        loadPlugin(file)
    }

    /// Loads one plugin file in a fresh state (its slot must exist).
    private func loadPlugin(_ file: String) {
        scripts.ask(.plugin(file), deadlineMs: scripts.timeouts.evaluationMs, { side in side.loadPlugin(path: file) }, answer: { [unowned self] result in
            guard let index = self.plugins.firstIndex(where: { $0.path == file }) else { return }
            self.plugins[index].loading = false
            switch result {
            case .success(let p)?:
                // The first file in load order keeps a name; a later one with the same name is refused.
                if let other = self.plugins.first(where: { $0.plugin?.name == p.name && $0.path != file }) {
                    let otherIndex = self.plugins.firstIndex { $0.path == other.path }!
                    let (loser, winner) = otherIndex < index ? (index, otherIndex) : (otherIndex, index)
                    self.refusePlugin(at: loser, "a plugin named \"\(p.name)\" is already loaded (from \(self.plugins[winner].path))")
                    if loser == index { break }
                }
                self.plugins[index].plugin = p
                self.plugins[index].error = nil
                self.logger.info("plugin \(p.name) loaded from \(file) (hooks: \(p.hooks.joined(separator: ", ")))")
            case .failure(let error)?:
                self.refusePlugin(at: index, error.description)
            case nil:
                self.refusePlugin(at: index, "\(file): did not load within \(self.scripts.timeouts.evaluationMs) ms")
            }
            self.checkPluginWaiters()
        })
    }

    private func refusePlugin(at index: Int, _ message: String) {
        plugins[index].plugin = nil
        plugins[index].error = message
        scripts.stop(.plugin(plugins[index].path))
        logger.warning("plugin \(plugins[index].path) not loaded: \(message)")
    }

    /// Calls `done` once no plugin is loading (at once if none is).
    func whenPluginsLoaded(_ done: @escaping () -> Void) {
        pluginWaiters.append(done)
        checkPluginWaiters()
    }

    private func checkPluginWaiters() {
        guard !plugins.contains(where: \.loading) else { return }
        let waiters = pluginWaiters
        pluginWaiters = []
        waiters.forEach { $0() }
    }

    func pluginList() -> [PluginInfo] {
        plugins.compactMap { $0.plugin }.map { PluginInfo(name: $0.name, path: $0.path, hooks: $0.hooks, error: nil) }
            + plugins.filter { $0.plugin == nil }.map { PluginInfo(name: nil, path: $0.path, hooks: [], error: $0.error ?? "loading") }
    }

    private func luaFiles(in folder: String) -> [String] {
        directoryEntries(folder).filter { $0.hasSuffix(".lua") && !$0.hasPrefix(".") }.map { folder + "/" + $0 }.sorted()
    }

    /// Every plugin that defines `hook` (or is still loading) hears it on its own thread, after the
    /// app's own hook was queued; a failing plugin is logged and the others still run.
    func notifyPlugins(_ app: ManagedApp, _ hook: String, _ args: [ScriptValue]) {
        let name = app.spec.name
        for slot in plugins where slot.loading || slot.plugin?.hooks.contains(hook) == true {
            scripts.tell(.plugin(slot.path)) { side in
                if case .failed(let message) = side.callPluginHook(hook: hook, args: args) {
                    side.report(.failed(app: name, message: "plugin \(side.plugin?.name ?? slot.path): \(hook) failed: \(message)"))
                }
            }
        }
    }

    // MARK: script states

    /// Ends the state of every app file no app comes from any more (its timers end with it).
    func retireUnusedScriptStates() {
        scripts.owners.forEach(retireIfUnused)
    }

    /// Ends an app file's state if no app comes from it and nothing waits on it (an evaluation for
    /// a start keeps it; it is looked at again when the answer comes).
    func retireIfUnused(_ owner: ScriptOwner) {
        guard case .appFile(let path) = owner, !apps.contains(where: { $0.spec.appFile == path }),
              !scripts.waits(on: owner) else { return }
        scripts.stop(owner)
    }

    /// A stuck state was replaced by a fresh one: load its scripts again. No app is restarted.
    func scriptsRestarted(_ owner: ScriptOwner) {
        switch owner {
        case .library:
            break
        case .plugin(let path):
            guard let index = plugins.firstIndex(where: { $0.path == path }) else { return }
            plugins[index] = PluginSlot(path: path)
            loadPlugin(path)
        case .appFile(let path):
            let affected = apps.filter { $0.spec.appFile == path }
            for app in affected { app.logs.note("its scripts were stuck inside a C call: pml started a fresh Lua state and loads \(path) again") }
            guard !affected.isEmpty else { return scripts.stop(owner) }
            scripts.ask(owner, deadlineMs: scripts.timeouts.evaluationMs, { side in side.evaluate(path: path) }, answer: { [unowned self] result in
                guard case .success(let loaded)? = result else {
                    let why = result.map { r -> String in if case .failure(let e) = r { return e.description } else { return "" } } ?? "no answer in time"
                    self.logger.error("\(path): cannot load it again after its scripts were stuck: \(why); its apps run without hooks until reloaded")
                    return
                }
                self.bindReloaded(loaded, from: path)
            })
        }
    }

    /// Binds each app still coming from `path` to its table in a fresh evaluation of the file (found
    /// as `pml reload` finds it: with the app's own start arguments); the other tables are released.
    private func bindReloaded(_ loaded: LoadedAppFile, from path: String) {
        let owner = ScriptOwner.appFile(path)
        var bound = Set<Int>()
        for app in apps where app.spec.appFile == path {
            let name = app.spec.name
            let found = declaration(of: app, in: loaded, file: path)
            guard case .success(let (_, index)) = found, index < loaded.tableRefs.count, !bound.contains(index) else {
                let why = if case .failure(let e) = found { e.message } else { "another app took its table" }
                logger.error("\(name): cannot bind its hooks again from \(path): \(why); it runs without hooks until reloaded")
                continue
            }
            bound.insert(index)
            let ref = loaded.tableRefs[index]
            scripts.tell(owner) { $0.bind(app: name, tableRef: ref) }
            logger.info("\(name): hooks bound again from \(path) in a fresh Lua state")
        }
        let unused = loaded.tableRefs.enumerated().filter { !bound.contains($0.offset) }.map(\.element)
        if !unused.isEmpty { scripts.tell(owner) { side in unused.forEach(side.release(tableRef:)) } }
    }

    /// What a script asked for, on the supervisor's thread.
    func scriptCommand(_ command: ScriptCommand) {
        switch command {
        case .log(let level, let source, let message):
            switch level {
            case .info: logger.info("[lua] \(source): \(message)")
            case .warn: logger.warning("[lua] \(source): \(message)")
            }
        case .hookFailed(let name, let workerID, let hook, let message):
            guard let app = apps.first(where: { $0.spec.name == name }) else {
                return logger.warning("\(name): hook \(hook) failed: \(message)")
            }
            hookFailed(app, workerID.flatMap(worker(id:)), hook, message)
        case .failed(let name, let message):
            logger.warning("\(message)")
            if let name, let app = apps.first(where: { $0.spec.name == name }) { app.logs.note(message) }
        case .send(let id, let message):
            if let w = worker(id: id), w.pid != nil { w.ipc?.send(message) }
        case .broadcast(let name, let message):
            for w in apps.first(where: { $0.spec.name == name })?.workers ?? [] where w.pid != nil { w.ipc?.send(message) }
        case .scale(let name, let n):
            guard let app = apps.first(where: { $0.spec.name == name }) else { return }
            if app.reloading { return logger.warning("pml.scale(\(name), \(n)) ignored: a reload of \(name) is running") }
            scale(app, to: n) {}
        case .reload(let name, let options):
            guard let app = apps.first(where: { $0.spec.name == name }) else { return }
            reload(app, graceful: options.graceful, parallel: options.parallel) { [unowned self] result in
                if case .failure(let e) = result { self.logger.warning("pml.reload(\(name)): \(e.message)") }
            }
        case .restart(let target):
            act(.restart, targets: [target]) { [unowned self] r in
                if !r.ok { self.logger.warning("pml.restart(\(target)): \(r.error ?? "failed")") }
            }
        case .spawn(let argv):
            spawnForScript(argv)
        }
    }

    /// `pml.spawn`: fire-and-forget; output goes to the daemon's own log; the child is reaped like any other.
    private func spawnForScript(_ argv: [String]) {
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { closeFD(devNull) }
        do {
            let pid = try spawnProcess(SpawnRequest(argv: argv, env: processEnvironment(),
                                                    fds: [(devNull, 0), (1, 1), (2, 2)], newSession: true))
            logger.info("pml.spawn: started \(argv.joined(separator: " ")) as pid \(pid)")
        } catch {
            logger.warning("pml.spawn: \(error)")
        }
    }

    /// What scripts read, as of now: published before each job is posted and after each sample.
    func publishSnapshot() {
        var s = ScriptSnapshot()
        s.apps = apps.map(appValue)
        for app in apps {
            s.workers[app.spec.name] = app.workers.map(\.scriptValue)
            s.metrics[app.spec.name] = metricsValue(app)
            if app.reloading { s.reloading.insert(app.spec.name) }
            for w in app.workers { s.running[w.id] = w.pid != nil && w.ipc?.isOpen == true }
        }
        scripts.snapshot.publish(s)
    }

    // MARK: metrics

    /// `m` for autoscale rules and `pml.metrics(app)`.
    func metricsValue(_ app: ManagedApp) -> ScriptValue {
        let running = app.workers.filter { $0.pid != nil }
        var sums: [String: (total: Double, count: Int)] = [:]
        for w in running { for (k, v) in w.metrics { sums[k, default: (0, 0)].total += v; sums[k, default: (0, 0)].count += 1 } }
        let n = Double(max(1, running.count))
        return .object([
            "app": .string(app.spec.name),
            "instances": .int(Int64(app.workers.count)),
            "running": .int(Int64(running.count)),
            "cpu": .double(running.reduce(0) { $0 + $1.cpuPercent } / n),
            "mem": .double(Double(running.reduce(0) { $0 + $1.rssBytes }) / n),
            "rps": .double(app.rps),
            "inflight": .int(Int64(running.filter { router.hasHandleInFlight(worker: $0.id) }.count)),
            "workers": .array(running.map { w in
                .object(["id": .int(Int64(w.id)), "instance": .int(Int64(w.instance)), "cpu": .double(w.cpuPercent),
                         "mem": .int(Int64(w.rssBytes)), "metrics": .object(w.metrics.mapValues { .double($0) })])
            }),
            "metrics": .object(sums.mapValues { .double($0.total / Double($0.count)) }),
        ])
    }

    // MARK: autoscale

    /// (Re)starts the app's autoscale loop, if it has one.
    func startAutoscale(_ app: ManagedApp) {
        if let t = app.autoscaleTimer { loop.cancel(t) }
        app.autoscaleTimer = nil
        guard let spec = app.spec.autoscale else { return }
        app.autoscaleTimer = loop.schedule(after: spec.every) { [weak self, weak app] in
            guard let self, let app, self.apps.contains(where: { $0 === app }) else { return }
            self.autoscaleTick(app)
            self.startAutoscale(app)
        }
    }

    /// Asks the rule on the app's script thread; the answer is applied when it comes (if the app
    /// is still settled then). One question at a time; no answer in time keeps the count.
    private func autoscaleTick(_ app: ManagedApp) {
        guard app.spec.autoscale != nil, !app.autoscaleAsking, let file = app.spec.appFile,
              app.workers.contains(where: { $0.status == .online }) else { return }
        guard isSettled(app) else {
            app.autoscaleDecision = "\(AppLogFiles.timestamp()): waiting: workers are starting or stopping"
            return
        }
        // `inflight` counts what is not credited back: credits left waiting in the workers' sockets
        // (`ConnectionRouter.paceCredits`) would leave it stale, so they are read first.
        router.catchUpCredits(workers: app.workers.map(\.id))
        let m = metricsValue(app)
        let name = app.spec.name
        app.autoscaleAsking = true
        scripts.ask(.appFile(file), about: name, { side in side.callHook(app: name, hook: "autoscale.rule", args: [m]) }, answer: { [weak self, weak app] outcome in
            guard let self, let app else { return }
            app.autoscaleAsking = false
            guard self.apps.contains(where: { $0 === app }), let spec = app.spec.autoscale else { return }
            let answer: ScriptValue
            switch outcome {
            case .returned(let v)?: answer = v
            case .notDefined?: return
            case .failed(let message)?:
                self.hookFailed(app, nil, "autoscale.rule", message)
                app.autoscaleDecision = "\(AppLogFiles.timestamp()): rule failed, count kept at \(app.workers.count): \(message)"
                return
            case nil:
                app.autoscaleDecision = "\(AppLogFiles.timestamp()): rule did not answer within \(self.scripts.timeouts.decisionMs) ms; count kept at \(app.workers.count)"
                return
            }
            guard self.isSettled(app) else { return }
            let since = app.lastScaleAt.map { monotonicMs() - $0 }
            let current = app.workers.count
            let cpu = (m["cpu"]?.doubleValue ?? 0).rounded()
            switch AutoscaleDecision.decide(answer: answer, current: current, spec: spec, msSinceLastChange: since) {
            case .keep(let reason):
                app.autoscaleDecision = "\(AppLogFiles.timestamp()): cpu \(Int(cpu))%: \(reason)"
            case .scale(let n, let reason):
                app.autoscaleDecision = "\(AppLogFiles.timestamp()): cpu \(Int(cpu))%: \(reason); scaled \(current) → \(n)"
                self.logger.info("\(name): autoscale \(current) → \(n) (\(reason))")
                app.lastScaleAt = monotonicMs()
                self.scale(app, to: n) {}
            }
        })
    }

    /// No reload runs and no worker is starting or stopping.
    private func isSettled(_ app: ManagedApp) -> Bool {
        !app.reloading && !app.workers.contains { $0.status == .starting || $0.status == .stopping }
    }
}
