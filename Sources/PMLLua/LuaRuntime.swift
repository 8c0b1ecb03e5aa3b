import CLuaShim
import PMLCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What one call into Lua may consume before it is stopped.
public struct LuaLimits: Sendable {
    /// Per hook call / per app-file evaluation.
    public var instructionBudget: Int
    /// CPU time cap per call (the calling thread's CPU time: waiting for a busy CPU does not count).
    public var timeBudgetMs: Int
    /// For the whole state.
    public var memoryLimitBytes: Int

    public init(instructionBudget: Int = 50_000_000, timeBudgetMs: Int = 2000, memoryLimitBytes: Int = 64 << 20) {
        self.instructionBudget = instructionBudget
        self.timeBudgetMs = timeBudgetMs
        self.memoryLimitBytes = memoryLimitBytes
    }
}

/// The level of a script's log line: `pml.log` (and `print`) or `pml.warn`.
public enum LuaLogLevel: String, Sendable { case info, warn }

/// The supervisor side of the `pml` table. All calls happen on the thread that owns the runtime.
public protocol LuaHost: AnyObject {
    /// pml.log / pml.warn; source is "file:line" of the caller.
    func luaLog(level: LuaLogLevel, source: String, message: String)
    /// pml.apps(): list of app tables.
    func luaApps() -> ScriptValue
    /// pml.workers(name): nil → Lua gets nil, "no app named …".
    func luaWorkers(app: String) -> ScriptValue?
    /// pml.restart(target): returns an error message (raised in Lua at the caller) or nil.
    func luaRestart(target: String) -> String?
    /// pml.spawn({"cmd", "arg"}): returns an error message (raised in Lua at the caller) or nil.
    func luaSpawn(argv: [String]) -> String?
    /// pml.send(worker, msg) with a JSON-able message: returns an error message (raised in Lua at the caller) or nil.
    func luaSend(worker: Int, message: ScriptValue) -> String?
    /// pml.broadcast(app, msg) with a JSON-able message: returns an error message (raised in Lua at the caller) or nil.
    func luaBroadcast(app: String, message: ScriptValue) -> String?
    /// pml.scale(app, n) with n >= 0: returns an error message (raised in Lua at the caller) or nil.
    func luaScale(app: String, instances: Int) -> String?
    /// pml.after(ms, fn) (`repeating` false) or pml.every(ms, fn) (true), with ms >= 1: schedules
    /// `runtime.call(callback, args: [])` and returns the timer id the script gets. The host calls
    /// `runtime.release(callback)` once a one-shot has fired or when the timer is cancelled.
    func luaSchedule(afterMs: Int, repeating: Bool, callback: LuaCallback) -> Int
    /// pml.cancel(id) with an integer id; an id that names no pending timer is ignored.
    func luaCancel(timer: Int)
    /// pml.metrics(name or app table): the `m` an autoscale rule receives; nil → Lua gets nil,
    /// "no app named …".
    func luaMetrics(app: String) -> ScriptValue?
    /// pml.reload(name or app table, opts): a rolling reload as `pml reload` does it, started after
    /// the calling hook returns (`onReload` reports how it went); opts is nil or a JSON-able table
    /// (see `ReloadOptions`). Returns an error message (raised in Lua at the caller) or nil.
    func luaReload(app: String, options: ScriptValue) -> String?
}

/// A Lua function a script handed to `pml.after` or `pml.every`, kept alive in the runtime until
/// `LuaRuntime.release(_:)`. Opaque: pass it back to the runtime that made it.
public struct LuaCallback: Sendable, Hashable {
    /// The runtime that made it: another one (a state that replaced it) ignores it.
    let state: Int
    /// Unique for the runtime's lifetime, unlike Lua's registry references, which are reused after
    /// release: a stale callback can never reach another script's function.
    let id: Int
}

/// A reference to an app table an evaluation returned, kept alive in the runtime that evaluated it
/// until bound or released. It carries that runtime's identity: a registry number means something
/// else in any other state (one that replaced it, say), so every other runtime refuses it.
public struct LuaTableRef: Sendable, Hashable {
    let state: Int
    let ref: Int32
}

