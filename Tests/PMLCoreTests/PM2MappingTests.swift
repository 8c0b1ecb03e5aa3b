import Testing
@testable import PMLCore

/// The one PM2 → pml mapping: every option of PM2's schema.json ends up mapped or listed, with PM2's
/// defaults and meanings, and what it produces is what pml's parser accepts.
@Suite struct PM2MappingTests {
    /// Files that exist in the fake folder /eco, and programs on the fake PATH.
    static let files: Set<String> = ["/eco/server.js", "/eco/worker.py", "/eco/run.sh", "/eco/bin/www", "/eco/api/app.js", "/eco/tool"]
    static let probe = PM2Mapping.Probe(
        fileExists: { files.contains($0) },
        programOnPath: { ["npm", "gunicorn"].contains($0) },
        runsDirectly: { $0 == "/eco/tool" })

    func mapping(env: String? = nil, keys: Set<String> = Set(AppSpecParser.knownKeys)) -> PM2Mapping {
        PM2Mapping(folder: "/eco", display: "ecosystem.config.js", envName: env, probe: Self.probe, pmlKeys: keys)
    }

    func one(_ fields: [String: ScriptValue], env: String? = nil, keys: Set<String> = Set(AppSpecParser.knownKeys)) throws -> PM2Mapping.App {
        let eco = try mapping(env: env, keys: keys).map(.object(["apps": .array([.object(fields)])]))
        #expect(eco.apps.count == 1)
        return eco.apps[0]
    }

    /// The app as pml would run it, on a machine with 4 cores.
    func spec(_ app: PM2Mapping.App, cpus: Int = 4) throws -> AppSpec {
        try AppSpecParser(file: "/eco/ecosystem.config.js", source: nil, baseDirectory: "/eco", cpuCount: cpus).parseApp(.object(app.table))
    }

    static let schemaOptions: [String: ScriptValue] = [
        "script": .string("server.js"), "name": .string("api"), "name_prefix": .string("x"), "filter_env": .bool(true),
        "namespace": .string("backend"), "install_url": .string("u"), "cwd": .string("."), "args": .string("-a"),
        "interpreter": .string("node"), "node_args": .string("--inspect"), "out_file": .string("o.log"),
        "error_file": .string("e.log"), "log_file": .string("c.log"), "disable_logs": .bool(true), "log_type": .string("json"),
        "log_date_format": .string("YYYY"), "time": .bool(true), "env": .object(["A": .string("1")]),
        "env_production": .object(["A": .string("2")]), "max_memory_restart": .string("300M"), "pid_file": .string("p.pid"),
        "restart_delay": .int(100), "exp_backoff_restart_delay": .int(100), "source_map_support": .bool(true),
        "disable_source_map_support": .bool(false), "wait_ready": .bool(true), "instances": .int(2), "kill_timeout": .int(3000),
        "shutdown_with_message": .bool(true), "listen_timeout": .int(8000), "cron_restart": .string("0 3 * * *"),
        "merge_logs": .bool(false), "vizion": .bool(true), "autorestart": .bool(false), "watch_delay": .int(100),
        "watch": .bool(true), "ignore_watch": .array([.string("x")]), "watch_options": .object([:]), "min_uptime": .string("5s"),
        "max_restarts": .int(3), "execute_command": .bool(true), "exec_mode": .string("cluster"), "force": .bool(true),
        "append_env_to_name": .bool(false), "post_update": .array([]), "trace": .bool(true), "disable_trace": .bool(false),
        "v8": .bool(true), "event_loop_inspector": .bool(true), "deep_monitoring": .bool(true), "increment_var": .string("PORT"),
        "instance_var": .string("INSTANCE_ID"), "pmx": .bool(true), "automation": .bool(true), "treekill": .bool(false),
        "port": .int(3000), "username": .string("me"), "uid": .string("nobody"), "gid": .string("nogroup"),
        "windowsHide": .bool(true), "kill_retry_time": .int(100), "write": .bool(true), "io": .object([:]),
        "kill_signal": .string("SIGTERM"), "stop_exit_codes": .array([.int(0)]), "autostart": .bool(false),
    ]

