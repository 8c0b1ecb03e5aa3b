import ArgumentParser
import FoundationEssentials
import Glibc
import PMLCore
import PMLDaemon
import PMLPosix

/// The `pml` command: configures subcommands only; each does its own work.
public struct PML: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "pml",
        abstract: "A process manager scripted in Lua: keeps apps alive, restarts them by your rules.",
        discussion: "State lives in $PML_HOME (default ~/.pml). The first command starts the daemon.",
        version: "\(PMLVersion.string) (commit \(pmlBuildCommit))",
        subcommands: [
            Start.self, Run.self, Stop.self, Restart.self, Reload.self, Delete.self, StartOrRestart.self, StartOrReload.self,
            List.self, JList.self, PrettyList.self, Describe.self, Logs.self, Flush.self, ReloadLogs.self, Reset.self, IDCommand.self,
            PIDCommand.self, EnvCommand.self,
            SignalCommand.self, Send.self, Scale.self, Plugins.self, Save.self, Resurrect.self, Startup.self,
            Unstartup.self, Check.self, Ping.self, Kill.self, Update.self, DaemonCommand.self, SupervisorDaemonCommand.self,
            SentinelCommand.self,
            Monit.self, Metrics.self, DashboardCommand.self,
            Import.self,
        ]
    )

    public init() {}

    /// Entry point: errors print as one line, `pml: <message>`, and exit 1.
    public static func runMain() -> Never {
        do {
            var command = try parseAsRoot()
            try command.run()
            Glibc.exit(0)
        } catch let error as CLIError {
            try? writeAll(2, "pml: \(error.description)\n")
            Glibc.exit(1)
        } catch {
            let code = exitCode(for: error)
            // --help and --version are "errors" that succeed: print them as the parser does.
            if code == .success { exit(withError: error) }
            var message = String(message(for: error).split(separator: "\n").first ?? "")
            if message.hasPrefix("Error: ") { message.removeFirst("Error: ".count) }
            if !message.isEmpty { try? writeAll(2, "pml: \(message) (see \"pml --help\")\n") }
            Glibc.exit(code.rawValue)
        }
    }
}

/// Shared by every command that talks to the daemon.
struct DaemonOptions: ParsableArguments {
    var paths: PMLPaths { Daemon.paths(environment: processEnvironment()) }
    var client: ControlClient { ControlClient(paths: paths) }

    /// Sends a request and prints the process table the daemon answers with.
    func sendPrintingTable(_ request: ControlRequest) throws {
        let r = try client.send(request)
        Output.print(Output.table(r.processes ?? []))
    }
}

/// `--json` for commands that print a table.
struct JSONFlag: ParsableArguments {
    @Flag(name: .long, help: "Print machine-readable JSON.")
    var json = false
}

/// What to run: an app file, a script or a command, and the options that shape it (start and run).
struct AppSelection: ParsableArguments {
    @Argument(help: "An app file (*.lua), a script, or a program.")
    var target: String?

    @Argument(parsing: .postTerminator, help: "The command (after --), or the script's arguments.")
    var command: [String] = []

    @Option(name: .long, help: "The app's name.")
    var name: String?

    @Option(name: [.short, .customLong("instances")], help: "How many workers: a number or \"max\" (one per core).")
    var instances: String?

    @Option(name: .long, help: "K=V: an environment variable for the app (repeatable); NAME: the env_NAME set of an app or ecosystem file.")
    var env: [String] = []

    @Option(name: .long, help: "Working directory for a script or command (default: here).")
    var cwd: String?

    @Flag(name: [.customLong("timestamps"), .customLong("timestamp")], help: "Prefix each log line with the time.")
    var timestamps = false

    @Option(name: [.short, .customLong("port")], help: "An address pml listens on for the app: 8080, 127.0.0.1:8080, unix:/path (repeatable).")
    var port: [String] = []

    @Option(name: .long, help: "How connections reach workers: rr (pml passes each), least-busy (to the worker with fewest open), reuseport (a socket per worker) or shared (workers inherit the sockets).")
    var dispatch: String?

    @Option(name: .long, help: "Only these apps of an app or ecosystem file (a,b).")
    var only: String?

