import ArgumentParser
import FoundationEssentials
import Glibc
import PMLCore
import PMLPosix

/// `pml import`: a PM2 ecosystem file becomes a pml app file.
struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn a PM2 ecosystem file (.js, .cjs, .mjs or .json) into a pml app file.",
        discussion: """
        pml import ecosystem.config.js             writes app.lua beside it
        pml import ecosystem.json -o web.lua --force
        JavaScript files are evaluated with node (found on PATH). PM2 options with a pml equivalent
        are mapped; the others are listed, and noted in the app file, for you to handle by hand.
        """)

    @Argument(help: "The PM2 ecosystem file.")
    var file: String

    @Option(name: [.short, .customLong("output")], help: "The app file to write (default: app.lua beside the ecosystem file).")
    var output: String?

    @Flag(name: .long, help: "Overwrite the output file if it exists.")
    var force = false

    func run() throws {
        let here = currentDirectory()
        func absolute(_ p: String) -> String { p.hasPrefix("/") ? AppSpecParser.normalize(p) : AppSpecParser.normalize(here + "/" + p) }
        let input = absolute(file)
        guard pathExists(input) else { throw CLIError("no such file: \(file)") }
        let inputFolder = PM2Import.folder(of: input)

        let outDisplay: String
        if let output {
            outDisplay = output
        } else {
            let slash = file.lastIndex(of: "/")
            outDisplay = slash.map { String(file[...$0]) + "app.lua" } ?? "app.lua"
        }
        let outPath = absolute(outDisplay)
        if outPath == input { throw CLIError("the output would overwrite the ecosystem file itself: choose another -o") }
        if pathExists(outPath), !force { throw CLIError("\(outDisplay) already exists (use --force to overwrite it)") }
        let outFolder = PM2Import.folder(of: outPath)
        guard pathExists(outFolder) else { throw CLIError("no such folder for the output: \(outFolder)") }

        let lower = input.lowercased()
        let value: ScriptValue
        if lower.hasSuffix(".json") {
            value = try PM2Import.readJSON(input, display: file)
        } else if lower.hasSuffix(".js") || lower.hasSuffix(".cjs") || lower.hasSuffix(".mjs") {
            value = try NodeEvaluator.evaluate(path: input, display: file)
        } else {
            throw CLIError("cannot import \(file): give a PM2 ecosystem file ending in .js, .cjs, .mjs or .json")
        }

        var importer = PM2Import(sourceFolder: inputFolder, outputFolder: outFolder, display: file)
        let apps = try importer.convert(value)
        let lua = LuaWriter.appFile(apps, source: PM2Import.baseName(input), output: PM2Import.baseName(outPath))

        // The generated apps must be what `pml check` accepts: validate them as the parser will.
        let parser = AppSpecParser(file: outPath, source: nil, baseDirectory: outFolder, cpuCount: 1)
        let tables = apps.map { ScriptValue.object(Dictionary($0.fields.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })) }
        do { _ = try parser.parse(tables.count == 1 ? tables[0] : .array(tables)) } catch {
            throw CLIError("internal error: the imported app file would not be valid (\(error.message))")
        }

        try PM2Import.writeAtomically(outPath, lua)
        Output.print(PM2Import.summary(apps, importer: importer, input: file, output: outDisplay))
    }
}

/// One imported app: the pml keys in the order they are written, and what could not be mapped.
struct ImportedApp {
    struct Field {
        var key: String
        var value: ScriptValue
        /// A comment line written just above the key.
        var comment: String?
    }
    /// A PM2 option the user has to handle by hand.
    struct Manual {
        var option: String
        var value: String
        var hint: String
    }

    var name: String
    var fields: [Field] = []
    /// Lines written as comments at the end of the app's table.
    var comments: [String] = []
    /// PM2 options that were mapped.
    var mapped: [String] = []
    var manual: [Manual] = []
    /// Things the user should know about a mapping (renames, approximations).
    var notes: [String] = []
    /// Settings for the daemon's environment that enable plugins for this app ("PML_MEMORY_LIMIT_WEB=300M").
    var pluginSettings: [(key: String, value: String)] = []

    mutating func set(_ key: String, _ value: ScriptValue, comment: String? = nil) {
        if let i = fields.firstIndex(where: { $0.key == key }) {
            fields[i].value = value
            if comment != nil { fields[i].comment = comment }
        } else {
            fields.append(Field(key: key, value: value, comment: comment))
        }
    }

    func has(_ key: String) -> Bool { fields.contains { $0.key == key } }
}

/// The PM2 → pml mapping.
struct PM2Import {
    let sourceFolder: String
    let outputFolder: String
    let display: String
    /// Top-level keys of the ecosystem besides "apps" (e.g. "deploy"), not imported.
    private(set) var ignoredTopLevel: [String] = []

