import ArgumentParser
import Glibc
import PMLCore
import PMLPosix

/// `pml dashboard`: the URL of the live web dashboard the daemon serves on loopback.
struct DashboardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dashboard",
        abstract: "Print the URL (with its token) of the live web dashboard the daemon serves on loopback.",
        discussion: """
        The address is dashboard_listen in $PML_HOME/config.json, or a free loopback port chosen on first
        use and remembered there; the token is in $PML_HOME/dashboard.token (0600). It only ever listens
        on loopback: from another machine, use an SSH tunnel (ssh -L 9615:127.0.0.1:<port> host) and open
        the same URL with the tunnel's port.
        """)

    @Flag(name: .long, help: "Also open it in a browser (xdg-open or sensible-browser), when there is one.")
    var open = false

    @OptionGroup var options: DaemonOptions

    func run() throws {
        guard let url = try options.client.send(ControlRequest(cmd: .dashboard)).message else {
            throw CLIError("the daemon sent no URL")
        }
        Output.print(url + "\n")
        guard open else { return }
        let env = processEnvironment()
        guard let opener = ["xdg-open", "sensible-browser"].first(where: { resolveExecutable($0, path: env["PATH"], cwd: nil) != nil }) else {
            try? writeAll(2, "pml: no browser found (xdg-open, sensible-browser): open the URL above yourself\n")
            return
        }
        let devNull = Glibc.open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { closeFD(devNull) }
        do {
            // Its own session: the browser outlives this command and is not tied to the terminal.
            _ = try spawnProcess(SpawnRequest(argv: [opener, url], env: env, fds: [(devNull, 0), (devNull, 1), (devNull, 2)]))
            try? writeAll(2, "pml: opened with \(opener)\n")
        } catch {
            throw CLIError("cannot start \(opener): \(error)")
        }
    }
}
