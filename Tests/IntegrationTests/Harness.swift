// The harness the integration tests share: it finds the `pml` binary, gives every test its own
// short-lived PML_HOME, runs `pml` as a user would (a subprocess with a timeout), decodes the
// JSON the contract promises, and polls for conditions with a deadline.
//
// Every test runs inside `withSandbox`, which always ends with `pml kill`, then kills anything
// still carrying the sandbox's PML_HOME in its environment, then removes the temp folder.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Errors and results

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One finished `pml` invocation.
struct RunResult: CustomStringConvertible, Sendable {
    let args: [String]
    let status: Int32
    let stdout: String
    let stderr: String
    let timedOut: Bool

    var ok: Bool { status == 0 && !timedOut }

    var description: String {
        """
        $ pml \(args.joined(separator: " "))
          exit: \(status)\(timedOut ? " (TIMED OUT, killed)" : "")
          stdout: \(stdout.isEmpty ? "(empty)" : stdout.trimmingCharacters(in: .newlines))
          stderr: \(stderr.isEmpty ? "(empty)" : stderr.trimmingCharacters(in: .newlines))
        """
    }

    /// The contract for failures: non-zero exit, exactly one line on stderr, starting with "pml: ".
    func expectCleanFailure(mentioning needles: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(!timedOut, "command hung:\n\(self)", sourceLocation: sourceLocation)
        #expect(status != 0, "expected a non-zero exit:\n\(self)", sourceLocation: sourceLocation)
        let lines = stderr.split(separator: "\n", omittingEmptySubsequences: true)
        #expect(lines.count == 1, "expected exactly one line on stderr:\n\(self)", sourceLocation: sourceLocation)
        #expect(stderr.hasPrefix("pml: "), "stderr must start with \"pml: \":\n\(self)", sourceLocation: sourceLocation)
        for needle in needles {
            #expect(stderr.contains(needle), "stderr should mention \(needle):\n\(self)", sourceLocation: sourceLocation)
        }
    }
}

// MARK: - The JSON the contract promises

/// One row of `pml ls --json`.
struct Row: Decodable, Equatable, Sendable, CustomStringConvertible {
    let id: Int
    let name: String
    let instance: Int
    let mode: String
    let pid: Int32?
    let status: String
    let restarts: Int
    let uptimeMs: Int?
    let cpu: Double
    let memory: Int

    enum CodingKeys: String, CodingKey {
        case id, name, instance, mode, pid, status, restarts, uptimeMs = "uptime_ms", cpu, memory
    }

    static let statuses: Set<String> = ["starting", "online", "stopping", "stopped", "waiting", "errored"]

    /// The pids of `rows` (the workers that run).
    static func pids(_ rows: [Row]) -> Set<Int32> { Set(rows.compactMap(\.pid)) }

    var description: String {
        "#\(id) \(name)[\(instance)] \(status) pid=\(pid.map(String.init) ?? "null") restarts=\(restarts)"
    }
}

struct ExitJSON: Decodable, Sendable {
    let code: Int?
    let signal: String?
    let uptimeMs: Int
    enum CodingKeys: String, CodingKey { case code, signal, uptimeMs = "uptime_ms" }
}

struct WorkerJSON: Decodable, Sendable {
    let process: Row
    let lastExit: ExitJSON?
    let reason: String?
    let restartDelayMs: Int?
    let unstableRestarts: Int
    let lastHookError: String?
    enum CodingKeys: String, CodingKey {
        case process, lastExit = "last_exit", reason, restartDelayMs = "restart_delay_ms"
        case unstableRestarts = "unstable_restarts", lastHookError = "last_hook_error"
    }
}

struct SpecJSON: Decodable, Sendable {
    let name: String
    let argv: [String]
    let cwd: String
    let env: [String: String]
    let instances: Int
    let autorestart: Bool
    let minUptime: Int
    let maxRestarts: Int
    let restartDelay: Int
    let restartDelayMax: Int
    let stableAfter: Int
    let stopExitCodes: [Int]
    let killTimeout: Int
    let killSignal: String
    let timestamps: Bool
    let appFile: String?
    let hooks: [String]
    enum CodingKeys: String, CodingKey {
        case name, argv, cwd, env, instances, autorestart
        case minUptime = "min_uptime", maxRestarts = "max_restarts", restartDelay = "restart_delay"
        case restartDelayMax = "restart_delay_max", stableAfter = "stable_after"
        case stopExitCodes = "stop_exit_codes", killTimeout = "kill_timeout", killSignal = "kill_signal"
        case timestamps, appFile = "app_file", hooks
    }
}

