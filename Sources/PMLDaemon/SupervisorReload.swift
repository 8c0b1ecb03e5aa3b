import PMLCore
import PMLLua
import PMLPosix

/// One rolling reload of one app: for each old worker in turn, spawn its replacement, wait until
/// it is ready (it joins the rotation then), take the old one out of rotation and retire it.
/// A replacement that fails to start stops the reload; the old workers not yet replaced keep serving.
final class ReloadOperation {
    let app: ManagedApp
    let oldSpec: AppSpec
    let newSpec: AppSpec
    /// The re-read app file's table for this app, bound once the reload succeeds.
    let newRef: LuaTableRef?
    let style: Supervisor.StopStyle
    let parallel: Int
    let changes: [String]
    let startedAt = monotonicMs()
    var queue: [Worker]
    var replaced = 0
    var candidates: [Worker] = []
    var retiring: [Worker] = []
    var failure: String?

    init(app: ManagedApp, newSpec: AppSpec, newRef: LuaTableRef?, style: Supervisor.StopStyle, parallel: Int) {
        self.app = app
        oldSpec = app.spec
        self.newSpec = newSpec
        self.newRef = newRef
        self.style = style
        self.parallel = parallel
        changes = app.spec.changes(to: newSpec)
        queue = app.workers.sorted { $0.instance < $1.instance }
    }
}

/// One evaluation per app file for the apps one `pml reload` command reloads from that file, read
/// when the first of them reloads: their hooks then close over one top level (and its timers tick
/// once), as after `pml start` of the file. What no reload took is released when the command ends.
final class SharedReloadEvaluations {
    /// The files more than one target of the command comes from.
    let files: Set<String>
    private var taken: [String: (loaded: LoadedAppFile, indices: Set<Int>)] = [:]

    init(files: Set<String>) { self.files = files }

    /// The evaluation read for an earlier app of the command, if any.
    func loaded(_ file: String) -> LoadedAppFile? { taken[file]?.loaded }

    /// A reload took table `index` of `loaded` (it binds or releases it itself).
    func take(_ index: Int, of loaded: LoadedAppFile, file: String) {
        taken[file, default: (loaded, [])].indices.insert(index)
    }

    /// The command ended: the tables no reload took, by file.
    func finish() -> [(file: String, refs: [LuaTableRef])] {
        defer { taken = [:] }
        return taken.map { file, t in (file, t.loaded.tableRefs.enumerated().filter { !t.indices.contains($0.offset) }.map(\.element)) }
    }
}

extension Supervisor {
    /// `pml reload <app>`; `done` gets the sentence to print, or the reason it failed. With
    /// `sharing`, an app file read for an earlier app of the same command is not read again.
    func reload(_ app: ManagedApp, graceful: Bool, parallel: Int, sharing: SharedReloadEvaluations? = nil,
                done: @escaping (Result<String, TargetError>) -> Void) {
        let done = recordingReload(app, done)
        let name = app.spec.name
        if app.reloading { return done(.failure(TargetError(message: "a reload of \(name) is already running"))) }
        if app.workers.contains(where: { $0.status == .starting || $0.status == .stopping }) {
            return done(.failure(TargetError(message: "\(name) has workers starting or stopping; reload when pml ls shows them settled")))
        }
        if !app.workers.contains(where: { $0.status == .online }) {
            return done(.failure(TargetError(message: "\(name) has no online worker to replace; use pml restart \(name)")))
        }

        // The app file is read again (on its script thread): a changed cmd, env or instances takes effect.
        guard let file = app.spec.appFile else { return beforeReload(app, newSpec: app.spec, newRef: nil, graceful: graceful, parallel: parallel, done: done) }
        let sharing = sharing.flatMap { $0.files.contains(file) ? $0 : nil }
        app.reloading = true // no second reload, scale or autoscale while the file is read
        let answer = { [unowned self] (result: Result<LoadedAppFile, AppFileError>?) in
            app.reloading = false
            guard self.apps.contains(where: { $0 === app }) else { return done(.failure(TargetError(message: "\(name) was deleted during its reload"))) }
            let loaded: LoadedAppFile
            switch result {
            case .success(let l)?: loaded = l
            case .failure(let error)?: return done(.failure(TargetError(message: "\(error)")))
            case nil: return done(.failure(TargetError(message: "\(file): the app file did not finish within \(self.scripts.timeouts.evaluationMs) ms")))
            }
            let release = { [unowned self] (refs: [LuaTableRef]) in
                if !refs.isEmpty { self.scripts.tell(.appFile(file)) { side in refs.forEach(side.release(tableRef:)) } }
            }
            let newSpec: AppSpec, index: Int
            switch self.declaration(of: app, in: loaded, file: file) {
            case .success(let found): (newSpec, index) = found
            case .failure(let error):
                // Shared tables are released when the command ends.
                if sharing == nil { release(loaded.tableRefs) }
                return done(.failure(error))
            }
            if let sharing {
                sharing.take(index, of: loaded, file: file)
            } else {
                release(loaded.tableRefs.enumerated().filter { $0.offset != index }.map(\.element))
            }
            let newRef = index < loaded.tableRefs.count ? loaded.tableRefs[index] : nil
            if let blocker = app.spec.reloadBlocker(for: newSpec) {
                release(newRef.map { [$0] } ?? [])
                return done(.failure(TargetError(message: "cannot reload \(name): \(blocker)")))
            }
            self.beforeReload(app, newSpec: newSpec, newRef: newRef, graceful: graceful, parallel: parallel, done: done)
        }
        if let loaded = sharing?.loaded(file) { return answer(.success(loaded)) }
        scripts.ask(.appFile(file), deadlineMs: scripts.timeouts.evaluationMs, { side in side.evaluate(path: file) }, answer: answer)
    }