    init(sourceFolder: String, outputFolder: String, display: String) {
        self.sourceFolder = sourceFolder
        self.outputFolder = outputFolder
        self.display = display
    }

    /// The order keys are written in.
    static let keyOrder: [String] = [
        "name", "cmd", "script", "args", "interpreter", "cwd", "env", "instances", "autorestart", "max_restarts",
        "min_uptime", "restart_delay", "restart_delay_max", "kill_signal", "kill_timeout", "stop_exit_codes",
        "timestamps", "ready", "ready_timeout",
    ]

    /// Hints for PM2 options pml has no key for.
    static let hints: [String: String] = [
        "watch": "pml does not watch files: run `pml reload <app>` after a change",
        "ignore_watch": "pml does not watch files",
        "watch_delay": "pml does not watch files",
        "watch_options": "pml does not watch files",
        "out_file": "pml writes logs under $PML_HOME/logs (see `pml logs <app>`, `pml describe <app>`)",
        "error_file": "pml writes logs under $PML_HOME/logs (see `pml logs <app>`, `pml describe <app>`)",
        "log_file": "pml writes logs under $PML_HOME/logs (see `pml logs <app>`)",
        "output": "pml writes logs under $PML_HOME/logs (see `pml logs <app>`)",
        "error": "pml writes logs under $PML_HOME/logs (see `pml logs <app>`)",
        "log": "pml writes logs under $PML_HOME/logs (see `pml logs <app>`)",
        "merge_logs": "pml keeps one out and one err log per worker",
        "combine_logs": "pml keeps one out and one err log per worker",
        "log_type": "pml logs plain lines (timestamps = true prefixes the time)",
        "pid_file": "pml keeps pids itself: `pml ls --json`",
        "node_args": "put them in cmd instead of script: cmd = { \"node\", <args...>, \"<script>\" }",
        "interpreter_args": "put them in cmd instead of script: cmd = { \"<interpreter>\", <args...>, \"<script>\" }",
        "source_map_support": "no pml equivalent (node --enable-source-maps in cmd does it)",
        "instance_var": "pml sets PML_INSTANCE and NODE_APP_INSTANCE (0…N-1) in each worker",
        "increment_var": "no pml equivalent: derive it from PML_INSTANCE in the app",
        "vizion": "no pml equivalent (no version metadata)",
        "post_update": "no pml equivalent",
        "force": "no pml equivalent",
        "namespace": "no pml equivalent: pml addresses apps by name",
        "treekill": "pml always signals the worker's whole process group",
        "autostart": "pml starts every app of the file: put this app in a file of its own",
        "shutdown_with_message": "`pml reload --graceful` sends the message \"shutdown\" (change it with a beforeReload hook)",
        "filter_env": "no pml equivalent: workers get the environment of `pml start` plus env",
        "append_env_to_name": "no pml equivalent",
        "appendEnvToName": "no pml equivalent",
        "disable_trace": "no pml equivalent",
        "pmx": "no pml equivalent",
        "automation": "no pml equivalent",
        "windowsHide": "no pml equivalent",
    ]