    @Flag(name: .long, help: "Restart the app when a file in its folder changes (node_modules and .git aside), as pm2 --watch.")
    var watch = false

    private var here: String { currentDirectory() }
    func absolute(_ p: String) -> String { p.hasPrefix("/") ? p : AppSpecParser.normalize(here + "/" + p) }

    /// Whether the arguments name an app by name only (`pml start web`): no file, no options.
    var isBareName: Bool {
        guard let target else { return false }
        return command.isEmpty && !pathExists(absolute(target)) && name == nil && instances == nil && env.isEmpty
    }

    /// `--env` values: K=V pairs, and at most one env set name.
    func environment() throws(CLIError) -> (vars: [String: String], set: String?) {
        var vars: [String: String] = [:]
        var set: String?
        for item in env {
            if let eq = item.firstIndex(of: "=") {
                guard eq != item.startIndex else { throw CLIError("--env takes K=V or an env set name, got \"\(item)\"") }
                vars[String(item[..<eq])] = String(item[item.index(after: eq)...])
            } else {
                if let set, set != item { throw CLIError("--env names one env set, got \"\(set)\" and \"\(item)\"") }
                set = item
            }
        }
        return (vars, set)
    }

    /// The ecosystem file the target names, if it is one (PM2's rule: .json, .yaml, .yml, .config.js…).
    func ecosystemTarget() throws(CLIError) -> EcosystemTarget? {
        guard let target, command.isEmpty, EcosystemFile.isEcosystem(target) else { return nil }
        guard pathExists(absolute(target)) else { throw CLIError("no such ecosystem file: \(target)") }
        if cwd != nil || timestamps || !port.isEmpty || dispatch != nil {
            throw CLIError("--cwd, --timestamps, --port and --dispatch belong in the ecosystem file (cwd, time; pml owns ports in a Lua app file)")
        }
        return try EcosystemTarget(path: absolute(target), display: target, only: only, envName: environment().set)
    }

    /// The start request these arguments describe (for an ecosystem file: the overrides and client only).
    func startArguments() throws(CLIError) -> StartArguments {
        let (envOverrides, envSet) = try environment()
        var instanceValue: ScriptValue?
        if let i = instances { instanceValue = Int64(i).map { .int($0) } ?? .string(i) }
        var args = StartArguments(name: name, env: envOverrides, instances: instanceValue,
                                  clientEnv: clientEnvironment(), clientCwd: here)
        args.only = only
        if watch { args.watch = true }
        args.envName = envSet
        if let target, EcosystemFile.isEcosystem(target), command.isEmpty { return args }
        if let target, target.hasSuffix(".lua"), command.isEmpty, pathExists(absolute(target)) {
            if cwd != nil || timestamps || !port.isEmpty || dispatch != nil {
                throw CLIError("--cwd, --timestamps, --port and --dispatch belong in the app file (keys cwd, timestamps, listen, dispatch)")
            }
            args.file = absolute(target)
            return args
        }
        if only != nil { throw CLIError("--only picks apps of an app file or ecosystem file") }
        if let envSet { throw CLIError("--env \(envSet) picks the env_\(envSet) set of an app file or ecosystem file; for a variable use --env K=V") }
        var app: [String: ScriptValue] = [:]
        if let target {
            if pathExists(absolute(target)) {
                app["script"] = .string(absolute(target))
                if !command.isEmpty { app["args"] = .array(command.map { .string($0) }) }
            } else if target.hasSuffix(".lua") {
                throw CLIError("no such app file: \(target)")
            } else if target.contains("/") || [".js", ".mjs", ".cjs", ".py", ".sh", ".rb", ".pl"].contains(where: { target.hasSuffix($0) }) {
                throw CLIError("no such file: \(target)")
            } else {
                app["cmd"] = .array(([target] + command).map { .string($0) })
            }
        } else {
            guard !command.isEmpty else { throw CLIError("nothing to start: give an app file, a script, or -- a command") }
            app["cmd"] = .array(command.map { .string($0) })
        }
        if let cwd { app["cwd"] = .string(absolute(cwd)) }
        if timestamps { app["timestamps"] = .bool(true) }
        if !port.isEmpty { app["listen"] = .array(port.map { Int64($0).map { .int($0) } ?? .string($0) }) }
        if let dispatch { app["dispatch"] = .string(dispatch) }
        args.app = .object(app)
        return args
    }
}

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start the apps of an app file, a script, or a command.",
        discussion: """
        pml start app.lua                   the app(s) an app file declares
        pml start server.js -i 4            a script (.js → node, .py → python3, .sh → sh), 4 instances
        pml start --name api -- ./bin/api --flag
        pml start server.py -i 2 --port 8080   pml owns port 8080 and hands connections round-robin
        pml start web                       start the stopped app "web" again
        """)

    @OptionGroup var app: AppSelection
    @OptionGroup var options: DaemonOptions

    func run() throws {
        // An ecosystem file: its apps start, and those already running restart with its definition (PM2's start).
        if let eco = try app.ecosystemTarget() {
            return try deploy(eco, action: .restart, base: app.startArguments(), options: options)
        }
        // `pml start web` with no such file starts the stopped app "web" again, as in PM2.
        if app.isBareName, let target = app.target,
           let rows = try? options.client.send(ControlRequest(cmd: .list)).processes,
           rows.contains(where: { $0.name == target }) {
            guard rows.contains(where: { $0.name == target && ($0.status == .stopped || $0.status == .errored) }) else {
                throw CLIError("app \"\(target)\" is already running (use \"pml restart \(target)\")")
            }
            return try options.sendPrintingTable(ControlRequest(cmd: .restart, target: target))
        }
        try options.sendPrintingTable(ControlRequest(cmd: .start, start: app.startArguments()))
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run apps in the foreground, without a daemon (containers, systemd units); PID 1 safe.",
        discussion: """
        Workers' output goes to this terminal, each line prefixed with its app's name. SIGTERM or
        SIGINT stops every app gracefully; pml exits 0, or 1 if an app ended errored (also when
        nothing is left to supervise). Under systemd (Type=notify), READY=1 is sent once every
        worker is online. SIGHUP, SIGUSR1 and SIGUSR2 are passed on to the workers.
        """)

    @OptionGroup var app: AppSelection
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let args = try app.startArguments()
        throw ExitCode(Daemon.runForeground(paths: options.paths, start: args))
    }
}

