import FoundationEssentials
import Glibc
import PMLCore
import PMLDaemon
import PMLPosix

/// A failure the CLI reports as one line, `pml: <message>`, with exit status 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Talks to the daemon over its control socket, starting the daemon first if none answers.
struct ControlClient {
    let paths: PMLPaths

    /// Sends one request and returns the daemon's response; a failed response becomes a `CLIError`.
    func send(_ request: ControlRequest, autostart: Bool = true) throws(CLIError) -> ControlResponse {
        let fd = try connect(autostart: autostart)
        defer { closeFD(fd) }
        guard let data = try? JSONEncoder().encode(request) else { throw CLIError("cannot encode request") }
        do {
            try writeAll(fd, String(decoding: data, as: UTF8.self) + "\n")
        } catch {
            throw CLIError("cannot talk to the daemon: \(error)")
        }
        var input: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            input.append(contentsOf: chunk[0..<n])
            if input.last == UInt8(ascii: "\n") { break }
        }
        guard !input.isEmpty else { throw CLIError("the daemon closed the connection without answering (see \(paths.daemonLog))") }
        guard let response = try? JSONDecoder().decode(ControlResponse.self, from: Data(input)) else {
            throw CLIError("the daemon sent an answer pml cannot read")
        }
        if let notice = response.notice { try? writeAll(2, "pml: \(notice)\n") }
        if !response.ok { throw CLIError(response.error ?? "the daemon refused without saying why") }
        return response
    }

    /// Whether a daemon answers on the socket now.
    func daemonIsRunning() -> Bool {
        if Daemon.homeProblem(paths) != nil { return false }
        guard let fd = try? UnixSocket.connect(path: paths.socket) else { return false }
        closeFD(fd)
        return true
    }

    private func connect(autostart: Bool) throws(CLIError) -> Int32 {
        // Before the socket: one in a folder another user controls could be anybody's daemon.
        if let problem = Daemon.homeProblem(paths) { throw CLIError(problem) }
        if let fd = try? UnixSocket.connect(path: paths.socket) { return fd }
        // A keeper is running (its daemon is starting): wait for it rather than start another.
        let deadline = monotonicMs() + 10_000
        while keeperIsRunning(), monotonicMs() < deadline {
            usleep(20_000)
            if let fd = try? UnixSocket.connect(path: paths.socket) { return fd }
        }
        guard autostart else { throw CLIError("no daemon is running for \(paths.home)") }
        try startDaemon()
        do {
            return try UnixSocket.connect(path: paths.socket)
        } catch {
            throw CLIError("the daemon started but its socket does not answer: \(error)")
        }
    }

    /// Starts `pml daemon` in its own session and waits until it says it is ready on a pipe —
    /// or until the pipe closes, which means it failed (its reason is the last line of daemon.log).
    private func startDaemon() throws(CLIError) {
        do {
            try makeDirectories(paths.home, mode: 0o700)
        } catch {
            throw CLIError("cannot create \(paths.home): \(error)")
        }
        guard let exe = realPath("/proc/self/exe") else { throw CLIError("cannot find the pml binary") }
        let logFD: Int32
        let ready: (read: Int32, write: Int32)
        do {
            logFD = try openAppend(paths.daemonLog, privateMode: true)
            ready = try makePipe(nonblockingRead: false)
        } catch {
            throw CLIError("cannot start the daemon: \(error)")
        }
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer {
            closeFD(logFD)
            closeFD(devNull)
            closeFD(ready.read)
        }
        var env = processEnvironment()
        env["PML_HOME"] = paths.home
        env["PML_READY_FD"] = "3"
        env["PML_SUPERVISOR"] = nil // pml run from inside a worker: the new daemon is not that worker
        env["NOTIFY_SOCKET"] = nil
        let logSize = fileSize(paths.daemonLog)
        do {
            _ = try spawnProcess(SpawnRequest(argv: [exe, "daemon"], env: env, cwd: "/",
                                              fds: [(devNull, 0), (logFD, 1), (logFD, 2), (ready.write, 3)],
                                              newSession: true))
        } catch {
            closeFD(ready.write)
            throw CLIError("cannot start the daemon: \(error)")
        }
        closeFD(ready.write)
        // "ready\n", maybe followed by a sentence (it took up a dead daemon's apps), then EOF.
        var said: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(ready.read, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            said.append(contentsOf: chunk[0..<n])
        }
        let lines = String(decoding: said, as: UTF8.self).split(separator: "\n")
        if lines.first == "ready" {
            for line in lines.dropFirst() { try? writeAll(2, "pml: \(line)\n") }
            return
        }
        // Lost a race with another client's daemon: that one serves us.
        if daemonIsRunning() { return }
        let reason = lastLine(of: paths.daemonLog, after: logSize) ?? "no reason given"
        throw CLIError("the daemon failed to start: \(reason)")
    }

    /// Whether a keeper holds its lock on keeper.pid.
    private func keeperIsRunning() -> Bool {
        let fd = open(paths.keeperPidFile, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { closeFD(fd) }
        return flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK
    }

    private func fileSize(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : 0
    }

    private func lastLine(of path: String, after offset: Int) -> String? {
        guard let bytes = readFile(path), bytes.count > offset else { return nil }
        let text = String(decoding: bytes[offset...], as: UTF8.self)
        return text.split(separator: "\n").last.map { line in
            line.hasPrefix("pml daemon: ") ? String(line.dropFirst("pml daemon: ".count)) : String(line)
        }
    }
}
