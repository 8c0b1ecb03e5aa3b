/// PM2's ecosystem files in pml's terms: the one mapping from PM2's app options to pml app tables,
/// shared by `pml start|restart|reload|stop|delete <ecosystem>` and `pml import`.
///
/// Pure: what it needs to know about the machine (does a file exist, is a program on PATH) comes
/// in a `Probe`. Paths stay as written, relative to the ecosystem file's folder (the app tables are
/// parsed with that folder as their base). Every PM2 option ends up in exactly one place: mapped to
/// a pml key, or listed in `ignored` with a hint — never silently dropped.
public struct PM2Mapping {
    /// What the mapping needs to know about the machine.
    public struct Probe: Sendable {
        /// Whether a file exists (absolute path).
        public var fileExists: @Sendable (String) -> Bool
        /// Whether a bare program name is found on PATH.
        public var programOnPath: @Sendable (String) -> Bool
        /// Whether a file runs without an interpreter (executable, with #! or ELF); absolute path.
        public var runsDirectly: @Sendable (String) -> Bool

        public init(fileExists: @escaping @Sendable (String) -> Bool, programOnPath: @escaping @Sendable (String) -> Bool,
                    runsDirectly: @escaping @Sendable (String) -> Bool) {
            self.fileExists = fileExists
            self.programOnPath = programOnPath
            self.runsDirectly = runsDirectly
        }
    }

    /// Absolute folder of the ecosystem file: relative paths in it are relative to this folder.
    public var folder: String
    /// The file as the user named it, for messages.
    public var display: String
    /// `--env <name>`: env_<name> is merged over env.
    public var envName: String?
    public var probe: Probe
    /// Keys pml's app spec accepts: a PM2 option whose pml key has the same name passes through.
    public var pmlKeys: Set<String>

    public init(folder: String, display: String, envName: String?, probe: Probe,
                pmlKeys: Set<String> = Set(AppSpecParser.knownKeys)) {
        self.folder = folder
        self.display = display
        self.envName = envName
        self.probe = probe
        self.pmlKeys = pmlKeys
    }

    /// PM2's own defaults, written into every app that comes from a PM2 file (PM2's schema.json).
    public static let pm2Defaults: [String: ScriptValue] = [
        "kill_signal": .string("SIGINT"), "kill_timeout": .int(1600), "max_restarts": .int(16), "min_uptime": .int(1000),
    ]

    /// PM2's other names for options (schema.json aliases), mapped to the canonical one.
    public static let aliases: [String: String] = [
        "exec": "script", "exec_interpreter": "interpreter", "interpreterArgs": "node_args", "interpreter_args": "node_args",
        "out": "out_file", "output": "out_file", "out_log": "out_file",
        "error": "error_file", "err": "error_file", "err_file": "error_file", "err_log": "error_file",
        "log": "log_file", "pid": "pid_file", "cron": "cron_restart", "combine_logs": "merge_logs", "user": "uid",
    ]

    /// PM2 options whose pml key has the same name and meaning: passed through once pml's app spec
    /// knows the key, listed as not honoured until then.
    public static let passThrough: [String] = [
        "namespace", "watch", "ignore_watch", "watch_delay", "out_file", "error_file", "log_file", "pid_file",
        "merge_logs", "disable_logs", "log_type", "uid", "gid", "max_memory_restart", "cron_restart",
        "exp_backoff_restart_delay", "increment_var", "instance_var", "filter_env", "autostart", "log_date_format",
    ]

    /// Values of options that ask for what pml does anyway (or for nothing at all on Linux).
    static func isNoOp(_ option: String, _ v: ScriptValue) -> Bool {
        switch (option, v) {
        case ("treekill", .bool(true)), ("merge_logs", .bool(true)), ("autostart", .bool(true)),
             ("instance_var", .string("NODE_APP_INSTANCE")), ("vizion", .bool(false)), ("pmx", .bool(false)),
             ("automation", .bool(false)), ("trace", .bool(false)), ("disable_trace", .bool(true)),
             ("source_map_support", .bool(false)), ("disable_source_map_support", .bool(true)), ("force", .bool(false)),
             ("watch", .bool(false)), ("disable_logs", .bool(false)), ("filter_env", .bool(false)),
             ("windowsHide", _), ("username", _), ("shutdown_with_message", .bool(false)), ("wait_ready", .bool(false)):
            return true
        default:
            return false
        }
    }