/// One target (signal, send).
struct TargetArgument: ParsableArguments {
    @Argument(help: "An app name, a worker id, a namespace, or \"all\".")
    var target: String
}

/// stop / restart / delete / reload / reset: several targets, ecosystem files among them.
struct TargetList: ParsableArguments {
    @Argument(help: "App names, worker ids, namespaces, \"all\", or ecosystem files.")
    var targets: [String]

    @Option(name: .long, help: "With an ecosystem file: only these of its apps (a,b).")
    var only: String?

    @Option(name: .long, help: "With an ecosystem file: merge its env_<name> sets (restart, reload).")
    var env: String?

    /// The ecosystem files among the targets, and the other targets as they are.
    func split() throws(CLIError) -> (files: [EcosystemTarget], others: [String]) {
        var files: [EcosystemTarget] = []
        var others: [String] = []
        let here = currentDirectory()
        for t in targets {
            let path = t.hasPrefix("/") ? t : AppSpecParser.normalize(here + "/" + t)
            if EcosystemFile.isEcosystem(t), pathExists(path) {
                files.append(try EcosystemTarget(path: path, display: t, only: only, envName: env))
            } else {
                others.append(t)
            }
        }
        if files.isEmpty, only != nil { throw CLIError("--only picks apps of an ecosystem file") }
        if files.isEmpty, let env { throw CLIError("--env \(env) picks the env_\(env) set of an ecosystem file") }
        return (files, others)
    }

    /// Targets with each ecosystem file replaced by those of its apps the daemon knows.
    func expanded(_ options: DaemonOptions) throws -> [String] {
        let (files, others) = try split()
        if files.isEmpty { return others }
        let known = Set((try options.client.send(ControlRequest(cmd: .list)).processes ?? []).map(\.name))
        var names = others
        for f in files {
            let mine = f.names.filter(known.contains)
            if mine.isEmpty { throw CLIError("no app of \(f.display) is known to pml (\(f.names.joined(separator: ", ")))") }
            names += mine
        }
        return names
    }
}

