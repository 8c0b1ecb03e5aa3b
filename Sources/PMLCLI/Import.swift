import ArgumentParser
import FoundationEssentials
import Glibc
import PMLCore
import PMLPosix

/// `pml import`: a PM2 ecosystem file becomes a pml app file (the same mapping `pml start` uses).
struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn a PM2 ecosystem file (.js, .cjs, .mjs, .json, .yaml) into a pml app file.",
        discussion: """
        pml import ecosystem.config.js             writes app.lua beside it
        pml import ecosystem.json -o web.lua --force
        pml start ecosystem.config.js runs the file as it is; import is for moving to a Lua app file
        (hooks, policies). JavaScript files are evaluated with node (found on PATH). PM2 options are
        mapped as pml start maps them; those pml does not honour are listed, and noted in the app file.
        """)

    @Argument(help: "The PM2 ecosystem file.")
    var file: String

    @Option(name: [.short, .customLong("output")], help: "The app file to write (default: app.lua beside the ecosystem file).")
    var output: String?

    @Option(name: .long, help: "Merge the env_<name> set of each app into its env.")
    var env: String?

    @Flag(name: .long, help: "Overwrite the output file if it exists.")
    var force = false

    func run() throws {
        let here = currentDirectory()
        func absolute(_ p: String) -> String { p.hasPrefix("/") ? AppSpecParser.normalize(p) : AppSpecParser.normalize(here + "/" + p) }
        let input = absolute(file)
        guard pathExists(input) else { throw CLIError("no such file: \(file)") }
        let lower = input.lowercased()
        guard [".js", ".cjs", ".mjs", ".json", ".yaml", ".yml"].contains(where: { lower.hasSuffix($0) }) else {
            throw CLIError("cannot import \(file): give a PM2 ecosystem file ending in .js, .cjs, .mjs, .json, .yaml or .yml")
        }
        let inputFolder = EcosystemFile.folder(of: input)

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
        let outFolder = EcosystemFile.folder(of: outPath)
        guard pathExists(outFolder) else { throw CLIError("no such folder for the output: \(outFolder)") }

        var eco = try EcosystemFile.load(input, display: file, envName: env)
        if outFolder != inputFolder {
            for i in eco.apps.indices { eco.apps[i].table = Self.relocate(eco.apps[i].table, from: inputFolder) }
        }
        let lua = LuaWriter.appFile(eco.apps, source: baseName(input), output: baseName(outPath))

        // The generated apps must be what `pml check` accepts: validate them as the parser will.
        let tables = eco.apps.map { ScriptValue.object($0.table) }
        do {
            _ = try AppSpecParser.appFile(outPath, value: tables.count == 1 ? tables[0] : .array(tables), source: nil,
                                          cpuCount: 1, startedWith: nil)
        } catch {
            throw CLIError("internal error: the imported app file would not be valid (\(error.message))")
        }

        try Self.writeAtomically(outPath, lua)
        Output.print(Self.summary(eco, input: file, output: outDisplay))
    }

    func baseName(_ path: String) -> String { path.split(separator: "/").last.map(String.init) ?? path }

    /// Paths relative to the ecosystem's folder, made absolute for an app file written elsewhere;
    /// the app keeps running where PM2 ran it, beside the ecosystem file.
    static func relocate(_ table: [String: ScriptValue], from folder: String) -> [String: ScriptValue] {
        var t = table
        for key in ["cwd", "script"] {
            if let p = t[key]?.stringValue, !p.hasPrefix("/") { t[key] = .string(PM2Mapping.join(folder, p)) }
        }
        if t["cwd"] == nil { t["cwd"] = .string(folder) }
        return t
    }

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

    static func summary(_ eco: PM2Mapping.Ecosystem, input: String, output: String) -> String {
        let apps = eco.apps
        var out = "imported \(apps.count) app\(apps.count == 1 ? "" : "s") from \(input) into \(output)\n"
        for app in apps {
            out += "  \(app.name): mapped \(app.mapped.isEmpty ? "nothing" : app.mapped.joined(separator: ", "))\n"
        }
        let ignored = apps.flatMap { app in app.ignored.map { (app.name, $0) } }
        if ignored.isEmpty {
            out += "every PM2 option was mapped\n"
        } else {
            let base = output.split(separator: "/").last.map(String.init) ?? output
            out += "not honoured by pml, to do by hand (also noted in \(base)):\n"
            for (name, m) in ignored { out += "  \(name): \(m.option) = \(m.value) — \(m.hint)\n" }
        }
        let notes = apps.flatMap { app in app.notes.map { "\(app.name): \($0)" } }
            + eco.ignoredTopLevel.map { "\"\($0)\" (beside apps) is not imported" } + eco.notes
        if !notes.isEmpty {
            out += "notes:\n"
            for n in notes { out += "  \(n)\n" }
        }
        out += "next: pml check \(output) && pml start \(output)\n"
        return out
    }
}

/// Renders imported apps as a readable Lua app file.
enum LuaWriter {
    static let reserved: Set<String> = [
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
        "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
    ]

    /// The order keys are written in; the others follow, sorted.
    static let keyOrder: [String] = [
        "name", "namespace", "cmd", "script", "args", "interpreter", "cwd", "env", "instances", "autorestart", "max_restarts",
        "min_uptime", "restart_delay", "restart_delay_max", "kill_signal", "kill_timeout", "stop_exit_codes",
        "timestamps", "ready", "ready_timeout",
    ]

    static func appFile(_ apps: [PM2Mapping.App], source: String, output: String) -> String {
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

    static func table(_ app: PM2Mapping.App, indent: String) -> String {
        let inner = indent + "  "
        var out = "{\n"
        let rank = { (k: String) in keyOrder.firstIndex(of: k) ?? keyOrder.count }
        for k in app.table.keys.sorted(by: { (rank($0), $0) < (rank($1), $1) }) {
            if let c = app.comments[k] { out += inner + "-- " + oneLine(c) + "\n" }
            out += inner + key(k) + " = " + value(app.table[k]!, indent: inner) + ",\n"
        }
        for n in app.notes { out += inner + "-- " + oneLine(n) + "\n" }
        for m in app.ignored { out += inner + "-- " + oneLine("\(m.option) = \(m.value): \(m.hint)") + "\n" }
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

extension StringProtocol {
    /// Without leading and trailing blanks.
    var importTrimmed: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s.removeLast() }
        return String(s)
    }
}
