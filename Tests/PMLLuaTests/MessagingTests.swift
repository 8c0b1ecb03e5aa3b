import PMLCore
import PMLLua
import Testing

/// pml.send, pml.broadcast and pml.scale, and the onMessage / onReady hooks that use them.
@Suite struct MessagingTests {
    let folder = FixtureFolder()

    @Test func sendBroadcastAndScaleReachTheHost() throws {
        let (runtime, host) = try hostedRuntime()
        try load(runtime, folder, """
        return {
          name = "web",
          onMessage = function(worker, msg)
            pml.send(worker, msg)
            pml.send(7, "hello")
            pml.send(2.0, true)
            pml.broadcast(worker.app, msg.data)
            pml.broadcast({ name = "api" }, 42)
            pml.scale("web", 0)
            pml.scale({ name = "api" }, 4)
            pml.scale("web", 3.0)
          end,
          onReady = function(worker) return "ready " .. worker.id end,
        }
        """)
        let worker: ScriptValue = .object(["id": .int(3), "app": .string("web")])
        let message: ScriptValue = .object(["type": .string("broadcast"), "data": .object(["n": .int(1)])])
        #expect(runtime.callHook(app: "web", hook: "onMessage", args: [worker, message]) == .returned(.null))
        #expect(host.sent == [.init(worker: 3, message: message), .init(worker: 7, message: .string("hello")),
                              .init(worker: 2, message: .bool(true))])
        #expect(host.broadcasts == [.init(app: "web", message: .object(["n": .int(1)])),
                                    .init(app: "api", message: .int(42))])
        #expect(host.scaled == [.init(app: "web", instances: 0), .init(app: "api", instances: 4),
                                .init(app: "web", instances: 3)])
        #expect(runtime.callHook(app: "web", hook: "onReady", args: [worker]) == .returned(.string("ready 3")))
    }

    @Test func messagesArriveAsHookReturnValuesDo() throws {
        let (runtime, host) = try hostedRuntime()
        try load(runtime, folder, """
        local function nest(n) local t = {} for _ = 2, n do t = { x = t } end return t end
        local shared = { "s" }
        local cases = {
          { type = "metric", data = { 1, 2.5, { ok = true, name = "ü ✓" } }, empty = {} },
          { [1] = "a", [3] = "c" },
          { "a", x = 1 },
          { [0] = "z", "a" },
          { [1.5] = true },
          { a = shared, b = { shared } },
          { -7, 1e300, math.maxinteger, "" },
          nest(32),
          "text", 12, false,
        }
        return {
          name = "web",
          count = function() return #cases end,
          probe = function(i) pml.send(i, cases[i]); pml.broadcast("web", cases[i]); return cases[i] end,
        }
        """)
        guard case .returned(.int(let count)) = runtime.callHook(app: "web", hook: "count", args: []) else {
            Issue.record("no case count")
            return
        }
        for i in 1...Int(count) {
            guard case .returned(let returned) = runtime.callHook(app: "web", hook: "probe", args: [.int(Int64(i))]) else {
                Issue.record("case \(i) failed")
                continue
            }
            #expect(host.sent.last == .init(worker: i, message: returned), "case \(i)")
            #expect(host.broadcasts.last == .init(app: "web", message: returned), "case \(i)")
        }
        #expect(host.sent.first?.message == .object([
            "type": .string("metric"),
            "data": .array([.int(1), .double(2.5), .object(["ok": .bool(true), "name": .string("ü ✓")])]),
            "empty": .object([:]),
        ]))
        // 32 levels arrive whole: the innermost table is still a table, not nil.
        var deepest = host.sent.first { $0.worker == 8 }?.message ?? .null
        for _ in 1..<32 { deepest = deepest["x"] ?? .null }
        #expect(deepest == .object([:]))
    }

    @Test func hostErrorsRaiseAtTheCaller() throws {
        let (runtime, host) = try hostedRuntime()
        let file = try load(runtime, folder, """
        return {
          name = "web",
          send = function() pml.send(1, "x") end,
          broadcast = function() pml.broadcast("web", "x") end,
          scale = function() pml.scale("web", 2) end,
          caught = function() return select(2, pcall(function() pml.scale({ name = "web" }, 2) end)) end,
        }
        """)
        host.messagingError = "no such thing"
        #expect(runtime.callHook(app: "web", hook: "send", args: []) == .failed("\(file.path):3: no such thing"))
        #expect(runtime.callHook(app: "web", hook: "broadcast", args: []) == .failed("\(file.path):4: no such thing"))
        #expect(runtime.callHook(app: "web", hook: "scale", args: []) == .failed("\(file.path):5: no such thing"))
        #expect(runtime.callHook(app: "web", hook: "caught", args: []) == .returned(.string("\(file.path):6: no such thing")))
    }

    @Test func reloadReachesTheHost() throws {
        let (runtime, host) = try hostedRuntime()
        try load(runtime, folder, """
        return {
          name = "web",
          onMessage = function(worker, msg)
            pml.reload(worker.app)
            pml.reload({ name = "api" }, { graceful = true, parallel = 2 })
            local ok, err = pcall(pml.reload, "web", 3)
            local ok2, err2 = pcall(pml.reload)
            return err .. " | " .. err2
          end,
        }
        """)
        let worker: ScriptValue = .object(["id": .int(3), "app": .string("web")])
        let answer = runtime.callHook(app: "web", hook: "onMessage", args: [worker, .string("go")])
        #expect(host.reloaded == [.init(app: "web", options: .null),
                                  .init(app: "api", options: .object(["graceful": .bool(true), "parallel": .int(2)]))])
        guard case .returned(.string(let errors)) = answer else { Issue.record("\(answer)"); return }
        #expect(errors.contains("pml.reload: opts must be a table such as { graceful = true } (got 3)"), "\(errors)")
        #expect(errors.contains("pml.reload: app must be an app name or an app table (got no value)"), "\(errors)")
    }

    @Test func badArgumentsRaiseClearErrors() throws {
        let cases: [(lua: String, error: String)] = [
            ("pml.send()", "pml.send: worker must be a worker table or a worker id (got no value)"),
            ("pml.send({}, 'x')", "pml.send: the worker table has no integer id"),
            ("pml.send({ id = 1.5 }, 'x')", "pml.send: the worker table has no integer id"),
            ("pml.send('3', 'x')", "pml.send: worker must be a worker table or a worker id (got string)"),
            ("pml.send(1.5, 'x')", "pml.send: worker must be a worker table or a worker id (got 1.5)"),
            ("pml.send(1)", "pml.send: message must be JSON-able: message is nil"),
            ("pml.send(1, function() end)", "pml.send: message must be JSON-able: message is a function"),
            ("pml.send(1, { data = { print } })", "pml.send: message must be JSON-able: message.data[1] is a function"),
            ("pml.send(1, { ['a b'] = { x = io.tmpfile() } })", "pml.send: message must be JSON-able: message[\"a b\"].x is a userdata"),
            ("pml.send(1, { co = coroutine.create(print) })", "pml.send: message must be JSON-able: message.co is a thread"),
            ("pml.send(1, { x = 0/0 })", "pml.send: message must be JSON-able: message.x is not a finite number"),
            ("pml.send(1, { math.huge })", "pml.send: message must be JSON-able: message[1] is not a finite number"),
            ("pml.send(1, { [true] = 1 })", "pml.send: message must be JSON-able: message has a boolean key"),
            ("local t = {}; t.self = t; pml.send(1, t)", "pml.send: message must be JSON-able: message.self is a table that contains itself"),
            ("local t = { a = {} }; t.a.up = t; pml.send(1, t)", "pml.send: message must be JSON-able: message.a.up is a table that contains itself"),
            ("pml.send(1, nest(33))", "pml.send: message must be JSON-able: message" + String(repeating: ".x", count: 32) + " nests tables deeper than 32 levels"),
            ("pml.send(1, string.rep('x', 1 << 20))", "pml.send: message is larger than 1 MiB"),
            // Shared subtables: 2^25 leaves from 26 small tables are caught by size, quickly.
            ("local t = {}; for _ = 1, 25 do t = { t, t } end; pml.send(1, t)", "pml.send: message is larger than 1 MiB"),
            ("pml.broadcast()", "pml.broadcast: app must be an app name or an app table (got no value)"),
            ("pml.broadcast({}, 'x')", "pml.broadcast: the app table has no name"),
            ("pml.broadcast('web', print)", "pml.broadcast: message must be JSON-able: message is a function"),
            ("pml.scale('web', -1)", "pml.scale: instances must be an integer >= 0 (got -1)"),
            ("pml.scale('web', 1.5)", "pml.scale: instances must be an integer >= 0 (got 1.5)"),
            ("pml.scale('web')", "pml.scale: instances must be an integer >= 0 (got no value)"),
            ("pml.scale('web', '2')", "pml.scale: instances must be an integer >= 0 (got string)"),
            ("pml.scale(42, 1)", "pml.scale: app must be an app name or an app table (got 42)"),
        ]
        let (runtime, host) = try hostedRuntime()
        try expectEachFails(runtime, folder, cases,
                            after: "local function nest(n) local t = {} for _ = 2, n do t = { x = t } end return t end")
        #expect(host.sent.isEmpty && host.broadcasts.isEmpty && host.scaled.isEmpty)
    }

    @Test func sendFromACoroutineReadsTheCoroutinesStack() throws {
        let (runtime, host) = try hostedRuntime()
        try load(runtime, folder, """
        return {
          name = "web",
          probe = function(unrelated)
            local co = coroutine.wrap(function(n) pml.send(5, { from = "co", n = n }); return "done" end)
            return co(9)
          end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "probe", args: [.string("main stack")]) == .returned(.string("done")))
        #expect(host.sent == [.init(worker: 5, message: .object(["from": .string("co"), "n": .int(9)]))])
    }

    @Test func withoutAHost() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        try load(runtime, folder, """
        return {
          name = "web",
          send = function() pml.send(1, "x") end,
          broadcast = function() pml.broadcast("web", "x") end,
          scale = function() pml.scale("web", 1) end,
        }
        """)
        for hook in ["send", "broadcast", "scale"] {
            #expect(runtime.callHook(app: "web", hook: hook, args: []).failure?.hasSuffix("no supervisor is attached") == true)
        }
    }

    @Test func aLoopOfSendsStaysWithinTheBudget() throws {
        let (runtime, host) = try hostedRuntime(limits: LuaLimits(instructionBudget: 100_000))
        try load(runtime, folder, """
        return { name = "web", onMessage = function(worker, msg) while true do pml.send(worker, msg) end end }
        """)
        let outcome = runtime.callHook(app: "web", hook: "onMessage", args: [.object(["id": .int(1)]), .string("x")])
        #expect(outcome.failure?.contains("onMessage exceeded its instruction budget") == true)
        #expect(!host.sent.isEmpty)
    }
}
