import Testing
@testable import PMLCore

@Suite struct AppSpecParserTests {
    let source = """
    return {
      name = "web",
      instanse = 4,
      cmd = { "node", "server.js" },
    }
    """

    func parser(_ source: String? = nil) -> AppSpecParser {
        AppSpecParser(file: "/srv/app.lua", source: source, baseDirectory: "/srv", cpuCount: 8)
    }

    func app(_ fields: [String: ScriptValue]) -> ScriptValue { .object(fields) }

    @Test func minimalAppGetsDefaults() throws {
        let spec = try parser().parseApp(app(["cmd": .array([.string("node"), .string("server.js")])]))
        #expect(spec.name == "node")
        #expect(spec.argv == ["node", "server.js"])
        #expect(spec.cwd == "/srv")
        #expect(spec.instances == 1)
        #expect(spec.autorestart)
        #expect(spec.minUptime == 1000)
        #expect(spec.maxRestarts == 15)
        #expect(spec.restartDelay == 100)
        #expect(spec.restartDelayMax == 15000)
        #expect(spec.killTimeout == 5000)
        #expect(spec.killSignal == "SIGTERM")
        #expect(spec.mode == "fork")
        #expect(spec.hooks.isEmpty)
    }

    @Test func scriptPicksInterpreterAndResolvesPath() throws {
        let spec = try parser().parseApp(app(["script": .string("bin/../server.py"), "args": .array([.string("-v")])]))
        #expect(spec.argv == ["python3", "/srv/server.py", "-v"])
        #expect(spec.name == "server")
        let js = try parser().parseApp(app(["script": .string("/opt/app.js")]))
        #expect(js.argv == ["node", "/opt/app.js"])
        let custom = try parser().parseApp(app(["script": .string("run"), "interpreter": .string("bash")]))
        #expect(custom.argv == ["bash", "/srv/run"])
        let plain = try parser().parseApp(app(["script": .string("run")]))
        #expect(plain.argv == ["/srv/run"])
    }

    @Test func commandStringRunsThroughShellWithExec() throws {
        let spec = try parser().parseApp(app(["name": .string("s"), "cmd": .string("sleep 10")]))
        #expect(spec.argv == ["/bin/sh", "-c", "exec sleep 10"])
    }

