// PM2's operational keys in Lua app files, with real workers: log files where the app file says
// (and logrotate + `pml reloadLogs` losing nothing), pid files, the environment keys, autostart.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("PM2 options")
    struct PM2Options {
        @Test("out_file, error_file, log_file and pid_file are written where the app file says; pml logs reads them")
        func logAndPidFiles() async throws {
            try await withSandbox { box in
                let file = try box.write("app/files.lua", """
                    return {
                      { name = "files", cmd = { "sh", "-c", "echo to-stdout; echo to-stderr >&2; exec sleep 1000" },
                        out_file = "logs/out.log", error_file = "logs/err.log", log_file = "logs/all.log", pid_file = "run/files.pid" },
                      { name = "split", instances = 2, merge_logs = false, out_file = "split.log",
                        cmd = { "sh", "-c", "echo instance-$PML_INSTANCE; exec sleep 1000" } },
                    }
                    """)
                try FileManager.default.createDirectory(atPath: box.work + "/app/logs", withIntermediateDirectories: true)
                try FileManager.default.createDirectory(atPath: box.work + "/app/run", withIntermediateDirectories: true)
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("files")
                try await box.waitOnline("split", count: 2)
                let dir = box.work + "/app/"
                try await box.waitFor("stdout in out_file") { box.read(dir + "logs/out.log").contains("to-stdout") ? true : nil }
                try await box.waitFor("stderr in error_file") { box.read(dir + "logs/err.log").contains("to-stderr") ? true : nil }
                try await box.waitFor("both in log_file") {
                    let all = box.read(dir + "logs/all.log")
                    return all.contains("to-stdout") && all.contains("to-stderr") ? true : nil
                }
                #expect(!box.read(dir + "logs/out.log").contains("to-stderr"))
                #expect(!FileManager.default.fileExists(atPath: box.logsDir + "/files-out.log"), "the default file is not written")
                #expect(box.read(dir + "run/files.pid") == "\(rows[0].pid!)\n")
                try await box.waitFor("each instance in its own file") {
                    box.read(dir + "split-0.log").contains("instance-0") && box.read(dir + "split-1.log").contains("instance-1") ? true : nil
                }
                #expect(!box.read(dir + "split-0.log").contains("instance-1"))

                let logs = try await box.pmlOK("logs", "files", "--nostream", "--no-color")
                #expect(logs.stdout.contains("files out | to-stdout") && logs.stdout.contains("files err | to-stderr"), "\(logs)")
                let (d, _) = try await box.describe("files")
                #expect(d.outLog == dir + "logs/out.log" && d.errLog == dir + "logs/err.log")
                let text = try await box.pmlOK("describe", "files").stdout
                #expect(text.contains(dir + "logs/all.log") && text.contains(dir + "run/files.pid"), "\(text)")
                let monit = try await box.pmlOK("monit").stdout
                #expect(monit.contains("to-stdout"), "monit's log tail reads out_file:\n\(monit)")

                try await box.pmlOK("stop", "files")
                try await box.waitFor("the pid file removed when the worker stopped") {
                    FileManager.default.fileExists(atPath: dir + "run/files.pid") ? nil : true
                }
                // A log file that cannot be opened is said when the app starts, and nothing starts.
                let bad = try box.write("bad.lua", #"return { name = "bad", cmd = { "sleep", "100" }, out_file = "no/such/dir/out.log" }"#)
                try await box.pml("start", bad).expectCleanFailure(mentioning: ["bad", "no/such/dir/out.log"])
                #expect(try await box.rows("bad").isEmpty)
            }
        }

        @Test("logrotate in create mode, then pml reloadLogs (and SIGUSR2), loses no line of a worker writing without pause")
        func logrotateLosesNothing() async throws {
            try await withSandbox { box in
                let file = try box.write("rot.lua", """
                    return { name = "rot", out_file = "out.log",
                             cmd = { "python3", "-c", "import sys\\ni = 0\\nwhile True:\\n    i += 1\\n    sys.stdout.write(str(i) + '\\\\n')" } }
                    """)
                let out = box.work + "/out.log"
                try box.write("rotate.conf", """
                    \(out) {
                      create 0644
                      rotate 3
                      nocompress
                      postrotate
                        PML_HOME=\(box.home) \(box.binary) reloadLogs
                      endscript
                    }
                    """)
                try await box.pmlOK("start", file)
                try await box.waitOnline("rot")
                try await box.waitFor("the worker writing") { box.read(out).count > 100_000 ? true : nil }

                let rotate = Process()
                rotate.executableURL = URL(fileURLWithPath: "/usr/sbin/logrotate")
                rotate.arguments = ["-f", "-s", box.root + "/logrotate.state", box.work + "/rotate.conf"]
                try rotate.run()
                rotate.waitUntilExit()
                #expect(rotate.terminationStatus == 0, "logrotate failed")
                try await box.waitFor("new lines in the new file") { box.numbers(out).count > 1000 ? true : nil }

                // SIGUSR2 to the daemon does what reloadLogs does.
                #expect(rename(out, out + ".manual") == 0)
                kill(try #require(box.daemonPid), SIGUSR2)
                try await box.waitFor("a new file after SIGUSR2") { box.numbers(out).count > 1000 ? true : nil }
                // The keeper (keeper.pid) passes SIGUSR2 on to the daemon, and lives on.
                let keeper = try #require(Int32(box.read(box.home + "/keeper.pid").trimmingCharacters(in: .whitespacesAndNewlines)))
                #expect(rename(out, out + ".keeper") == 0)
                kill(keeper, SIGUSR2)
                try await box.waitFor("a new file after SIGUSR2 to the keeper") { box.numbers(out).count > 1000 ? true : nil }
                #expect(Proc.alive(keeper))
                try await box.pmlOK("stop", "rot")

                var seen = Set<Int>()
                for f in [out + ".1", out + ".manual", out + ".keeper", out] {
                    let numbers = box.numbers(f)
                    #expect(numbers.count > 1000, "\(f) holds \(numbers.count) lines")
                    seen.formUnion(numbers)
                }
                let top = try #require(seen.max())
                let missing = (1...top).filter { !seen.contains($0) }
                #expect(missing.isEmpty, "\(missing.count) of \(top) lines lost, first \(missing.prefix(5))")
            }
        }

        @Test("increment_var, instance_var and filter_env shape the workers' environment; autostart = false registers only")
        func environmentAndAutostart() async throws {
            try await withSandbox { box in
                let file = try box.write("envs.lua", """
                    return {
                      { name = "envs", instances = 2, env = { PORT = "3000" }, increment_var = "PORT", instance_var = "INSTANCE_ID",
                        filter_env = { "SECRET_" }, cmd = { "sh", "-c", "env > env-$INSTANCE_ID.txt; exec sleep 1000" } },
                      { name = "later", autostart = false, cmd = { "sleep", "1000" } },
                    }
                    """)
                try await box.pmlOK("start", file, env: ["SECRET_TOKEN": "hush", "KEEP_ME": "kept"])
                try await box.waitOnline("envs", count: 2)
                let env0 = try await box.waitFor("instance 0's environment") { box.lines("env-0.txt").count > 3 ? box.lines("env-0.txt") : nil }
                let env1 = try await box.waitFor("instance 1's environment") { box.lines("env-1.txt").count > 3 ? box.lines("env-1.txt") : nil }
                #expect(env0.contains("PORT=3000") && env1.contains("PORT=3001"))
                #expect(env0.contains("INSTANCE_ID=0") && env1.contains("INSTANCE_ID=1"))
                #expect(env0.contains("KEEP_ME=kept"))
                #expect(!env0.contains { $0.hasPrefix("SECRET_TOKEN=") }, "filter_env drops SECRET_*")
                #expect(!env0.contains { $0.hasPrefix("NODE_APP_INSTANCE=") }, "instance_var replaces NODE_APP_INSTANCE")

                let later = try await box.rows("later")
                #expect(later.count == 1 && later[0].status == "stopped" && later[0].pid == nil, "\(later)")
                try await box.pmlOK("start", "later")
                try await box.waitOnline("later")
            }
        }

        @Test("max_memory_restart restarts a worker that grows past it; the note says why")
        func memoryLimit() async throws {
            try await withSandbox { box in
                let file = try box.write("grow.lua", """
                    return { name = "grow", max_memory_restart = "60M",
                             cmd = { "python3", "-c", "import time\\nb = []\\nwhile True:\\n    b.append(b'x' * 4194304)\\n    time.sleep(0.1)" } }
                    """)
                try await box.pmlOK("start", file)
                let first = try await box.waitOnline("grow")[0]
                let restarted = try await box.waitFor("a restart past 60M", timeout: 20) { () -> Row? in
                    let r = try await box.rows("grow").first
                    return r.flatMap { $0.restarts >= 1 && $0.pid != nil && $0.pid != first.pid ? $0 : nil }
                }
                #expect(!Proc.alive(first.pid!), "the grown worker is gone")
                #expect(restarted.memory < 200 * 1024 * 1024)
                let err = box.read(box.logsDir + "/grow-err.log")
                #expect(err.contains("over max_memory_restart 62914560"), "\(err)")
            }
        }

        @Test("cron_restart restarts on schedule (6 fields, seconds first); a bad expression is refused with its line")
        func cronRestart() async throws {
            try await withSandbox { box in
                let file = try box.write("cron.lua", """
                    return { name = "cron", cron_restart = "*/2 * * * * *", cmd = { "sleep", "1000" } }
                    """)
                try await box.pmlOK("start", file)
                let first = try await box.waitOnline("cron")[0]
                var pids: Set<Int32> = [first.pid!]
                try await box.waitFor("two restarts on the schedule", timeout: 10) { () -> Bool? in
                    if let r = try await box.rows("cron").first, let pid = r.pid, r.status == "online" { pids.insert(pid) }
                    return pids.count >= 3 ? true : nil
                }
                let row = try #require(try await box.rows("cron").first)
                #expect(row.restarts >= 2, "\(row)")
                #expect(box.read(box.logsDir + "/cron-err.log").contains("cron_restart \"*/2 * * * * *\": restarting"))

                let bad = try box.write("badcron.lua", """
                    return {
                      name = "badcron", cmd = { "sleep", "1" },
                      cron_restart = "0 25 * * *",
                    }
                    """)
                try await box.pml("start", bad).expectCleanFailure(mentioning: ["badcron.lua:3:", "hour field \"25\""])
            }
        }

        @Test("as root, uid = \"nobody\" runs the worker as nobody with its groups and su's environment; output still logged")
        func runAsNobody() async throws {
            #expect(geteuid() == 0, "this test needs root (as in CI): pml switches users only when its daemon is root")
            try await withSandbox { box in
                let file = try box.write("nobody.lua", """
                    return { name = "nob", uid = "nobody", cmd = { "sh", "-c", "echo user=$USER home=$HOME; exec sleep 1000" } }
                    """)
                try await box.pmlOK("start", file)
                let row = try await box.waitOnline("nob")[0]
                let status = try String(contentsOfFile: "/proc/\(row.pid!)/status", encoding: .utf8)
                let field = { (name: String) in
                    status.split(separator: "\n").first { $0.hasPrefix(name + ":") }.map { $0.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst().map(String.init) } ?? []
                }
                #expect(field("Uid") == ["65534", "65534", "65534", "65534"], "\(status)")
                #expect(field("Gid") == ["65534", "65534", "65534", "65534"], "\(status)")
                #expect(!field("Groups").contains("0"), "no root group left: \(field("Groups"))")
                try await box.waitFor("the worker's output in its log") {
                    box.read(box.logsDir + "/nob-out.log").contains("user=nobody home=/nonexistent") ? true : nil
                }
                let unknown = try box.write("ghost.lua", #"return { name = "ghost", uid = "no-such-user-here", cmd = { "sleep", "9" } }"#)
                try await box.pml("start", unknown).expectCleanFailure(mentioning: ["ghost", "no user named \"no-such-user-here\""])
            }
        }

        @Test("pml.reload(app, opts) from a hook replaces every worker; onReload reports; bad calls raise at the caller")
        func luaReload() async throws {
            try await withSandbox { box in
                let file = try box.write("lr.lua", """
                    return {
                      name = "lr", instances = 2, ready = 100, cmd = { "sh", "-c", "echo $$ >> pids.txt; exec sleep 1000" },
                      onStart = function(app)
                        pml.after(300, function()
                          local ok, err = pcall(pml.reload, "nope")
                          pml.log("BAD1 " .. tostring(err))
                          ok, err = pcall(pml.reload, app.name, { parallel = 0 })
                          pml.log("BAD2 " .. tostring(err))
                          pml.reload(app.name, { parallel = 2 })
                        end)
                      end,
                      onReload = function(app, result) pml.log("RELOADED " .. app.name .. " ok=" .. tostring(result.ok)) end,
                    }
                    """)
                try await box.pmlOK("start", file)
                try await box.waitFor("onReload after pml.reload", timeout: 10) {
                    box.read(box.daemonLog).contains("RELOADED lr ok=true") ? true : nil
                }
                // Each worker wrote its pid when it started: the first two, then their replacements.
                let started = box.numbers("pids.txt").map(Int32.init)
                #expect(started.count == 4, "two workers, then two replacements: \(started)")
                let now = Set(try await box.waitOnline("lr", count: 2).compactMap(\.pid))
                #expect(now == Set(started.suffix(2)) && now.isDisjoint(with: started.prefix(2)), "every worker replaced: \(started) → \(now)")
                let log = box.read(box.daemonLog)
                #expect(log.contains("BAD1 no app named \"nope\""), "\(log.suffix(2000))")
                #expect(log.contains("BAD2 pml.reload: parallel must be a whole number from 1 to 1024, got 0"), "\(log.suffix(2000))")
            }
        }
    }
}