    /// What to tell a user about an option pml does not honour.
    public static let hints: [String: String] = [
        "watch": "pml does not watch files: run `pml reload <app>` after a change",
        "ignore_watch": "pml does not watch files", "watch_delay": "pml does not watch files",
        "watch_options": "pml watches with inotify: chokidar's options do not apply",
        "out_file": "pml writes $PML_HOME/logs/<app>-out.log (see `pml logs <app>`, `pml describe <app>`)",
        "error_file": "pml writes $PML_HOME/logs/<app>-err.log (see `pml logs <app>`, `pml describe <app>`)",
        "log_file": "pml keeps out and err logs apart under $PML_HOME/logs (`pml logs <app>` shows both)",
        "pid_file": "pml keeps pids itself: `pml pid <app>`, `pml ls --json`",
        "merge_logs": "pml keeps one out and one err log per app",
        "disable_logs": "pml always logs ($PML_HOME/logs)",
        "log_type": "pml writes plain lines (log_format = \"json\" in a Lua app file writes JSON lines)",
        "uid": "pml runs workers as the daemon's user", "gid": "pml runs workers with the daemon's group",
        "max_memory_restart": "the memory-limit plugin does it (plugins/memory-limit.lua, PML_MEMORY_LIMIT_<APP>)",
        "cron_restart": "the cron-restart plugin does it (plugins/cron-restart.lua, PML_CRON_RESTART)",
        "increment_var": "derive it from PML_INSTANCE (0…N-1) in the app",
        "instance_var": "pml sets PML_INSTANCE and NODE_APP_INSTANCE",
        "filter_env": "workers get the environment of the pml command that started them, plus env",
        "autostart": "pml starts every app of the file (use --only to pick)",
        "treekill": "pml always signals the worker's whole process group",
        "shutdown_with_message": "pml stops with kill_signal; `pml reload --graceful` sends \"shutdown\" first",
        "source_map_support": "put --enable-source-maps in node_args",
        "vizion": "pml keeps no version metadata", "post_update": "pml does not deploy", "force": "pml never starts one app twice",
        "pmx": "no pml equivalent", "automation": "no pml equivalent", "trace": "no pml equivalent",
        "disable_trace": "no pml equivalent", "v8": "no pml equivalent", "event_loop_inspector": "no pml equivalent",
        "deep_monitoring": "no pml equivalent", "io": "no pml equivalent", "install_url": "no pml equivalent",
        "name_prefix": "no pml equivalent", "kill_retry_time": "pml sends SIGKILL once after kill_timeout",
        "execute_command": "no pml equivalent", "write": "no pml equivalent",
    ]

    /// PM2's interpreters by extension (lib/API/interpreter.json); pml's parser knows the rest.
    static let pm2Interpreters: [String: String] = [
        "sh": "bash", "coffee": "coffee", "ls": "lsc", "ts": "bun", "tsx": "bun",
    ]
    static let knownExtensions: Set<String> = ["js", "mjs", "cjs", "py", "sh", "bash", "rb", "pl", "php", "lua", "coffee", "ls", "ts", "tsx"]

    // MARK: results

    /// A PM2 option pml does not honour.
    public struct Ignored: Sendable, Equatable {
        public var option: String
        /// The value as written, in brief.
        public var value: String
        public var hint: String
    }

    /// One app of the file, as a pml app table.
    public struct App: Sendable, Equatable {
        public var name: String
        /// The pml app table (keys of AppSpecParser.knownKeys), paths relative to the ecosystem's folder.
        public var table: [String: ScriptValue]
        /// PM2 options that were honoured, in the order written in `optionOrder`.
        public var mapped: [String] = []
        public var ignored: [Ignored] = []
        /// What the user should know about a mapping (renames, approximations).
        public var notes: [String] = []
        /// A comment for a pml key (written above it by `pml import`).
        public var comments: [String: String] = [:]
    }

