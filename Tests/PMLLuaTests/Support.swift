import PMLCore
import PMLLua
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The repo's `lua/` folder, found from this file's path.
let repoLuaPath: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3) // Tests/PMLLuaTests/Support.swift
    return parts.joined(separator: "/") + "/lua"
}()

/// A temporary folder for Lua fixtures, removed when the test drops it.
final class FixtureFolder {
    let path: String
    private var files: [String] = []
    private var folders: [String] = []

    init(prefix: String = "pml-lua-test") {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    @discardableResult
    func write(_ name: String, _ text: String) -> String {
        let full = path + "/" + name
        var folder = path
        for part in name.split(separator: "/").dropLast() {
            folder += "/" + part
            if mkdir(folder, 0o755) == 0 { folders.append(folder) }
        }
        precondition(writeFile(full, text), "cannot write \(full)")
        files.append(full)
        return full
    }

    deinit {
        for file in files { unlink(file) }
        for folder in folders.reversed() { rmdir(folder) }
        rmdir(path)
    }
}

private func writeFile(_ path: String, _ text: String) -> Bool {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    if fd < 0 { return false }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    return bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count
}

/// Records what scripts ask of the supervisor.
class RecordingHost: LuaHost {
    struct Log: Equatable {
        var level: LuaLogLevel
        var source: String
        var message: String
    }
    var logs: [Log] = []
    var restarted: [String] = []
    var restartError: String?
    var spawned: [[String]] = []
    var spawnError: String?
    struct Sent: Equatable {
        var worker: Int
        var message: ScriptValue
    }
    var sent: [Sent] = []
    struct Broadcast: Equatable {
        var app: String
        var message: ScriptValue
    }
    var broadcasts: [Broadcast] = []
    struct Scale: Equatable {
        var app: String
        var instances: Int
    }
    var scaled: [Scale] = []
    /// Answers every send, broadcast and scale when set.
    var messagingError: String?
    struct Timer: Equatable {
        var id: Int
        var afterMs: Int
        var repeating: Bool
        var callback: LuaCallback
    }
    var timers: [Timer] = []
    var cancelled: [Int] = []
    /// pml.metrics answers with this for "web", nil for any other app.
    var metrics: ScriptValue = .object(["instances": .int(2), "cpu": .double(42.5)])

    func luaLog(level: LuaLogLevel, source: String, message: String) {
        logs.append(Log(level: level, source: source, message: message))
    }
    func luaApps() -> ScriptValue {
        .array([.object(["name": .string("web"), "instances": .int(2)])])
    }
    func luaWorkers(app: String) -> ScriptValue? {
        app == "web" ? .array([.object(["id": .int(0), "pid": .int(4242)])]) : nil
    }
    func luaRestart(target: String) -> String? {
        if let restartError { return restartError }
        restarted.append(target)
        return nil
    }
    func luaSpawn(argv: [String]) -> String? {
        if let spawnError { return spawnError }
        spawned.append(argv)
        return nil
    }
    func luaSend(worker: Int, message: ScriptValue) -> String? {
        if let messagingError { return messagingError }
        sent.append(Sent(worker: worker, message: message))
        return nil
    }
    func luaBroadcast(app: String, message: ScriptValue) -> String? {
        if let messagingError { return messagingError }
        broadcasts.append(Broadcast(app: app, message: message))
        return nil
    }
    func luaScale(app: String, instances: Int) -> String? {
        if let messagingError { return messagingError }
        scaled.append(Scale(app: app, instances: instances))
        return nil
    }
    struct Reload: Equatable {
        var app: String
        var options: ScriptValue
    }
    var reloaded: [Reload] = []
    func luaReload(app: String, options: ScriptValue) -> String? {
        if let messagingError { return messagingError }
        reloaded.append(Reload(app: app, options: options))
        return nil
    }
    /// Timer ids start at 100, so a test can tell them from other small integers.
    func luaSchedule(afterMs: Int, repeating: Bool, callback: LuaCallback) -> Int {
        timers.append(Timer(id: 100 + timers.count, afterMs: afterMs, repeating: repeating, callback: callback))
        return timers.last!.id
    }
    func luaCancel(timer: Int) {
        cancelled.append(timer)
    }
    func luaMetrics(app: String) -> ScriptValue? {
        app == "web" ? metrics : nil
    }
}

/// A runtime on the repo's `lua/` folder with a `RecordingHost` attached; the runtime holds its
/// host weakly, so the caller keeps both.
func hostedRuntime(limits: LuaLimits = LuaLimits()) throws -> (LuaRuntime, RecordingHost) {
    let runtime = try LuaRuntime(libraryPaths: [repoLuaPath], limits: limits)
    let host = RecordingHost()
    runtime.host = host
    return (runtime, host)
}

/// Loads an app "web" (`prelude`, then one line per case) whose hook `bad(i)` runs case i's Lua,
/// and expects each call to fail with `<file>:<its line>: <error>`.
func expectEachFails(_ runtime: LuaRuntime, _ folder: FixtureFolder, _ cases: [(lua: String, error: String)],
                     after prelude: String = "", sourceLocation: SourceLocation = #_sourceLocation) throws {
    let preludeLines = prelude.isEmpty ? 0 : prelude.split(separator: "\n", omittingEmptySubsequences: false).count
    let file = try load(runtime, folder, (prelude.isEmpty ? "" : prelude + "\n") + """
        local bad = {
        \(cases.map { "  function() \($0.lua) end," }.joined(separator: "\n"))
        }
        return { name = "web", bad = function(i) bad[i]() end }
        """)
    for (i, bad) in cases.enumerated() {
        // "local bad = {" follows the prelude; case i (from 0) is on the line after it plus i.
        #expect(runtime.callHook(app: "web", hook: "bad", args: [.int(Int64(i + 1))]) ==
            .failed("\(file.path):\(preludeLines + 2 + i): \(bad.error)"), "\(bad.lua)", sourceLocation: sourceLocation)
    }
}

/// Evaluates `source` as `name` in `folder` and binds each returned app under its `name`.
@discardableResult
func load(_ runtime: LuaRuntime, _ folder: FixtureFolder, _ source: String, as name: String = "app.lua") throws -> LoadedAppFile {
    let file = try runtime.evaluateAppFile(path: folder.write(name, source))
    let apps: [ScriptValue]
    if case .array(let items) = file.value { apps = items } else { apps = [file.value] }
    for (app, ref) in zip(apps, file.tableRefs) {
        runtime.bind(app: app["name"]?.stringValue ?? "app", tableRef: ref)
    }
    return file
}

/// Seconds on the monotonic clock (for elapsed wall time).
func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