/// A plugin file the runtime has loaded.
public struct LoadedPlugin: Sendable, Equatable {
    /// The plugin table's `name`, unique among loaded plugins.
    public let name: String
    /// Absolute.
    public let path: String
    /// Sorted names of the plugin table's function-valued keys.
    public let hooks: [String]
}

/// The result of calling a hook or library function.
public enum HookOutcome: Sendable, Equatable {
    /// The app, plugin or module has no such function, or the callback was released.
    case notDefined
    /// The first return value (.null if none).
    case returned(ScriptValue)
    /// The error message with file:line ("app.lua:12: attempt to …", a budget, the memory limit).
    case failed(String)
}

/// The result of evaluating an app file.
public struct LoadedAppFile: Sendable {
    /// Absolute.
    public let path: String
    /// The file's text.
    public let source: String
    /// What the chunk returned; Lua functions appear as .function.
    public let value: ScriptValue
    /// Refs to the returned app table(s), one per app in order: one if a single table was
    /// returned, one per element for a list. Pass each to `bind` or `release` of the same runtime.
    public let tableRefs: [LuaTableRef]
}

/// The runtime could not create its Lua state.
public struct LuaRuntimeError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

/// The embedded Lua state: app files, their hooks, and pml's Lua library, sandboxed and budgeted.
///
/// Not thread-safe: use it from the one thread that owns it. Calls may nest (a host callback may
/// call a hook); a nested call shares the budget of the call it runs in.
public final class LuaRuntime {
    public weak var host: LuaHost?
    /// Unique in the process: what its table refs and callbacks carry.
    public let stateID: Int
    private static let nextStateID = Atomic<Int>(1)

    private let L: OpaquePointer
    private let limits: LuaLimits
    private var bindings: [String: Int32] = [:]
    /// Loaded plugins in load order, each with the registry ref to its table.
    private var loadedPlugins: [(plugin: LoadedPlugin, ref: Int32)] = []
    /// Registry refs of the timer callbacks scripts handed over, by `LuaCallback.id`.
    private var callbacks: [Int: Int32] = [:]
    private var nextCallbackID = 1
    /// Timers (`pml.after`, `pml.every`) one state may have pending at once.
    public static let maxPendingTimers = 10_000
    /// The bytes of the last reply to a `pml.*` call: C reads them after the dispatch returns.
    private var reply: UnsafeMutableRawBufferPointer?

    /// - Parameter libraryPaths: folders with pml's Lua standard library (the repo's `lua/`).
    public init(libraryPaths: [String], limits: LuaLimits = LuaLimits()) throws {
        guard let L = pml_newstate(limits.memoryLimitBytes) else {
            throw LuaRuntimeError(description: "cannot create a Lua state within \(limits.memoryLimitBytes) bytes")
        }
        self.L = L
        self.limits = limits
        stateID = Self.nextStateID.wrappingAdd(1, ordering: .relaxed).oldValue
        pml_set_budget(L, limits.instructionBudget, Int32(clamping: limits.timeBudgetMs))

        let packagePath = libraryPaths.map { "\($0)/?.lua;\($0)/?/init.lua" }.joined(separator: ";")
        let dispatch: pml_dispatch_fn = { ctx, request, reply in
            Unmanaged<LuaRuntime>.fromOpaque(ctx!).takeUnretainedValue().dispatch(request!.pointee, reply!)
        }
        let top = lua_gettop(L)
        defer { lua_settop(L, top) }
        let status = sandboxPrelude.withCString { prelude in
            pml_setup(L, prelude, strlen(prelude), packagePath, dispatch, Unmanaged.passUnretained(self).toOpaque())
        }
        if status != LUA_OK {
            throw LuaRuntimeError(description: "cannot set up Lua: \(failure(status, label: "setup", top: top))")
        }
    }

    deinit {
        pml_close(L)
        reply?.deallocate()
    }

    public var memoryInUse: Int { pml_memory_in_use(L) }

