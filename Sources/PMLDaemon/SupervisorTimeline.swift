import Glibc
import PMLCore
import PMLPosix

/// What the dashboard shows over time: a sample of every worker each second (after the /proc
/// sampling) and the timeline of crashes, restarts, reloads, scales and stops, each recorded
/// where it happens with the decision taken and by whom.
extension Supervisor {
    func recordSample() {
        let readings = apps.flatMap { app in
            app.workers.compactMap { w in
                w.pid == nil ? nil : MetricsHistory.Reading(id: w.id, app: app.spec.name, instance: w.instance,
                                                            cpu: w.cpuPercent, memory: w.rssBytes, dispatched: w.dispatched)
            }
        }
        history.record(t: wallClockMs(), readings: readings, appNames: apps.map(\.spec.name))
    }

    func record(_ app: String, _ kind: TimelineEvent.Kind, worker: Int? = nil, _ title: String, detail: String? = nil, ok: Bool = true) {
        timeline.append(TimelineEvent(t: wallClockMs(), app: app, worker: worker, kind: kind, title: title, detail: detail, ok: ok))
    }

    /// A crash and what became of it: the default policy's proposal, and onCrash's answer if it
    /// changed it (or why it could not: it failed, or the scripts did not answer in time).
    func recordCrash(_ w: Worker, exit: ExitInfo, verdict: CrashVerdict?, decision: RestartDecision) {
        var detail: String
        if let verdict {
            detail = "default policy: \(Self.sentence(verdict.policy))"
            if let error = verdict.hookError {
                detail += "; onCrash failed, so it stands (\(error))"
            } else if decision != verdict.policy {
                detail = "onCrash: \(Self.sentence(decision)) (the \(detail))"
            } else if w.app.spec.hooks.contains("onCrash") {
                detail += "; onCrash kept it"
            }
        } else {
            detail = "the scripts did not answer in time; pml's built-in rules: \(Self.sentence(decision))"
        }
        var ok = true
        if case .errored = decision { ok = false }
        record(w.app.spec.name, .crash, worker: w.id, "worker \(w.id) \(exit.summary) after \(Self.duration(exit.uptimeMs))",
               detail: detail, ok: ok)
    }

    /// restart / stop / delete, as asked (CLI, dashboard or Lua).
    func recordAction(_ cmd: ControlCommand, workers: [Worker]) {
        let kind: TimelineEvent.Kind = cmd == .restart ? .restart : .stop
        let verb = ["restart": "restarting", "stop": "stopping", "delete": "deleting"][cmd.rawValue] ?? cmd.rawValue
        for (name, ws) in Dictionary(grouping: workers, by: { $0.app.spec.name }).sorted(by: { $0.key < $1.key }) {
            let which = ws.count == 1 ? "worker \(ws[0].id)" : "\(ws.count) workers"
            record(name, kind, worker: ws.count == 1 ? ws[0].id : nil, "\(verb) \(which)")
        }
    }

    func recordScale(_ app: ManagedApp, from: Int, to: Int) {
        // An autoscale tick sets its decision just before it scales; otherwise someone asked.
        let why = app.autoscaleDecision.flatMap { $0.hasSuffix("scaled \(from) → \(to)") ? "autoscale: \($0)" : nil }
        record(app.spec.name, .scale, "scaled \(from) → \(to) worker\(to == 1 ? "" : "s")", detail: why)
    }

    /// Wraps a reload's completion so its outcome (done, rolled back, vetoed by beforeReload, refused) is recorded.
    func recordingReload(_ app: ManagedApp, _ done: @escaping (Result<String, TargetError>) -> Void) -> (Result<String, TargetError>) -> Void {
        let name = app.spec.name
        return { [unowned self] result in
            switch result {
            case .success(let message):
                // The page shows the app's name beside each event: "reloaded: 4 workers started in 1.2 s".
                let prefix = "reloaded \(name): "
                self.record(name, .reload, message.hasPrefix(prefix) ? "reloaded: " + message.dropFirst(prefix.count) : message)
            case .failure(let e): self.record(name, .reload, "reload failed", detail: e.message, ok: false)
            }
            done(result)
        }
    }

    /// A reload under way, and how its old workers will be stopped (beforeReload's answer, when it has one).
    func recordReloadStart(_ app: ManagedApp, style: StopStyle, changes: [String]) {
        let signal = SignalNames.name(style.signal ?? SignalNames.number(app.spec.killSignal) ?? SIGTERM)
        var how = style.message.map { "send \(Self.brief($0)), wait \(Self.duration(style.graceMs ?? app.spec.killTimeout)), then \(signal)" } ?? signal
        how = "old workers: " + how
        if app.spec.hooks.contains("beforeReload") { how = "beforeReload: " + how }
        if !changes.isEmpty { how += "; changed: " + changes.joined(separator: ", ") }
        record(app.spec.name, .reload, "reload started", detail: how)
    }

    private static func brief(_ v: ScriptValue) -> String {
        if let s = v.stringValue { return "\"\(s)\"" }
        return "a message"
    }

    static func sentence(_ d: RestartDecision) -> String {
        switch d {
        case .restart(let ms): "restart in \(duration(ms))"
        case .stop(let reason): "leave it stopped (\(reason))"
        case .errored(let reason): "mark it errored (\(reason))"
        }
    }

    static func duration(_ ms: Int) -> String {
        ms < 1000 ? "\(ms) ms" : ms < 60_000 ? "\((Double(ms) / 100).rounded() / 10) s" : "\(ms / 60_000) min \(ms / 1000 % 60) s"
    }
}