/// The client's environment as workers should inherit it (pml's own variables left out).
func clientEnvironment() -> [String: String] {
    processEnvironment().filter { !["PML_HOME", "PML_READY_FD", "PML_SUPERVISOR"].contains($0.key) }
}

/// Starts an ecosystem file's apps that are not running, and restarts or reloads (`action`) those
/// that are, with the file's current definition and environment (PM2's startOrRestart/startOrReload).
func deploy(_ eco: EcosystemTarget, action: ControlCommand, base: StartArguments, options: DaemonOptions,
            graceful: Bool = false, parallel: Int = 1) throws {
    eco.warnIgnored()
    let rows = try options.client.send(ControlRequest(cmd: .list)).processes ?? []
    let live = eco.names.filter { n in rows.contains { $0.name == n && $0.status != .stopped && $0.status != .errored } }
    let idle = eco.names.filter { !live.contains($0) }
    var messages: [String] = []
    if !idle.isEmpty {
        let r = try options.client.send(ControlRequest(cmd: .start, start: eco.startArguments(base, only: idle)))
        if let m = r.message { messages.append(m) }
    }
    if !live.isEmpty {
        let r = try options.client.send(ControlRequest(
            cmd: action, start: eco.startArguments(base, only: live), graceful: action == .reload ? graceful : nil,
            parallel: action == .reload ? parallel : nil, targets: live, updateEnv: true))
        if let m = r.message, !m.isEmpty { messages.append(m) }
    }
    let table = try options.client.send(ControlRequest(cmd: .list)).processes ?? []
    Output.print(messages.map { $0 + "\n" }.joined() + Output.table(table))
}

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop workers: the kill signal to each process group, SIGKILL after kill_timeout.")
    @OptionGroup var targets: TargetList
    @OptionGroup var options: DaemonOptions

    func run() throws { try options.sendPrintingTable(ControlRequest(cmd: .stop, targets: targets.expanded(options))) }
}

struct Restart: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop and start workers again (also brings back errored apps).",
        discussion: """
        pml restart api worker            several targets; a namespace names all its apps
        pml restart api --update-env      the workers get this shell's environment
        pml restart ecosystem.config.js --env production   the file's apps with its current definition
        """)
    @OptionGroup var targets: TargetList
    @Flag(name: [.customShort("a"), .customLong("update-env")], help: "Give the apps this shell's environment (else they keep the one they were started with).")
    var updateEnv = false
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let (files, others) = try targets.split()
        let base = StartArguments(clientEnv: clientEnvironment(), clientCwd: currentDirectory())
        for eco in files { try deploy(eco, action: .restart, base: base, options: options) }
        if !others.isEmpty || files.isEmpty {
            try options.sendPrintingTable(ControlRequest(cmd: .restart, start: updateEnv ? base : nil, targets: others,
                                                         updateEnv: updateEnv ? true : nil))
        }
    }
}

struct StartOrRestart: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "startOrRestart", abstract: "Start an ecosystem file's apps, restarting those already running (idempotent deploys).")
    @OptionGroup var app: AppSelection
    @OptionGroup var options: DaemonOptions

    func run() throws {
        guard let eco = try app.ecosystemTarget() else { throw CLIError("startOrRestart takes an ecosystem file (.config.js, .json, .yaml…)") }
        try deploy(eco, action: .restart, base: app.startArguments(), options: options)
    }
}

struct StartOrReload: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "startOrReload", abstract: "Start an ecosystem file's apps, reloading those already running with no downtime.")
    @OptionGroup var app: AppSelection
    @Flag(name: .long, help: "Send old workers the graceful message before signals.")
    var graceful = false
    @OptionGroup var options: DaemonOptions

    func run() throws {
        guard let eco = try app.ecosystemTarget() else { throw CLIError("startOrReload takes an ecosystem file (.config.js, .json, .yaml…)") }
        try deploy(eco, action: .reload, base: app.startArguments(), options: options, graceful: graceful)
    }
}

struct Reset: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Set the restart counters of workers back to 0.")
    @OptionGroup var targets: TargetList
    @OptionGroup var options: DaemonOptions

    func run() throws { try options.sendPrintingTable(ControlRequest(cmd: .reset, targets: targets.expanded(options))) }
}