    /// Evaluates an app file in a fresh environment whose `require` also searches the file's folder.
    ///
    /// Syntax and runtime errors become `AppFileError(file: path as given, line:, message:)`. The
    /// path as given is also the chunk name, so later hook errors read "<path>:12: …".
    public func evaluateAppFile(path: String) throws(AppFileError) -> LoadedAppFile {
        let top = lua_gettop(L)
        defer { lua_settop(L, top) }
        let (absolute, bytes) = try evaluate(path: path, label: "app file", top: top)
        let value = ValueReader.value(L, at: -1)
        // A list gets a ref per element, a single table one ref to itself (count 0).
        var refs: [Int32] = []
        var elements: Int32 = 0
        switch value {
        case .array(let items): refs = Array(repeating: LUA_NOREF, count: items.count); elements = Int32(items.count)
        case .object: refs = [LUA_NOREF]
        default: break
        }
        if !refs.isEmpty {
            let refStatus = refs.withUnsafeMutableBufferPointer { pml_ref_values(L, -1, elements, $0.baseAddress) }
            if refStatus != LUA_OK {
                for ref in refs where ref != LUA_NOREF { pml_unref(L, ref) }
                throw AppFileError(file: path, message: failure(refStatus, label: "app file", top: top))
            }
        }
        return LoadedAppFile(path: absolute, source: String(decoding: bytes, as: UTF8.self), value: value,
                             tableRefs: refs.map { LuaTableRef(state: stateID, ref: $0) })
    }

    /// Reads the file at `path` and runs it in a fresh environment whose `require` also searches
    /// the file's folder, leaving its first return value on the stack above `top`. Returns the
    /// absolute path and the file's bytes.
    private func evaluate(path: String, label: String, top: Int32) throws(AppFileError) -> (String, [UInt8]) {
        let absolute = AppSpecParser.normalize(path.hasPrefix("/") ? path : Self.currentDirectory() + "/" + path)
        let bytes: [UInt8]
        switch Self.readFile(absolute) {
        case .success(let b): bytes = b
        case .failure(let reason): throw AppFileError(file: path, message: "cannot read: \(reason.description)")
        }
        let folder = String(absolute[..<absolute.lastIndex(of: "/")!])
        let status = bytes.withUnsafeBytes { text in
            pml_eval(L, text.baseAddress?.assumingMemoryBound(to: CChar.self), text.count,
                     "@" + path, folder.isEmpty ? "/" : folder, label)
        }
        guard status == LUA_OK else {
            throw Self.locate(failure(status, label: label, top: top), in: path)
        }
        return (absolute, bytes)
    }

    /// Hooks of `app` now come from that table; the previous binding of `app` is released.
    /// False, and nothing changes, when the ref is another runtime's.
    @discardableResult
    public func bind(app: String, tableRef: LuaTableRef) -> Bool {
        guard tableRef.state == stateID else { return false }
        if let old = bindings[app], old != tableRef.ref { pml_unref(L, old) }
        bindings[app] = tableRef.ref
        return true
    }

    public func unbind(app: String) {
        if let old = bindings.removeValue(forKey: app) { pml_unref(L, old) }
    }

    /// Drops a ref from `evaluateAppFile` that was never bound; another runtime's is ignored
    /// (false): its number may name a live value here.
    @discardableResult
    public func release(tableRef: LuaTableRef) -> Bool {
        guard tableRef.state == stateID else { return false }
        pml_unref(L, tableRef.ref)
        return true
    }

    /// Calls `table[hook](args...)` on the table bound to `app`; `hook` may be a dotted path
    /// ("autoscale.rule"). Anything but a function there is `.notDefined`.
    public func callHook(app: String, hook: String, args: [ScriptValue]) -> HookOutcome {
        guard let ref = bindings[app] else { return .notDefined }
        return call(label: hook, args: args) { args, count, label, notDefined in
            pml_call_hook(L, ref, hook, args, count, label, notDefined)
        }
    }

    // MARK: - Plugins

    /// The plugins loaded so far, in load order.
    public var plugins: [LoadedPlugin] { loadedPlugins.map(\.plugin) }