    /// Every app of an ecosystem file, and what the file holds besides apps.
    public struct Ecosystem: Sendable, Equatable {
        public var apps: [App]
        /// Top-level keys beside `apps` (deploy, static…), not used by pml.
        public var ignoredTopLevel: [String]
        /// File-wide notes (an --env set no app defines).
        public var notes: [String]

        /// One line per app naming what pml does not honour, or nothing.
        public var ignoredSummary: [String] {
            apps.filter { !$0.ignored.isEmpty }.map { app in
                "\(app.name): " + app.ignored.map { "\($0.option) (\($0.hint))" }.joined(separator: "; ")
            } + ignoredTopLevel.map { "\"\($0)\" beside apps (pml reads only the apps)" }
        }
    }

    /// A file that holds no usable apps.
    public struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    // MARK: mapping

    /// The apps an exported ecosystem value declares, as pml app tables.
    public func map(_ value: ScriptValue) throws(Failure) -> Ecosystem {
        let (list, topLevel) = try appList(value)
        if list.isEmpty { throw Failure("\(display) holds no apps (the apps list is empty)") }
        var apps: [App] = []
        for (index, item) in list.enumerated() {
            guard case .object(let raw) = item else {
                throw Failure("\(display): app #\(index + 1) must be an object, got \(item.typeName)")
            }
            var app = try mapApp(raw, index: index)
            // pml refuses two apps with one name.
            var unique = app.name
            var n = 2
            while apps.contains(where: { $0.name == unique }) {
                unique = "\(app.name)-\(n)"
                n += 1
            }
            if unique != app.name {
                app.notes.append("a second app named \"\(app.name)\" is named \"\(unique)\" (pml names must differ)")
                app.name = unique
                app.table["name"] = .string(unique)
            }
            apps.append(app)
        }
        var notes: [String] = []
        if let envName, !list.contains(where: { if case .object(let t) = $0 { return t["env_" + envName] != nil } else { return false } }) {
            notes.append("no app of \(display) defines env_\(envName)")
        }
        return Ecosystem(apps: apps, ignoredTopLevel: topLevel, notes: notes)
    }

    /// `{ apps: [...] }` (or PM2's older `{ pm2: [...] }`), a list, or one app.
    func appList(_ value: ScriptValue) throws(Failure) -> ([ScriptValue], [String]) {
        switch value {
        case .array(let items):
            return (items, [])
        case .object(let fields):
            for key in ["apps", "pm2"] {
                guard let apps = fields[key] else { continue }
                let others = fields.keys.filter { $0 != key }.sorted()
                switch apps {
                case .array(let items): return (items, others)
                case .object: return ([apps], others)
                default: throw Failure("\(display): \"\(key)\" must be a list of apps, got \(apps.typeName)")
                }
            }
            if fields["script"] != nil || fields["exec"] != nil { return ([value], []) }
            throw Failure("\(display) holds no apps: expected module.exports = { apps: [...] } or a list of apps")
        default:
            throw Failure("\(display) holds no apps: expected { apps: [...] } or a list of apps, got \(value.typeName)")
        }
    }

