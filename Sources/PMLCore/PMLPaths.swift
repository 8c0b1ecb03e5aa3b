/// The files under `$PML_HOME` (PRODUCT.md §7), shared by the daemon and the CLI.
public struct PMLPaths: Sendable, Equatable {
    public var home: String

    public init(home: String) { self.home = home }

    /// `$PML_HOME`, else `$HOME/.pml`, else `.pml` in `accountHome` (the user's passwd entry):
    /// never a shared folder such as /tmp/.pml, where another user could plant plugins. An empty
    /// home when none is known, which `homeProblem` refuses.
    public static func fromEnvironment(_ env: [String: String], accountHome: @autoclosure () -> String?) -> PMLPaths {
        if let h = env["PML_HOME"], !h.isEmpty { return PMLPaths(home: h) }
        if let h = env["HOME"], !h.isEmpty { return PMLPaths(home: h + "/.pml") }
        if let h = accountHome(), !h.isEmpty { return PMLPaths(home: h + "/.pml") }
        return PMLPaths(home: "")
    }

    /// Why pml must not use `home`, given what stat says of it (nil if it does not exist yet: pml
    /// creates it 0700). Its socket, plugins and dump decide what runs as this user, so it must
    /// be this user's own folder that nobody else can write to.
    public static func homeProblem(_ home: String, exists: Bool, isDirectory: Bool, owner: UInt32, mode: UInt32,
                                   user: UInt32) -> String? {
        if home.isEmpty { return "no home folder is known for this user: set PML_HOME (or HOME)" }
        guard exists else { return nil }
        if !isDirectory { return "\(home) (PML_HOME) is not a folder" }
        if owner != user { return "\(home) (PML_HOME) belongs to another user (uid \(owner)); use a folder of your own" }
        if mode & 0o022 != 0 {
            return "\(home) (PML_HOME) is writable by other users (mode \(String(mode & 0o777, radix: 8))); chmod 700 it"
        }
        return nil
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
