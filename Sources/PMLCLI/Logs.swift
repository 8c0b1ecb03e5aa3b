import ArgumentParser
import Glibc
import PMLCore
import PMLDaemon
import PMLLua
import PMLPosix

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the last lines of apps' logs, and with --follow keep printing.",
        discussion: "Each line is prefixed with the app name and the stream (out or err).")

    @Argument(help: "An app name (default: every app with logs).")
    var name: String?

    @Option(name: .long, help: "How many lines of each file to print first.")
    var lines = 15

    @Flag(name: .long, help: "Keep printing new lines until interrupted.")
    var follow = false

    @Flag(name: .long, help: "Only the error log.")
    var err = false

    @Flag(name: .long, help: "Only the output log.")
    var out = false

    @Flag(name: .long, inversion: .prefixedNo, help: "Colour the prefixes (default: when printing to a terminal).")
    var color: Bool?

    @OptionGroup var options: DaemonOptions

    /// "web out | " in the app's own colour (err in red), or plain when not on a terminal.
    private func label(_ app: String, _ stream: String) -> String {
        guard color ?? (isatty(1) == 1) else { return "\(app) \(stream) | " }
        let palette = [36, 32, 33, 35, 34, 96, 92, 93, 95, 94]
        let hue = palette[Int(app.utf8.reduce(UInt32(5381)) { ($0 &* 33) &+ UInt32($1) } % UInt32(palette.count))]
        let streamColor = stream == "err" ? "\u{1B}[31m" : "\u{1B}[2m"
        return "\u{1B}[\(hue)m\(app)\u{1B}[0m \(streamColor)\(stream)\u{1B}[0m | "
    }

    func validate() throws {
        if lines < 0 { throw ValidationError("--lines must be 0 or more") }
        if err && out { throw ValidationError("--err and --out together: leave both out to see both") }
    }

    func run() throws {
        let paths = options.paths
        var apps: [String]
        if let name {
            apps = [name]
            if !pathExists(paths.outLog(name)) && !pathExists(paths.errLog(name)) {
                throw CLIError("no logs for an app named \"\(name)\" in \(paths.logs)")
            }
        } else {
            apps = logNames(in: paths.logs)
        }
        var files: [(label: String, path: String)] = []
        for app in apps {
            if !err { files.append((label(app, "out"), paths.outLog(app))) }
            if !out { files.append((label(app, "err"), paths.errLog(app))) }
        }
        var offsets: [String: Int] = [:]
        for f in files {
            let bytes = readFile(f.path) ?? []
            offsets[f.path] = bytes.count
            for line in lastLines(bytes, lines) { Output.print("\(f.label)\(line)\n") }
        }
        guard follow else { return }
        var partial: [String: [UInt8]] = [:]
        while true {
            if name == nil {
                // Apps started while following show up too.
                for app in logNames(in: paths.logs) where !apps.contains(app) {
                    apps.append(app)
                    if !err { files.append((label(app, "out"), paths.outLog(app))); offsets[paths.outLog(app)] = 0 }
                    if !out { files.append((label(app, "err"), paths.errLog(app))); offsets[paths.errLog(app)] = 0 }
                }
            }
            for f in files {
                let new = readFrom(f.path, offset: &offsets[f.path, default: 0])
                guard !new.isEmpty else { continue }
                var pending = partial[f.path, default: []] + new
                while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    Output.print("\(f.label)\(String(decoding: pending[..<nl], as: UTF8.self))\n")
                    pending.removeSubrange(...nl)
                }
                partial[f.path] = pending
            }
            usleep(200_000)
        }
    }

    /// App names that have log files, from `<name>-out.log` / `<name>-err.log`.
    private func logNames(in folder: String) -> [String] {
        var names = Set<String>()
        for file in directoryEntries(folder) {
            for suffix in ["-out.log", "-err.log"] where file.hasSuffix(suffix) {
                names.insert(String(file.dropLast(suffix.count)))
            }
        }
        return names.sorted()
    }

    private func lastLines(_ bytes: [UInt8], _ count: Int) -> [String] {
        guard count > 0 else { return [] }
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        return lines.suffix(count).map { String(decoding: $0, as: UTF8.self) }
    }

    /// New bytes since `offset`; a file that shrank (flushed) is read from its start again.
    private func readFrom(_ path: String, offset: inout Int) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { closeFD(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return [] }
        if Int(st.st_size) < offset { offset = 0 }
        guard Int(st.st_size) > offset else { return [] }
        var buf = [UInt8](repeating: 0, count: Int(st.st_size) - offset)
        let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(offset)) }
        guard n > 0 else { return [] }
        offset += n
        return Array(buf[0..<n])
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Validate an app file without starting anything.")

    @Argument(help: "The app file.")
    var file: String

    func run() throws {
        let env = processEnvironment()
        let path = file.hasPrefix("/") ? file : AppSpecParser.normalize(currentDirectory() + "/" + file)
        guard let luaPath = Daemon.luaLibraryPath(environment: env) else {
            throw CLIError("cannot find pml's Lua library (lua/pml/policy.lua); set PML_LUA_PATH")
        }
        let runtime: LuaRuntime
        do { runtime = try LuaRuntime(libraryPaths: [luaPath]) } catch { throw CLIError("cannot start Lua: \(error)") }
        let loaded: LoadedAppFile
        do { loaded = try runtime.evaluateAppFile(path: path) } catch { throw CLIError(error.description) }
        let parser = AppSpecParser.forAppFile(path, source: loaded.source, cpuCount: Int(max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
        let specs: [AppSpec]
        do { specs = try parser.parse(loaded.value) } catch { throw CLIError(error.description) }
        Output.print("\(file): ok, \(specs.count) app\(specs.count == 1 ? "" : "s")\n")
        for s in specs {
            let hooks = s.hooks.isEmpty ? "" : "; hooks: " + s.hooks.joined(separator: ", ")
            Output.print("  \(s.name): \(s.instances) × \(s.argv.joined(separator: " ")) (in \(s.cwd))\(hooks)\n")
        }
    }
}