    /// One PM2 app → one pml app table.
    func mapApp(_ raw: [String: ScriptValue], index: Int) throws(Failure) -> App {
        // Canonical names first; the canonical spelling wins over an alias.
        var pm2: [String: ScriptValue] = [:]
        for (k, v) in raw where Self.aliases[k] == nil { pm2[k] = v }
        for (k, v) in raw.sorted(by: { $0.key < $1.key }) {
            if let canonical = Self.aliases[k], pm2[canonical] == nil { pm2[canonical] = v }
        }
        let label = (pm2["name"]?.stringValue).map { "app \"\($0)\"" } ?? "app #\(index + 1)"
        guard let scriptValue = pm2["script"] else { throw Failure("\(display): \(label) has no \"script\"") }
        guard let script = scriptValue.stringValue, !script.trimmingWhitespace.isEmpty else {
            throw Failure("\(display): \(label): \"script\" must be a file or a program, got \(scriptValue.brief)")
        }

        var original = pm2["name"]?.stringValue ?? AppSpecParser.defaultName(for: script)
        if let envName, pm2["append_env_to_name"]?.boolValue == true { original += "-" + envName }
        let name = Self.pmlName(original)
        var app = App(name: name, table: ["name": .string(name)])
        for (k, v) in Self.pm2Defaults { app.table[k] = v }
        if name != original {
            app.notes.append("name \"\(original)\" became \"\(name)\" (pml names are letters, digits, '.', '-', '_')")
        }

        var handled: Set<String> = []
        func mapped(_ option: String) {
            handled.insert(option)
            app.mapped.append(option)
        }
        mapped("script")
        func ignore(_ option: String, _ v: ScriptValue, _ hint: String) {
            handled.insert(option)
            app.ignored.append(Ignored(option: option, value: v.brief, hint: hint))
        }
        func invalid(_ option: String, _ v: ScriptValue, _ expected: String) {
            ignore(option, v, "not used: pml wants \(expected)")
        }
        if pm2["name"] != nil { mapped("name") }
        if pm2["append_env_to_name"] != nil { mapped("append_env_to_name") }

        // cwd first: PM2 resolves a relative script against the app's cwd.
        var cwd: String?
        if let v = pm2["cwd"] {
            if let s = v.stringValue, !s.isEmpty {
                cwd = s
                app.table["cwd"] = .string(s)
                mapped("cwd")
            } else {
                invalid("cwd", v, "a folder path")
            }
        }

        var args: [String] = []
        if let v = pm2["args"] {
            switch v {
            case .string(let s): args = Self.splitArguments(s)
            case .array(let items): args = items.map(Self.text)
            case .int, .double, .bool: args = [Self.text(v)]
            default: break
            }
            mapped("args")
        }
        var nodeArgs: [String] = []
        if let v = pm2["node_args"] {
            switch v {
            case .string(let s): nodeArgs = Self.splitArguments(s)
            case .array(let items): nodeArgs = items.map(Self.text)
            default: break
            }
            mapped("node_args")
        }

        var interpreter: String?
        if let v = pm2["interpreter"] {
            if let s = v.stringValue, !s.isEmpty {
                interpreter = s
                mapped("interpreter")
            } else {
                invalid("interpreter", v, "a program name")
            }
        }

        // The script, relative to the ecosystem's folder (what pml's parser resolves) or absolute.
        let scriptPath = cwd.map { Self.join($0, script) } ?? script
        let onDisk = Self.join(folder, scriptPath)
        let ext = Self.fileExtension(script)
        let knownExt = ext.map { Self.knownExtensions.contains($0) } ?? false
        if interpreter == nil, !script.contains("/"), !knownExt, !probe.fileExists(onDisk), probe.programOnPath(script) {
            // A program on PATH ("npm", "gunicorn"): PM2 runs it as is.
            app.table["cmd"] = .array(([script] + args).map { .string($0) })
            if !nodeArgs.isEmpty { app.notes.append("node_args do not apply: \"\(script)\" is a program, not a script") }
        } else {
            var program = interpreter
            if program == nil, let ext, let i = Self.pm2Interpreters[ext] {
                program = i
            } else if program == nil, !knownExt, probe.fileExists(onDisk), !probe.runsDirectly(onDisk) {
                // PM2 runs a script with no known extension (bin/www) with node.
                program = "node"
                app.comments["interpreter"] = "PM2 runs a script without a known extension with node"
            }
            if !probe.fileExists(onDisk) {
                app.notes.append("script \(scriptPath) is not there (yet): the app will not start without it")
            }
            if !nodeArgs.isEmpty {
                // Interpreter arguments go between the interpreter and the script: a command line.
                let interp = program ?? ext.flatMap { AppSpecParser.interpreters[$0] } ?? "node"
                if interp == "none" {
                    app.notes.append("node_args do not apply: the script runs without an interpreter")
                    app.table["cmd"] = .array(([script] + args).map { .string($0) })
                } else {
                    app.table["cmd"] = .array(([interp] + nodeArgs + [script] + args).map { .string($0) })
                }
            } else {
                app.table["script"] = .string(scriptPath)
                if !args.isEmpty { app.table["args"] = .array(args.map { .string($0) }) }
                if let program { app.table["interpreter"] = .string(program) }
            }
        }

        // env, then the env set --env names, then PORT from `port`.
        var env: [String: ScriptValue] = [:]
        func merge(_ key: String, _ v: ScriptValue) {
            guard case .object(let vars) = v else { return invalid(key, v, "an object of variables") }
            for (k, item) in vars {
                if case .null = item { continue }
                env[k] = .string(Self.text(item))
            }
            mapped(key)
        }
        if let v = pm2["env"] { merge("env", v) }
        for key in pm2.keys.sorted() where key.hasPrefix("env_") {
            if let envName, key == "env_" + envName { merge(key, pm2[key]!) } else { mapped(key) }
        }
        if let v = pm2["port"] {
            if v.intValue != nil || v.stringValue != nil {
                env["PORT"] = .string(Self.text(v))
                mapped("port")
            } else {
                invalid("port", v, "a port number")
            }
        }
        if !env.isEmpty { app.table["env"] = .object(env) }

        if let v = pm2["instances"] {
            let n: Int64? = v.intValue ?? v.stringValue.flatMap { Int64($0.trimmingWhitespace) }
            if v.stringValue == "max" || n == 0 {
                app.table["instances"] = .string("max")
                mapped("instances")
            } else if let n, n >= -1024, n <= 1024 {
                // -1 is every core but one: pml's parser takes negative counts the same way.
                app.table["instances"] = .int(n)
                mapped("instances")
            } else {
                invalid("instances", v, "a number from -1024 to 1024 or \"max\"")
            }
        }

        if let v = pm2["exec_mode"] {
            let mode = v.stringValue ?? ""
            if mode == "cluster" || mode == "cluster_mode" || mode == "fork" || mode == "fork_mode" {
                // pml's cluster needs no mode: a Node worker's listen() goes through pml either way.
                mapped("exec_mode")
            } else {
                invalid("exec_mode", v, "\"fork\" or \"cluster\"")
            }
        }

        func bool(_ option: String, as key: String) {
            guard let v = pm2[option] else { return }
            if let b = Self.bool(v) {
                app.table[key] = .bool(b)
                mapped(option)
            } else {
                invalid(option, v, "true or false")
            }
        }
        func millis(_ option: String, as key: String) {
            guard let v = pm2[option] else { return }
            if let ms = Self.duration(v) {
                app.table[key] = .int(Int64(ms))
                mapped(option)
            } else {
                invalid(option, v, "a duration in milliseconds up to a day")
            }
        }
        bool("autorestart", as: "autorestart")
        if let v = pm2["max_restarts"] {
            if let n = v.intValue ?? v.stringValue.flatMap({ Int64($0) }), n >= 0, n <= 86_400_000 {
                app.table["max_restarts"] = .int(n)
                mapped("max_restarts")
            } else {
                invalid("max_restarts", v, "a whole number, 0 or more")
            }
        }
        millis("min_uptime", as: "min_uptime")
        millis("kill_timeout", as: "kill_timeout")
        millis("listen_timeout", as: "ready_timeout")

        // PM2's restart_delay is fixed: pml's backoff starts and stays at it.
        if let v = pm2["restart_delay"] {
            if let ms = Self.duration(v) {
                app.table["restart_delay"] = .int(Int64(ms))
                app.table["restart_delay_max"] = .int(Int64(ms))
                app.comments["restart_delay_max"] = "PM2's restart_delay is fixed: the backoff starts and stays at it"
                mapped("restart_delay")
            } else {
                invalid("restart_delay", v, "a duration in milliseconds up to a day")
            }
        }
        // Until pml has the key, exp_backoff_restart_delay is pml's own backoff from that delay (up to 15 s, as PM2).
        if let v = pm2["exp_backoff_restart_delay"], !pmlKeys.contains("exp_backoff_restart_delay") {
            if let ms = Self.duration(v) {
                app.table["restart_delay"] = .int(Int64(ms))
                app.table["restart_delay_max"] = .int(15000)
                app.comments["restart_delay"] = "PM2 exp_backoff_restart_delay: the first delay, doubling up to 15 s"
                app.comments["restart_delay_max"] = nil
                if pm2["restart_delay"] != nil {
                    app.mapped.removeAll { $0 == "restart_delay" }
                    app.ignored.append(Ignored(option: "restart_delay", value: pm2["restart_delay"]!.brief,
                                               hint: "exp_backoff_restart_delay wins, as in PM2"))
                }
                mapped("exp_backoff_restart_delay")
            } else {
                invalid("exp_backoff_restart_delay", v, "a duration in milliseconds up to a day")
            }
        }

        if let v = pm2["kill_signal"] {
            if let s = v.stringValue, let n = SignalNames.number(s) {
                app.table["kill_signal"] = .string(SignalNames.name(n))
                mapped("kill_signal")
            } else {
                invalid("kill_signal", v, "a signal name such as \"SIGINT\"")
            }
        }
        if let v = pm2["stop_exit_codes"] {
            let items: [ScriptValue]
            if case .array(let list) = v { items = list } else { items = [v] }
            let codes = items.compactMap { $0.intValue }.filter { (0...255).contains($0) }
            if codes.count == items.count, !codes.isEmpty {
                app.table["stop_exit_codes"] = .array(codes.map { .int($0) })
                mapped("stop_exit_codes")
            } else {
                invalid("stop_exit_codes", v, "exit codes from 0 to 255")
            }
        }
        bool("time", as: "timestamps")
        if let v = pm2["wait_ready"], Self.bool(v) == true {
            app.table["ready"] = .string("message")
            app.comments["ready"] = "PM2 wait_ready: a worker is ready when it sends process.send('ready')"
            mapped("wait_ready")
        }

        // Options whose pml key has PM2's name: through when pml has the key.
        for option in Self.passThrough where !handled.contains(option) {
            guard let v = pm2[option], pmlKeys.contains(option) else { continue }
            if case .null = v { continue }
            app.table[option] = v
            mapped(option)
        }

        // Everything else: a no-op value is honoured, the rest listed.
        for key in pm2.keys.sorted() where !handled.contains(key) && !app.mapped.contains(key) {
            let v = pm2[key]!
            if case .null = v { continue }
            if Self.isNoOp(key, v) {
                mapped(key)
            } else {
                ignore(key, v, Self.hints[key] ?? "not a PM2 option pml knows")
            }
        }
        app.mapped.sort { Self.optionRank($0) < Self.optionRank($1) }
        return app
    }