/// `pml describe <name> --json`.
struct Description: Decodable, Sendable {
    let name: String
    let mode: String
    let status: String
    let spec: SpecJSON
    let outLog: String
    let errLog: String
    let workers: [WorkerJSON]
    enum CodingKeys: String, CodingKey {
        case name, mode, status, spec, outLog = "out_log", errLog = "err_log", workers
    }
}

// MARK: - Locating pml

enum PMLBinary {
    /// The package root: the nearest folder above this file holding Package.swift.
    static let packageRoot: URL = {
        var dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while dir.path != "/" {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("Package.swift").path) { return dir }
            dir = dir.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
    }()

    /// `PML_BIN` if set; else the `pml` built beside this test binary (same scratch path);
    /// else `<package>/.build/debug/pml`.
    static let path: String? = {
        let fm = FileManager.default
        if let env = ProcessInfo.processInfo.environment["PML_BIN"], !env.isEmpty {
            return fm.isExecutableFile(atPath: env) ? env : nil
        }
        var candidates: [String] = []
        if let exe = ProcessInfo.processInfo.arguments.first, exe.hasPrefix("/") {
            var dir = URL(fileURLWithPath: exe).resolvingSymlinksInPath().deletingLastPathComponent()
            for _ in 0..<4 {
                candidates.append(dir.appendingPathComponent("pml").path)
                dir = dir.deletingLastPathComponent()
            }
        }
        candidates.append(packageRoot.appendingPathComponent(".build/debug/pml").path)
        return candidates.first { fm.isExecutableFile(atPath: $0) && !isDirectory($0) }
    }()

    static func require() throws -> String {
        guard let path else {
            throw HarnessError("""
                pml binary not found: set PML_BIN, or build it (`swift build`) so that \
                \(packageRoot.path)/.build/debug/pml exists
                """)
        }
        return path
    }

    private static func isDirectory(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
    }
}

// MARK: - Process helpers

enum Proc {
    /// True if the process exists and is not a zombie.
    static func alive(_ pid: Int32) -> Bool {
        guard pid > 0 else { return false }
        if kill(pid, 0) != 0 && errno == ESRCH { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
        // Field 3 (after the ")" that closes comm) is the state.
        guard let close = stat.lastIndex(of: ")") else { return true }
        let rest = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces)
        return !rest.hasPrefix("Z") && !rest.hasPrefix("X")
    }

    /// Every pid whose environment contains `needle` ("KEY=value").
    static func pids(withEnvironment needle: String) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        let me = getpid()
        let target = Array(needle.utf8)
        var found: [Int32] = []
        for entry in entries {
            guard let pid = Int32(entry), pid != me,
                  let data = FileManager.default.contents(atPath: "/proc/\(entry)/environ") else { continue }
            for item in data.split(separator: 0) where Array(item) == target {
                found.append(pid)
                break
            }
        }
        return found
    }

    /// Every pid whose command line contains `needle`.
    static func pids(withCommandLine needle: String) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        let me = getpid()
        var found: [Int32] = []
        for entry in entries {
            guard let pid = Int32(entry), pid != me,
                  let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let cmd = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            if cmd.contains(needle) && alive(pid) { found.append(pid) }
        }
        return found
    }

    /// Process group of a pid, or nil.
    static func pgid(_ pid: Int32) -> Int32? {
        let g = getpgid(pid)
        return g < 0 ? nil : g
    }
}

/// Milliseconds on a monotonic clock.
func nowMs() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) * 1000 + Double(ts.tv_nsec) / 1_000_000
}

func sleepMs(_ ms: Int) async {
    try? await Task.sleep(nanoseconds: UInt64(ms) * 1_000_000)
}

// MARK: - The sandbox

/// One test's world: a fresh PML_HOME (short, for the 108-byte socket path limit) and a work folder.
final class Sandbox: @unchecked Sendable {
    let root: String
    /// PML_HOME. Not created by the harness: pml must create it (mode 0700).
    let home: String
    /// Where tests write app files, worker scripts and the files workers leave behind.
    let work: String
    let binary: String

    init() throws {
        binary = try PMLBinary.require()
        let tag = String(UInt64.random(in: 0..<UInt64(1) << 40), radix: 36)
        root = "/tmp/pml-it-\(tag)"
        home = root + "/h"
        work = root + "/w"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    }

    var socketPath: String { home + "/pml.sock" }
    var daemonLog: String { home + "/daemon.log" }
    var logsDir: String { home + "/logs" }