    /// Where `app` stands in a fresh evaluation of its app file, read as its start read it (what it
    /// was started with stays: --env K=V, the --env set, --name): its spec and its table's index.
    func declaration(of app: ManagedApp, in loaded: LoadedAppFile, file: String) -> Result<(AppSpec, Int), TargetError> {
        let specs: [AppSpec]
        do {
            specs = try AppSpecParser.appFile(file, value: loaded.value, source: loaded.source, cpuCount: Int(cpuCount),
                                              startedWith: app.startArgs)
        } catch {
            return .failure(TargetError(message: "\(error)"))
        }
        guard let index = specs.firstIndex(where: { $0.name == app.spec.name }) else {
            return .failure(TargetError(message: "\(file) no longer declares an app named \"\(app.spec.name)\""))
        }
        return .success((specs[index], index))
    }

    /// beforeReload comes from the running version (it knows how its workers want to be stopped);
    /// without an answer in time the default stop style applies. Then the reload starts.
    private func beforeReload(_ app: ManagedApp, newSpec: AppSpec, newRef: LuaTableRef?, graceful: Bool, parallel: Int,
                              done: @escaping (Result<String, TargetError>) -> Void) {
        let name = app.spec.name
        app.reloading = true
        askHook(app, "beforeReload", [appValue(app)], worker: nil) { [unowned self] v in
            app.reloading = false
            guard self.apps.contains(where: { $0 === app }) else {
                if let newRef, let file = app.spec.appFile { self.scripts.tell(.appFile(file)) { $0.release(tableRef: newRef) } }
                return done(.failure(TargetError(message: "\(name) was deleted during its reload")))
            }
            var style = StopStyle(message: graceful ? .string("shutdown") : nil)
            if let v {
                do {
                    switch try ReloadInstruction.interpret(v, graceful: graceful) {
                    case .veto(let reason):
                        if let newRef, let file = app.spec.appFile { self.scripts.tell(.appFile(file)) { $0.release(tableRef: newRef) } }
                        self.callHook(app, "onReload", [self.appValue(app), .object(["ok": .bool(false), "vetoed": .bool(true), "error": .string(reason)])], worker: nil)
                        return done(.failure(TargetError(message: "reload of \(name) vetoed: \(reason)")))
                    case .proceed(let message, let timeout, let signal):
                        style = StopStyle(message: message, graceMs: timeout, signal: signal)
                    }
                } catch {
                    self.hookFailed(app, nil, "beforeReload", "\(error)")
                }
            }
            self.startReload(app, newSpec: newSpec, newRef: newRef, style: style, parallel: parallel, done: done)
        }
    }

    private func startReload(_ app: ManagedApp, newSpec: AppSpec, newRef: LuaTableRef?, style: StopStyle, parallel: Int,
                             done: @escaping (Result<String, TargetError>) -> Void) {
        let name = app.spec.name
        let op = ReloadOperation(app: app, newSpec: newSpec, newRef: newRef, style: style, parallel: max(1, parallel))
        app.reloading = true
        app.spec = newSpec
        app.configureLogs()
        scheduleCronRestart(app)
        rewatch(app)
        logger.info("reloading \(name)\(op.changes.isEmpty ? "" : " (changed: \(op.changes.joined(separator: ", ")))")")
        recordReloadStart(app, style: style, changes: op.changes)
        reloadStep(op, done: done)
    }