    /// The order honoured PM2 options are listed in.
    static let optionOrder: [String] = [
        "name", "script", "args", "interpreter", "node_args", "cwd", "env", "instances", "exec_mode",
        "autorestart", "max_restarts", "min_uptime", "restart_delay", "exp_backoff_restart_delay", "kill_signal",
        "kill_timeout", "stop_exit_codes", "time", "log_date_format", "listen_timeout", "wait_ready",
    ]

    static func optionRank(_ key: String) -> Int { optionOrder.firstIndex(of: key) ?? optionOrder.count }

    // MARK: helpers

    static func fileExtension(_ path: String) -> String? {
        let base = path.split(separator: "/").last.map(String.init) ?? path
        guard let dot = base.lastIndex(of: "."), dot != base.startIndex else { return nil }
        return String(base[base.index(after: dot)...]).lowercased()
    }

    /// `base/path`, normalized; stays relative when both are.
    public static func join(_ base: String, _ path: String) -> String {
        if path.hasPrefix("/") { return AppSpecParser.normalize(path) }
        if base.hasPrefix("/") { return AppSpecParser.normalize(base + "/" + path) }
        var parts: [Substring] = []
        for part in (base + "/" + path).split(separator: "/") {
            if part == "." { continue }
            if part == "..", let last = parts.last, last != ".." { parts.removeLast(); continue }
            parts.append(part)
        }
        return parts.isEmpty ? "." : parts.joined(separator: "/")
    }

