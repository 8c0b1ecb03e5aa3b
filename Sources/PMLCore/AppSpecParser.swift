/// Turns the value an app file returns (or a command-line app) into validated `AppSpec`s.
public struct AppSpecParser: Sendable {
    /// Hooks an app table may define; each must be a function.
    public static let hookKeys: [String] = [
        "onStart", "onSpawn", "onReady", "onExit", "onCrash", "onStop", "onMessage", "beforeReload", "onReload",
        "onScale",
    ]
    /// Every key an app table may hold.
    public static let knownKeys: [String] = [
        "name", "cmd", "script", "args", "interpreter", "cwd", "env", "instances", "autorestart",
        "min_uptime", "max_restarts", "restart_delay", "restart_delay_max", "stable_after",
        "stop_exit_codes", "kill_timeout", "kill_signal", "timestamps", "listen", "dispatch", "ready",
        "ready_timeout", "autoscale", "log_date_format", "log_format", "namespace",
    ] + operationKeys + hookKeys

    /// Interpreters chosen by a script's extension, as PM2 does.
    static let interpreters: [String: String] = [
        "js": "node", "mjs": "node", "cjs": "node", "py": "python3", "sh": "sh", "bash": "bash",
        "rb": "ruby", "pl": "perl", "php": "php", "lua": "lua5.4",
    ]

    public var file: String
    public var source: String?
    /// Folder relative paths are resolved against (the app file's folder, or the client's cwd).
    public var baseDirectory: String
    public var cpuCount: Int
    /// `--env <name>`: an app's `env_<name>` table is merged over its `env`.
    public var envName: String?

    public init(file: String, source: String?, baseDirectory: String, cpuCount: Int, envName: String? = nil) {
        self.file = file
        self.source = source
        self.baseDirectory = baseDirectory
        self.cpuCount = cpuCount
        self.envName = envName
    }

    /// The parser for an app file at an absolute `path`: relative paths in it are relative to its folder.
    public static func forAppFile(_ path: String, source: String?, cpuCount: Int, envName: String? = nil) -> AppSpecParser {
        let slash = path.lastIndex(of: "/") ?? path.startIndex
        let folder = slash == path.startIndex ? "/" : String(path[..<slash])
        return AppSpecParser(file: path, source: source, baseDirectory: folder, cpuCount: cpuCount, envName: envName)
    }

    /// Parses what an app file returned: one app table or a list of them.
    public func parse(_ value: ScriptValue) throws(AppFileError) -> [AppSpec] {
        switch value {
        case .object:
            return [try parseApp(value)]
        case .array(let items):
            if items.isEmpty { throw fail(nil, "the app list is empty") }
            var specs: [AppSpec] = []
            for (index, item) in items.enumerated() {
                guard case .object = item else {
                    throw fail(nil, "app #\(index + 1) must be a table, got \(item.typeName)")
                }
                let spec = try parseApp(item)
                if specs.contains(where: { $0.name == spec.name }) {
                    throw fail("name", "two apps are named \"\(spec.name)\"")
                }
                specs.append(spec)
            }
            return specs
        default:
            throw fail(nil, "an app file must return an app table or a list of them, got \(value.typeName)")
        }
    }

    /// Parses one app table.
    public func parseApp(_ value: ScriptValue) throws(AppFileError) -> AppSpec {
        guard case .object(let t) = value else {
            throw fail(nil, "an app must be a table, got \(value.typeName)")
        }
        // env_<name> tables are env sets, as in PM2: `pml start app.lua --env production`.
        for key in t.keys.sorted() where !Self.knownKeys.contains(key) && !(key.hasPrefix("env_") && key.count > 4) {
            var message = "unknown key \"\(key)\""
            if let near = Self.nearest(key, in: Self.knownKeys) { message += " (did you mean \"\(near)\"?)" }
            throw fail(key, message)
        }
        for hook in Self.hookKeys {
            if let v = t[hook], v != .function {
                throw fail(hook, "\"\(hook)\" must be a function, got \(v.typeName)")
            }
        }

        let argv = try command(t)
        let name: String
        if let v = t["name"] {
            guard let s = v.stringValue else { throw typeError("name", "a string", v) }
            name = s
        } else {
            name = Self.defaultName(for: t["script"]?.stringValue ?? argv[0])
        }
        try checkName(name)

        var env: [String: String] = [:]
        for key in ["env"] + t.keys.filter({ $0.hasPrefix("env_") }).sorted() {
            guard let v = t[key] else { continue }
            guard case .object(let fields) = v else { throw typeError(key, "a table of strings", v) }
            guard key == "env" || key == "env_" + (envName ?? "") else { continue }
            for (k, item) in fields {
                switch item {
                case .string(let s): env[k] = s
                case .int(let i): env[k] = String(i)
                case .double(let d): env[k] = String(d)
                case .bool(let b): env[k] = b ? "true" : "false"
                default: throw fail(key, "\(key).\(k) must be a string or number, got \(item.typeName)")
                }
            }
        }
        return try finish(t, name, argv, env)
    }

