import CSystemShim
import Glibc

/// Everything needed to start one child process.
public struct SpawnRequest: Sendable {
    public var argv: [String]
    public var env: [String: String]
    /// nil: inherit the parent's working directory.
    public var cwd: String?
    /// Parent fds that become the given child fds; every other fd is closed in the child.
    public var fds: [(source: Int32, target: Int32)]
    /// setsid(): the child leads its own session and process group (so groups can be signalled).
    public var newSession: Bool
    /// Signal the child receives when the spawning thread dies (0: none).
    public var parentDeathSignal: Int32
    /// Sets `LISTEN_PID` to the child's own pid, as systemd socket activation requires.
    public var setListenPID: Bool

    public init(argv: [String], env: [String: String], cwd: String? = nil, fds: [(source: Int32, target: Int32)] = [],
                newSession: Bool = true, parentDeathSignal: Int32 = 0, setListenPID: Bool = false) {
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.fds = fds
        self.newSession = newSession
        self.parentDeathSignal = parentDeathSignal
        self.setListenPID = setListenPID
    }
}

/// A child that could not be started.
public struct SpawnError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Finds `program` the way a shell would: a path with a slash is taken as is (relative to `cwd`),
/// a bare name is looked up in `path` (the child's PATH).
public func resolveExecutable(_ program: String, path: String?, cwd: String?) -> String? {
    if program.contains("/") {
        let full = program.hasPrefix("/") ? program : (cwd ?? currentDirectory()) + "/" + program
        return access(full, X_OK) == 0 ? full : nil
    }
    for dir in (path ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":") {
        let candidate = dir.hasPrefix("/") ? "\(dir)/\(program)" : "\(cwd ?? currentDirectory())/\(dir)/\(program)"
        var st = stat()
        if stat(candidate, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 {
            return candidate
        }
    }
    return nil
}

/// Starts a child with fork+exec (the child makes async-signal-safe calls only), a cleared
/// signal mask and default signal dispositions. Exec failures are reported here, not later.
public func spawnProcess(_ request: SpawnRequest) throws(SpawnError) -> Int32 {
    guard let program = request.argv.first else { throw SpawnError("empty command") }
    if let cwd = request.cwd, !pathExists(cwd) { throw SpawnError("working directory does not exist: \(cwd)") }
    guard let path = resolveExecutable(program, path: request.env["PATH"], cwd: request.cwd) else {
        throw SpawnError(program.contains("/") ? "not an executable file: \(program)" : "command not found: \(program)")
    }

    var envStrings = request.env.filter { $0.key != "LISTEN_PID" }.map { "\($0.key)=\($0.value)" }.sorted()
    var listenIndex: Int32 = -1
    if request.setListenPID {
        listenIndex = Int32(envStrings.count)
        envStrings.append("LISTEN_PID=" + String(repeating: "0", count: 24)) // room for any pid
    }
    let cArgv = request.argv.map { strdup($0) } + [nil]
    let cEnv = envStrings.map { strdup($0) } + [nil]
    let cPath = strdup(path)
    let cCwd = request.cwd.map { strdup($0) } ?? nil
    defer {
        cArgv.forEach { free($0) }
        cEnv.forEach { free($0) }
        free(cPath)
        free(cCwd)
    }
    let sources = request.fds.map { $0.source }
    let targets = request.fds.map { $0.target }
    var pid: Int32 = 0
    let err = cArgv.withUnsafeBufferPointer { argvBuf in
        cEnv.withUnsafeBufferPointer { envBuf in
            sources.withUnsafeBufferPointer { srcBuf in
                targets.withUnsafeBufferPointer { dstBuf in
                    var attr = pml_spawn_attr(
                        path: cPath,
                        argv: argvBuf.baseAddress,
                        envp: UnsafeMutablePointer(mutating: envBuf.baseAddress),
                        cwd: cCwd,
                        fd_sources: srcBuf.baseAddress,
                        fd_targets: dstBuf.baseAddress,
                        fd_count: Int32(request.fds.count),
                        new_session: request.newSession ? 1 : 0,
                        parent_death_signal: request.parentDeathSignal,
                        listen_pid_index: listenIndex)
                    return pml_spawn(&attr, &pid)
                }
            }
        }
    }
    if err != 0 { throw SpawnError("cannot start \(program): \(String(cString: strerror(err)))") }
    return pid
}

/// A pipe: (read end, write end), both CLOEXEC.
public func makePipe(nonblockingRead: Bool) throws(SystemError) -> (read: Int32, write: Int32) {
    var fds: [Int32] = [0, 0]
    try sys("pipe2") { pml_pipe(&fds, 0) }
    if nonblockingRead { _ = pml_set_nonblocking(fds[0], 1) }
    return (fds[0], fds[1])
}

/// A connected pair of unix stream sockets, both CLOEXEC.
public func makeSocketPair() throws(SystemError) -> (Int32, Int32) {
    var fds: [Int32] = [0, 0]
    try sys("socketpair") { pml_socketpair_stream(&fds) }
    return (fds[0], fds[1])
}

/// Sets or clears O_NONBLOCK.
public func setNonBlocking(_ fd: Int32, _ on: Bool = true) {
    _ = pml_set_nonblocking(fd, on ? 1 : 0)
}