    /// A name pml accepts: letters, digits, '.', '-', '_', at most 64, not reserved.
    public static func pmlName(_ name: String) -> String {
        var cleaned = String(name.unicodeScalars.map { s -> Character in
            let ok = ("a"..."z").contains(s) || ("A"..."Z").contains(s) || ("0"..."9").contains(s) || s == "-" || s == "_" || s == "."
            return ok ? Character(s) : "-"
        })
        while cleaned.hasPrefix(".") { cleaned.removeFirst() }
        if cleaned.isEmpty || cleaned == "all" || Int(cleaned) != nil { cleaned = "app-" + cleaned }
        return String(cleaned.prefix(64))
    }

    /// PM2 args as a string: split on whitespace; '…' and "…" group, a backslash escapes outside '…'.
    public static func splitArguments(_ s: String) -> [String] {
        var out: [String] = []
        var current = ""
        var inToken = false
        var quote: Character?
        var escaped = false
        for ch in s {
            if escaped { current.append(ch); escaped = false; continue }
            if let q = quote {
                if ch == q { quote = nil } else if ch == "\\" && q == "\"" { escaped = true } else { current.append(ch) }
                continue
            }
            switch ch {
            case " ", "\t", "\n", "\r":
                if inToken { out.append(current); current = ""; inToken = false }
            case "'", "\"":
                quote = ch
                inToken = true
            case "\\":
                escaped = true
                inToken = true
            default:
                current.append(ch)
                inToken = true
            }
        }
        if inToken { out.append(current) }
        return out
    }