    /// Runs a plugin file, in its own environment as an app file runs, and keeps the table it
    /// returns: `{ name = "...", <hooks as functions> }`.
    ///
    /// Syntax and runtime errors carry the file's line; a file that returns no table, a table
    /// without a non-empty string `name`, or a name already loaded fail too, and load nothing.
    public func loadPlugin(path: String) throws(AppFileError) -> LoadedPlugin {
        let top = lua_gettop(L)
        defer { lua_settop(L, top) }
        let (absolute, _) = try evaluate(path: path, label: "plugin file", top: top)
        guard lua_type(L, -1) == LUA_TTABLE else {
            throw AppFileError(file: path, message: "a plugin must return a table { name = \"...\", <hooks> } (got \(typeName(at: -1)))")
        }
        guard let fields = pluginFields(at: -1) else {
            throw AppFileError(file: path, message: failure(LUA_ERRMEM, label: "plugin file", top: lua_gettop(L)))
        }
        guard let name = fields.name, !name.isEmpty else {
            let got = fields.name == nil ? fields.nameType : "an empty string"
            throw AppFileError(file: path, message: "a plugin's name must be a non-empty string (got \(got))")
        }
        if let other = loadedPlugins.first(where: { $0.plugin.name == name }) {
            throw AppFileError(file: path, message: "a plugin named \"\(name)\" is already loaded (from \(other.plugin.path))")
        }
        var ref = LUA_NOREF
        let status = pml_ref_values(L, -1, 0, &ref)
        guard status == LUA_OK else {
            throw AppFileError(file: path, message: failure(status, label: "plugin file", top: top + 1))
        }
        let plugin = LoadedPlugin(name: name, path: absolute, hooks: fields.hooks.sorted())
        loadedPlugins.append((plugin, ref))
        return plugin
    }

    /// Forgets every plugin (for `pml plugins reload`). Timers a plugin started keep running until
    /// the host cancels them.
    public func unloadPlugins() {
        for (_, ref) in loadedPlugins { pml_unref(L, ref) }
        loadedPlugins.removeAll()
    }

    /// Calls `table[hook](args...)` on the table of the plugin named `plugin`, as `callHook` does
    /// for an app: `.notDefined` when there is no such plugin or no function there.
    public func callPluginHook(plugin: String, hook: String, args: [ScriptValue]) -> HookOutcome {
        guard let ref = loadedPlugins.first(where: { $0.plugin.name == plugin })?.ref else { return .notDefined }
        return call(label: hook, args: args) { args, count, label, notDefined in
            pml_call_hook(L, ref, hook, args, count, label, notDefined)
        }
    }

    /// The plugin table's `name` (nil unless a string; `nameType` is its Lua type, for the error
    /// message) and the string keys holding functions, read raw with calls that cannot raise.
    /// Nil if the stack cannot grow.
    private func pluginFields(at index: Int32) -> (name: String?, nameType: String, hooks: [String])? {
        let index = lua_absindex(L, index)
        guard lua_checkstack(L, 2) != 0 else { return nil }
        var name: String?
        var nameType = "nil"
        var hooks: [String] = []
        lua_pushnil(L)
        while lua_next(L, index) != 0 { // key at -2, value at -1
            if lua_type(L, -2) == LUA_TSTRING {
                let key = ValueReader.string(L, at: -2)
                if key == "name" {
                    nameType = typeName(at: -1)
                    if lua_type(L, -1) == LUA_TSTRING { name = ValueReader.string(L, at: -1) }
                } else if lua_type(L, -1) == LUA_TFUNCTION {
                    hooks.append(key)
                }
            }
            pml_pop(L, 1)
        }
        return (name, nameType, hooks)
    }

    /// The Lua type name of the value at `index` ("nil", "number", ...).
    private func typeName(at index: Int32) -> String {
        String(cString: lua_typename(L, lua_type(L, index)))
    }

    // MARK: - Timer callbacks

    /// Calls a callback from `pml.after` / `pml.every` with `args`, under the budget as a hook is
    /// called; `.notDefined` once it has been released.
    public func call(_ callback: LuaCallback, args: [ScriptValue]) -> HookOutcome {
        guard callback.state == stateID, let ref = callbacks[callback.id] else { return .notDefined }
        return call(label: "timer", args: args) { args, count, label, notDefined in
            pml_call_ref(L, ref, args, count, label, notDefined)
        }
    }

    /// Lets Lua collect a callback: after a one-shot timer fired, or when a timer was cancelled.
    /// Releasing one twice does nothing.
    public func release(_ callback: LuaCallback) {
        guard callback.state == stateID else { return }
        if let ref = callbacks.removeValue(forKey: callback.id) { pml_unref(L, ref) }
    }