    @Test func everySchemaOptionIsMappedOrListedNeverDropped() throws {
        for keys in [Set(AppSpecParser.knownKeys), Set(AppSpecParser.knownKeys).union(PM2Mapping.passThrough)] {
            let app = try one(Self.schemaOptions, keys: keys)
            for option in Self.schemaOptions.keys {
                let mapped = app.mapped.contains(option)
                let listed = app.ignored.contains { $0.option == option }
                #expect(mapped != listed, "\(option): mapped \(mapped), listed \(listed)")
            }
            #expect(Set(app.mapped).count == app.mapped.count, "no option counted twice: \(app.mapped)")
            #expect(app.table.keys.allSatisfy { keys.contains($0) }, "only pml keys: \(app.table.keys.sorted())")
        }
    }

    @Test func passThroughKeysFollowWhatTheAppSpecKnows() throws {
        let fields: [String: ScriptValue] = ["script": .string("server.js"), "watch": .bool(true), "uid": .string("nobody"),
                                             "out_file": .string("o.log"), "max_memory_restart": .string("200M")]
        let without = try one(fields, keys: Set(AppSpecParser.knownKeys).subtracting(["watch", "uid", "out_file", "max_memory_restart"]))
        #expect(Set(without.ignored.map(\.option)) == ["watch", "uid", "out_file", "max_memory_restart"])
        #expect(without.table["watch"] == nil)
        let with = try one(fields, keys: Set(AppSpecParser.knownKeys).union(["watch", "uid", "out_file", "max_memory_restart"]))
        #expect(with.ignored.isEmpty, "\(with.ignored)")
        #expect(with.table["watch"] == .bool(true) && with.table["uid"] == .string("nobody"))
        #expect(with.table["out_file"] == .string("o.log") && with.table["max_memory_restart"] == .string("200M"))
    }

    @Test func aliasesMeanTheirCanonicalOption() throws {
        let keys = Set(AppSpecParser.knownKeys).union(PM2Mapping.passThrough)
        let app = try one(["exec": .string("server.js"), "exec_interpreter": .string("node"), "interpreter_args": .string("--harmony"),
                           "output": .string("o.log"), "err": .string("e.log"), "log": .string("c.log"), "pid": .string("p.pid"),
                           "cron": .string("* * * * *"), "combine_logs": .bool(true), "user": .string("nobody")], keys: keys)
        #expect(app.table["cmd"] == .array([.string("node"), .string("--harmony"), .string("server.js")]))
        #expect(app.table["out_file"] == .string("o.log") && app.table["error_file"] == .string("e.log"))
        #expect(app.table["log_file"] == .string("c.log") && app.table["pid_file"] == .string("p.pid"))
        #expect(app.table["cron_restart"] == .string("* * * * *") && app.table["merge_logs"] == .bool(true))
        #expect(app.table["uid"] == .string("nobody"))
        // The canonical spelling wins over an alias.
        let both = try one(["script": .string("server.js"), "exec": .string("other.js")])
        #expect(both.table["script"] == .string("server.js"))
    }

    @Test func pm2DefaultsApplyToAppsFromAPM2File() throws {
        let s = try spec(try one(["script": .string("server.js")]))
        #expect(s.killSignal == "SIGINT")
        #expect(s.killTimeout == 1600)
        #expect(s.maxRestarts == 16)
        #expect(s.minUptime == 1000)
        #expect(s.instances == 1)
        #expect(s.autorestart)
        #expect(s.name == "server", "PM2's default name: the script's file name without extension")
        #expect(s.argv == ["node", "/eco/server.js"])
        #expect(s.cwd == "/eco", "an app runs beside its ecosystem file")
        // Given values win over the defaults.
        let given = try spec(try one(["script": .string("server.js"), "kill_signal": .string("SIGTERM"), "kill_timeout": .int(100),
                                      "max_restarts": .int(2), "min_uptime": .string("2s")]))
        #expect(given.killSignal == "SIGTERM" && given.killTimeout == 100 && given.maxRestarts == 2 && given.minUptime == 2000)
    }