    @Test func unknownKeySuggestsNearestWithLine() {
        #expect(throws: AppFileError(file: "/srv/app.lua", line: 3, message: "unknown key \"instanse\" (did you mean \"instances\"?)")) {
            try parser(source).parseApp(app(["name": .string("web"), "instanse": .int(4), "cmd": .string("x")]))
        }
    }

    @Test func unknownKeyWithoutNearMatch() {
        #expect(throws: AppFileError(file: "/srv/app.lua", message: "unknown key \"zzzzzzzzzz\"")) {
            try parser().parseApp(app(["zzzzzzzzzz": .int(1), "cmd": .string("x")]))
        }
    }

    @Test func wrongTypesSayWhatWasExpected() {
        #expect(throws: AppFileError(file: "/srv/app.lua", message: "\"instances\" must be a whole number from 1 to 1024, \"max\", or -N (all cores but N), got \"four\"")) {
            try parser().parseApp(app(["cmd": .string("x"), "instances": .string("four")]))
        }
        #expect(throws: AppFileError(file: "/srv/app.lua", message: "\"autorestart\" must be true or false, got \"no\"")) {
            try parser().parseApp(app(["cmd": .string("x"), "autorestart": .string("no")]))
        }
        #expect(throws: AppFileError(file: "/srv/app.lua", message: "\"kill_timeout\" must be a duration in milliseconds, 0 or more, got -1")) {
            try parser().parseApp(app(["cmd": .string("x"), "kill_timeout": .int(-1)]))
        }
        #expect(throws: AppFileError(file: "/srv/app.lua", message: "\"onCrash\" must be a function, got string")) {
            try parser().parseApp(app(["cmd": .string("x"), "onCrash": .string("restart")]))
        }
        #expect(throws: AppFileError(file: "/srv/app.lua", message: "\"kill_signal\" must be a signal name such as \"SIGINT\", got \"SIGNOPE\"")) {
            try parser().parseApp(app(["cmd": .string("x"), "kill_signal": .string("SIGNOPE")]))
        }
    }

    @Test func needsExactlyOneOfCmdAndScript() {
        #expect(throws: AppFileError.self) { try parser().parseApp(app(["name": .string("x")])) }
        #expect(throws: AppFileError.self) { try parser().parseApp(app(["cmd": .string("x"), "script": .string("y")])) }
        #expect(throws: AppFileError.self) { try parser().parseApp(app(["cmd": .array([])])) }
        #expect(throws: AppFileError.self) { try parser().parseApp(app(["cmd": .array([.int(1)])])) }
    }

    @Test func namesAreChecked() {
        for bad in ["all", "12", "a b", "", ".hidden", String(repeating: "x", count: 65), "a/b"] {
            #expect(throws: AppFileError.self) { try parser().parseApp(app(["name": .string(bad), "cmd": .string("x")])) }
        }
        #expect(AppSpecParser.defaultName(for: "/usr/bin/my app.sh") == "my-app")
        #expect(AppSpecParser.defaultName(for: "42.js") == "app-42")
    }

    @Test func instancesMaxUsesCPUCount() throws {
        let spec = try parser().parseApp(app(["cmd": .string("x"), "name": .string("x"), "instances": .string("max")]))
        #expect(spec.instances == 8)
        #expect(spec.mode == "cluster")
    }

    @Test func envValuesBecomeStrings() throws {
        let spec = try parser().parseApp(app(["cmd": .string("x"), "name": .string("x"),
                                              "env": .object(["A": .string("1"), "B": .int(2), "C": .bool(true), "D": .double(1.5)])]))
        #expect(spec.env == ["A": "1", "B": "2", "C": "true", "D": "1.5"])
        #expect(throws: AppFileError.self) {
            try parser().parseApp(app(["cmd": .string("x"), "env": .object(["A": .array([])])]))
        }
    }

    @Test func stopExitCodesAndSignals() throws {
        let spec = try parser().parseApp(app(["cmd": .string("x"), "name": .string("x"), "stop_exit_codes": .array([.int(0), .int(78)]),
                                              "kill_signal": .string("int")]))
        #expect(spec.stopExitCodes == [0, 78])
        #expect(spec.killSignal == "SIGINT")
        let one = try parser().parseApp(app(["cmd": .string("x"), "name": .string("x"), "stop_exit_codes": .int(3)]))
        #expect(one.stopExitCodes == [3])
        #expect(throws: AppFileError.self) {
            try parser().parseApp(app(["cmd": .string("x"), "stop_exit_codes": .array([.int(300)])]))
        }
    }

    @Test func hooksAreRecorded() throws {
        let spec = try parser().parseApp(app(["cmd": .string("x"), "name": .string("x"), "onCrash": .function, "onStart": .function]))
        #expect(spec.hooks == ["onStart", "onCrash"])
    }

    @Test func listsAndTheirErrors() throws {
        let two = try parser().parse(.array([app(["cmd": .string("a"), "name": .string("a")]), app(["cmd": .string("b"), "name": .string("b")])]))
        #expect(two.map(\.name) == ["a", "b"])
        #expect(throws: AppFileError.self) { try parser().parse(.array([])) }
        #expect(throws: AppFileError.self) { try parser().parse(.string("web")) }
        #expect(throws: AppFileError.self) { try parser().parse(.array([.int(1)])) }
        #expect(throws: AppFileError(file: "/srv/app.lua", message: "two apps are named \"a\"")) {
            try parser().parse(.array([app(["cmd": .string("a"), "name": .string("a")]), app(["cmd": .string("b"), "name": .string("a")])]))
        }
    }

    @Test func lineOfKeyIgnoresComparisonsAndLongerNames() {
        let text = """
        local x = 1
        if instances == 3 then end
        my_instances = 2
          instances   = 4
        """
        #expect(AppSpecParser.line(ofKey: "instances", in: text) == 4)
        #expect(AppSpecParser.line(ofKey: "missing", in: text) == nil)
    }

    @Test func nearestAndNormalize() {
        #expect(AppSpecParser.nearest("oncrash", in: AppSpecParser.knownKeys) == "onCrash")
        #expect(AppSpecParser.nearest("kill_timout", in: AppSpecParser.knownKeys) == "kill_timeout")
        #expect(AppSpecParser.nearest("colour", in: AppSpecParser.knownKeys) == nil)
        #expect(AppSpecParser.normalize("/a/./b/../c/") == "/a/c")
        #expect(AppSpecParser.normalize("/../x") == "/x")
    }

    @Test func errorDescriptionNamesFileAndLine() {
        #expect(AppFileError(file: "app.lua", line: 12, message: "boom").description == "app.lua:12: boom")
        #expect(AppFileError(file: "app.lua", message: "boom").description == "app.lua: boom")
    }
}

@Suite struct ClusterKeysTests {
    func parse(_ fields: [String: ScriptValue]) throws(AppFileError) -> AppSpec {
        var t = fields
        t["cmd"] = .string("x")
        t["name"] = .string("web")
        return try AppSpecParser(file: "app.lua", source: nil, baseDirectory: "/srv", cpuCount: 2).parseApp(.object(t))
    }

