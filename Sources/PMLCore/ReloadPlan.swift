/// What `beforeReload(app)` decided: go ahead (with how to retire old workers), or veto.
public enum ReloadInstruction: Sendable, Equatable {
    /// message: sent to each old worker after it leaves the rotation (nil: none, signal at once);
    /// timeoutMs: wait for it to exit before the signal (nil: kill_timeout); signal: nil = kill_signal.
    case proceed(message: ScriptValue?, timeoutMs: Int?, signal: Int32?)
    case veto(reason: String)

    /// Interprets beforeReload's return value. `graceful` is `--graceful`: the default message is
    /// "shutdown" (as PM2 sends), else old workers get the signal at once.
    ///
    /// nil → the default; `false` → veto; a string → that message; a table with `message`
    /// (string or table), `timeout` (ms), `signal`, or `veto = true` / `veto = "reason"` (+ `reason`).
    public static func interpret(_ value: ScriptValue, graceful: Bool) throws(HookResultError) -> ReloadInstruction {
        let defaultMessage: ScriptValue? = graceful ? .string("shutdown") : nil
        switch value {
        case .null:
            return .proceed(message: defaultMessage, timeoutMs: nil, signal: nil)
        case .bool(false):
            return .veto(reason: "beforeReload returned false")
        case .bool(true):
            return .proceed(message: defaultMessage, timeoutMs: nil, signal: nil)
        case .string:
            return .proceed(message: value, timeoutMs: nil, signal: nil)
        case .object(let t):
            if let v = t["veto"], v != .bool(false), v != .null {
                return .veto(reason: v.stringValue ?? t["reason"]?.stringValue ?? "beforeReload vetoed the reload")
            }
            var message = defaultMessage
            if let m = t["message"] {
                switch m {
                case .string, .object, .array: message = m
                case .bool(false): message = nil
                default: throw HookResultError("beforeReload returned message \(m.brief): expected a string or a table")
                }
            }
            var timeout: Int?
            if let v = t["timeout"] {
                guard let ms = v.intValue, ms >= 0, ms <= 86_400_000 else {
                    throw HookResultError("beforeReload returned timeout \(v.brief): expected 0 to 86400000 ms")
                }
                timeout = Int(ms)
            }
            var signal: Int32?
            if let v = t["signal"] {
                guard let text = v.stringValue ?? v.intValue.map({ String($0) }), let n = SignalNames.number(text) else {
                    throw HookResultError("beforeReload returned signal \(v.brief): expected a name such as \"SIGINT\"")
                }
                signal = n
            }
            return .proceed(message: message, timeoutMs: timeout, signal: signal)
        default:
            throw HookResultError("beforeReload returned a \(value.typeName): expected nil, false, a message or a table")
        }
    }
}

extension AppSpec {
    /// What a reload would change, in words ("cmd", "env.GREETING", "instances 4 → 2").
    public func changes(to new: AppSpec) -> [String] {
        var out: [String] = []
        if argv != new.argv { out.append("cmd") }
        if cwd != new.cwd { out.append("cwd") }
        for key in Set(env.keys).union(new.env.keys).sorted() where env[key] != new.env[key] { out.append("env.\(key)") }
        if instances != new.instances { out.append("instances \(instances) → \(new.instances)") }
        if hooks != new.hooks { out.append("hooks") }
        var settings = new
        settings.argv = argv
        settings.cwd = cwd
        settings.env = env
        settings.instances = instances
        settings.hooks = hooks
        if settings != self { out.append("settings") }
        return out
    }

    /// A reload cannot move an app to other sockets or another dispatch mode: that needs a restart.
    public func reloadBlocker(for new: AppSpec) -> String? {
        if listen != new.listen { return "\"listen\" changed; use pml restart \(name)" }
        if dispatch != new.dispatch { return "\"dispatch\" changed; use pml restart \(name)" }
        if name != new.name { return "the app's name changed" }
        return nil
    }
}

/// The options of `pml.reload(app, opts)`: what `pml reload --graceful --parallel N` takes.
public struct ReloadOptions: Sendable, Equatable {
    /// Old workers get the graceful message (default "shutdown") before the kill signal.
    public var graceful = false
    /// Workers replaced at a time.
    public var parallel = 1

    public init(graceful: Bool = false, parallel: Int = 1) {
        self.graceful = graceful
        self.parallel = parallel
    }

    /// nil or a table `{ graceful = bool, parallel = n }`; anything else says what is wrong.
    public static func parse(_ value: ScriptValue) throws(HookResultError) -> ReloadOptions {
        var options = ReloadOptions()
        switch value {
        case .null: return options
        case .object(let t):
            for key in t.keys.sorted() where key != "graceful" && key != "parallel" {
                throw HookResultError("pml.reload: unknown option \"\(key)\" (options are graceful and parallel)")
            }
            if let v = t["graceful"] {
                guard let b = v.boolValue else { throw HookResultError("pml.reload: graceful must be true or false, got \(v.brief)") }
                options.graceful = b
            }
            if let v = t["parallel"] {
                guard let n = CheckedNumber.integer(v, in: 1...CheckedNumber.maxInstances) else {
                    throw HookResultError("pml.reload: parallel must be a whole number from 1 to \(CheckedNumber.maxInstances), got \(v.brief)")
                }
                options.parallel = n
            }
            return options
        default:
            throw HookResultError("pml.reload: options must be a table such as { graceful = true, parallel = 2 }, got \(value.typeName)")
        }
    }
}