    static func folder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }

    static func baseName(_ path: String) -> String {
        path.split(separator: "/").last.map(String.init) ?? path
    }

    // MARK: reading

    static func readJSON(_ path: String, display: String) throws(CLIError) -> ScriptValue {
        guard let bytes = readFile(path) else { throw CLIError("cannot read \(display)") }
        do {
            return try JSONDecoder().decode(ScriptValue.self, from: Data(bytes))
        } catch {
            throw CLIError("\(display) is not valid JSON")
        }
    }

    /// The list of apps an ecosystem holds: `{ apps: [...] }`, a list, or one app.
    mutating func appList(_ value: ScriptValue) throws(CLIError) -> [ScriptValue] {
        switch value {
        case .array(let items):
            return items
        case .object(let fields):
            if let apps = fields["apps"] {
                ignoredTopLevel = fields.keys.filter { $0 != "apps" }.sorted()
                switch apps {
                case .array(let items): return items
                case .object: return [apps]
                default: throw CLIError("\(display): \"apps\" must be a list of apps, got \(apps.typeName)")
                }
            }
            if fields["script"] != nil { return [value] }
            throw CLIError("\(display) holds no apps: expected module.exports = { apps: [...] } or a list of apps")
        default:
            throw CLIError("\(display) holds no apps: expected { apps: [...] } or a list of apps, got \(value.typeName)")
        }
    }

    // MARK: mapping

    mutating func convert(_ value: ScriptValue) throws(CLIError) -> [ImportedApp] {
        let list = try appList(value)
        if list.isEmpty { throw CLIError("\(display) holds no apps (the apps list is empty)") }
        var apps: [ImportedApp] = []
        for (index, item) in list.enumerated() {
            guard case .object(let pm2) = item else {
                throw CLIError("\(display): app #\(index + 1) must be an object, got \(item.typeName)")
            }
            var app = try convertApp(pm2, index: index)
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
                app.set("name", .string(unique))
            }
            app.fields.sort { Self.rank($0.key) < Self.rank($1.key) }
            apps.append(app)
        }
        // Plugin settings name the app: make them follow renames.
        for i in apps.indices { apps[i].finishPlugins() }
        return apps
    }

    static func rank(_ key: String) -> Int { keyOrder.firstIndex(of: key) ?? keyOrder.count }

    /// The order mapped PM2 options are listed in.
    static let pm2Order: [String] = [
        "name", "script", "args", "interpreter", "exec_interpreter", "cwd", "env", "instances", "exec_mode",
        "autorestart", "max_restarts", "min_uptime", "restart_delay", "exp_backoff_restart_delay", "kill_signal",
        "kill_timeout", "stop_exit_codes", "time", "log_date_format", "listen_timeout", "wait_ready",
    ]

    static func pm2Rank(_ key: String) -> Int { pm2Order.firstIndex(of: key) ?? pm2Order.count }

    private func convertApp(_ pm2: [String: ScriptValue], index: Int) throws(CLIError) -> ImportedApp {
        let label = (pm2["name"]?.stringValue).map { "app \"\($0)\"" } ?? "app #\(index + 1)"
        guard let scriptValue = pm2["script"] else { throw CLIError("\(display): \(label) has no \"script\"") }
        guard let script = scriptValue.stringValue, !script.importTrimmed.isEmpty else {
            throw CLIError("\(display): \(label): \"script\" must be a file or a program, got \(scriptValue.brief)")
        }

        // The name: PM2's default is the script's base name; pml's names are stricter.
        let original = pm2["name"]?.stringValue ?? AppSpecParser.defaultName(for: script)
        let name = Self.pmlName(original)
        var app = ImportedApp(name: name)
        app.set("name", .string(name))
        if pm2["name"] != nil { app.mapped.append("name") }
        if name != original {
            app.notes.append("name \"\(original)\" became \"\(name)\" (pml names are letters, digits, '.', '-', '_')")
        }

        var handled: Set<String> = ["name", "script"]
        func done(_ key: String) { handled.insert(key) }
        func manual(_ key: String, _ value: ScriptValue, _ hint: String) {
            app.manual.append(.init(option: key, value: LuaWriter.literal(value), hint: hint))
            handled.insert(key)
        }
        func invalid(_ key: String, _ value: ScriptValue, _ expected: String) {
            manual(key, value, "not imported: pml wants \(expected)")
        }

        // cwd, then script: PM2 resolves a relative script against the app's cwd.
        var cwd: String?
        if let v = pm2["cwd"] {
            if let s = v.stringValue, !s.isEmpty {
                cwd = s
                app.set("cwd", .string(relocate(s)))
                app.mapped.append("cwd")
                done("cwd")
            } else {
                invalid("cwd", v, "a folder path")
            }
        }

        if cwd == nil, outputFolder != sourceFolder {
            // pml runs an app in its app file's folder by default; PM2 ran it beside the ecosystem file.
            app.set("cwd", .string(sourceFolder))
        }

        var args: [String] = []
        if let v = pm2["args"] {
            switch v {
            case .string(let s): args = Self.splitArguments(s)
            case .array(let items): args = items.map(Self.text)
            case .int, .double, .bool: args = [Self.text(v)]
            default: break
            }
            if case .null = v {} else { app.mapped.append("args") }
            done("args")
        }

        var interpreter: String?
        for key in ["interpreter", "exec_interpreter"] {
            guard let v = pm2[key] else { continue }
            if let s = v.stringValue, !s.isEmpty {
                interpreter = s
                app.mapped.append(key)
                done(key)
            } else {
                invalid(key, v, "a program name")
            }
        }

        let scriptPath = cwd.map { c in script.hasPrefix("/") ? script : Self.join(c, script) } ?? script
        let onDisk = Self.join(sourceFolder, scriptPath)
        let ext = Self.fileExtension(script)
        let knownExt = ext.map { Self.interpreterExtensions.contains($0) } ?? false
        if interpreter == nil, !script.contains("/"), !knownExt, !pathExists(onDisk),
           resolveExecutable(script, path: processEnvironment()["PATH"], cwd: nil) != nil || ext == nil {
            // A program on PATH ("npm", "gunicorn"): PM2 runs it as is.
            app.set("cmd", .array(([script] + args).map { .string($0) }))
            app.mapped.append("script")
            if !args.isEmpty { app.notes.append("\"\(script)\" is a program, not a file: script and args became cmd") }
        } else {
            app.set("script", .string(relocate(scriptPath)))
            app.mapped.append("script")
            if !args.isEmpty { app.set("args", .array(args.map { .string($0) })) }
            if let interpreter {
                app.set("interpreter", .string(interpreter))
            } else if !knownExt, !Self.runsDirectly(onDisk) {
                // PM2 runs a script with no known extension (bin/www) with node; pml would exec it.
                app.set("interpreter", .string("node"), comment: "PM2 runs a script without a known extension with node")
                app.notes.append("interpreter = \"node\" added: PM2 runs \(script) with node")
            }
        }

        if let v = pm2["env"] {
            if case .object(let vars) = v {
                var env: [String: ScriptValue] = [:]
                for (k, item) in vars {
                    if case .null = item { continue }
                    env[k] = .string(Self.text(item))
                }
                if !env.isEmpty { app.set("env", .object(env)) }
                app.mapped.append("env")
                done("env")
            } else {
                invalid("env", v, "a table of variables")
            }
        }

        var instanceCount: ScriptValue?
        if let v = pm2["instances"] {
            let n: Int64? = v.intValue ?? v.stringValue.flatMap { Int64($0.importTrimmed) }
            if v.stringValue == "max" || n == 0 || n == -1 {
                instanceCount = .string("max")
            } else if let n, n < -1 {
                instanceCount = .string("max")
                app.notes.append("instances \(n) (all cores but \(-n)) became \"max\": pml has a count or \"max\"")
            } else if let n, n <= 1024 {
                instanceCount = .int(n)
            }
            if let instanceCount {
                app.set("instances", instanceCount)
                app.mapped.append("instances")
                done("instances")
            } else {
                invalid("instances", v, "a number from 1 to 1024 or \"max\"")
            }
        }

        if let v = pm2["exec_mode"] {
            let mode = v.stringValue ?? ""
            if mode.hasPrefix("cluster") {
                app.comments.append("PM2 cluster mode: pml listens for you when the app calls listen(); add listen = <port> to own the port")
                app.mapped.append("exec_mode")
                done("exec_mode")
            } else if mode.hasPrefix("fork") {
                app.mapped.append("exec_mode")
                done("exec_mode")
            } else {
                invalid("exec_mode", v, "\"fork\" or \"cluster\"")
            }
        }

        if let v = pm2["autorestart"] {
            if let b = Self.bool(v) {
                app.set("autorestart", .bool(b))
                app.mapped.append("autorestart")
                done("autorestart")
            } else {
                invalid("autorestart", v, "true or false")
            }
        }

        func millis(_ key: String, _ v: ScriptValue, as pmlKey: String) {
            if let ms = Self.duration(v) {
                app.set(pmlKey, .int(Int64(ms)))
                app.mapped.append(key)
                done(key)
            } else {
                invalid(key, v, "a duration in milliseconds up to a day")
            }
        }

        if let v = pm2["max_restarts"] {
            if let n = v.intValue ?? v.stringValue.flatMap({ Int64($0) }), n >= 0, n <= 86_400_000 {
                app.set("max_restarts", .int(n))
                app.mapped.append("max_restarts")
                done("max_restarts")
            } else {
                invalid("max_restarts", v, "a whole number, 0 or more")
            }
        }
        if let v = pm2["min_uptime"] { millis("min_uptime", v, as: "min_uptime") }

        // PM2's restart_delay is a fixed delay; exp_backoff_restart_delay doubles from its value (up to 15 s,
        // pml's default restart_delay_max). pml always backs off: a fixed delay is a ceiling equal to the start.
        let backoff = pm2["exp_backoff_restart_delay"]
        if let v = pm2["restart_delay"] {
            if backoff != nil, Self.duration(backoff!) != nil {
                manual("restart_delay", v, "not imported: exp_backoff_restart_delay sets restart_delay (PM2 lets it win too)")
            } else if let ms = Self.duration(v) {
                app.set("restart_delay", .int(Int64(ms)))
                app.set("restart_delay_max", .int(Int64(ms)), comment: "PM2's restart_delay is fixed: the backoff starts and stays at it")
                app.mapped.append("restart_delay")
                done("restart_delay")
            } else {
                invalid("restart_delay", v, "a duration in milliseconds up to a day")
            }
        }
        if let v = backoff {
            if let ms = Self.duration(v) {
                app.set("restart_delay", .int(Int64(ms)), comment: "PM2 exp_backoff_restart_delay: the first delay, doubling up to restart_delay_max (15 s)")
                app.mapped.append("exp_backoff_restart_delay")
                done("exp_backoff_restart_delay")
            } else {
                invalid("exp_backoff_restart_delay", v, "a duration in milliseconds up to a day")
            }
        }

        if let v = pm2["kill_signal"] {
            if let s = v.stringValue, SignalNames.number(s) != nil {
                app.set("kill_signal", .string(SignalNames.name(SignalNames.number(s)!)))
                app.mapped.append("kill_signal")
                done("kill_signal")
            } else {
                invalid("kill_signal", v, "a signal name such as \"SIGINT\"")
            }
        }
        if let v = pm2["kill_timeout"] { millis("kill_timeout", v, as: "kill_timeout") }

        if let v = pm2["stop_exit_codes"] {
            let items: [ScriptValue]
            if case .array(let list) = v { items = list } else { items = [v] }
            let codes = items.compactMap { $0.intValue }.filter { (0...255).contains($0) }
            if codes.count == items.count, !codes.isEmpty {
                app.set("stop_exit_codes", .array(codes.map { .int($0) }))
                app.mapped.append("stop_exit_codes")
                done("stop_exit_codes")
            } else {
                invalid("stop_exit_codes", v, "exit codes from 0 to 255")
            }
        }

        if let v = pm2["time"] {
            if let b = Self.bool(v) {
                if b { app.set("timestamps", .bool(true)) }
                app.mapped.append("time")
                done("time")
            } else {
                invalid("time", v, "true or false")
            }
        }
        if let v = pm2["log_date_format"] {
            if let s = v.stringValue, !s.isEmpty {
                app.set("timestamps", .bool(true))
                app.mapped.append("log_date_format")
                app.notes.append("log_date_format \"\(s)\" became timestamps = true (pml's own time format)")
                done("log_date_format")
            } else if case .null = v { done("log_date_format") } else {
                invalid("log_date_format", v, "a date format")
            }
        }

        if let v = pm2["listen_timeout"] { millis("listen_timeout", v, as: "ready_timeout") }
        if let v = pm2["wait_ready"] {
            if let b = Self.bool(v) {
                if b {
                    app.set("ready", .string("message"), comment: "PM2 wait_ready: a worker is ready when it sends process.send('ready')")
                }
                app.mapped.append("wait_ready")
                done("wait_ready")
            } else {
                invalid("wait_ready", v, "true or false")
            }
        }

        // Plugins: not keys, but pml ships a plugin for each.
        if let v = pm2["max_memory_restart"] {
            let size = v.intValue.map(String.init) ?? v.stringValue.map { $0.uppercased().replacing(" ", with: "") } ?? ""
            if !size.isEmpty {
                app.pluginSettings.append((key: "PML_MEMORY_LIMIT_*", value: size))
                manual("max_memory_restart", v, "enable plugins/memory-limit.lua with PML_MEMORY_LIMIT_*=\(size)")
            } else {
                invalid("max_memory_restart", v, "a size such as \"300M\"")
            }
        }
        if let v = pm2["cron_restart"] {
            if let expr = v.stringValue, !expr.importTrimmed.isEmpty {
                app.pluginSettings.append((key: "PML_CRON_RESTART", value: expr))
                manual("cron_restart", v, "enable plugins/cron-restart.lua with PML_CRON_RESTART=\"*=\(expr)\"")
            } else {
                invalid("cron_restart", v, "a cron expression")
            }
        }

        // Everything else is listed for the user, with a hint where there is one.
        for key in pm2.keys.sorted() where !handled.contains(key) {
            let value = pm2[key]!
            if key.hasPrefix("env_") {
                manual(key, .string("{…}"), "pml has no env sets: copy what you need into env")
                app.manual[app.manual.count - 1].value = "{…}"
            } else if key == "instance_var", value.stringValue == "NODE_APP_INSTANCE" {
                app.mapped.append(key)  // pml sets NODE_APP_INSTANCE already
            } else if case .null = value {
                continue
            } else {
                manual(key, value, Self.hints[key] ?? "no pml equivalent")
            }
        }
        app.mapped.sort { Self.pm2Rank($0) < Self.pm2Rank($1) }
        return app
    }

    /// A relative path from the ecosystem's folder, as seen from the output's folder.
    private func relocate(_ path: String) -> String {
        if path.hasPrefix("/") || outputFolder == sourceFolder { return path }
        return Self.join(sourceFolder, path)
    }

    // MARK: helpers

    static let interpreterExtensions: Set<String> = ["js", "mjs", "cjs", "py", "sh", "bash", "rb", "pl", "php", "lua"]

    static func fileExtension(_ path: String) -> String? {
        let base = baseName(path)
        guard let dot = base.lastIndex(of: "."), dot != base.startIndex else { return nil }
        return String(base[base.index(after: dot)...]).lowercased()
    }

    /// An executable file with a #! line or an ELF header runs without an interpreter.
    static func runsDirectly(_ path: String) -> Bool {
        guard access(path, X_OK) == 0, let head = readFile(path, limit: 4) else { return false }
        return head.starts(with: [0x23, 0x21]) || head.starts(with: [0x7F, 0x45, 0x4C, 0x46])
    }

    /// `base/path`, normalized; stays relative when both are.
    static func join(_ base: String, _ path: String) -> String {
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
    static func pmlName(_ name: String) -> String {
        var cleaned = String(name.unicodeScalars.map { s -> Character in
            let ok = ("a"..."z").contains(s) || ("A"..."Z").contains(s) || ("0"..."9").contains(s) || s == "-" || s == "_" || s == "."
            return ok ? Character(s) : "-"
        })
        while cleaned.hasPrefix(".") { cleaned.removeFirst() }
        if cleaned.count > 64 { cleaned = String(cleaned.prefix(64)) }
        if cleaned.isEmpty || cleaned == "all" || Int(cleaned) != nil { cleaned = "app-" + cleaned }
        return String(cleaned.prefix(64))
    }

    /// PM2 args as a string: split on whitespace; '…' and "…" group, a backslash escapes outside '…'.
    static func splitArguments(_ s: String) -> [String] {
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
    static func text(_ v: ScriptValue) -> String {
        switch v {
        case .string(let s): return s
        case .int(let i): return String(i)
        case .double(let d): return d.rounded() == d && abs(d) < 1e15 ? String(Int64(d)) : String(d)
        case .bool(let b): return b ? "true" : "false"
        case .null, .function: return ""
        case .array, .object:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            return (try? encoder.encode(v)).map { String(decoding: $0, as: UTF8.self) } ?? ""
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
    static func duration(_ v: ScriptValue) -> Int? {
        var ms: Double?
        switch v {
        case .int, .double: ms = v.doubleValue
        case .string(let raw):
            let s = raw.importTrimmed.lowercased()
            let units: [(String, Double)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
            if let n = Double(s) { ms = n }
            for (suffix, factor) in units where ms == nil && s.hasSuffix(suffix) {
                if let n = Double(s.dropLast(suffix.count).importTrimmed) { ms = n * factor }
            }
        default: break
        }
        guard let ms, ms.isFinite, ms >= 0, ms <= 86_400_000 else { return nil }
        return Int(ms.rounded())
    }

    /// The app's name as the plugins spell it in variable names: PML_MEMORY_LIMIT_MY_API for "my-api".
    static func envSuffix(_ name: String) -> String {
        String(name.uppercased().unicodeScalars.map { s -> Character in
            (("A"..."Z").contains(s) || ("0"..."9").contains(s)) ? Character(s) : "_"
        })
    }

    // MARK: output

    static func writeAtomically(_ path: String, _ text: String) throws(CLIError) {
        let temp = path + ".tmp-\(getpid())"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CLIError("cannot write \(path): \(String(cString: strerror(errno)))") }
        do {
            try writeAll(fd, text)
        } catch {
            closeFD(fd)
            unlink(temp)
            throw CLIError("cannot write \(path): \(error)")
        }
        closeFD(fd)
        if rename(temp, path) != 0 {
            let reason = String(cString: strerror(errno))
            unlink(temp)
            throw CLIError("cannot write \(path): \(reason)")
        }
    }

    static func summary(_ apps: [ImportedApp], importer: PM2Import, input: String, output: String) -> String {
        var out = "imported \(apps.count) app\(apps.count == 1 ? "" : "s") from \(input) into \(output)\n"
        for app in apps {
            out += "  \(app.name): mapped \(app.mapped.isEmpty ? "nothing" : app.mapped.joined(separator: ", "))\n"
        }
        let manual = apps.flatMap { app in app.manual.map { (app.name, $0) } }
        if manual.isEmpty {
            out += "every PM2 option was mapped\n"
        } else {
            out += "not mapped, to do by hand (also noted in \(baseName(output))):\n"
            for (name, m) in manual { out += "  \(name): \(m.option) = \(m.value) — \(m.hint)\n" }
        }
        let notes = apps.flatMap { app in app.notes.map { "\(app.name): \($0)" } }
            + importer.ignoredTopLevel.map { "\"\($0)\" (beside apps) is not imported" }
        if !notes.isEmpty {
            out += "notes:\n"
            for n in notes { out += "  \(n)\n" }
        }
        let settings = apps.flatMap(\.pluginSettings)
        if !settings.isEmpty {
            var memory: [String] = []
            var cron: [String] = []
            for s in settings {
                if s.key == "PML_CRON_RESTART" { cron.append(s.value) } else { memory.append("\(s.key)=\(shellQuote(s.value))") }
            }
            if !cron.isEmpty { memory.append("PML_CRON_RESTART=" + shellQuote(cron.joined(separator: ";"))) }
            out += "plugin settings (the daemon's environment): " + memory.joined(separator: " ") + "\n"
        }
        out += "next: pml check \(output) && pml start \(output)\n"
        return out
    }

    static func shellQuote(_ s: String) -> String {
        let plain = s.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "-_.,:/=@%+".unicodeScalars.contains($0)
        }
        return plain && !s.isEmpty ? s : "'" + s.replacing("'", with: "'\\''") + "'"
    }
}

extension ImportedApp {
    /// Fills the app's name into plugin settings and hints, once the name is final.
    mutating func finishPlugins() {
        let suffix = PM2Import.envSuffix(name)
        for i in pluginSettings.indices {
            if pluginSettings[i].key == "PML_MEMORY_LIMIT_*" {
                pluginSettings[i].key = "PML_MEMORY_LIMIT_" + suffix
            } else {
                pluginSettings[i].value = "\(name)=\(pluginSettings[i].value)"
            }
        }
        for i in manual.indices {
            manual[i].hint = manual[i].hint
                .replacing("PML_MEMORY_LIMIT_*", with: "PML_MEMORY_LIMIT_" + suffix)
                .replacing("=\"*=", with: "=\"\(name)=")
                .replacing("<app>", with: name)
        }
    }
}

/// Renders imported apps as a readable Lua app file.
enum LuaWriter {
    static let reserved: Set<String> = [
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
        "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
    ]

    static func appFile(_ apps: [ImportedApp], source: String, output: String) -> String {
        var out = "-- Imported from the PM2 ecosystem file \(oneLine(source)) by `pml import`.\n"
        out += "-- Check it with: pml check \(oneLine(output))\n"
        if apps.count == 1 {
            out += "return " + table(apps[0], indent: "") + "\n"
        } else {
            out += "return {\n"
            for app in apps { out += "  " + table(app, indent: "  ") + ",\n" }
            out += "}\n"
        }
        return out
    }

    static func table(_ app: ImportedApp, indent: String) -> String {
        let inner = indent + "  "
        var out = "{\n"
        for f in app.fields {
            if let c = f.comment { out += inner + "-- " + oneLine(c) + "\n" }
            out += inner + key(f.key) + " = " + value(f.value, indent: inner) + ",\n"
        }
        for c in app.comments { out += inner + "-- " + oneLine(c) + "\n" }
        for m in app.manual { out += inner + "-- " + oneLine("\(m.option) = \(m.value): \(m.hint)") + "\n" }
        return out + indent + "}"
    }

    static func value(_ v: ScriptValue, indent: String) -> String {
        switch v {
        case .object(let fields):
            if fields.isEmpty { return "{}" }
            let inner = indent + "  "
            var out = "{\n"
            for k in fields.keys.sorted() { out += inner + key(k) + " = " + value(fields[k]!, indent: inner) + ",\n" }
            return out + indent + "}"
        case .array(let items):
            return items.isEmpty ? "{}" : "{ " + items.map { value($0, indent: indent) }.joined(separator: ", ") + " }"
        default:
            return literal(v)
        }
    }

    /// A scalar as a Lua literal (also used to show PM2 values in messages).
    static func literal(_ v: ScriptValue) -> String {
        switch v {
        case .null, .function: return "nil"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d): return d.isFinite ? String(d) : "0"
        case .string(let s): return string(s)
        case .array(let items): return "{ " + items.map(literal).joined(separator: ", ") + " }"
        case .object(let fields):
            return "{ " + fields.keys.sorted().map { "\(key($0)) = \(literal(fields[$0]!))" }.joined(separator: ", ") + " }"
        }
    }

    /// A double-quoted Lua string: quotes, backslashes and control characters escaped.
    static func string(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{0}"..."\u{1F}", "\u{7F}":
                let d = String(scalar.value)
                out += "\\" + String(repeating: "0", count: 3 - d.count) + d
            default:
                out.unicodeScalars.append(scalar)  // UTF-8 goes through as is: Lua strings are bytes
            }
        }
        return out + "\""
    }

    static func key(_ k: String) -> String {
        let isIdent = !k.isEmpty && !reserved.contains(k) && k.unicodeScalars.enumerated().allSatisfy { i, s in
            ("a"..."z").contains(s) || ("A"..."Z").contains(s) || s == "_" || (i > 0 && ("0"..."9").contains(s))
        }
        return isIdent ? k : "[" + string(k) + "]"
    }

    /// Comments end at a newline: keep them on one.
    static func oneLine(_ s: String) -> String {
        s.replacing("\r", with: " ").replacing("\n", with: " ")
    }
}

