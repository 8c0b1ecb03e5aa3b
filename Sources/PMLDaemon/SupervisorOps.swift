import Glibc
import PMLCore
import PMLPosix

/// Restarts pml decides by itself, from an app's own keys: `max_memory_restart`, `cron_restart`
/// and watch mode.
extension Supervisor {
    /// A restart nobody typed (a file changed, the cron schedule came): apps that serve through pml
    /// or run several workers get a rolling reload (no connection dropped), others a restart.
    /// Workers stopped by `pml stop` stay stopped.
    func restartApp(_ app: ManagedApp, because why: String) {
        guard apps.contains(where: { $0 === app }), app.workers.contains(where: { $0.status != .stopped }) else { return }
        app.logs.note("\(why): restarting")
        logger.info("\(app.spec.name): \(why): restarting")
        if app.mode == "cluster", app.workers.contains(where: { $0.status == .online }),
           !app.workers.contains(where: { $0.status == .starting || $0.status == .stopping }) {
            reload(app, graceful: false, parallel: 1) { [unowned self, unowned app] result in
                if case .failure(let e) = result { self.logger.warning("\(app.spec.name): reload after \(why) failed: \(e.message)") }
            }
            return
        }
        if app.reloading { return app.logs.note("a reload is running; \(why) is left to it") }
        stop(app.workers.filter { $0.status != .stopped }, intent: .restart)
    }

    /// Watch mode: watches what the app's spec asks for (again if that changed), or stops watching.
    func configureWatch(_ app: ManagedApp) throws(WatchError) {
        guard let spec = app.spec.watch else {
            app.watcher?.close()
            app.watcher = nil
            return
        }
        if app.watcher != nil, app.watchedSpec == spec { return }
        let globs = spec.ignore.map(GlobPattern.init)
        let watcher = try AppWatcher(spec: spec, loop: loop, isIgnored: { [unowned self, unowned app] path in
            self.watchIgnores(app, path, spec: spec, globs: globs)
        }, onProblem: { [unowned self, unowned app] problem in
            app.logs.note("watch: \(problem)")
            self.logger.warning("\(app.spec.name): watch: \(problem)")
        }, onBurst: { [unowned self, unowned app] path in
            self.restartApp(app, because: "watch: \(path) changed")
        })
        app.watcher?.close()
        app.watcher = watcher
        app.watchedSpec = spec
    }

    /// After a reload changed the spec: a watch that cannot be set up is noted; the app keeps running.
    func rewatch(_ app: ManagedApp) {
        do {
            try configureWatch(app)
        } catch {
            app.logs.note("watch: \(error)")
            logger.warning("\(app.spec.name): watch: \(error)")
        }
    }

    /// What watch mode never reacts to: pml's home, the files pml itself writes for the app (its
    /// logs, rotated copies, pid files), and the app's `ignore_watch` globs (node_modules and .git
    /// always).
    private func watchIgnores(_ app: ManagedApp, _ path: String, spec: WatchSpec, globs: [GlobPattern]) -> Bool {
        if path == paths.home || path.hasPrefix(paths.home + "/") { return true }
        let written = app.allLogFiles.flatMap(\.files) + app.workers.compactMap { app.spec.pidFile(instance: $0.instance) }
        if written.contains(where: { path == $0 || path.hasPrefix($0 + ".") }) { return true }
        for root in spec.paths where path == root || path.hasPrefix(root + "/") {
            let relative = path == root ? String(path.split(separator: "/").last ?? "") : String(path.dropFirst(root.count + 1))
            if globs.contains(where: { $0.matches(relativePath: relative, absolutePath: path) }) { return true }
        }
        return false
    }

    /// `max_memory_restart`: called after each /proc sample. A worker past its limit is restarted once
    /// (it is `stopping` until it exits, so the next sample does not ask again).
    func enforceMemoryLimit(_ w: Worker) {
        guard let limit = w.app.spec.maxMemoryRestart, w.status == .online, w.rssBytes > limit, let pid = w.pid else { return }
        let why = "worker \(w.id) (pid \(pid)) uses \(w.rssBytes) bytes, over max_memory_restart \(limit)"
        w.app.logs.note("\(why): restarting it")
        logger.warning("\(w.app.spec.name): \(why): restarting it")
        stop([w], intent: .restart)
    }

    /// `cron_restart`: a loop timer for the next matching second in local time; re-armed each time.
    func scheduleCronRestart(_ app: ManagedApp) {
        if let t = app.cronTimer { loop.cancel(t) }
        app.cronTimer = nil
        guard let expression = app.spec.cronRestart, let schedule = try? CronSchedule(expression) else { return }
        let now = wallClockMs()
        // Never the same second twice, even if the timer fired a little early.
        let from = max(now / 1000, app.cronLastFired ?? 0)
        guard let next = schedule.next(after: Self.localTime(from)), let at = Self.epochSeconds(next) else { return }
        app.cronTimer = loop.schedule(after: max(0, at * 1000 - now)) { [unowned self, unowned app] in
            app.cronTimer = nil
            app.cronLastFired = at
            if app.status == .online { self.restartApp(app, because: "cron_restart \"\(expression)\"") }
            self.scheduleCronRestart(app)
        }
    }

    static func localTime(_ epochSeconds: Int) -> CivilTime {
        var t = time_t(epochSeconds)
        var parts = tm()
        localtime_r(&t, &parts)
        return CivilTime(year: Int(parts.tm_year) + 1900, month: Int(parts.tm_mon) + 1, day: Int(parts.tm_mday),
                         hour: Int(parts.tm_hour), minute: Int(parts.tm_min), second: Int(parts.tm_sec))
    }

    /// Local calendar time → seconds since the epoch (nil for a time the clock skips, e.g. in a DST change).
    static func epochSeconds(_ c: CivilTime) -> Int? {
        var parts = tm()
        parts.tm_year = Int32(c.year - 1900)
        parts.tm_mon = Int32(c.month - 1)
        parts.tm_mday = Int32(c.day)
        parts.tm_hour = Int32(c.hour)
        parts.tm_min = Int32(c.minute)
        parts.tm_sec = Int32(c.second)
        parts.tm_isdst = -1
        let t = mktime(&parts)
        return t == -1 ? nil : Int(t)
    }
}