    /// Calls `require(module)[function](args...)` in the library environment.
    public func callLibrary(module: String, function: String, args: [ScriptValue]) -> HookOutcome {
        call(label: "\(module).\(function)", args: args) { args, count, label, notDefined in
            pml_call_library(L, module, function, args, count, label, notDefined)
        }
    }

    private func call(
        label: String, args: [ScriptValue],
        _ body: (UnsafePointer<UInt8>?, Int, String, UnsafeMutablePointer<Int32>) -> Int32
    ) -> HookOutcome {
        let top = lua_gettop(L)
        defer { lua_settop(L, top) }
        var notDefined: Int32 = 0
        let encoded = ValueEncoder.list(args)
        let status = encoded.withUnsafeBufferPointer { body($0.baseAddress, $0.count, label, &notDefined) }
        guard status == LUA_OK else { return .failed(failure(status, label: label, top: top)) }
        if notDefined != 0 { return .notDefined }
        return .returned(ValueReader.value(L, at: -1))
    }

    /// The message a failed protected call left above `top`. A bare memory error has no location
    /// (Lua raises it without the message handler) and gets a clearer text.
    private func failure(_ status: Int32, label: String, top: Int32) -> String {
        if lua_gettop(L) > top, lua_type(L, -1) == LUA_TSTRING {
            let message = ValueReader.string(L, at: -1)
            if status != LUA_ERRMEM || message != "not enough memory" { return message }
        }
        return "\(label) exceeded the memory limit (\(Self.describe(bytes: limits.memoryLimitBytes)))"
    }

    // MARK: - pml.* calls from Lua

    private func dispatch(_ request: pml_request, _ out: UnsafeMutablePointer<pml_reply>) -> Int32 {
        let strings = (0..<Int(request.count)).map { i in
            String(decoding: UnsafeRawBufferPointer(start: request.strings[i], count: request.lengths[i]), as: UTF8.self)
        }
        let source = String(cString: request.source)
        switch request.op {
        case PML_OP_LOG, PML_OP_WARN:
            host?.luaLog(level: request.op == PML_OP_LOG ? .info : .warn, source: source, message: strings[0])
            return answer(out, values: [])
        case PML_OP_APPS:
            return answer(out, values: [host?.luaApps() ?? .array([])])
        case PML_OP_WORKERS:
            if let workers = host?.luaWorkers(app: strings[0]) { return answer(out, values: [workers]) }
            return answer(out, values: [.null, .string("no app named \"\(strings[0])\"")])
        case PML_OP_RESTART:
            guard let host else { return answer(out, error: "no supervisor is attached") }
            return answer(out, error: host.luaRestart(target: strings[0]))
        case PML_OP_SPAWN:
            guard let host else { return answer(out, error: "no supervisor is attached") }
            return answer(out, error: host.luaSpawn(argv: strings))
        case PML_OP_SEND:
            guard let host else { return answer(out, error: "no supervisor is attached") }
            return answer(out, error: host.luaSend(worker: Int(request.integer), message: message(of: request)))
        case PML_OP_BROADCAST:
            guard let host else { return answer(out, error: "no supervisor is attached") }
            return answer(out, error: host.luaBroadcast(app: strings[0], message: message(of: request)))
        case PML_OP_SCALE:
            guard let host else { return answer(out, error: "no supervisor is attached") }
            return answer(out, error: host.luaScale(app: strings[0], instances: Int(request.integer)))
        case PML_OP_RELOAD:
            guard let host else { return answer(out, error: "no supervisor is attached") }
            return answer(out, error: host.luaReload(app: strings[0], options: request.message == 0 ? .null : message(of: request)))
        case PML_OP_METRICS:
            if let metrics = host?.luaMetrics(app: strings[0]) { return answer(out, values: [metrics]) }
            return answer(out, values: [.null, .string("no app named \"\(strings[0])\"")])
        case PML_OP_AFTER, PML_OP_EVERY:
            // On an error answer C drops the reference itself.
            guard let host else { return answer(out, error: "no supervisor is attached") }
            // Each pending timer costs memory outside the state's cap: a script may hold only so many.
            guard callbacks.count < Self.maxPendingTimers else {
                return answer(out, error: "\(Self.maxPendingTimers) timers are pending already (pml.cancel some)")
            }
            let callback = LuaCallback(state: stateID, id: nextCallbackID)
            nextCallbackID += 1
            callbacks[callback.id] = request.ref
            let timer = host.luaSchedule(afterMs: Int(request.integer), repeating: request.op == PML_OP_EVERY, callback: callback)
            return answer(out, values: [.int(Int64(timer))])
        case PML_OP_CANCEL:
            guard let host else { return answer(out, error: "no supervisor is attached") }
            host.luaCancel(timer: Int(request.integer))
            return answer(out, values: [])
        default:
            return answer(out, error: "unknown pml function")
        }
    }

