import ArgumentParser
import Glibc
import PMLCore
import PMLDaemon
import PMLLua
import PMLPosix

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the last lines of apps' logs, then keep printing new ones (as pm2 logs); --nostream exits.",
        discussion: """
        Each line is prefixed with the app name and the stream (out or err). The files are those the \
        daemon writes (out_file, error_file, or $PML_HOME/logs/<app>-out.log and -err.log); a file \
        that logrotate moved is followed to its new one.
        """)

    @Argument(help: "An app name (default: every app with logs).")
    var name: String?

    @Option(name: .long, help: "How many lines of each file to print first.")
    var lines = 15

    @Flag(name: .long, help: "Print the last lines and exit instead of streaming.")
    var nostream = false

    @Flag(name: .long, help: "Keep printing new lines until interrupted (the default).")
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
        if nostream && follow { throw ValidationError("--nostream and --follow together: pick one") }
    }

    /// One followed file: where it is, what it is (device and inode, to notice logrotate), how far it was read.
    private struct Followed {
        var label: String
        var path: String
        var identity: (UInt, UInt)?
        var offset = 0
        var partial: [UInt8] = []
    }

    func run() throws {
        let paths = options.paths
        var known = Set<String>()
        var files: [Followed] = []
        func add(_ app: String, fresh: Bool) {
            guard known.insert(app).inserted else { return }
            let (outs, errs) = logFiles(of: app, paths: paths)
            if !err { files += outs.map { Followed(label: label(app, "out"), path: $0) } }
            if !out { files += errs.map { Followed(label: label(app, "err"), path: $0) } }
            if !fresh { return }
            // Started while following: from their first line.
            for i in files.indices where files[i].identity == nil { files[i].identity = identity(files[i].path) }
        }
        if let name {
            let (outs, errs) = logFiles(of: name, paths: paths)
            if !(outs + errs).contains(where: pathExists) {
                throw CLIError("no logs for an app named \"\(name)\" in \(paths.logs)")
            }
            add(name, fresh: false)
        } else {
            appNames(paths: paths).forEach { add($0, fresh: false) }
        }
        for i in files.indices {
            let bytes = readFile(files[i].path) ?? []
            files[i].offset = bytes.count
            files[i].identity = identity(files[i].path)
            for line in lastLines(bytes, lines) { Output.print("\(files[i].label)\(line)\n") }
        }
        guard !nostream else { return }
        var rescanAt = monotonicMs() + 2000
        while true {
            if name == nil, monotonicMs() >= rescanAt {
                // Apps started while following show up too.
                appNames(paths: paths).forEach { add($0, fresh: true) }
                rescanAt = monotonicMs() + 2000
            }
            for i in files.indices { printNew(&files[i]) }
            usleep(200_000)
        }
    }

    /// Prints the complete lines added to a file since the last look; a file that was replaced
    /// (logrotate) or emptied (pml flush) is read from its start.
    private func printNew(_ f: inout Followed) {
        let now = identity(f.path)
        if let now, let was = f.identity, now != was {
            f.offset = 0
            f.partial = []
        }
        f.identity = now
        let new = readFrom(f.path, offset: &f.offset)
        guard !new.isEmpty else { return }
        f.partial += new
        while let nl = f.partial.firstIndex(of: UInt8(ascii: "\n")) {
            Output.print("\(f.label)\(String(decoding: f.partial[..<nl], as: UTF8.self))\n")
            f.partial.removeSubrange(...nl)
        }
    }

    private func identity(_ path: String) -> (UInt, UInt)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return (UInt(st.st_dev), UInt(st.st_ino))
    }

    /// The apps to show: those the daemon runs (if one is up), then any with files in the logs folder.
    private func appNames(paths: PMLPaths) -> [String] {
        var names: [String] = []
        if let rows = daemonRows() {
            for row in rows where !names.contains(row.name) { names.append(row.name) }
        }
        for n in logNames(in: paths.logs) where !names.contains(n) { names.append(n) }
        return names
    }

    private func daemonRows() -> [ProcessRow]? {
        guard options.client.daemonIsRunning() else { return nil }
        return try? options.client.send(ControlRequest(cmd: .list), autostart: false).processes
    }

    /// Where an app's stdout and stderr go: the daemon knows (out_file, error_file, per-instance
    /// files); without a daemon, or for an app it no longer runs, the logs folder's files.
    private func logFiles(of app: String, paths: PMLPaths) -> (out: [String], err: [String]) {
        if options.client.daemonIsRunning(),
           let d = try? options.client.send(ControlRequest(cmd: .describe, target: app), autostart: false).app {
            return (d.outLogs ?? [d.outLog], d.errLogs ?? [d.errLog])
        }
        return ([paths.outLog(app)], [paths.errLog(app)])
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
        let specs: [AppSpec]
        do {
            // Validated as `pml start` will (without command-line overrides).
            specs = try AppSpecParser.appFile(path, value: loaded.value, source: loaded.source,
                                              cpuCount: Int(max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))), startedWith: nil)
        } catch {
            throw CLIError(error.description)
        }
        Output.print("\(file): ok, \(specs.count) app\(specs.count == 1 ? "" : "s")\n")
        for s in specs {
            let hooks = s.hooks.isEmpty ? "" : "; hooks: " + s.hooks.joined(separator: ", ")
            Output.print("  \(s.name): \(s.instances) × \(s.argv.joined(separator: " ")) (in \(s.cwd))\(hooks)\n")
        }
    }
}