    private func finish(_ t: [String: ScriptValue], _ name: String, _ argv: [String], _ env: [String: String]) throws(AppFileError) -> AppSpec {
        var cwd = baseDirectory
        if let v = t["cwd"] {
            guard let s = v.stringValue, !s.isEmpty else { throw typeError("cwd", "a folder path", v) }
            cwd = resolve(s)
        }
        let instances: Int
        switch t["instances"] {
        case nil: instances = 1
        case .string("max"): instances = max(1, cpuCount)
        case let v?:
            // -N is every core but N (at least one), as in PM2: instances = -1 on 4 cores is 3.
            let limit = CheckedNumber.maxInstances
            guard let n = CheckedNumber.integer(v, in: -limit...limit), n != 0 else {
                throw typeError("instances", "a whole number from 1 to \(limit), \"max\", or -N (all cores but N)", v)
            }
            instances = n > 0 ? n : max(1, cpuCount + n)
        }
        var namespace: String?
        if let v = t["namespace"] {
            guard let s = v.stringValue else { throw typeError("namespace", "a string", v) }
            try checkName(s, key: "namespace")
            namespace = s
        }
        var stopCodes: [Int] = []
        switch t["stop_exit_codes"] {
        case nil: break
        case .array(let items)?:
            for item in items {
                guard let n = item.intValue, (0...255).contains(n) else {
                    throw typeError("stop_exit_codes", "exit codes from 0 to 255", item)
                }
                stopCodes.append(Int(n))
            }
        case let v?:
            guard let n = v.intValue, (0...255).contains(n) else {
                throw typeError("stop_exit_codes", "an exit code or a list of them", v)
            }
            stopCodes = [Int(n)]
        }
        var killSignal = "SIGTERM"
        if let v = t["kill_signal"] {
            let text = v.stringValue ?? v.intValue.map { String($0) }
            guard let text, let number = SignalNames.number(text) else {
                throw typeError("kill_signal", "a signal name such as \"SIGINT\"", v)
            }
            killSignal = SignalNames.name(number)
        }
        var listen: [ListenAddress] = []
        switch t["listen"] {
        case nil: break
        case .array(let items)?:
            for item in items {
                guard let a = ListenAddress.parse(item, baseDirectory: baseDirectory) else {
                    throw typeError("listen", "ports or addresses such as 8080, \"127.0.0.1:8080\", \"unix:/run/web.sock\"", item)
                }
                listen.append(a)
            }
        case let v?:
            guard let a = ListenAddress.parse(v, baseDirectory: baseDirectory) else {
                throw typeError("listen", "a port or an address such as 8080, \"127.0.0.1:8080\", \"[::1]:8080\" or \"unix:/run/web.sock\"", v)
            }
            listen = [a]
        }
        if Set(listen).count != listen.count { throw fail("listen", "\"listen\" names the same address twice") }
        var dispatch = DispatchMode.roundRobin
        if let v = t["dispatch"] {
            guard let s = v.stringValue, let d = DispatchMode(rawValue: s) else {
                throw typeError("dispatch", "\"rr\", \"least-busy\", \"reuseport\" or \"shared\"", v)
            }
            dispatch = d
        }
        if dispatch == .reusePort, let problem = Self.reusePortProblem(listen) { throw fail("dispatch", problem) }
        var ready = ReadinessRule.automatic
        switch t["ready"] {
        case nil, .string("auto")?: break
        case .string("message")?: ready = .message
        case let v?:
            guard let ms = CheckedNumber.integer(v, in: 0...CheckedNumber.maxDelayMs) else {
                throw typeError("ready", "\"message\", \"auto\" or a delay in milliseconds", v)
            }
            ready = .delay(ms)
        }
        var spec = AppSpec(
            name: name, argv: argv, cwd: cwd, env: env, instances: instances,
            autorestart: try bool(t, "autorestart", true),
            minUptime: try millis(t, "min_uptime", 1000),
            maxRestarts: try millis(t, "max_restarts", 15, what: "a whole number, 0 or more"),
            restartDelay: try millis(t, "restart_delay", 100),
            restartDelayMax: try millis(t, "restart_delay_max", 15000),
            stableAfter: try millis(t, "stable_after", 30000),
            stopExitCodes: stopCodes,
            killTimeout: try millis(t, "kill_timeout", 5000),
            killSignal: killSignal,
            timestamps: try bool(t, "timestamps", false) || t["log_date_format"] != nil,
            logDateFormat: try logDateFormat(t),
            logFormat: try logFormat(t),
            listen: listen,
            dispatch: dispatch,
            ready: ready,
            readyTimeout: try millis(t, "ready_timeout", 10000),
            autoscale: try t["autoscale"].map { v throws(AppFileError) in try AutoscaleSpec.parse(v) { fail("autoscale", $0) } },
            appFile: nil,
            hooks: Self.hookKeys.filter { t[$0] == .function },
            namespace: namespace
        )
        try parseOperations(t, into: &spec)
        return spec
    }

