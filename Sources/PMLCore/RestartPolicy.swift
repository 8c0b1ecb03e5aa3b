/// Where a worker is in its life, as `pml ls` shows it.
public enum WorkerStatus: String, Codable, Sendable, CaseIterable {
    /// Spawned, not yet ready.
    case starting
    case online
    /// Asked to stop; waiting for it to exit.
    case stopping
    case stopped
    /// Crashed; a restart is scheduled after a backoff delay.
    case waiting
    /// Crashed too often in a row; no longer restarted.
    case errored

    /// True while a process exists for this worker.
    public var hasProcess: Bool { self == .starting || self == .online || self == .stopping }
}

/// Restart bookkeeping for one worker slot: the counters the policy decides from.
public struct CrashHistory: Sendable, Equatable {
    /// Restarts after a crash since the app was started (the `restarts` column).
    public var restarts = 0
    /// Exits in a row that came sooner than `min_uptime`.
    public var unstableRestarts = 0
    /// Crashes since the worker last ran for `stable_after`: the backoff exponent.
    public var backoffStep = 0

    public init() {}

    /// Updates the counters for an unrequested exit after `uptimeMs`.
    public mutating func recordCrash(uptimeMs: Int, spec: AppSpec) {
        if uptimeMs < spec.minUptime { unstableRestarts += 1 } else { unstableRestarts = 0 }
        if uptimeMs >= spec.stableAfter { backoffStep = 0 }
    }

    /// Counts a restart that is about to happen.
    public mutating func recordRestart() {
        restarts += 1
        backoffStep += 1
    }

    /// The counters as the `worker` argument of hooks carries them.
    public var scriptFields: [String: ScriptValue] {
        ["restarts": .int(Int64(restarts)), "unstable_restarts": .int(Int64(unstableRestarts)),
         "backoff_step": .int(Int64(backoffStep))]
    }
}

/// What happens after a worker exits on its own.
public enum RestartDecision: Sendable, Equatable {
    case restart(delayMs: Int)
    /// Leave it stopped.
    case stop(reason: String)
    /// Leave it errored: it kept crashing.
    case errored(reason: String)

    /// Interprets a policy or onCrash return value. nil means "no opinion" (keep the default).
    ///
    /// - `false` → stop; `true` → restart after `defaultDelay`; a number → restart after that many ms;
    /// - `{ delay = ms }` → restart; `{ restart = false, reason = … }` → stop;
    ///   `{ errored = true, reason = … }` → errored.
    public static func interpret(_ value: ScriptValue, defaultDelay: Int, hook: String) throws(HookResultError) -> RestartDecision? {
        switch value {
        case .null: return nil
        case .bool(false): return .stop(reason: "\(hook) returned false")
        case .bool(true): return .restart(delayMs: defaultDelay)
        case .int, .double:
            guard let ms = CheckedNumber.milliseconds(value) else {
                throw HookResultError("\(hook) returned delay \(value.brief): expected 0 to \(CheckedNumber.maxDelayMs) ms")
            }
            return .restart(delayMs: ms)
        case .object(let t):
            let reason = t["reason"]?.stringValue
            if t["errored"]?.boolValue == true { return .errored(reason: reason ?? "\(hook) marked it errored") }
            if t["restart"]?.boolValue == false { return .stop(reason: reason ?? "\(hook) returned restart = false") }
            if let d = t["delay"] {
                guard let ms = CheckedNumber.milliseconds(d) else {
                    throw HookResultError("\(hook) returned delay \(d.brief): expected 0 to \(CheckedNumber.maxDelayMs) ms")
                }
                return .restart(delayMs: ms)
            }
            if t["restart"]?.boolValue == true { return .restart(delayMs: defaultDelay) }
            throw HookResultError("\(hook) returned a table without delay, restart or errored")
        default:
            throw HookResultError("\(hook) returned a \(value.typeName): expected false, a delay in ms, or a table")
        }
    }

    /// The decision when the scripts do not answer in time (a hook of the app's state runs long or
    /// is stuck) or the Lua default policy cannot run: the same rules as `lua/pml/policy.lua`,
    /// backoff included, so a slow script delays nothing but its own say.
    public static func fallback(history: CrashHistory, exitCode: Int?, spec: AppSpec) -> RestartDecision {
        if !spec.autorestart { return .stop(reason: "autorestart is off") }
        if let code = exitCode, spec.stopExitCodes.contains(code) { return .stop(reason: "exit code \(code) is in stop_exit_codes") }
        if history.unstableRestarts > spec.maxRestarts {
            return .errored(reason: "crashed \(history.unstableRestarts) times in a row, each within min_uptime (\(spec.minUptime)ms)")
        }
        // PM2's exp_backoff_restart_delay: its own first delay, growing by half each time; else doubling.
        let (first, factor) = spec.expBackoffRestartDelay.map { ($0, 1.5) } ?? (spec.restartDelay, 2.0)
        let cap = Double(spec.restartDelayMax)
        var delay = Double(first), step = 0
        // A zero delay never grows: no loop of backoffStep turns.
        while step < history.backoffStep && delay < cap && delay > 0 {
            delay *= factor
            step += 1
        }
        return .restart(delayMs: Int(min(delay, cap)))
    }
}

/// A hook returned something pml cannot use.
public struct HookResultError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Which workers a command's target names.
public enum TargetSelection: Sendable, Equatable {
    case all
    case app(String)
    case worker(Int)

    /// Parses "all", a worker id, or an app name.
    public init(_ target: String) {
        if target == "all" { self = .all }
        else if let id = Int(target), id >= 0 { self = .worker(id) }
        else { self = .app(target) }
    }
}
