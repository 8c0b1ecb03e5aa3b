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
