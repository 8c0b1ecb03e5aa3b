import ArgumentParser
import Glibc
import PMLCore
import PMLPosix

struct Save: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Save the running apps to $PML_HOME/dump.json, for pml resurrect and boot.")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let r = try options.client.send(ControlRequest(cmd: .save))
        Output.print((r.message ?? "saved") + "\n")
    }
}

struct Resurrect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start the apps pml save saved (those not running already).")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let r = try options.client.send(ControlRequest(cmd: .resurrect))
        Output.print((r.message ?? "resurrected") + "\n" + (r.processes.map(Output.table) ?? ""))
    }
}

/// `pml startup` / `unstartup` options, as PM2 spells them.
struct StartupOptions: ParsableArguments {
    @Option(name: [.customShort("u"), .customLong("user")], help: "The user the apps run as (root only, for another user); its PML_HOME is <home>/.pml.")
    var user: String?

    @Option(name: .customLong("hp"), help: "That user's home folder (default: from the user database, or $HOME).")
    var home: String?

    @Option(name: .customLong("service-name"), help: "The unit's name (default: pml-<user> as root, pml otherwise).")
    var serviceName: String?
}

/// Where `pml startup` puts the systemd unit: a system unit for root, a user unit otherwise.
struct StartupUnit {
    let pmlHome: String
    let binary: String
    let user: String
    let isRoot: Bool
    let home: String
    let name: String

    init(paths: PMLPaths, options: StartupOptions) throws(CLIError) {
        guard let exe = realPath("/proc/self/exe") else { throw CLIError("cannot find the pml binary") }
        let env = processEnvironment()
        binary = exe
        isRoot = getuid() == 0
        let me = getpwuid(getuid()).flatMap { String(validatingCString: $0.pointee.pw_name) }
        user = options.user ?? env["USER"] ?? me ?? (isRoot ? "root" : String(getuid()))
        if let other = options.user, other != me, !isRoot {
            throw CLIError("only root can set up pml for another user (-u \(other)); run it as root, or without -u")
        }
        if let hp = options.home {
            guard hp.hasPrefix("/") else { throw CLIError("--hp takes an absolute folder, got \"\(hp)\"") }
            home = AppSpecParser.normalize(hp)
        } else if let other = options.user {
            guard let pw = getpwnam(other) else { throw CLIError("no user named \"\(other)\"") }
            home = String(cString: pw.pointee.pw_dir)
        } else {
            home = env["HOME"] ?? "/root"
        }
        // Another user's (or home's) apps live in their own PML_HOME, as `pml` run by them would use.
        pmlHome = options.user != nil || options.home != nil ? home + "/.pml" : paths.home
        var unitName = options.serviceName ?? (isRoot ? "pml-\(user)" : "pml")
        if !unitName.hasSuffix(".service") { unitName += ".service" }
        let allowed = unitName.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "-_.@:".unicodeScalars.contains($0)
        }
        guard allowed, unitName.count <= 255, !unitName.hasPrefix(".") else {
            throw CLIError("--service-name takes letters, digits and - _ . @ :, got \"\(options.serviceName ?? "")\"")
        }
        name = unitName
    }

    var path: String { isRoot ? "/etc/systemd/system/\(name)" : "\(home)/.config/systemd/user/\(name)" }
    var systemctl: [String] { isRoot ? ["systemctl"] : ["systemctl", "--user"] }

    var text: String {
        """
        # Written by pml startup: resurrects the apps saved with `pml save` at boot.
        [Unit]
        Description=pml process manager (\(user))
        After=network-online.target
        Wants=network-online.target

        [Service]
        Type=notify
        NotifyAccess=all
        Environment=PML_HOME=\(pmlHome)
        ExecStart=\(binary) daemon --resurrect
        ExecStop=\(binary) kill
        Restart=on-failure
        \(isRoot ? "User=\(user)\n" : "")
        [Install]
        WantedBy=\(isRoot ? "multi-user.target" : "default.target")

        """
    }

    /// systemd is managing this machine (not just installed).
    static var systemdIsRunning: Bool { pathExists("/run/systemd/system") }
}

struct Startup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print (or --install) a systemd unit that starts pml and resurrects the saved apps at boot.",
        discussion: "Run pml save first: the unit starts what dump.json holds.")
    @Flag(name: .long, help: "Write the unit and enable it (where systemd runs).")
    var install = false
    @Argument(help: "PM2's platform word (systemd is the one pml writes).")
    var platform: String?
    @OptionGroup var startup: StartupOptions
    @OptionGroup var options: DaemonOptions

    func validate() throws {
        if let platform, platform != "systemd" { throw ValidationError("pml writes systemd units only, not \"\(platform)\"") }
    }

    func run() throws {
        let unit = try StartupUnit(paths: options.paths, options: startup)
        guard install else {
            Output.print("# \(unit.path)\n" + unit.text)
            return
        }
        let folder = String(unit.path[..<unit.path.lastIndex(of: "/")!])
        do {
            try makeDirectories(folder, mode: 0o755)
            let fd = open(unit.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw SystemError("open \(unit.path)", errno: errno) }
            defer { closeFD(fd) }
            try writeAll(fd, unit.text)
        } catch {
            throw CLIError("cannot write \(unit.path): \(error)")
        }
        guard StartupUnit.systemdIsRunning else {
            Output.print("wrote \(unit.path); systemd is not running here, so it is not enabled (enable it with: \(unit.systemctl.joined(separator: " ")) enable \(unit.name))\n")
            return
        }
        for args in [["daemon-reload"], ["enable", unit.name]] {
            let status = try runCommand(unit.systemctl + args)
            if status != 0 { throw CLIError("\((unit.systemctl + args).joined(separator: " ")) failed with status \(status)") }
        }
        Output.print("wrote and enabled \(unit.path): pml starts at boot with the apps of \(unit.pmlHome)/dump.json\n")
    }
}

struct Unstartup: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Disable and remove the unit pml startup installed.")
    @OptionGroup var startup: StartupOptions
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let unit = try StartupUnit(paths: options.paths, options: startup)
        guard pathExists(unit.path) else { throw CLIError("no unit at \(unit.path): nothing to remove") }
        if StartupUnit.systemdIsRunning { _ = try runCommand(unit.systemctl + ["disable", unit.name]) }
        guard unlink(unit.path) == 0 else { throw CLIError("cannot remove \(unit.path): \(String(cString: strerror(errno)))") }
        if StartupUnit.systemdIsRunning { _ = try runCommand(unit.systemctl + ["daemon-reload"]) }
        Output.print("removed \(unit.path)\n")
    }
}

/// Runs a command with this process's stdio and waits for it; returns its exit status.
func runCommand(_ argv: [String]) throws(CLIError) -> Int32 {
    let pid: Int32
    do {
        pid = try spawnProcess(SpawnRequest(argv: argv, env: processEnvironment(), fds: [(0, 0), (1, 1), (2, 2)], newSession: false))
    } catch {
        throw CLIError("\(error)")
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    // The W* macros do not import: low 7 bits are the killing signal, the next byte the exit code.
    return status & 0x7f != 0 ? 128 + (status & 0x7f) : (status >> 8) & 0xff
}