    private func command(_ t: [String: ScriptValue]) throws(AppFileError) -> [String] {
        var extra: [String] = []
        if let v = t["args"] {
            guard case .array(let items) = v else { throw typeError("args", "a list of strings", v) }
            for item in items {
                guard let s = item.stringValue else { throw typeError("args", "a list of strings", item) }
                extra.append(s)
            }
        }
        switch (t["cmd"], t["script"]) {
        case (nil, nil):
            throw fail(nil, "app needs \"cmd\" (a command) or \"script\" (a file to run)")
        case (_?, _?):
            throw fail("script", "give either \"cmd\" or \"script\", not both")
        case (let v?, nil):
            switch v {
            case .string(let s) where !s.trimmingWhitespace.isEmpty:
                // A command line string runs through the shell; exec keeps signals going to the program.
                return ["/bin/sh", "-c", "exec " + s] + (extra.isEmpty ? [] : ["sh"] + extra)
            case .array(let items) where !items.isEmpty:
                var argv: [String] = []
                for item in items {
                    guard let s = item.stringValue else { throw typeError("cmd", "a list of strings", item) }
                    argv.append(s)
                }
                if argv[0].isEmpty { throw fail("cmd", "\"cmd\" starts with an empty program name") }
                return argv + extra
            default:
                throw typeError("cmd", "a non-empty list of strings or a command string", v)
            }
        case (nil, let v?):
            guard let script = v.stringValue, !script.isEmpty else { throw typeError("script", "a file path", v) }
            let path = resolve(script)
            var interpreter: [String] = []
            if let iv = t["interpreter"] {
                guard let s = iv.stringValue else { throw typeError("interpreter", "a program name", iv) }
                if s != "none" { interpreter = [s] }
            } else if let ext = path.split(separator: "/").last?.split(separator: ".").last,
                      path.split(separator: "/").last?.contains(".") == true,
                      let i = Self.interpreters[String(ext)] {
                interpreter = [i]
            }
            return interpreter + [path] + extra
        }
    }

