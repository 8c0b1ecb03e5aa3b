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
    /// Run as this user and groups (the caller must be root); nil: as the caller.
    public var account: Account?

    public init(argv: [String], env: [String: String], cwd: String? = nil, fds: [(source: Int32, target: Int32)] = [],
                newSession: Bool = true, parentDeathSignal: Int32 = 0, setListenPID: Bool = false, account: Account? = nil) {
        self.account = account
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
    let groups = request.account?.groups ?? []
    var pid: Int32 = 0
    let err = cArgv.withUnsafeBufferPointer { argvBuf in
        cEnv.withUnsafeBufferPointer { envBuf in
            sources.withUnsafeBufferPointer { srcBuf in
                targets.withUnsafeBufferPointer { dstBuf in
                  groups.withUnsafeBufferPointer { groupBuf in
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
                        listen_pid_index: listenIndex,
                        set_credentials: request.account == nil ? 0 : 1,
                        uid: request.account?.uid ?? 0,
                        gid: request.account?.gid ?? 0,
                        groups: groupBuf.baseAddress,
                        group_count: Int32(groups.count))
                    return pml_spawn(&attr, &pid)
                  }
                }
            }
        }
    }
    if err != 0 { throw SpawnError("cannot start \(program): \(String(cString: strerror(err)))") }
    return pid
}

/// Who a worker runs as (`uid` / `gid`), resolved before fork: name lookups go through NSS,
/// which the child between fork and exec must not call.
public struct Account: Sendable, Equatable {
    public var uid: uid_t
    public var gid: gid_t
    /// Supplementary groups, as `initgroups` would set them for the user.
    public var groups: [gid_t]
    /// From the password database when the user has an entry: what `su` puts in the environment.
    public var name: String?
    public var home: String?
    public var shell: String?

    /// Resolves a user and/or group, each a name or a number. With a user, the group defaults to
    /// the user's own; with only a group, the user stays the caller.
    public static func resolve(user: String?, group: String?) throws(SpawnError) -> Account {
        var account = Account(uid: geteuid(), gid: getegid(), groups: [])
        var primary: gid_t?
        if let user {
            if let entry = passwordEntry(user) {
                (account.uid, primary, account.name, account.home, account.shell) = (entry.uid, entry.gid, entry.name, entry.home, entry.shell)
            } else if let n = uid_t(user) {
                account.uid = n
            } else {
                throw SpawnError("no user named \"\(user)\"")
            }
        }
        if let group {
            if let n = gid_t(group) {
                account.gid = n
            } else if let g = groupID(group) {
                account.gid = g
            } else {
                throw SpawnError("no group named \"\(group)\"")
            }
        } else if let primary {
            account.gid = primary
        } else if user != nil {
            throw SpawnError("user \(user!) has no entry in the password database: give gid too")
        }
        account.groups = [account.gid]
        if let name = account.name, group == nil {
            var list = [gid_t](repeating: 0, count: 256)
            let n = pml_group_list(name, account.gid, &list, Int32(list.count))
            if n > 0 { account.groups = Array(list.prefix(Int(n))) }
        }
        return account
    }

    private static func passwordEntry(_ user: String) -> (uid: uid_t, gid: gid_t, name: String, home: String, shell: String)? {
        var pw = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16384)
        let rc: Int32
        if let n = uid_t(user) { rc = getpwuid_r(n, &pw, &buffer, buffer.count, &result) } else { rc = getpwnam_r(user, &pw, &buffer, buffer.count, &result) }
        guard rc == 0, result != nil else { return nil }
        return (pw.pw_uid, pw.pw_gid, String(cString: pw.pw_name), String(cString: pw.pw_dir), String(cString: pw.pw_shell))
    }

    private static func groupID(_ name: String) -> gid_t? {
        var gr = group()
        var result: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 65536)
        guard getgrnam_r(name, &gr, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return gr.gr_gid
    }

    /// HOME, USER, LOGNAME and SHELL as `su` sets them (when the user has an entry).
    public func apply(to env: inout [String: String]) {
        guard let name else { return }
        env["USER"] = name
        env["LOGNAME"] = name
        env["HOME"] = home
        env["SHELL"] = shell
    }
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

/// An eventfd (CLOEXEC, non-blocking): `signalEventFD` from any thread wakes the loop that watches it.
public func makeEventFD() throws(SystemError) -> Int32 {
    try sys("eventfd") { pml_eventfd() }
}

/// Wakes whoever watches the eventfd; never blocks.
public func signalEventFD(_ fd: Int32) { pml_eventfd_signal(fd) }

/// Resets the eventfd's counter (call before taking the work it announced).
public func drainEventFD(_ fd: Int32) { pml_eventfd_drain(fd) }

/// Gives the calling thread the nice value `nice` (higher: less CPU when the machine is busy).
public func setThisThreadNice(_ nice: Int32) throws(SystemError) {
    try sys("setpriority") { pml_nice_this_thread(nice) }
}

/// The calling thread's kernel id: what `/proc/<pid>/task` and a cgroup's `tasks` file name.
public func thisThreadID() -> Int32 { pml_this_thread_id() }

/// Makes thread `tid` of this process SCHED_IDLE: it runs only when nothing else in its CPU group wants to.
public func setThreadIdle(_ tid: Int32) throws(SystemError) {
    try sys("sched_setscheduler") { pml_idle_thread(tid) }
}

/// CPU time thread `tid` of this process has used, in nanoseconds; nil once it has exited.
public func threadCPUNanoseconds(_ tid: Int32) -> UInt64? {
    guard let bytes = readFile("/proc/self/task/\(tid)/schedstat", limit: 256),
          let first = bytes.split(separator: UInt8(ascii: " ")).first else { return nil }
    return UInt64(String(decoding: first, as: UTF8.self))
}

/// CPU time the calling thread has used, in nanoseconds (the clock `threadCPUNanoseconds` reads for others).
public func thisThreadCPUNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Names the calling thread (the first 15 bytes), as `ps -L`, top and `/proc/<pid>/task/<tid>/comm` show it.
public func setThisThreadName(_ name: String) {
    _ = pml_name_this_thread(name)
}