    /// A value as an environment variable or argument: JSON scalars as JavaScript prints them.
    public static func text(_ v: ScriptValue) -> String {
        switch v {
        case .string(let s): return s
        case .int(let i): return String(i)
        case .double(let d): return d.rounded() == d && abs(d) < 1e15 ? String(Int64(d)) : String(d)
        case .bool(let b): return b ? "true" : "false"
        case .null, .function: return ""
        case .array(let items): return "[" + items.map(json).joined(separator: ",") + "]"
        case .object: return json(v)
        }
    }

    /// Compact JSON with sorted keys (an object in env, as PM2 stringifies it).
    static func json(_ v: ScriptValue) -> String {
        switch v {
        case .string(let s):
            var out = "\""
            for scalar in s.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                case "\u{0}"..."\u{1F}":
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                default: out.unicodeScalars.append(scalar)
                }
            }
            return out + "\""
        case .null, .function: return "null"
        case .array(let items): return "[" + items.map(json).joined(separator: ",") + "]"
        case .object(let fields): return "{" + fields.keys.sorted().map { json(.string($0)) + ":" + json(fields[$0]!) }.joined(separator: ",") + "}"
        default: return text(v)
        }
    }

    static func bool(_ v: ScriptValue) -> Bool? {
        switch v {
        case .bool(let b): return b
        case .string("true"): return true
        case .string("false"): return false
        default: return nil
        }
    }

    /// Milliseconds: a number, or "500", "500ms", "1.5s", "5m", "2h", "1d".
    public static func duration(_ v: ScriptValue) -> Int? {
        var ms: Double?
        switch v {
        case .int, .double: ms = v.doubleValue
        case .string(let raw):
            let s = String(raw.trimmingWhitespace).lowercased()
            let units: [(String, Double)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
            if let n = Double(s) { ms = n }
            for (suffix, factor) in units where ms == nil && s.hasSuffix(suffix) {
                if let n = Double(String(s.dropLast(suffix.count)).trimmingWhitespace) { ms = n * factor }
            }
        default: break
        }
        guard let ms, ms.isFinite, ms >= 0, ms <= 86_400_000 else { return nil }
        return Int(ms.rounded())
    }
}
