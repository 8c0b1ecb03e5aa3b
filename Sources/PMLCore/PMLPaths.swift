/// The files under `$PML_HOME` (PRODUCT.md §7), shared by the daemon and the CLI.
public struct PMLPaths: Sendable, Equatable {
    public var home: String

    public init(home: String) { self.home = home }

    /// `$PML_HOME`, else `$HOME/.pml`.
    public static func fromEnvironment(_ env: [String: String]) -> PMLPaths {
        if let h = env["PML_HOME"], !h.isEmpty { return PMLPaths(home: h) }
        return PMLPaths(home: (env["HOME"] ?? "/tmp") + "/.pml")
    }

    public var socket: String { home + "/pml.sock" }
    public var pidFile: String { home + "/daemon.pid" }
    /// The keeper's pid (`pml daemon`, which outlives daemons), locked while it runs.
    public var keeperPidFile: String { home + "/keeper.pid" }
    public var daemonLog: String { home + "/daemon.log" }
    public var logs: String { home + "/logs" }
    public var plugins: String { home + "/plugins" }
    public var dump: String { home + "/dump.json" }
    public func outLog(_ app: String) -> String { "\(logs)/\(app)-out.log" }
    public func errLog(_ app: String) -> String { "\(logs)/\(app)-err.log" }
}