struct IDCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "id", abstract: "Print the worker ids of an app, as PM2 does: [ 0, 1 ].")
    @Argument(help: "An app name.")
    var name: String
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let ids = (try options.client.send(ControlRequest(cmd: .list)).processes ?? []).filter { $0.name == name }.map { String($0.id) }
        Output.print(ids.isEmpty ? "[]\n" : "[ " + ids.joined(separator: ", ") + " ]\n")
    }
}

struct PIDCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pid", abstract: "Print the pids of an app's running workers (of every app with none), one a line.")
    @Argument(help: "An app name (default: all).")
    var name: String?
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let rows = try options.client.send(ControlRequest(cmd: .list)).processes ?? []
        if let name, !rows.contains(where: { $0.name == name }) { throw CLIError("no app named \"\(name)\"") }
        let pids = rows.filter { name == nil || $0.name == name }.compactMap(\.pid)
        Output.print(pids.map { "\($0)\n" }.joined())
    }
}

struct EnvCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "env", abstract: "Print the environment a worker was started with (KEY: value, sorted).")
    @Argument(help: "A worker id (see pml ls).")
    var id: String
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let env = try options.client.send(ControlRequest(cmd: .env, target: id)).environment ?? [:]
        Output.print(env.keys.sorted().map { "\($0): \(env[$0]!)\n" }.joined())
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replace every worker, one at a time, with no downtime (the app file is read again).",
        discussion: """
        For each worker: start its replacement, wait until it is ready, put it into rotation, take the
        old one out, then stop the old one. If a replacement does not get ready, the reload stops, the
        old workers keep serving, and pml exits non-zero saying why. The workers keep the environment
        they were started with unless --update-env. An ecosystem file: its apps are reloaded with its
        current definition, and those not running are started.
        """)
    @OptionGroup var targets: TargetList
    @Flag(name: [.customShort("a"), .customLong("update-env")], help: "Give the apps this shell's environment.")
    var updateEnv = false
    @Flag(name: .long, help: "Send old workers the graceful message (default \"shutdown\") and wait kill_timeout before signals.")
    var graceful = false
    @Option(name: .long, help: "Replace this many workers at a time.")
    var parallel = 1
    @OptionGroup var options: DaemonOptions

    func validate() throws {
        if parallel < 1 { throw ValidationError("--parallel must be 1 or more") }
    }

    func run() throws {
        let (files, others) = try targets.split()
        let base = StartArguments(clientEnv: clientEnvironment(), clientCwd: currentDirectory())
        for eco in files { try deploy(eco, action: .reload, base: base, options: options, graceful: graceful, parallel: parallel) }
        if !others.isEmpty || files.isEmpty {
            let r = try options.client.send(ControlRequest(cmd: .reload, start: updateEnv ? base : nil, graceful: graceful,
                                                           parallel: parallel, targets: others, updateEnv: updateEnv ? true : nil))
            Output.print((r.message ?? "reloaded") + "\n" + Output.table(r.processes ?? []))
        }
    }
}

struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop workers and forget them.", aliases: ["del"])
    @OptionGroup var targets: TargetList
    @OptionGroup var options: DaemonOptions

    func run() throws { try options.sendPrintingTable(ControlRequest(cmd: .delete, targets: targets.expanded(options))) }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "List workers: id, name, mode, pid, uptime, restarts, status, cpu, memory.",
        aliases: ["list", "status"])
    @OptionGroup var json: JSONFlag
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let rows = try options.client.send(ControlRequest(cmd: .list)).processes ?? []
        Output.print(json.json ? try Output.json(rows) : Output.table(rows))
    }
}

struct JList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "jlist", abstract: "The process list as JSON (pml ls --json).")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let rows = try options.client.send(ControlRequest(cmd: .list)).processes ?? []
        Output.print(try Output.json(rows))
    }
}

struct PrettyList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "prettylist", abstract: "The process list as indented JSON.")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let rows = try options.client.send(ControlRequest(cmd: .list)).processes ?? []
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        Output.print(String(decoding: try encoder.encode(rows), as: UTF8.self) + "\n")
    }
}

