// PM2 ecosystem files are first-class (issue 11): `pml start ecosystem.config.js|.json|.yaml` starts the
// apps the file declares — never the file itself — with the processes, names, argv and environments
// PM2 would give them (workers print what they see); `--env production` merges env_production;
// `--update-env` passes a changed environment and a restart or reload without it keeps the old one;
// several targets, namespaces, ids; startOrRestart / startOrReload are idempotent.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Ecosystem files")
    struct EcosystemTests {
        /// A Node worker that prints, once, one JSON line of what it sees, then stays up.
        static let nodeReporter = """
            const e = process.env;
            console.log(JSON.stringify({ app: e.PML_APP, instance: e.NODE_APP_INSTANCE, argv: process.argv.slice(2),
              execArgv: process.execArgv, cwd: process.cwd(), NODE_ENV: e.NODE_ENV ?? null, FOO: e.FOO ?? null,
              SHARED: e.SHARED ?? null, PORT: e.PORT ?? null }));
            setInterval(() => {}, 1000);
            """
        /// The same in Python.
        static let pythonReporter = """
            import json, os, sys, time
            print(json.dumps({"app": os.environ.get("PML_APP"), "argv": sys.argv[1:], "cwd": os.getcwd(),
                              "NODE_ENV": os.environ.get("NODE_ENV"), "python_flags": sys.orig_argv[1:2]}))
            sys.stdout.flush()
            while True: time.sleep(1)
            """

        static let cores = Int(max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))))

        /// The JSON lines an app's workers printed, once `count` of them have.
        static func reports(_ box: Sandbox, _ app: String, count: Int) async throws -> [[String: Any]] {
            try await box.waitFor("\(count) report(s) from \(app)") {
                let lines = box.lines(box.logsDir + "/\(app)-out.log")
                let parsed = lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
                return parsed.count >= count ? parsed : nil
            }
        }

        /// `pml args` with extra environment; must succeed.
        static func run(_ box: Sandbox, _ args: [String], env: [String: String]) async throws {
            let r = try await box.pml(args, env: env)
            guard r.ok else { throw HarnessError("expected success:\n\(r)") }
        }

        static let ecosystemJS = """
            // Evaluated by node as PM2 does: a line that ran as an app would never stop printing.
            const shared = { SHARED: "yes" };
            module.exports = {
              apps: [
                {
                  name: "api",
                  script: "./reporter.js",
                  args: "--port 3000 'two words'",
                  node_args: "--max-old-space-size=64",
                  exec_mode: "cluster",
                  instances: "max",
                  env: { ...shared, NODE_ENV: "development", FOO: 1 },
                  env_production: { NODE_ENV: "production" },
                  vizion: true,
                },
                {
                  name: "worker",
                  script: "worker.py",
                  interpreter: "python3",
                  interpreter_args: "-u",
                  cwd: "jobs",
                  instances: -1,
                  namespace: "backend",
                  env_production: { NODE_ENV: "production" },
                },
                { script: "reporter.js", port: 4100 },
              ],
            };
            """

        @Test("module.exports with apps: names, counts, argv, cwd and env_production as PM2 gives them; the file never runs as an app")
        func javascriptEcosystem() async throws {
            try await withSandbox { box in
                try box.write("ecosystem.config.js", Self.ecosystemJS)
                try box.write("reporter.js", Self.nodeReporter)
                try box.write("jobs/worker.py", Self.pythonReporter)

                let r = try await box.pml("start", "ecosystem.config.js", "--env", "production")
                #expect(r.ok, "\(r)")
                // What pml does not honour is said once, on stderr, naming app and option.
                #expect(r.stderr.split(separator: "\n").filter { $0.contains("vizion") }.count == 1, "\(r)")
                #expect(r.stderr.contains("api: vizion"), "\(r)")

                let minusOne = max(1, Self.cores - 1)
                try await box.waitOnline("api", count: Self.cores)
                try await box.waitOnline("worker", count: minusOne)
                try await box.waitOnline("reporter")
                #expect(Set(try await box.ls().map(\.name)) == ["api", "worker", "reporter"], "only the declared apps run")

                let api = try await Self.reports(box, "api", count: Self.cores)
                for report in api {
                    #expect(report["argv"] as? [String] == ["--port", "3000", "two words"], "\(report)")
                    #expect(report["execArgv"] as? [String] == ["--max-old-space-size=64"], "\(report)")
                    #expect(report["NODE_ENV"] as? String == "production", "env_production over env: \(report)")
                    #expect(report["FOO"] as? String == "1" && report["SHARED"] as? String == "yes", "\(report)")
                    #expect(report["cwd"] as? String == box.work, "beside the ecosystem file: \(report)")
                }
                #expect(Set(api.compactMap { $0["instance"] as? String }) == Set((0..<Self.cores).map(String.init)))

                let worker = try await Self.reports(box, "worker", count: minusOne)
                #expect(worker.allSatisfy { $0["cwd"] as? String == box.work + "/jobs" && $0["NODE_ENV"] as? String == "production" },
                        "\(worker)")
                #expect(worker.allSatisfy { $0["python_flags"] as? [String] == ["-u"] }, "interpreter_args reach python: \(worker)")

                let reporter = try await Self.reports(box, "reporter", count: 1)
                #expect(reporter[0]["PORT"] as? String == "4100" && reporter[0]["NODE_ENV"] is NSNull, "\(reporter)")

                let shown = try await box.pmlOK("describe", "worker").stdout
                #expect(shown.contains("\(box.work)/ecosystem.config.js (PM2 ecosystem)") && shown.contains("namespace       backend"), "\(shown)")
                // PM2's defaults for apps from a PM2 file.
                let (d, _) = try await box.describe("api")
                #expect(d.spec.killSignal == "SIGINT" && d.spec.killTimeout == 1600 && d.spec.maxRestarts == 16 && d.spec.minUptime == 1000)
            }
        }

        @Test(".json and .yaml ecosystems start the same apps, with --only and env sets")
        func jsonAndYAML() async throws {
            try await withSandbox { box in
                try box.write("reporter.js", Self.nodeReporter)
                try box.write("ecosystem.json", """
                    { "apps": [ { "name": "j1", "script": "reporter.js", "args": ["a b", "c"], "env": { "FOO": "json" },
                                  "env_staging": { "FOO": "staging" } },
                                { "name": "j2", "script": "reporter.js" } ] }
                    """)
                try box.write("conf/ecosystem.yaml", """
                    defaults: &defaults
                      script: ../reporter.js
                      instances: 5
                      env:
                        FOO: yaml
                        NODE_ENV: development
                    apps:
                      - <<: *defaults
                        name: y1
                        args: --flag 'quoted arg'
                        instances: 2
                        env_production:
                          NODE_ENV: production
                    """)
                try await box.pmlOK("start", "ecosystem.json", "--only", "j1", "--env", "staging")
                try await box.waitOnline("j1")
                #expect(try await box.rows("j2").isEmpty, "--only leaves j2 out")
                let j1 = try await Self.reports(box, "j1", count: 1)
                #expect(j1[0]["argv"] as? [String] == ["a b", "c"] && j1[0]["FOO"] as? String == "staging", "\(j1)")

                try await box.pmlOK("start", "conf/ecosystem.yaml", "--env", "production")
                try await box.waitOnline("y1", count: 2)
                let y1 = try await Self.reports(box, "y1", count: 2)
                #expect(y1.allSatisfy { $0["argv"] as? [String] == ["--flag", "quoted arg"] && $0["FOO"] as? String == "yaml"
                        && $0["NODE_ENV"] as? String == "production" && $0["cwd"] as? String == box.work + "/conf" }, "\(y1)")

                // Bad files: one line, nothing started.
                try box.write("broken.yaml", "apps: [ { name: x\n")
                try await box.pml("start", "broken.yaml").expectCleanFailure(mentioning: ["broken.yaml"])
                // Aliases that expand to billions of values are refused, not expanded.
                var bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                for (i, name) in ["b", "c", "d", "e", "f", "g", "h", "i"].enumerated() {
                    let prev = i == 0 ? "a" : ["b", "c", "d", "e", "f", "g", "h"][i - 1]
                    bomb += "\(name): &\(name) [" + Array(repeating: "*\(prev)", count: 10).joined(separator: ", ") + "]\n"
                }
                try box.write("bomb.yaml", bomb + "apps: [ { script: reporter.js, args: *i } ]\n")
                try await box.pml("start", "bomb.yaml").expectCleanFailure(mentioning: ["bomb.yaml"])
                try box.write("empty.json", "{ \"apps\": [] }")
                try await box.pml("start", "empty.json").expectCleanFailure(mentioning: ["empty.json"])
                try await box.pml("start", "ecosystem.json", "--only", "nope").expectCleanFailure(mentioning: ["nope"])
                try await box.pml("start", "missing.config.js").expectCleanFailure(mentioning: ["missing.config.js"])
                #expect(Set(try await box.ls().map(\.name)) == ["j1", "y1"])
            }
        }

        @Test("--update-env passes a changed environment on restart and reload; without it the started one stays")
        func updateEnv() async throws {
            try await withSandbox { box in
                try box.write("reporter.js", Self.nodeReporter)
                try box.write("ecosystem.config.js", "module.exports = { apps: [ { name: \"api\", script: \"reporter.js\" } ] };\n")
                try await Self.run(box, ["start", "ecosystem.config.js"], env: ["FOO": "one"])
                try await box.waitOnline("api")
                func foo() async throws -> String? {
                    let id = try await box.rows("api")[0].id
                    let env = try await box.pmlOK("env", String(id)).stdout
                    return env.split(separator: "\n").first { $0.hasPrefix("FOO: ") }.map { String($0.dropFirst(5)) }
                }
                /// What the n-th worker printed (each waits for the one before to have printed).
                func seen(_ n: Int) async throws -> String? {
                    try await Self.reports(box, "api", count: n)[n - 1]["FOO"] as? String
                }
                #expect(try await foo() == "one")
                #expect(try await seen(1) == "one")

                try await Self.run(box, ["restart", "api"], env: ["FOO": "two"])
                #expect(try await seen(2) == "one", "a restart without --update-env keeps the environment")
                try await Self.run(box, ["restart", "api", "--update-env"], env: ["FOO": "two"])
                #expect(try await seen(3) == "two")
                #expect(try await foo() == "two", "pml env shows it")

                try await Self.run(box, ["reload", "api"], env: ["FOO": "three"])
                #expect(try await seen(4) == "two", "a reload without --update-env keeps it too")
                try await Self.run(box, ["reload", "api", "--update-env"], env: ["FOO": "three"])
                #expect(try await seen(5) == "three")
            }
        }

        @Test("several targets, namespaces, ecosystem files as targets, reset, id and pid; startOrRestart/startOrReload are idempotent")
        func targets() async throws {
            try await withSandbox { box in
                try box.write("reporter.js", Self.nodeReporter)
                try box.write("ecosystem.config.js", """
                    module.exports = { apps: [
                      { name: "api", script: "reporter.js", instances: 2 },
                      { name: "mailer", script: "reporter.js", namespace: "backend" },
                      { name: "jobs", script: "reporter.js", namespace: "backend" },
                    ] };
                    """)
                try await box.pmlOK("startOrRestart", "ecosystem.config.js")
                try await box.waitOnline("api", count: 2)
                try await box.waitOnline("mailer")
                try await box.waitOnline("jobs")

                // A namespace is a target; several targets in one command.
                try await box.pmlOK("stop", "backend")
                #expect(try await box.ls().filter { $0.status == "stopped" }.map(\.name).sorted() == ["jobs", "mailer"])
                try await box.pmlOK("restart", "mailer", "jobs")
                try await box.waitOnline("mailer")
                try await box.waitOnline("jobs")
                let ids = try await box.rows("api").map(\.id)
                try await box.pmlOK("stop", String(ids[0]), String(ids[1]))
                #expect(try await box.rows("api").allSatisfy { $0.status == "stopped" })
                // One unknown target and nothing changes.
                try await box.pml("stop", "mailer", "nope").expectCleanFailure(mentioning: ["nope"])
                #expect(try await box.rows("mailer")[0].status == "online")

                // startOrReload starts what is stopped and reloads what runs; twice is fine.
                try await box.pmlOK("startOrReload", "ecosystem.config.js")
                try await box.waitOnline("api", count: 2)
                try await box.pmlOK("startOrReload", "ecosystem.config.js")
                try await box.waitOnline("api", count: 2)
                #expect(try await box.ls().count == 4)

                #expect(try await box.pmlOK("id", "api").stdout == "[ \(try await box.rows("api").map { String($0.id) }.joined(separator: ", ")) ]\n")
                let pids = try await box.pmlOK("pid", "api").stdout.split(separator: "\n").compactMap { Int32($0) }
                #expect(Set(pids) == Set(try await box.rows("api").compactMap(\.pid)))
                try await box.pmlOK("restart", "api")
                try await box.waitOnline("api", count: 2)
                #expect(try await box.rows("api").allSatisfy { $0.restarts > 0 })
                try await box.pmlOK("reset", "api")
                #expect(try await box.rows("api").allSatisfy { $0.restarts == 0 })

                // Aliases PM2 users type.
                #expect(try await box.pmlOK("show", "api").stdout.contains("api"))
                #expect(try await box.pmlOK("info", "api").stdout.contains("api"))
                let jlist = try await box.pmlOK("jlist").stdout
                #expect((try JSONSerialization.jsonObject(with: Data(jlist.utf8)) as? [Any])?.count == 4)
                #expect(try await box.pmlOK("prettylist").stdout.contains("\n  {"))

                // The ecosystem file as a target: its apps, and only those.
                try box.write("other.js", Self.nodeReporter)
                try await box.pmlOK("start", "other.js")
                try await box.waitOnline("other")
                try await box.pmlOK("delete", "ecosystem.config.js", "--only", "api,jobs")
                #expect(Set(try await box.ls().map(\.name)) == ["mailer", "other"])
                try await box.pmlOK("delete", "ecosystem.config.js")
                #expect(try await box.ls().map(\.name) == ["other"])
            }
        }
    }
}