/// Evaluates a JavaScript ecosystem file with node and returns what it exports, as JSON.
enum NodeEvaluator {
    /// Run as `node -e <this> -- <file>`: the exports go to fd 3 as JSON (the file may print on stdout);
    /// a failure is one marked line on stderr and exit status 3.
    static let script = #"""
    const file = process.argv[1];
    const fs = require('fs');
    const report = (e) => {
      const stack = String((e && e.stack) || '');
      let line = '';
      if (e instanceof SyntaxError && stack.startsWith(file + ':')) {
        line = stack.split('\n')[0].slice(file.length + 1);
      } else {
        for (const l of stack.split('\n')) {
          const i = l.indexOf(file + ':');
          if (i >= 0) { const m = /^(\d+)/.exec(l.slice(i + file.length + 1)); if (m) { line = m[1]; break; } }
        }
      }
      let msg = (e !== null && typeof e === 'object' && 'message' in e)
        ? (e.name || 'Error') + ': ' + String(e.message) : 'threw ' + String(e);
      msg = msg.split('\n').map((s) => s.trim()).filter(Boolean)[0] || 'Error';
      fs.writeSync(2, '\npml-import-error\t' + line + '\t' + msg + '\n');
      process.exit(3);
    };
    const send = (exported) => {
      try {
        // An ES module (require(esm), import()): its default export is the config.
        if (exported && exported[Symbol.toStringTag] === 'Module' && exported.default !== undefined) {
          exported = exported.default;
        }
        const text = JSON.stringify(exported === undefined ? null : exported);
        const buf = Buffer.from(text === undefined ? 'null' : text);
        let off = 0;
        while (off < buf.length) off += fs.writeSync(3, buf, off);
        process.exit(0);
      } catch (e) { report(e); }
    };
    try {
      send(require(file));
    } catch (e) {
      if (e && (e.code === 'ERR_REQUIRE_ESM' || e.code === 'ERR_REQUIRE_ASYNC_MODULE')) {
        import(require('url').pathToFileURL(file).href)
          .then(send, report);
      } else {
        report(e);
      }
    }
    """#

    static let timeoutMs = 30_000

    static func evaluate(path: String, display: String) throws(CLIError) -> ScriptValue {
        let env = processEnvironment()
        guard resolveExecutable("node", path: env["PATH"], cwd: nil) != nil else {
            throw CLIError("\(display) is JavaScript and node is not on PATH: install Node.js, or export the apps as JSON")
        }
        let result: (read: Int32, write: Int32)
        let errors: (read: Int32, write: Int32)
        do {
            result = try makePipe(nonblockingRead: false)
            errors = try makePipe(nonblockingRead: false)
        } catch {
            throw CLIError("cannot run node: \(error)")
        }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        let pid: Int32
        do {
            pid = try spawnProcess(SpawnRequest(
                argv: ["node", "-e", script, "--", path], env: env, cwd: nil,
                fds: [(devNull, 0), (devNull, 1), (errors.write, 2), (result.write, 3)],
                newSession: true, parentDeathSignal: SIGKILL))
        } catch {
            for fd in [result.read, result.write, errors.read, errors.write, devNull] { closeFD(fd) }
            throw CLIError("cannot run node: \(error.description)")
        }
        for fd in [result.write, errors.write, devNull] { closeFD(fd) }
        defer { closeFD(result.read); closeFD(errors.read) }

        var output: [UInt8] = []
        var stderr: [UInt8] = []
        var open = [result.read, errors.read]
        let deadline = monotonicMs() + timeoutMs
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !open.isEmpty {
            let left = deadline - monotonicMs()
            if left <= 0 {
                _ = kill(-pid, SIGKILL)
                var status: Int32 = 0
                _ = waitpid(pid, &status, 0)
                throw CLIError("node took more than \(timeoutMs / 1000) s to evaluate \(display)")
            }
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            let n = poll(&fds, nfds_t(fds.count), Int32(min(left, 1000)))
            if n < 0 && errno == EINTR { continue }
            for p in fds where p.revents != 0 {
                let got = chunk.withUnsafeMutableBytes { Glibc.read(p.fd, $0.baseAddress, $0.count) }
                if got > 0 {
                    if p.fd == result.read { output += chunk[0..<got] } else if stderr.count < 1 << 20 { stderr += chunk[0..<got] }
                } else if got == 0 || (errno != EINTR && errno != EAGAIN) {
                    open.removeAll { $0 == p.fd }
                }
            }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = (status & 0x7F) == 0
        let code = (status >> 8) & 0xFF

        let errText = String(decoding: stderr, as: UTF8.self)
        if let marked = errText.split(separator: "\n").last(where: { $0.hasPrefix("pml-import-error\t") }) {
            let parts = marked.split(separator: "\t", maxSplits: 2, omittingEmptySubsequences: false)
            let line = parts.count > 1 ? String(parts[1]) : ""
            let message = parts.count > 2 ? String(parts[2]) : "error"
            throw CLIError("\(display)\(line.isEmpty ? "" : ":" + line): \(message)")
        }
        guard exited, code == 0 else {
            let last = errText.split(separator: "\n").last { !$0.importTrimmed.isEmpty }.map { String($0.importTrimmed) }
            let how = exited ? "exit status \(code)" : "signal \(status & 0x7F)"
            throw CLIError("node could not evaluate \(display) (\(how))\(last.map { ": " + $0 } ?? "")")
        }
        do {
            return try JSONDecoder().decode(ScriptValue.self, from: Data(output))
        } catch {
            throw CLIError("\(display) exported something that is not JSON data")
        }
    }
}

extension StringProtocol {
    /// Without leading and trailing blanks.
    var importTrimmed: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s.removeLast() }
        return String(s)
    }
}