    @Test func instancesFollowPM2() throws {
        func count(_ v: ScriptValue, cpus: Int = 4) throws -> Int {
            try spec(try one(["script": .string("server.js"), "instances": v]), cpus: cpus).instances
        }
        #expect(try count(.string("max")) == 4)
        #expect(try count(.int(0)) == 4, "0 is max")
        #expect(try count(.int(-1)) == 3, "-1 is every core but one")
        #expect(try count(.string("-1")) == 3)
        #expect(try count(.int(-1), cpus: 1) == 1, "at least one")
        #expect(try count(.int(-3), cpus: 2) == 1)
        #expect(try count(.int(3)) == 3)
        #expect(try count(.string("2")) == 2)
        let bad = try one(["script": .string("server.js"), "instances": .string("lots")])
        #expect(bad.ignored.map(\.option) == ["instances"] && bad.table["instances"] == nil)
    }

    @Test func envSetsMergeOverEnvWhenNamed() throws {
        let fields: [String: ScriptValue] = [
            "script": .string("server.js"),
            "env": .object(["NODE_ENV": .string("development"), "A": .int(1), "B": .bool(true), "O": .object(["k": .string("v")]), "N": .null]),
            "env_production": .object(["NODE_ENV": .string("production"), "C": .double(1.5)]),
            "env_staging": .object(["NODE_ENV": .string("staging")]),
        ]
        let plain = try one(fields)
        #expect(plain.table["env"] == .object(["NODE_ENV": .string("development"), "A": .string("1"), "B": .string("true"),
                                               "O": .string("{\"k\":\"v\"}")]))
        #expect(plain.mapped.contains("env_production") && plain.mapped.contains("env_staging"), "env sets are honoured, not listed")
        let prod = try spec(try one(fields, env: "production"))
        #expect(prod.env["NODE_ENV"] == "production" && prod.env["A"] == "1" && prod.env["C"] == "1.5")
        let eco = try mapping(env: "qa").map(.array([.object(fields)]))
        #expect(eco.notes == ["no app of ecosystem.config.js defines env_qa"])
        #expect(try spec(eco.apps[0]).env["NODE_ENV"] == "development")
    }

    @Test func portBecomesPORT() throws {
        let app = try one(["script": .string("server.js"), "port": .int(8080), "env": .object(["X": .string("y")])])
        #expect(app.table["env"] == .object(["X": .string("y"), "PORT": .string("8080")]))
    }

    @Test func argsAsStringOrList() throws {
        let s = try spec(try one(["script": .string("server.js"), "args": .string("--port 3000 'a b' \"c \\\" d\" e\\ f")]))
        #expect(s.argv == ["node", "/eco/server.js", "--port", "3000", "a b", "c \" d", "e f"])
        let l = try spec(try one(["script": .string("server.js"), "args": .array([.string("x y"), .int(3), .bool(false)])]))
        #expect(l.argv == ["node", "/eco/server.js", "x y", "3", "false"])
        #expect(PM2Mapping.splitArguments("  ") == [])
        #expect(PM2Mapping.splitArguments("''") == [""])
    }

    @Test func interpretersAsPM2ChoosesThem() throws {
        #expect(try spec(try one(["script": .string("run.sh")])).argv == ["bash", "/eco/run.sh"], "PM2 runs .sh with bash")
        #expect(try spec(try one(["script": .string("worker.py")])).argv == ["python3", "/eco/worker.py"])
        #expect(try spec(try one(["script": .string("worker.py"), "interpreter": .string("/usr/bin/python3.11")])).argv
                == ["/usr/bin/python3.11", "/eco/worker.py"])
        #expect(try spec(try one(["script": .string("tool"), "interpreter": .string("none")])).argv == ["/eco/tool"])
        #expect(try spec(try one(["script": .string("tool")])).argv == ["/eco/tool"], "an executable with #! runs directly")
        let www = try one(["script": .string("bin/www")])
        #expect(try spec(www).argv == ["node", "/eco/bin/www"], "no known extension, not executable: node, as PM2")
        #expect(www.comments["interpreter"] != nil)
        #expect(try spec(try one(["script": .string("npm"), "args": .string("run start")])).argv == ["npm", "run", "start"],
                "a program on PATH runs as is")
    }

    @Test func nodeArgsGoBetweenInterpreterAndScript() throws {
        let s = try spec(try one(["script": .string("server.js"), "node_args": .array([.string("--max-old-space-size=100")]),
                                  "args": .string("-v")]))
        #expect(s.argv == ["node", "--max-old-space-size=100", "server.js", "-v"])
        #expect(s.cwd == "/eco")
        let py = try spec(try one(["script": .string("worker.py"), "interpreter": .string("python3"), "interpreter_args": .string("-u -X dev")]))
        #expect(py.argv == ["python3", "-u", "-X", "dev", "worker.py"])
        let inCwd = try spec(try one(["script": .string("app.js"), "cwd": .string("api"), "node_args": .string("--inspect")]))
        #expect(inCwd.argv == ["node", "--inspect", "app.js"] && inCwd.cwd == "/eco/api", "the script is relative to cwd, as in PM2")
    }

    @Test func cwdResolvesTheScriptAsPM2Does() throws {
        let s = try spec(try one(["script": .string("app.js"), "cwd": .string("api")]))
        #expect(s.argv == ["node", "/eco/api/app.js"] && s.cwd == "/eco/api")
        let abs = try spec(try one(["script": .string("server.js"), "cwd": .string("/srv/x")]))
        #expect(abs.argv == ["node", "/srv/x/server.js"] && abs.cwd == "/srv/x")
        let missing = try one(["script": .string("gone.js")])
        #expect(missing.notes.contains { $0.contains("gone.js") }, "a missing script is said")
    }

    @Test func restartDelays() throws {
        let fixed = try spec(try one(["script": .string("server.js"), "restart_delay": .int(250)]))
        #expect(fixed.restartDelay == 250 && fixed.restartDelayMax == 250)
        let keys = Set(AppSpecParser.knownKeys).subtracting(["exp_backoff_restart_delay"])
        let backoff = try one(["script": .string("server.js"), "exp_backoff_restart_delay": .int(100), "restart_delay": .int(9)], keys: keys)
        #expect(backoff.table["restart_delay"] == .int(100) && backoff.table["restart_delay_max"] == .int(15000))
        #expect(backoff.ignored.map(\.option) == ["restart_delay"], "PM2 lets exp_backoff_restart_delay win")
        let through = try one(["script": .string("server.js"), "exp_backoff_restart_delay": .int(100)],
                              keys: keys.union(["exp_backoff_restart_delay"]))
        #expect(through.table["exp_backoff_restart_delay"] == .int(100) && through.table["restart_delay"] == nil)
    }

    @Test func readinessAndTimes() throws {
        let app = try one(["script": .string("server.js"), "wait_ready": .bool(true), "listen_timeout": .string("3s"),
                           "time": .bool(true), "stop_exit_codes": .int(3), "autorestart": .string("false")])
        let s = try spec(app)
        #expect(s.ready == .message && s.readyTimeout == 3000 && s.timestamps && s.stopExitCodes == [3] && !s.autorestart)
        #expect(PM2Mapping.duration(.string("1.5s")) == 1500 && PM2Mapping.duration(.string("2m")) == 120_000)
        #expect(PM2Mapping.duration(.string("1h")) == 3_600_000 && PM2Mapping.duration(.string("500ms")) == 500)
        #expect(PM2Mapping.duration(.int(-1)) == nil && PM2Mapping.duration(.string("2d")) == nil && PM2Mapping.duration(.string("soon")) == nil)
    }

    @Test func invalidValuesAreListedNotGuessed() throws {
        let app = try one(["script": .string("server.js"), "kill_signal": .string("SIGNOPE"), "min_uptime": .string("soon"),
                           "max_restarts": .int(-1), "exec_mode": .string("turbo"), "stop_exit_codes": .array([.int(300)]),
                           "env": .string("A=1"), "cwd": .int(3)])
        #expect(Set(app.ignored.map(\.option)) == ["kill_signal", "min_uptime", "max_restarts", "exec_mode", "stop_exit_codes", "env", "cwd"])
        #expect(app.ignored.allSatisfy { $0.hint.hasPrefix("not used: pml wants") })
        _ = try spec(app)
    }

    @Test func noOpValuesAreHonouredQuietly() throws {
        let app = try one(["script": .string("server.js"), "treekill": .bool(true), "vizion": .bool(false), "pmx": .bool(false),
                           "autostart": .bool(true), "merge_logs": .bool(true), "instance_var": .string("NODE_APP_INSTANCE"),
                           "windowsHide": .bool(true)], keys: Set(AppSpecParser.knownKeys).subtracting(PM2Mapping.passThrough))
        #expect(app.ignored.isEmpty, "\(app.ignored)")
    }

    @Test func namesAndNamespaces() throws {
        let eco = try mapping(env: "production").map(.object(["apps": .array([
            .object(["script": .string("server.js"), "name": .string("my api!")]),
            .object(["script": .string("server.js"), "name": .string("my api!")]),
            .object(["script": .string("worker.py"), "append_env_to_name": .bool(true), "namespace": .string("backend")]),
            .object(["script": .string("server.js"), "name": .string("all")]),
        ])]))
        #expect(eco.apps.map(\.name) == ["my-api-", "my-api--2", "worker-production", "app-all"])
        #expect(eco.apps[1].notes.contains { $0.contains("second app") })
        #expect(try spec(eco.apps[2]).namespace == "backend")
        #expect(try spec(eco.apps[0]).namespace == nil)
    }

    @Test func fileShapes() throws {
        let app: ScriptValue = .object(["script": .string("server.js")])
        #expect(try mapping().map(.object(["apps": .array([app])])).apps.count == 1)
        #expect(try mapping().map(.object(["pm2": .array([app])])).apps.count == 1, "PM2's older key")
        #expect(try mapping().map(.array([app, app])).apps.count == 2)
        #expect(try mapping().map(app).apps.count == 1, "one app alone")
        #expect(try mapping().map(.object(["apps": app])).apps.count == 1)
        let deploy = try mapping().map(.object(["apps": .array([app]), "deploy": .object([:])]))
        #expect(deploy.ignoredTopLevel == ["deploy"] && deploy.ignoredSummary.contains { $0.contains("deploy") })
        for bad: ScriptValue in [.object(["apps": .array([])]), .object(["name": .string("x")]), .string("x"),
                                 .object(["apps": .string("x")]), .array([.int(3)]), .array([.object(["name": .string("x")])]),
                                 .array([.object(["script": .string(" ")])])] {
            #expect(throws: PM2Mapping.Failure.self) { try mapping().map(bad) }
        }
    }

    @Test func ignoredSummaryIsOneLinePerApp() throws {
        let keys = Set(AppSpecParser.knownKeys).subtracting(PM2Mapping.passThrough)
        let eco = try mapping(keys: keys).map(.array([
            .object(["script": .string("server.js"), "name": .string("a"), "watch": .bool(true), "uid": .string("x")]),
            .object(["script": .string("server.js"), "name": .string("b")]),
        ]))
        #expect(eco.ignoredSummary.count == 1)
        #expect(eco.ignoredSummary[0].hasPrefix("a: uid (") && eco.ignoredSummary[0].contains("; watch ("))
    }

    @Test func luaAppFilesTakeEnvSetsAndNegativeInstances() throws {
        let parser = AppSpecParser(file: "/srv/app.lua", source: nil, baseDirectory: "/srv", cpuCount: 4, envName: "production")
        let s = try parser.parseApp(.object(["cmd": .array([.string("x")]), "env": .object(["A": .string("1"), "B": .string("1")]),
                                             "env_production": .object(["B": .string("2")]), "instances": .int(-1)]))
        #expect(s.env == ["A": "1", "B": "2"] && s.instances == 3)
        #expect(throws: AppFileError.self) {
            try parser.parseApp(.object(["cmd": .array([.string("x")]), "env_production": .string("B=2")]))
        }
        #expect(throws: AppFileError.self) { try parser.parseApp(.object(["cmd": .array([.string("x")]), "instances": .int(0)])) }
        #expect(throws: AppFileError.self) { try parser.parseApp(.object(["cmd": .array([.string("x")]), "namespace": .string("all")])) }
    }
}
