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

/// Where `pml startup` puts the systemd unit: a system unit for root, a user unit otherwise.
struct StartupUnit {
    let paths: PMLPaths
    let binary: String
    let user: String
    let isRoot: Bool
    let home: String

    init(paths: PMLPaths) throws(CLIError) {
        guard let exe = realPath("/proc/self/exe") else { throw CLIError("cannot find the pml binary") }
        let env = processEnvironment()
        self.paths = paths
        binary = exe
        isRoot = getuid() == 0
        user = env["USER"] ?? (isRoot ? "root" : String(getuid()))
        home = env["HOME"] ?? "/root"
    }

    var name: String { isRoot ? "pml-\(user).service" : "pml.service" }
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
        Environment=PML_HOME=\(paths.home)
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
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let unit = try StartupUnit(paths: options.paths)
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
        Output.print("wrote and enabled \(unit.path): pml starts at boot with the apps of \(options.paths.dump)\n")
    }
}

struct Unstartup: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Disable and remove the unit pml startup installed.")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        let unit = try StartupUnit(paths: options.paths)
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