    /// The message C checked JSON-able, read as a hook's return value is: from the calling thread's
    /// stack, which is a coroutine's when the script called from one.
    private func message(of request: pml_request) -> ScriptValue {
        ValueReader.value(request.thread!, at: request.message)
    }

    private func answer(_ out: UnsafeMutablePointer<pml_reply>, values: [ScriptValue]) -> Int32 {
        store(ValueEncoder.list(values), in: out)
        return Int32(PML_REPLY_VALUES)
    }

    /// A nil error is success with no values.
    private func answer(_ out: UnsafeMutablePointer<pml_reply>, error: String?) -> Int32 {
        guard let error else { return answer(out, values: []) }
        store(Array(error.utf8), in: out)
        return Int32(PML_REPLY_ERROR)
    }

    private func store(_ bytes: [UInt8], in out: UnsafeMutablePointer<pml_reply>) {
        reply?.deallocate()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 8)
        buffer.copyBytes(from: bytes)
        reply = buffer
        out.pointee = pml_reply(data: buffer.baseAddress?.assumingMemoryBound(to: UInt8.self), length: bytes.count)
    }

    // MARK: - Helpers

    /// "app.lua:7: msg" → line 7, "msg" when the location is the app file itself (Lua shortens long
    /// chunk names to ".../tail"); any other text stays whole, without a line.
    static func locate(_ message: String, in path: String) -> AppFileError {
        var search = message.startIndex
        while let colon = message[search...].firstIndex(of: ":") {
            let file = message[..<colon]
            let rest = message[message.index(after: colon)...]
            let digits = rest.prefix(while: { $0.isASCII && $0.isNumber })
            let isPath = file == path || (file.hasPrefix("...") && path.hasSuffix(file.dropFirst(3)))
            if isPath, !digits.isEmpty, rest.dropFirst(digits.count).first == ":", let line = Int(digits) {
                let text = rest.dropFirst(digits.count + 1)
                return AppFileError(file: path, line: line, message: String(text.drop(while: { $0 == " " })))
            }
            search = message.index(after: colon)
        }
        return AppFileError(file: path, message: message)
    }

    /// "64 MiB" for whole mebibytes, else "N bytes".
    public static func describe(bytes: Int) -> String {
        bytes >= 1 << 20 && bytes % (1 << 20) == 0 ? "\(bytes >> 20) MiB" : "\(bytes) bytes"
    }

    private static func currentDirectory() -> String {
        guard let cwd = getcwd(nil, 0) else { return "/" }
        defer { free(cwd) }
        return String(cString: cwd)
    }

    private struct ReadFailure: Error, CustomStringConvertible {
        let description: String
    }

    /// Regular files only, opened without blocking (`pml_open_regular`, as scripts' io.open): a
    /// FIFO (or a device) given as an app file or plugin would otherwise stall the daemon in
    /// open(2) or read(2).
    private static func readFile(_ path: String) -> Result<[UInt8], ReadFailure> {
        let fd = pml_open_regular(path, O_RDONLY)
        if fd == PML_NOT_REGULAR && errno != EISDIR { return .failure(ReadFailure(description: "not a regular file")) }
        if fd < 0 { return .failure(ReadFailure(description: String(cString: strerror(errno)))) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return .success(bytes) }
            if n < 0 {
                if errno == EINTR { continue }
                return .failure(ReadFailure(description: String(cString: strerror(errno))))
            }
            bytes.append(contentsOf: chunk[..<n])
        }
    }
}