    @Test func listenForms() throws {
        #expect(try parse(["listen": .int(8080)]).listen == [.tcp(host: nil, port: 8080)])
        #expect(try parse(["listen": .string("127.0.0.1:8080")]).listen == [.tcp(host: "127.0.0.1", port: 8080)])
        #expect(try parse(["listen": .string("[::1]:8443")]).listen == [.tcp(host: "::1", port: 8443)])
        #expect(try parse(["listen": .string("unix:run/web.sock")]).listen == [.unix(path: "/srv/run/web.sock")])
        #expect(try parse(["listen": .array([.int(80), .string("*:443")])]).listen == [.tcp(host: nil, port: 80), .tcp(host: nil, port: 443)])
        #expect(try parse(["listen": .int(80)]).mode == "cluster")
        #expect(try parse([:]).listen.isEmpty)
    }

    @Test func badListenValues() {
        for bad: ScriptValue in [.int(70000), .string("::1:80"), .string("host:"), .string("unix:"), .bool(true), .array([.int(-1)])] {
            #expect(throws: AppFileError.self) { try parse(["listen": bad]) }
        }
        #expect(throws: AppFileError(file: "app.lua", message: "\"listen\" names the same address twice")) {
            try parse(["listen": .array([.int(80), .string("80")])])
        }
    }

    @Test func dispatchAndReadiness() throws {
        #expect(try parse([:]).dispatch == .roundRobin)
        #expect(try parse(["dispatch": .string("shared")]).dispatch == .shared)
        #expect(throws: AppFileError.self) { try parse(["dispatch": .string("random")]) }
        #expect(try parse(["dispatch": .string("least-busy")]).dispatch == .leastBusy)
        #expect(try parse(["dispatch": .string("reuseport"), "listen": .int(8080)]).dispatch == .reusePort)
        #expect(try parse(["dispatch": .string("reuseport"), "listen": .array([.int(8080), .string("127.0.0.1:9090")])]).dispatch == .reusePort)
        #expect(DispatchMode.leastBusy.passesConnections && DispatchMode.roundRobin.passesConnections)
        #expect(!DispatchMode.reusePort.passesConnections && !DispatchMode.shared.passesConnections)
        // Impossible combinations: one line saying why.
        for (listen, words) in [(nil, "needs a listen address"), (ScriptValue.string("unix:/tmp/x.sock"), "unix sockets cannot share"),
                                (.int(0), "fixed port"), (.array([.int(8080), .string("unix:/tmp/y.sock")]), "unix sockets")] {
            var fields: [String: ScriptValue] = ["dispatch": .string("reuseport")]
            fields["listen"] = listen
            do {
                _ = try parse(fields)
                Issue.record("reuseport with \(String(describing: listen)) was accepted")
            } catch {
                #expect(error.message.contains(words) && !error.message.contains("\n"), "\(error.message)")
            }
        }
        #expect(try parse([:]).ready == .automatic)
        #expect(try parse(["ready": .string("message")]).ready == .message)
        #expect(try parse(["ready": .int(500)]).ready == .delay(500))
        #expect(throws: AppFileError.self) { try parse(["ready": .string("soon")]) }
        #expect(try parse([:]).readyTimeout == 10000)
    }

    @Test func addressDescriptionsRoundTrip() {
        for text in ["8080", "127.0.0.1:8080", "[::1]:8080", "unix:/run/x.sock"] {
            #expect(ListenAddress.parse(.string(text), baseDirectory: "/")?.description == text)
        }
    }
}

@Suite struct LogKeysTests {
    func parse(_ fields: [String: ScriptValue]) throws(AppFileError) -> AppSpec {
        var t = fields
        t["cmd"] = .string("x")
        t["name"] = .string("web")
        return try AppSpecParser(file: "app.lua", source: nil, baseDirectory: "/", cpuCount: 1).parseApp(.object(t))
    }

    @Test func logDateFormatTurnsTimestampsOn() throws {
        let s = try parse(["log_date_format": .string("YYYY-MM-DD HH:mm")])
        #expect(s.timestamps)
        #expect(s.logDateFormat == "YYYY-MM-DD HH:mm")
        #expect(try parse([:]).logFormat == "plain")
        #expect(try parse(["log_format": .string("json")]).logFormat == "json")
    }

    @Test func badLogKeys() {
        #expect(throws: AppFileError.self) { try parse(["log_format": .string("xml")]) }
        #expect(throws: AppFileError.self) { try parse(["log_date_format": .int(1)]) }
    }
}

@Suite struct AppFileFolderTests {
    @Test func pathsInAnAppFileAreRelativeToItsFolder() throws {
        let spec = try AppSpecParser.forAppFile("/srv/web/app.lua", source: "", cpuCount: 1)
            .parseApp(.object(["script": .string("server.py")]))
        #expect(spec.cwd == "/srv/web")
        #expect(spec.argv == ["python3", "/srv/web/server.py"])
        let top = try AppSpecParser.forAppFile("/app.lua", source: "", cpuCount: 1).parseApp(.object(["cmd": .string("x"), "name": .string("x")]))
        #expect(top.cwd == "/")
    }
}