    private func reloadStep(_ op: ReloadOperation, done: @escaping (Result<String, TargetError>) -> Void) {
        let app = op.app
        let remainingNew = op.newSpec.instances - op.replaced
        // Old workers beyond the new count are retired without replacement, at the end.
        if op.queue.isEmpty || remainingNew <= 0 {
            let extra = op.queue
            op.queue = []
            op.retiring += extra
            stop(extra, intent: .delete, style: op.style)
            if remainingNew > 0 {
                // More instances than before: start them like replacements (no old worker to retire).
                let batch = (0..<min(op.parallel, remainingNew)).map { _ in addWorker(to: app) }
                return startCandidates(batch, replacing: [], op, done: done)
            }
            return finishReload(op, done: done)
        }
        let olds = Array(op.queue.prefix(min(op.parallel, remainingNew)))
        op.queue.removeFirst(olds.count)
        let news = olds.map { old -> Worker in
            let w = Worker(id: nextWorkerID, instance: old.instance, app: app)
            nextWorkerID += 1
            app.workers.append(w)
            return w
        }
        startCandidates(news, replacing: olds, op, done: done)
    }

    private func startCandidates(_ news: [Worker], replacing olds: [Worker], _ op: ReloadOperation,
                                 done: @escaping (Result<String, TargetError>) -> Void) {
        var waitingFor = Set(news.map(\.id))
        op.candidates = news
        for w in news {
            w.startWatch = { [unowned self] failure in // holds op: the reload lives as long as it waits
                guard op.failure == nil else { return }
                if let failure {
                    op.failure = failure
                    return self.rollBack(op, done: done)
                }
                waitingFor.remove(w.id)
                guard waitingFor.isEmpty else { return }
                // Every replacement is in rotation: now the old ones leave it and are retired.
                op.replaced += news.count
                op.candidates = []
                op.retiring += olds
                self.stop(olds, intent: .delete, style: op.style)
                self.loop.schedule(after: 0) { self.reloadStep(op, done: done) }
            }
        }
        for w in news {
            guard op.failure == nil else { return }
            do {
                try spawn(w)
            } catch {
                w.startWatch = nil
                op.failure = "worker \(w.id) (instance \(w.instance)) could not start: \(error)"
                w.app.workers.removeAll { $0 === w }
                return rollBack(op, done: done)
            }
        }
    }

    private func rollBack(_ op: ReloadOperation, done: @escaping (Result<String, TargetError>) -> Void) {
        let app = op.app
        let failed = op.candidates
        op.candidates = []
        for w in failed { w.startWatch = nil }
        stop(failed, intent: .delete)
        if op.replaced == 0 {
            // Nothing was swapped: the app is exactly as before.
            app.spec = op.oldSpec
            app.configureLogs()
            scheduleCronRestart(app)
            rewatch(app)
            if let ref = op.newRef, let file = app.spec.appFile { scripts.tell(.appFile(file)) { $0.release(tableRef: ref) } }
        } else {
            bindReloadedTable(op)
        }
        let reason = op.failure ?? "unknown failure"
        let kept = app.workers.filter { w in !failed.contains { $0 === w } && !op.retiring.contains { $0 === w } }.count
        let message = "reload of \(app.spec.name) rolled back: \(reason); \(op.replaced == 0 ? "the old workers keep serving" : "\(op.replaced) worker(s) already run the new version") (\(kept) serving)"
        logger.warning("\(message)")
        app.logs.note(message)
        wait(until: { failed.allSatisfy { !$0.status.hasProcess } }) { [unowned self] in
            app.reloading = false
            self.callHook(app, "onReload", [self.appValue(app), .object([
                "ok": .bool(false), "error": .string(reason), "replaced": .int(Int64(op.replaced)),
                "duration": .int(Int64(monotonicMs() - op.startedAt)),
            ])], worker: nil)
            done(.failure(TargetError(message: message)))
        }
    }

    private func finishReload(_ op: ReloadOperation, done: @escaping (Result<String, TargetError>) -> Void) {
        let app = op.app
        bindReloadedTable(op)
        startAutoscale(app)
        let retiring = op.retiring
        // Done when every old worker is gone (graceful ones may take their time to drain).
        wait(until: { retiring.allSatisfy { !$0.status.hasProcess } }) { [unowned self] in
            app.reloading = false
            app.reloads += 1
            let ms = monotonicMs() - op.startedAt
            let changed = op.changes.isEmpty ? "" : "; changed: \(op.changes.joined(separator: ", "))"
            let message = "reloaded \(app.spec.name): \(op.replaced) worker\(op.replaced == 1 ? "" : "s") started in \(ms) ms\(changed)"
            self.logger.info("\(message)")
            self.callHook(app, "onReload", [self.appValue(app), .object([
                "ok": .bool(true), "replaced": .int(Int64(op.replaced)), "duration": .int(Int64(ms)),
                "changes": .array(op.changes.map { .string($0) }),
            ])], worker: nil)
            done(.success(message))
        }
    }

    /// The app's hooks come from the re-read file's table from now on.
    private func bindReloadedTable(_ op: ReloadOperation) {
        guard let ref = op.newRef, let file = op.app.spec.appFile else { return }
        let name = op.app.spec.name
        scripts.tell(.appFile(file)) { $0.bind(app: name, tableRef: ref) }
    }
}