struct Describe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show one app in full: command, policy, logs, workers, last exits.", aliases: ["show", "info"])
    @Argument(help: "An app name or a worker id.")
    var target: String
    @OptionGroup var json: JSONFlag
    @OptionGroup var options: DaemonOptions

    func run() throws {
        guard let app = try options.client.send(ControlRequest(cmd: .describe, target: target)).app else {
            throw CLIError("the daemon sent no description")
        }
        Output.print(json.json ? try Output.json(app) : Output.description(app))
    }
}

struct Flush: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Empty the log files of an app (or of all apps).")
    @Argument(help: "An app name (default: all).")
    var name: String?
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let r = try options.client.send(ControlRequest(cmd: .flush, target: name))
        Output.print((r.message ?? "flushed") + "\n")
    }
}

struct ReloadLogs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reloadLogs",
        abstract: "Close and reopen every app's log files (after logrotate moved them; SIGUSR2 to the daemon does the same).",
        aliases: ["reload-logs"])
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let r = try options.client.send(ControlRequest(cmd: .reloadLogs), autostart: false)
        Output.print((r.message ?? "reopened the log files") + "\n")
    }
}

struct SignalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "signal", abstract: "Send a signal to workers' process groups.")
    @Argument(help: "A signal: SIGUSR2, USR2 or 12.")
    var signal: String
    @OptionGroup var target: TargetArgument
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let r = try options.client.send(ControlRequest(cmd: .signal, target: target.target, signal: signal))
        Output.print((r.message ?? "sent") + "\n")
    }
}

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send a message to workers over their IPC channel (process.on('message') in Node).",
        discussion: "The message is JSON if it parses as JSON, else a string: pml send web shutdown, pml send web '{\"type\":\"reload-config\"}'.")
    @OptionGroup var target: TargetArgument
    @Argument(help: "The message.")
    var message: String
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let value = (try? JSONDecoder().decode(ScriptValue.self, from: Data(message.utf8))) ?? .string(message)
        let r = try options.client.send(ControlRequest(cmd: .send, target: target.target, message: value))
        Output.print((r.message ?? "sent") + "\n")
    }
}

struct Scale: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Set the number of workers: N, +N or -N. Scaling down retires the newest gracefully.")
    @Argument(help: "The app.")
    var name: String
    // allUnrecognized: "-1" is a count here, not an option.
    @Argument(parsing: .allUnrecognized, help: "N, +N or -N.")
    var count: [String] = []
    @OptionGroup var options: DaemonOptions

    func validate() throws {
        if count.count != 1 { throw ValidationError("scale takes one count: N, +N or -N") }
    }

    func run() throws {
        try options.sendPrintingTable(ControlRequest(cmd: .scale, target: name, count: count[0]))
    }
}

struct Plugins: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List loaded plugins and the hooks each defines (and any that failed to load); \"reload\" loads them again.",
        discussion: "Plugins are the *.lua files in $PML_HOME/plugins, in the folders named by PML_PLUGINS (when the daemon started), and in plugins/ beside started app files.")
    @Argument(help: "\"reload\" to load every plugin again without touching apps.")
    var action: String?
    @OptionGroup var json: JSONFlag
    @OptionGroup var options: DaemonOptions

    func validate() throws {
        if let action, action != "reload" { throw ValidationError("unknown action \"\(action)\": use pml plugins or pml plugins reload") }
    }

    func run() throws {
        let r = try options.client.send(ControlRequest(cmd: .plugins, target: action))
        let list = r.plugins ?? []
        if json.json { return Output.print(try Output.json(list)) }
        if let m = r.message { Output.print(m + "\n") }
        if list.isEmpty { return Output.print("no plugins (drop *.lua files into \(options.paths.plugins))\n") }
        var lines = [["name", "hooks", "file"]]
        for p in list {
            lines.append([p.name ?? "(failed)", p.error ?? p.hooks.joined(separator: ", "), p.path])
        }
        Output.print(Output.align(lines))
    }
}

struct Ping: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start the daemon if needed and show that it answers.")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        guard let d = try options.client.send(ControlRequest(cmd: .ping)).daemon else { throw CLIError("no daemon info") }
        Output.print("pong: pml daemon \(d.version), pid \(d.pid), up \(Output.duration(d.uptimeMs)), home \(d.home)\n")
    }
}