    /// The keeper (`pml daemon`, which restarts the daemon when it dies).
    var keeperPid: Int32? {
        guard let s = try? String(contentsOfFile: home + "/keeper.pid", encoding: .utf8) else { return nil }
        return Int32(s.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    var daemonPid: Int32? {
        guard let s = try? String(contentsOfFile: home + "/daemon.pid", encoding: .utf8) else { return nil }
        return Int32(s.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    // MARK: running pml

    /// Runs `pml args...` (see `ChildProcess`) and waits for it, killing it after `timeout` s.
    @discardableResult
    func pml(_ args: [String], env extra: [String: String] = [:], cwd: String? = nil,
             timeout: Double = 20) async throws -> RunResult {
        try await ChildProcess(self, binary, args, env: extra, cwd: cwd).finish(timeout: timeout)
    }

    @discardableResult
    func pml(_ args: String..., env extra: [String: String] = [:], timeout: Double = 20) async throws -> RunResult {
        try await pml(args, env: extra, timeout: timeout)
    }

    /// Runs pml and throws (with the whole result) unless it exits 0.
    @discardableResult
    func pmlOK(_ args: String..., env extra: [String: String] = [:]) async throws -> RunResult {
        let r = try await pml(args, env: extra)
        guard r.ok else { throw HarnessError("expected success:\n\(r)") }
        return r
    }

    /// `pml ls --json`, decoded.
    func ls() async throws -> [Row] {
        let r = try await pml("ls", "--json")
        guard r.ok else { throw HarnessError("pml ls --json failed:\n\(r)") }
        do {
            let rows = try JSONDecoder().decode([Row].self, from: Data(r.stdout.utf8))
            for row in rows where !Row.statuses.contains(row.status) {
                throw HarnessError("unknown status \"\(row.status)\" in pml ls --json:\n\(r.stdout)")
            }
            return rows
        } catch let e as HarnessError {
            throw e
        } catch {
            throw HarnessError("pml ls --json is not the contract's JSON array (\(error)):\n\(r.stdout)")
        }
    }

    func rows(_ app: String) async throws -> [Row] {
        try await ls().filter { $0.name == app }.sorted { $0.instance < $1.instance }
    }

    /// `pml describe <target> --json`, decoded, plus the raw object for key checks.
    func describe(_ target: String) async throws -> (Description, [String: Any]) {
        let r = try await pml("describe", target, "--json")
        guard r.ok else { throw HarnessError("pml describe \(target) --json failed:\n\(r)") }
        let data = Data(r.stdout.utf8)
        do {
            let d = try JSONDecoder().decode(Description.self, from: data)
            let raw = (try JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
            return (d, raw)
        } catch {
            throw HarnessError("pml describe --json is not the contract's object (\(error)):\n\(r.stdout)")
        }
    }

    // MARK: waiting

    /// Polls `probe` every 100 ms until it returns a value, or fails after `timeout` seconds with
    /// `what`, the last error the probe threw and the last process table.
    @discardableResult
    func waitFor<T>(_ what: String, timeout: Double = 15, every ms: Int = 100,
                    _ probe: () async throws -> T?) async throws -> T {
        let deadline = nowMs() + timeout * 1000
        var lastError: Error?
        while true {
            do {
                if let v = try await probe() { return v }
                lastError = nil
            } catch {
                lastError = error
            }
            if nowMs() > deadline { break }
            await sleepMs(ms)
        }
        let table = (try? await pml("ls", "--json").stdout) ?? "?"
        throw HarnessError("""
            timed out after \(timeout) s waiting for: \(what)
            last error: \(lastError.map { "\($0)" } ?? "none")
            pml ls --json: \(table)
            """)
    }

    /// Waits until every worker of `app` is online with a live pid; returns the rows.
    @discardableResult
    func waitOnline(_ app: String, count: Int = 1, timeout: Double = 15) async throws -> [Row] {
        try await waitFor("\(count) worker(s) of \(app) online with live pids", timeout: timeout) {
            let rows = try await rows(app)
            let up = rows.filter { $0.status == "online" && $0.pid.map(Proc.alive) == true }
            return rows.count == count && up.count == count ? rows : nil
        }
    }

    // MARK: files

    /// Writes `text` to `work/name` (creating folders); returns the absolute path.
    @discardableResult
    func write(_ name: String, _ text: String, executable: Bool = false) throws -> String {
        let path = work + "/" + name
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        if executable { chmod(path, 0o755) }
        return path
    }

    /// Writes `json` as PML_HOME/config.json (creating PML_HOME if need be), read by the next daemon.
    func writeConfig(_ json: String) throws {
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        try json.write(toFile: home + "/config.json", atomically: true, encoding: .utf8)
    }

    func read(_ path: String) -> String {
        (try? String(contentsOfFile: path.hasPrefix("/") ? path : work + "/" + path, encoding: .utf8)) ?? ""
    }

    func lines(_ path: String) -> [String] {
        read(path).split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
    }

    /// Integers written one per line by workers (pids, `date +%s%N` stamps, ...).
    func numbers(_ path: String) -> [Int] {
        lines(path).compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    }

    // MARK: teardown

    /// `pml kill`, then SIGKILL to the keeper (its sentinel then clears the workers), the daemon,
    /// and anything still carrying this PML_HOME.
    func tearDown() async {
        _ = try? await pml(["kill"], timeout: 20)
        if let pid = keeperPid, Proc.alive(pid) { kill(pid, SIGKILL) }
        if let pid = daemonPid, Proc.alive(pid) { kill(pid, SIGKILL) }
        for pid in Proc.pids(withEnvironment: "PML_HOME=\(home)") {
            kill(pid, SIGKILL)
        }
        try? FileManager.default.removeItem(atPath: root)
    }
}

/// Runs `body` in a fresh sandbox, and always tears it down.
func withSandbox(_ body: (Sandbox) async throws -> Void) async throws {
    let box = try Sandbox()
    do {
        try await body(box)
    } catch {
        await box.tearDown()
        throw error
    }
    await box.tearDown()
}

/// Escapes a string for a Lua double-quoted literal.
func lua(_ s: String) -> String {
    "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
}

/// The 1-based line of the first line of `text` containing `needle`.
func lineNumber(of needle: String, in text: String) -> Int {
    for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated()
    where line.contains(needle) {
        return i + 1
    }
    return -1
}

/// The parent suite: every integration test runs one at a time (they share timing-sensitive load).
@Suite(.serialized, .timeLimit(.minutes(2)))
enum Integration {}

/// The words of some output: runs of letters, digits, '-' and '_' (so "out-line-5" is not found in "out-line-15").
func tokens(_ text: String) -> Set<String> {
    var words = Set<String>()
    var current = ""
    for ch in text {
        if ch.isLetter || ch.isNumber || ch == "-" || ch == "_" { current.append(ch) }
        else if !current.isEmpty { words.insert(current); current = "" }
    }
    if !current.isEmpty { words.insert(current) }
    return words
}

/// A program started without waiting, in the sandbox: PML_HOME set (NOTIFY_SOCKET unset unless
/// `env` sets it), stdin from /dev/null, stdout and stderr captured in files (a daemon that
/// inherits them can't make a reader wait for EOF).
final class ChildProcess: @unchecked Sendable {
    /// What `RunResult` shows: the arguments of pml, or the whole command line of another program.
    let args: [String]
    let process = Process()
    let outPath: String
    let errPath: String

    init(_ box: Sandbox, _ executable: String, _ args: [String], env extra: [String: String] = [:], cwd: String? = nil) throws {
        self.args = executable == box.binary ? args : [executable] + args
        let tag = String(UInt64.random(in: 0..<UInt64(1) << 40), radix: 36)
        outPath = "\(box.root)/.run-\(tag).out"
        errPath = "\(box.root)/.run-\(tag).err"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        guard let out = FileHandle(forWritingAtPath: outPath), let err = FileHandle(forWritingAtPath: errPath) else {
            throw HarnessError("cannot create capture files in \(box.root)")
        }
        defer {
            try? out.close()
            try? err.close()
        }
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["PML_HOME"] = box.home
        env.removeValue(forKey: "NOTIFY_SOCKET")
        for (k, v) in extra { env[k] = v }
        process.environment = env
        process.currentDirectoryURL = URL(fileURLWithPath: cwd ?? box.work)
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = err
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }
    var stdout: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "" }

    /// Waits for exit (SIGKILL after `timeout` s). `status` is the exit code, or 128+signal.
    func finish(timeout: Double = 30) async -> RunResult {
        let deadline = nowMs() + timeout * 1000
        var timedOut = false
        while process.isRunning {
            if nowMs() > deadline {
                timedOut = true
                kill(process.processIdentifier, SIGKILL)
                break
            }
            await sleepMs(10)
        }
        process.waitUntilExit()
        let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return RunResult(args: args, status: status, stdout: stdout, stderr: stderr, timedOut: timedOut)
    }
}
