// `pml import`: PM2 ecosystem files (.js through a real node, .json read directly) become app files
// that `pml check` accepts and `pml start` runs with the mapped values; what has no pml equivalent
// is listed per app; failures are one line and write nothing; an existing file is kept without --force.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Import from PM2")
    struct ImportTests {
        static let ecosystem = """
            module.exports = {
              apps: [
                {
                  name: "web",
                  script: "./server.js",
                  exec_mode: "cluster",
                  instances: "max",
                  env: { NODE_ENV: "production", PORT: 3000 },
                  env_production: { NODE_ENV: "production" },
                  max_memory_restart: "300M",
                  cron_restart: "0 3 * * *",
                  watch: true,
                },
                {
                  name: "worker",
                  script: "worker.py",
                  args: "--queue 'high prio' -v",
                  min_uptime: "5s",
                  exp_backoff_restart_delay: 100,
                  out_file: "worker-out.log",
                },
              ],
            };
            """

        @Test("a two-app ecosystem.config.js imports into an app file pml check accepts and pml start runs as mapped")
        func ecosystemJS() async throws {
            try await withSandbox { box in
                try box.write("ecosystem.config.js", Self.ecosystem)
                try box.write("server.js", "setInterval(() => {}, 1000);\n")
                try box.write("worker.py", "import time\nwhile True: time.sleep(1)\n")

                let r = try await box.pml("import", "ecosystem.config.js")
                #expect(r.ok, "import succeeds:\n\(r)")
                let text = box.read("app.lua")
                #expect(!text.isEmpty, "app.lua is written beside the ecosystem file:\n\(r)")

                // pml check accepts it and shows both apps with the mapped command lines.
                let check = try await box.pml("check", "app.lua")
                #expect(check.ok, "pml check accepts the imported file:\n\(check)\n\(text)")
                #expect(check.stdout.contains("ok, 2 apps"), "\(check)")
                let cores = Int(max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))))
                #expect(check.stdout.contains("web: \(cores) × node \(box.work)/server.js"), "\(check)")
                #expect(check.stdout.contains("worker: 1 × python3 \(box.work)/worker.py --queue high prio -v"), "\(check)")

                // The file holds the mapped values, readable, and notes what pml can't do itself.
                for needle in [
                    "name = \"web\"", "script = \"./server.js\"", "instances = \"max\"", "NODE_ENV = \"production\"",
                    "PORT = \"3000\"", "kill_signal = \"SIGINT\"", "kill_timeout = 1600", "max_restarts = 16",
                    "name = \"worker\"", "args = { \"--queue\", \"high prio\", \"-v\" }", "min_uptime = 5000",
                ] {
                    #expect(text.contains(needle), "app.lua should contain \(needle):\n\(text)")
                }

                // The summary: mapped options per app, then every unmapped one with its app.
                let out = r.stdout
                #expect(out.contains("web: mapped name, script, env, instances, exec_mode, env_production"), "\(r)")
                #expect(out.contains("worker: mapped name, script, args, min_uptime, exp_backoff_restart_delay"), "\(r)")
                let manual = out.split(separator: "\n").map(String.init).filter { $0.contains(" — ") }
                // Options under PM2's name in pml: a key of the app file once pml honours them, else
                // listed (and a comment) — one or the other, never dropped.
                let passThrough = [("web", "max_memory_restart", "\"300M\""), ("web", "cron_restart", "\"0 3 * * *\""),
                                   ("web", "watch", "true"), ("worker", "out_file", "\"worker-out.log\""),
                                   ("worker", "exp_backoff_restart_delay", "100")]
                var listed = 0
                for (app, option, value) in passThrough {
                    let asKey = text.contains("\n    \(option) = \(value),\n")
                    let asListed = manual.contains { $0.hasPrefix("  \(app): \(option) = ") }
                    #expect(asKey != asListed, "\(app)'s \(option) is a key or listed, not both or neither:\n\(text)\n\(r)")
                    if asListed { listed += 1 }
                }
                #expect(manual.count == listed, "only those are not honoured:\n\(r)")

                // Started, the apps carry the mapped values.
                try await box.pmlOK("start", "app.lua")
                try await box.waitOnline("worker")
                try await box.waitOnline("web", count: cores)
                let (worker, _) = try await box.describe("worker")
                #expect(worker.spec.minUptime == 5000)
                #expect(Array(worker.spec.argv.suffix(3)) == ["--queue", "high prio", "-v"])
                let (web, _) = try await box.describe("web")
                #expect(web.spec.env["NODE_ENV"] == "production" && web.spec.env["PORT"] == "3000", "\(web.spec.env)")
                #expect(web.spec.instances == cores)
            }
        }

        @Test("a .json ecosystem imports too; strings with quotes, backslashes and newlines survive exactly")
        func ecosystemJSON() async throws {
            try await withSandbox { box in
                try box.write("sub/run.sh", "exec sleep 1000\n")
                let tricky = "say \"hi\" \\ back\\slash\nsecond line\ttab ]] é \u{7}bell"
                let env: [String: Any] = ["TRICKY": tricky, "COUNT": 3, "FLAG": true, "end": "reserved word"]
                let eco: [String: Any] = ["apps": [[
                    "name": "json-app", "script": "run.sh", "args": ["one two", "it's"], "env": env,
                    "kill_timeout": 3000, "stop_exit_codes": [0, 3], "time": true, "autorestart": true,
                    "listen_timeout": 4000, "max_restarts": 7, "restart_delay": 250,
                    "source_map_support": true,
                ]]]
                try box.write("sub/ecosystem.json", String(decoding: try JSONSerialization.data(withJSONObject: eco), as: UTF8.self))

                let r = try await box.pml("import", "sub/ecosystem.json", "-o", "imported.lua")
                #expect(r.ok, "\(r)")
                let text = box.read("imported.lua")
                #expect(text.contains("return {\n  name = \"json-app\""), "one app: one table:\n\(text)")
                #expect(r.stdout.contains("json-app: source_map_support = true — "), "\(r)")

                let check = try await box.pml("check", "imported.lua")
                #expect(check.ok, "\(check)\n\(text)")
                #expect(check.stdout.contains("json-app: 1 × bash \(box.work)/sub/run.sh one two it's (in \(box.work)/sub)"),
                        "paths stay relative to the ecosystem file when the output is elsewhere:\n\(check)")

                try await box.pmlOK("start", "imported.lua")
                try await box.waitOnline("json-app")
                let (d, _) = try await box.describe("json-app")
                #expect(d.spec.env["TRICKY"] == tricky, "exact round trip: \(String(describing: d.spec.env["TRICKY"]))")
                #expect(d.spec.env["COUNT"] == "3" && d.spec.env["FLAG"] == "true" && d.spec.env["end"] == "reserved word")
                #expect(d.spec.killTimeout == 3000 && d.spec.stopExitCodes == [0, 3] && d.spec.timestamps)
                #expect(d.spec.maxRestarts == 7 && d.spec.restartDelay == 250 && d.spec.restartDelayMax == 250,
                        "PM2's fixed restart_delay stays fixed")
                #expect(d.spec.cwd == box.work + "/sub")
            }
        }

        @Test("a JS file that throws or does not parse, or no node: one pml: line, nothing written")
        func failures() async throws {
            try await withSandbox { box in
                try box.write("boom.config.js", """
                    const base = { script: "a.js" };
                    throw new Error("no config for " + process.env.NOPE_UNSET + "\\nsecond line");
                    """)
                let r = try await box.pml("import", "boom.config.js")
                r.expectCleanFailure(mentioning: ["boom.config.js:2", "Error: no config for undefined"])
                #expect(!FileManager.default.fileExists(atPath: box.work + "/app.lua"), "nothing written")

                try box.write("syntax.config.js", "module.exports = {\n  apps: [ { name: \"x\" script: \"a.js\" } ],\n};\n")
                let s = try await box.pml("import", "syntax.config.js", "-o", "s.lua")
                s.expectCleanFailure(mentioning: ["syntax.config.js:2", "SyntaxError"])
                #expect(!FileManager.default.fileExists(atPath: box.work + "/s.lua"))

                try box.write("ok.config.js", "module.exports = [ { name: \"x\", script: \"a.js\" } ];\n")
                let noNode = try await box.pml(["import", "ok.config.js", "-o", "n.lua"], env: ["PATH": "/nonexistent"])
                noNode.expectCleanFailure(mentioning: ["node"])
                #expect(!FileManager.default.fileExists(atPath: box.work + "/n.lua"))

                try box.write("bad.json", "{\"apps\": [")
                try await box.pml("import", "bad.json", "-o", "j.lua").expectCleanFailure(mentioning: ["bad.json", "JSON"])
                #expect(!FileManager.default.fileExists(atPath: box.work + "/j.lua"))
            }
        }

        @Test("an existing output file is kept unless --force")
        func refusesOverwrite() async throws {
            try await withSandbox { box in
                try box.write("ecosystem.config.js", "module.exports = { apps: [ { name: \"x\", script: \"a.js\" } ] };\n")
                try box.write("app.lua", "-- mine\n")
                let r = try await box.pml("import", "ecosystem.config.js")
                r.expectCleanFailure(mentioning: ["app.lua", "--force"])
                #expect(box.read("app.lua") == "-- mine\n", "the existing file is untouched")

                let forced = try await box.pml("import", "ecosystem.config.js", "--force")
                #expect(forced.ok, "\(forced)")
                #expect(box.read("app.lua").contains("name = \"x\""))
                #expect(try await box.pml("check", "app.lua").ok)
                #expect(try FileManager.default.contentsOfDirectory(atPath: box.work).filter { $0.contains(".tmp-") }.isEmpty,
                        "no temp file left behind")
            }
        }
    }
}