struct Kill: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop every app and the daemon.")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let client = options.client
        guard client.daemonIsRunning() else {
            Output.print("no daemon running\n")
            return
        }
        let pids = [options.paths.pidFile, options.paths.keeperPidFile].compactMap { file in
            Int32(String(decoding: readFile(file) ?? [], as: UTF8.self).split(separator: "\n").first ?? "")
        }
        let r = try client.send(ControlRequest(cmd: .kill), autostart: false)
        // The daemon answers before it exits, and its keeper follows it: wait for both to be gone
        // so "kill" means gone.
        var waited = 0
        while pids.contains(where: processIsAlive), waited < 10_000 {
            usleep(20_000)
            waited += 20
        }
        Output.print((r.message ?? "daemon stopped") + "\n")
    }
}

struct SentinelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon-sentinel", abstract: "Clean up after a daemon that died (started by the daemon itself).",
        shouldDisplay: false)
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let env = processEnvironment()
        guard let fd = env["PML_SENTINEL_FD"].flatMap({ Int32($0) }), let daemon = env["PML_SENTINEL_DAEMON"].flatMap({ Int32($0) }) else {
            throw CLIError("daemon-sentinel is started by the daemon, not by hand")
        }
        throw ExitCode(Daemon.runSentinel(home: options.paths.home, daemonPID: daemon, fd: fd))
    }
}

struct DaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon", abstract: "Run the daemon in the foreground (started for you by other commands).",
        discussion: "This process is the keeper: it runs the daemon proper as its child and starts a successor at once if it dies.",
        shouldDisplay: false)
    @OptionGroup var options: DaemonOptions

    @Flag(name: .long, help: "Start the apps pml save saved (for the unit pml startup writes).")
    var resurrect = false

    func run() throws {
        let readyFD = processEnvironment()["PML_READY_FD"].flatMap { Int32($0) } ?? -1
        unsetenv("PML_READY_FD")
        let status = Keeper.run(paths: options.paths, readyFD: readyFD, resurrect: resurrect)
        if status != 0 { throw ExitCode(status) }
    }
}

struct SupervisorDaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon-supervisor", abstract: "The daemon proper (started by pml daemon, its keeper).",
        shouldDisplay: false)
    @OptionGroup var options: DaemonOptions

    @Flag(name: .long, help: "Start the apps pml save saved.")
    var resurrect = false

    func run() throws {
        let env = processEnvironment()
        guard env["PML_KEEPER_FD"] != nil else { throw CLIError("daemon-supervisor is started by pml daemon, not by hand") }
        let readyFD = env["PML_READY_FD"].flatMap { Int32($0) } ?? -1
        unsetenv("PML_READY_FD")
        let status = Daemon.run(paths: options.paths, readyFD: readyFD, resurrect: resurrect)
        if status != 0 { throw ExitCode(status) }
    }
}

struct Update: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replace the running daemon by the installed pml binary; apps keep running and serving.")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let client = options.client
        guard client.daemonIsRunning() else {
            Output.print("no daemon running (the next command starts the installed one)\n")
            return
        }
        let r = try client.send(ControlRequest(cmd: .update), autostart: false)
        guard let old = r.daemon?.pid else { throw CLIError("the daemon did not say who it is") }
        // The keeper starts the successor as soon as the old daemon exits; the control socket is
        // the same one (the keeper holds it), so this waits in its backlog until the successor answers.
        let deadline = monotonicMs() + 20_000
        var info: DaemonInfo?
        while monotonicMs() < deadline {
            if let d = try? client.send(ControlRequest(cmd: .ping), autostart: false).daemon, d.pid != old {
                info = d
                break
            }
            usleep(50_000)
        }
        guard let info else { throw CLIError("the daemon (pid \(old)) handed over, but no successor answered within 20 s (see \(options.paths.daemonLog))") }
        let rows = try client.send(ControlRequest(cmd: .list), autostart: false).processes ?? []
        let running = rows.filter { $0.pid != nil }.count
        Output.print("updated: daemon pid \(old) → \(info.pid) (pml \(info.version)); \(running) worker\(running == 1 ? "" : "s") kept running\n")
    }
}
