import PMLCore
import PMLLua
import PMLPosix

/// The script thread's side of a `ScriptThread`: one `LuaRuntime` (an app file's, a plugin's, or
/// pml's library state), its own event loop for the jobs and for `pml.after`/`pml.every` timers,
/// and the `pml` table's host. Created, used and freed on that thread only.
final class ScriptSide: LuaHost {
    let thread: ScriptThread
    let loop: EventLoop
    let lua: LuaRuntime
    /// The plugin this state loaded, if it is a plugin's.
    private(set) var plugin: LoadedPlugin?
    /// The app whose hook runs now: timers started by it are its own and end when it is unbound.
    private var currentApp: String?
    /// The evaluation of the app file whose top level (or timer started there) runs now: timers
    /// started by it end with that evaluation (see `Evaluations`).
    private var currentEvaluation: Int?
    private var evaluations = Evaluations<LuaTableRef>()
    /// The table each app's hooks come from, to tell `evaluations` what is bound.
    private var bound: [String: LuaTableRef] = [:]
    private var timers: [Int: Timer] = [:]
    private var nextTimerID = 1
    private var stopping = false

    /// A `pml.after` / `pml.every` timer.
    private struct Timer {
        var handle: TimerHandle?
        let callback: LuaCallback
        let repeating: Bool
        let ms: Int
        let app: String?
        let evaluation: Int?
    }

    init(thread: ScriptThread, libraryPaths: [String]) throws {
        self.thread = thread
        loop = try EventLoop()
        lua = try LuaRuntime(libraryPaths: libraryPaths, limits: thread.limits)
        lua.host = self
    }

    /// Runs jobs until told to stop or abandoned.
    func run() {
        do {
            try loop.register(fd: thread.jobsFD, events: [.readable]) { [unowned self] _ in self.runJobs() }
        } catch {
            return report(.failed(app: nil, message: "\(thread.name): cannot watch its queue: \(error)"))
        }
        loop.run()
    }

    private func runJobs() {
        for job in thread.takeJobs() {
            if stopping || thread.isAbandoned { return loop.stop() }
            job(self)
        }
        if stopping || thread.isAbandoned { loop.stop() }
    }

    /// Ends the thread after the jobs queued before this one.
    func stop() { stopping = true }

    func answer(_ id: Int, _ value: any Sendable) { thread.send(.answer(id: id, value: value)) }

    func report(_ command: ScriptCommand) { thread.send(.command(command)) }

    /// Runs one Lua call, marked busy for the watchdog under `label`.
    private func measured<T>(_ label: String, app: String?, evaluation: Int? = nil, _ body: () -> T) -> T {
        let previous = (currentApp, currentEvaluation)
        (currentApp, currentEvaluation) = (app, evaluation)
        thread.busy(label)
        defer {
            (currentApp, currentEvaluation) = previous
            if thread.idle(memory: lua.memoryInUse) { loop.stop() }
        }
        return body()
    }

    // MARK: what jobs call

    func evaluate(path: String) -> Result<LoadedAppFile, AppFileError> {
        let id = evaluations.begin()
        let result = measured("evaluating \(path)", app: nil, evaluation: id) { () -> Result<LoadedAppFile, AppFileError> in
            do throws(AppFileError) { return .success(try lua.evaluateAppFile(path: path)) } catch { return .failure(error) }
        }
        let tables = (try? result.get())?.tableRefs ?? []
        if evaluations.finished(id, tables: tables) { endTimers { $0 == id } }
        return result
    }

    /// Ends the timers whose evaluation matches.
    private func endTimers(of evaluation: (Int) -> Bool) {
        for (id, t) in timers where t.evaluation.map(evaluation) == true { cancel(id) }
    }

    private func dropped(_ ref: LuaTableRef) {
        if let ended = evaluations.dropped(ref) { endTimers { $0 == ended } }
    }

    func loadPlugin(path: String) -> Result<LoadedPlugin, AppFileError> {
        measured("loading plugin \(path)", app: nil) {
            do throws(AppFileError) {
                let p = try lua.loadPlugin(path: path)
                plugin = p
                return .success(p)
            } catch {
                return .failure(error)
            }
        }
    }

    /// A table from another state (one this state replaced: a reload straddled the replacement)
    /// is refused, said in daemon.log; the app keeps the hooks it has here.
    func bind(app: String, tableRef: LuaTableRef) {
        guard lua.bind(app: app, tableRef: tableRef) else {
            return report(.failed(app: app, message: "\(app): hooks from a Lua state pml left were not bound in its fresh state; the fresh state's stay"))
        }
        // The replaced table's evaluation ends with its last table: other apps may still use it.
        if let old = bound.updateValue(tableRef, forKey: app), old != tableRef { dropped(old) }
    }