    private func checkName(_ name: String, key: String = "name") throws(AppFileError) {
        let allowed = name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
                || $0 == "-" || $0 == "_" || $0 == "."
        }
        if name.isEmpty || name.count > 64 || !allowed || name.hasPrefix(".") {
            throw fail(key, "\(key == "name" ? "app name" : key) \"\(name)\" must be 1 to 64 letters, digits, '.', '-' or '_'")
        }
        if name == "all" || Int(name) != nil {
            throw fail(key, "\(key == "name" ? "app name" : key) \"\(name)\" is reserved (\"all\" and numbers name ids)")
        }
    }

    private func logDateFormat(_ t: [String: ScriptValue]) throws(AppFileError) -> String? {
        guard let v = t["log_date_format"] else { return nil }
        guard let s = v.stringValue, !s.isEmpty else { throw typeError("log_date_format", "a format such as \"YYYY-MM-DD HH:mm:ss\"", v) }
        return s
    }

    private func logFormat(_ t: [String: ScriptValue]) throws(AppFileError) -> String {
        guard let v = t["log_format"] else { return "plain" }
        guard let s = v.stringValue, s == "plain" || s == "json" else { throw typeError("log_format", "\"plain\" or \"json\"", v) }
        return s
    }

    func bool(_ t: [String: ScriptValue], _ key: String, _ def: Bool) throws(AppFileError) -> Bool {
        guard let v = t[key] else { return def }
        guard let b = v.boolValue else { throw typeError(key, "true or false", v) }
        return b
    }

    func millis(_ t: [String: ScriptValue], _ key: String, _ def: Int,
                        what: String = "a duration in milliseconds, 0 or more") throws(AppFileError) -> Int {
        guard let v = t[key] else { return def }
        guard let n = CheckedNumber.integer(v, in: 0...CheckedNumber.maxDelayMs) else { throw typeError(key, what, v) }
        return n
    }

    func resolve(_ path: String) -> String {
        path.hasPrefix("/") ? path : Self.normalize(baseDirectory + "/" + path)
    }

    /// Why `listen` cannot be served by per-worker SO_REUSEPORT sockets, or nil if it can.
    static func reusePortProblem(_ listen: [ListenAddress]) -> String? {
        if listen.isEmpty {
            return "dispatch \"reuseport\" needs a listen address (pml binds one socket per worker on it), e.g. listen = 8080 or --port 8080"
        }
        for a in listen {
            switch a {
            case .unix:
                return "dispatch \"reuseport\" cannot serve \(a): unix sockets cannot share a path (use \"rr\" or \"shared\")"
            case .tcp(_, 0):
                return "dispatch \"reuseport\" needs a fixed port, not 0 (each worker's socket would get a port of its own)"
            case .tcp:
                continue
            }
        }
        return nil
    }

    func typeError(_ key: String, _ expected: String, _ got: ScriptValue) -> AppFileError {
        fail(key, "\"\(key)\" must be \(expected), got \(got.brief)")
    }

    func fail(_ key: String?, _ message: String) -> AppFileError {
        AppFileError(file: file, line: key.flatMap { k in source.flatMap { Self.line(ofKey: k, in: $0) } }, message: message)
    }

    /// The default app name: the script or program's base name without extension.
    public static func defaultName(for path: String) -> String {
        let base = path.split(separator: "/").last.map(String.init) ?? path
        let stem = base.split(separator: ".", omittingEmptySubsequences: false).first.map(String.init) ?? base
        let cleaned = String(stem.unicodeScalars.map { s -> Character in
            let ok = ("a"..."z").contains(s) || ("A"..."Z").contains(s) || ("0"..."9").contains(s) || s == "-" || s == "_"
            return ok ? Character(s) : "-"
        })
        if cleaned.isEmpty || cleaned == "all" || Int(cleaned) != nil { return "app-" + cleaned }
        return cleaned
    }

    /// "/a/./b/../c" → "/a/c".
    public static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            if part == "." { continue }
            if part == ".." { if !parts.isEmpty { parts.removeLast() }; continue }
            parts.append(part)
        }
        return "/" + parts.joined(separator: "/")
    }

    /// The first line where `key` is assigned in a table constructor (`key = …`), 1-based.
    /// Lua keeps no line numbers for table fields, so the source text is the best witness.
    public static func line(ofKey key: String, in source: String) -> Int? {
        for (index, line) in source.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let chars = Array(line.utf8)
            let k = Array(key.utf8)
            var i = 0
            while i + k.count <= chars.count {
                if Array(chars[i..<(i + k.count)]) == k {
                    let before = i == 0 ? UInt8(ascii: " ") : chars[i - 1]
                    var j = i + k.count
                    while j < chars.count, chars[j] == UInt8(ascii: " ") || chars[j] == UInt8(ascii: "\t") { j += 1 }
                    let isIdent = { (c: UInt8) in c == 95 || (48...57).contains(c) || (65...90).contains(c) || (97...122).contains(c) }
                    if !isIdent(before), j < chars.count, chars[j] == UInt8(ascii: "="),
                       j + 1 >= chars.count || chars[j + 1] != UInt8(ascii: "=") {
                        return index + 1
                    }
                }
                i += 1
            }
        }
        return nil
    }

    /// The known word closest to `word` by edit distance, if close enough to be a likely typo.
    public static func nearest(_ word: String, in candidates: [String]) -> String? {
        let w = Array(word.lowercased())
        var best: (String, Int)?
        for c in candidates {
            let d = editDistance(w, Array(c.lowercased()))
            if d <= max(2, w.count / 3), best == nil || d < best!.1 { best = (c, d) }
        }
        return best?.0
    }

    static func editDistance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var prev = Array(0...b.count)
        for i in 1...a.count {
            var cur = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            prev = cur
        }
        return prev[b.count]
    }
}

extension String {
    var trimmingWhitespace: Substring {
        var s = self[...]
        while let f = s.first, f == " " || f == "\t" || f == "\n" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" { s.removeLast() }
        return s
    }
}
