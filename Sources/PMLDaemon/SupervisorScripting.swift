import Glibc
import PMLCore
import PMLLua
import PMLPosix

/// Whose Lua code is running: timers a script starts belong to it and end with it.
enum ScriptOwner: Equatable {
    case app(String)
    case plugin(String)
}

/// A `pml.after` / `pml.every` timer.
struct ScriptTimer {
    var handle: TimerHandle?
    let callback: LuaCallback
    let repeating: Bool
    let ms: Int
    let owner: ScriptOwner?
}

/// Plugins, script timers, metrics and autoscaling: the parts of pml that run users' Lua on a schedule.
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

    /// (Re)loads every plugin; a broken one is recorded and skipped, the rest load.
    func loadPlugins() {
        cancelTimers { if case .plugin = $0 { return true } else { return false } }
        lua.unloadPlugins()
        pluginErrors = []
        for folder in pluginFolders() {
            for file in luaFiles(in: folder) {
                do {
                    let p = try loadPluginOwningItsTimers(file)
                    logger.info("plugin \(p.name) loaded from \(file) (hooks: \(p.hooks.joined(separator: ", ")))")
                } catch {
                    pluginErrors.append((file, error.description))
                    logger.warning("plugin \(file) not loaded: \(error.description)")
                }
            }
        }
    }

    /// Loads `plugins/` beside an app file the first time an app from that folder starts.
    func noteAppFolder(_ appFile: String?) {
        guard let appFile, let slash = appFile.lastIndex(of: "/") else { return }
        let folder = String(appFile[..<slash]) + "/plugins"
        guard !appPluginFolders.contains(folder), pathExists(folder) else { return }
        appPluginFolders.append(folder)
        for file in luaFiles(in: folder) where !lua.plugins.contains(where: { $0.path == file }) {
            do {
                let p = try loadPluginOwningItsTimers(file)
                logger.info("plugin \(p.name) loaded from \(file)")
            } catch {
                pluginErrors.append((file, error.description))
                logger.warning("plugin \(file) not loaded: \(error.description)")
            }
        }
    }

    /// Timers a plugin starts while it loads belong to it (cancelled on `pml plugins reload`).
    private func loadPluginOwningItsTimers(_ file: String) throws(AppFileError) -> LoadedPlugin {
        hookOwner = .plugin(file)
        defer { hookOwner = nil }
        do {
            return try lua.loadPlugin(path: file)
        } catch {
            // A plugin that did not load must not keep running through timers it started.
            cancelTimers { $0 == .plugin(file) }
            throw error
        }
    }

    func pluginList() -> [PluginInfo] {
        lua.plugins.map { PluginInfo(name: $0.name, path: $0.path, hooks: $0.hooks, error: nil) }
            + pluginErrors.map { PluginInfo(name: nil, path: $0.path, hooks: [], error: $0.message) }
    }

    private func luaFiles(in folder: String) -> [String] {
        directoryEntries(folder).filter { $0.hasSuffix(".lua") && !$0.hasPrefix(".") }.map { folder + "/" + $0 }.sorted()
    }

    /// Every plugin that defines `hook` hears it, after the app's own hook; a failing plugin is
    /// logged and the others still run.
    func notifyPlugins(_ app: ManagedApp, _ hook: String, _ args: [ScriptValue]) {
        for plugin in lua.plugins where plugin.hooks.contains(hook) {
            hookOwner = .plugin(plugin.name)
            if case .failed(let message) = lua.callPluginHook(plugin: plugin.name, hook: hook, args: args) {
                logger.warning("plugin \(plugin.name): \(hook) failed: \(message)")
                app.logs.note("plugin \(plugin.name): \(hook) failed: \(message)")
            }
            hookOwner = nil
        }
    }

    // MARK: timers

    func scheduleScriptTimer(afterMs ms: Int, repeating: Bool, callback: LuaCallback) -> Int {
        let id = nextTimerID
        nextTimerID += 1
        scriptTimers[id] = ScriptTimer(handle: nil, callback: callback, repeating: repeating, ms: ms, owner: hookOwner)
        armScriptTimer(id)
        return id
    }

    private func armScriptTimer(_ id: Int) {
        guard let t = scriptTimers[id] else { return }
        scriptTimers[id]?.handle = loop.schedule(after: t.ms) { [unowned self] in
            guard let t = self.scriptTimers[id] else { return }
            let previous = self.hookOwner
            self.hookOwner = t.owner
            if case .failed(let message) = self.lua.call(t.callback, args: []) {
                self.logger.warning("timer \(id) failed: \(message)")
            }
            self.hookOwner = previous
            if t.repeating, self.scriptTimers[id] != nil {
                self.armScriptTimer(id)
            } else {
                self.cancelScriptTimer(id)
            }
        }
    }

    func cancelScriptTimer(_ id: Int) {
        guard let t = scriptTimers.removeValue(forKey: id) else { return }
        if let h = t.handle { loop.cancel(h) }
        lua.release(t.callback)
    }

    func cancelTimers(where owned: (ScriptOwner) -> Bool) {
        for (id, t) in scriptTimers where t.owner.map(owned) == true { cancelScriptTimer(id) }
    }

    // MARK: metrics

    /// `m` for autoscale rules and `pml.metrics(app)`.
    func metricsValue(_ app: ManagedApp) -> ScriptValue {
        let running = app.workers.filter { $0.pid != nil }
        let now = monotonicMs()
        let dispatched = app.workers.reduce(0) { $0 + $1.dispatched }
        var rps = 0.0
        if let s = app.dispatchSample, now > s.at { rps = Double(dispatched - s.count) * 1000 / Double(now - s.at) }
        app.dispatchSample = (dispatched, now)
        var sums: [String: (total: Double, count: Int)] = [:]
        for w in running { for (k, v) in w.metrics { sums[k, default: (0, 0)].total += v; sums[k, default: (0, 0)].count += 1 } }
        let n = Double(max(1, running.count))
        return .object([
            "app": .string(app.spec.name),
            "instances": .int(Int64(app.workers.count)),
            "running": .int(Int64(running.count)),
            "cpu": .double(running.reduce(0) { $0 + $1.cpuPercent } / n),
            "mem": .double(Double(running.reduce(0) { $0 + $1.rssBytes }) / n),
            "rps": .double(rps),
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

    private func autoscaleTick(_ app: ManagedApp) {
        guard let spec = app.spec.autoscale, app.workers.contains(where: { $0.status == .online }) else { return }
        if app.reloading || app.workers.contains(where: { $0.status == .starting || $0.status == .stopping }) {
            app.autoscaleDecision = "\(AppLogFiles.timestamp()): waiting: workers are starting or stopping"
            return
        }
        let m = metricsValue(app)
        hookOwner = .app(app.spec.name)
        let outcome = lua.callHook(app: app.spec.name, hook: "autoscale.rule", args: [m])
        hookOwner = nil
        let answer: ScriptValue
        switch outcome {
        case .returned(let v): answer = v
        case .notDefined: return
        case .failed(let message):
            hookFailed(app, nil, "autoscale.rule", message)
            app.autoscaleDecision = "\(AppLogFiles.timestamp()): rule failed, count kept at \(app.workers.count): \(message)"
            return
        }
        let since = app.lastScaleAt.map { monotonicMs() - $0 }
        let current = app.workers.count
        let cpu = (m["cpu"]?.doubleValue ?? 0).rounded()
        switch AutoscaleDecision.decide(answer: answer, current: current, spec: spec, msSinceLastChange: since) {
        case .keep(let reason):
            app.autoscaleDecision = "\(AppLogFiles.timestamp()): cpu \(Int(cpu))%: \(reason)"
        case .scale(let n, let reason):
            app.autoscaleDecision = "\(AppLogFiles.timestamp()): cpu \(Int(cpu))%: \(reason); scaled \(current) → \(n)"
            logger.info("\(app.spec.name): autoscale \(current) → \(n) (\(reason))")
            app.lastScaleAt = monotonicMs()
            scale(app, to: n) {}
        }
    }
}