    /// Forgets the app's hooks and ends the timers its hooks started.
    func unbind(app: String) {
        lua.unbind(app: app)
        if let old = bound.removeValue(forKey: app) { dropped(old) }
        for (id, t) in timers where t.app == app { cancel(id) }
    }

    /// Another state's ref is ignored: its number may name a live value here.
    func release(tableRef: LuaTableRef) {
        if lua.release(tableRef: tableRef) { dropped(tableRef) }
    }

    func callHook(app: String, hook: String, args: [ScriptValue]) -> HookOutcome {
        measured("\(hook) of \(app)", app: app) { lua.callHook(app: app, hook: hook, args: args) }
    }

    func callLibrary(module: String, function: String, args: [ScriptValue], for app: String) -> HookOutcome {
        measured("\(module).\(function) for \(app)", app: app) { lua.callLibrary(module: module, function: function, args: args) }
    }

    /// This state's plugin's hook; `.notDefined` if it is not a plugin's or the plugin lacks it.
    func callPluginHook(hook: String, args: [ScriptValue]) -> HookOutcome {
        guard let plugin, plugin.hooks.contains(hook) else { return .notDefined }
        return measured("\(hook) of plugin \(plugin.name)", app: nil) { lua.callPluginHook(plugin: plugin.name, hook: hook, args: args) }
    }

    // MARK: timers

    private func arm(_ id: Int) {
        guard let t = timers[id] else { return }
        timers[id]?.handle = loop.schedule(after: t.ms) { [unowned self] in
            guard let t = self.timers[id] else { return }
            let outcome = self.measured("timer \(id)", app: t.app, evaluation: t.evaluation) { self.lua.call(t.callback, args: []) }
            if case .failed(let message) = outcome {
                self.report(.failed(app: t.app, message: "timer \(id) failed: \(message)"))
            }
            if t.repeating, self.timers[id] != nil { self.arm(id) } else { self.cancel(id) }
        }
    }

    private func cancel(_ id: Int) {
        guard let t = timers.removeValue(forKey: id) else { return }
        if let h = t.handle { loop.cancel(h) }
        lua.release(t.callback)
    }

    // MARK: LuaHost: reads come from the snapshot, changes go to the supervisor as commands

    func luaLog(level: LuaLogLevel, source: String, message: String) {
        report(.log(level: level, source: source, message: message))
    }

    func luaApps() -> ScriptValue { .array(thread.snapshot.current.apps) }

    func luaWorkers(app: String) -> ScriptValue? { thread.snapshot.current.workers[app].map(ScriptValue.array) }

    func luaMetrics(app: String) -> ScriptValue? { thread.snapshot.current.metrics[app] }

    func luaRestart(target: String) -> String? {
        if let error = thread.snapshot.current.targetError(target) { return error }
        report(.restart(target: target))
        return nil
    }

    func luaSpawn(argv: [String]) -> String? {
        report(.spawn(argv: argv))
        return nil
    }

    func luaSend(worker id: Int, message: ScriptValue) -> String? {
        switch thread.snapshot.current.running[id] {
        case nil: return "no worker with id \(id)"
        case false?: return "worker \(id) is not running"
        case true?:
            report(.send(worker: id, message: message))
            return nil
        }
    }

    func luaBroadcast(app: String, message: ScriptValue) -> String? {
        guard thread.snapshot.current.workers[app] != nil else { return "no app named \"\(app)\"" }
        report(.broadcast(app: app, message: message))
        return nil
    }

    func luaReload(app: String, options: ScriptValue) -> String? {
        let snapshot = thread.snapshot.current
        guard snapshot.workers[app] != nil else { return "no app named \"\(app)\"" }
        let parsed: ReloadOptions
        do { parsed = try ReloadOptions.parse(options) } catch { return error.description }
        if snapshot.reloading.contains(app) { return "a reload of \(app) is running" }
        report(.reload(app: app, options: parsed))
        return nil
    }

    func luaScale(app: String, instances: Int) -> String? {
        let snapshot = thread.snapshot.current
        guard snapshot.workers[app] != nil else { return "no app named \"\(app)\"" }
        guard (1...CheckedNumber.maxInstances).contains(instances) else {
            return "pml.scale takes 1 to \(CheckedNumber.maxInstances) workers, got \(instances)"
        }
        if snapshot.reloading.contains(app) { return "a reload of \(app) is running" }
        report(.scale(app: app, instances: instances))
        return nil
    }

    func luaSchedule(afterMs: Int, repeating: Bool, callback: LuaCallback) -> Int {
        let id = nextTimerID
        nextTimerID += 1
        timers[id] = Timer(handle: nil, callback: callback, repeating: repeating,
                           ms: afterMs, app: currentApp, evaluation: currentApp == nil ? currentEvaluation : nil)
        arm(id)
        return id
    }

    func luaCancel(timer: Int) { cancel(timer) }
}
