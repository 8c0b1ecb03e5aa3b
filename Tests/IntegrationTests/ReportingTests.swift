// `pml ls --json`, `pml describe` and `pml logs` tell the truth about real processes; the
// lifecycle commands (stop, restart, delete, signal, flush) do what they say.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Reporting and lifecycle")
    struct Reporting {
        @Test("ls --json and describe --json report real pids, env, cwd and the spec")
        func lsAndDescribeTellTheTruth() async throws {
            try await withSandbox { box in
                try box.write("app/sub/.keep", "")
                let worker = try box.write("app/worker.sh", """
                    #!/bin/sh
                    echo $$ > \(box.work)/pid-$PML_INSTANCE
                    pwd > \(box.work)/cwd-$PML_INSTANCE
                    env > \(box.work)/env-$PML_INSTANCE
                    exec sleep 1000
                    """, executable: true)
                let file = try box.write("app/truth.lua", """
                    return {
                      name = "truth",
                      cmd = { "sh", \(lua(worker)) },
                      cwd = "sub",
                      instances = 2,
                      env = { FOO = "bar baz", NUM = 42 },
                      min_uptime = 700,
                      max_restarts = 7,
                      restart_delay = 250,
                      kill_timeout = 1500,
                      stop_exit_codes = { 0, 9 },
                      onExit = function(worker, exit) end,
                    }
                    """)
                // The daemon is already up (started by ping) when the app starts: the worker must
                // still get the environment the CLI had at `pml start` time.
                try await box.pmlOK("ping")
                let marker = "m\(UInt32.random(in: 1..<UInt32.max))"
                try await box.pmlOK("start", file, env: ["PML_IT_CLIENT": marker])

                let rows = try await box.waitOnline("truth", count: 2)
                #expect(rows.map(\.instance) == [0, 1])
                #expect(Set(rows.map(\.id)).count == 2, "distinct ids: \(rows)")
                #expect(rows.allSatisfy { $0.restarts == 0 && $0.memory >= 0 && $0.cpu >= 0 })
                #expect(rows.allSatisfy { ($0.uptimeMs ?? -1) >= 0 }, "online workers have an uptime: \(rows)")
                #expect(rows.allSatisfy { $0.mode == "cluster" || $0.mode == "fork" })

                for row in rows {
                    let i = row.instance
                    let reported = try #require(row.pid)
                    let real = try await box.waitFor("worker \(i) to write its pid") {
                        box.numbers("pid-\(i)").first.map(Int32.init)
                    }
                    // The worker execs sleep, so its pid is the one pml spawned.
                    #expect(reported == real, "ls pid \(reported) is the real process \(real)")
                    #expect(Proc.pgid(real) == real, "a worker leads its own process group")
                    let cwd = box.read("cwd-\(i)").trimmingCharacters(in: .whitespacesAndNewlines)
                    #expect(cwd == box.work + "/app/sub", "cwd relative to the app file's folder")

                    let env = try await box.waitFor("worker \(i) env") { () -> [String: String]? in
                        let lines = box.lines("env-\(i)")
                        guard lines.contains(where: { $0.hasPrefix("PML_") }) else { return nil }
                        var env: [String: String] = [:]
                        for line in lines {
                            if let eq = line.firstIndex(of: "=") { env[String(line[..<eq])] = String(line[line.index(after: eq)...]) }
                        }
                        return env
                    }
                    #expect(env["FOO"] == "bar baz")
                    #expect(env["NUM"] == "42")
                    #expect(env["PML_APP"] == "truth")
                    #expect(env["PML_ID"] == String(row.id))
                    #expect(env["PML_INSTANCE"] == String(i))
                    #expect(env["NODE_APP_INSTANCE"] == String(i))
                    #expect(env["PML_IPC_FD"].flatMap(Int.init) != nil, "PML_IPC_FD is an fd number: \(env["PML_IPC_FD"] ?? "missing")")
                    #expect(env["PML_IT_CLIENT"] == marker, "workers inherit the CLI's environment at start")
                }

                let (d, raw) = try await box.describe("truth")
                #expect(d.name == "truth")
                #expect(d.status == "online")
                #expect(d.workers.count == 2)
                #expect(Set(d.workers.compactMap(\.process.pid)) == Set(rows.compactMap(\.pid)))
                #expect(d.workers.allSatisfy { $0.lastExit == nil && $0.unstableRestarts == 0 })
                #expect(d.spec.instances == 2)
                #expect(d.spec.env["FOO"] == "bar baz")
                #expect(d.spec.cwd == box.work + "/app/sub")
                #expect(d.spec.argv.count == 2 && d.spec.argv.last == worker, "argv: \(d.spec.argv)")
                #expect(d.spec.minUptime == 700)
                #expect(d.spec.maxRestarts == 7)
                #expect(d.spec.restartDelay == 250)
                #expect(d.spec.restartDelayMax == 15000, "default restart_delay_max")
                #expect(d.spec.stableAfter == 30000, "default stable_after")
                #expect(d.spec.killTimeout == 1500)
                #expect(d.spec.killSignal == "SIGTERM", "default kill_signal")
                #expect(d.spec.stopExitCodes == [0, 9])
                #expect(d.spec.autorestart == true)
                #expect(d.spec.timestamps == false)
                #expect(d.spec.appFile == file)
                #expect(d.spec.hooks == ["onExit"])
                #expect(d.outLog == box.logsDir + "/truth-out.log")
                #expect(d.errLog == box.logsDir + "/truth-err.log")
                for key in ["name", "mode", "status", "spec", "out_log", "err_log", "workers"] {
                    #expect(raw[key] != nil, "describe has \"\(key)\"")
                }

                // describe by worker id answers for that worker's app.
                let (byId, _) = try await box.describe(String(rows[1].id))
                #expect(byId.name == "truth")

                // Unknown names: one clean error line.
                let bad = try await box.pml("describe", "nosuchapp", "--json")
                bad.expectCleanFailure(mentioning: ["nosuchapp"])
            }
        }

        @Test("pml logs shows what the worker printed; --out/--err/--lines/--nostream; streams by default; flush empties")
        func logsShowOutput() async throws {
            try await withSandbox { box in
                try box.write("talk.sh", """
                    #!/bin/sh
                    i=1
                    while [ $i -le 20 ]; do echo "out-line-$i"; i=$((i+1)); done
                    echo "err-line-oops" >&2
                    while [ ! -f \(box.work)/trigger ]; do sleep 0.05; done
                    echo "late-line-after-trigger"
                    exec sleep 1000
                    """, executable: true)
                let file = try box.write("talk.lua", """
                    return { name = "talk", cmd = { "sh", "talk.sh" } }
                    """)
                try await box.pmlOK("start", file)
                try await box.waitOnline("talk")

                let outLog = box.logsDir + "/talk-out.log"
                let errLog = box.logsDir + "/talk-err.log"
                try await box.waitFor("out-line-20 in \(outLog)") { box.read(outLog).contains("out-line-20") ? true : nil }
                try await box.waitFor("err-line-oops in \(errLog)") { box.read(errLog).contains("err-line-oops") ? true : nil }
                #expect(!box.read(outLog).contains("err-line-oops"), "stderr does not go to the out log")

                let all = try await box.pmlOK("logs", "talk", "--nostream")
                #expect(all.stdout.contains("out-line-20"), "\(all)")
                #expect(all.stdout.contains("err-line-oops"), "default shows both logs:\n\(all)")
                #expect(tokens(all.stdout).contains("out-line-6"), "default is the last 15 lines:\n\(all)")
                #expect(!tokens(all.stdout).contains("out-line-5"), "default is the last 15 lines, line 5 of 20 is older:\n\(all)")

                let last3 = try await box.pmlOK("logs", "talk", "--lines", "3", "--out", "--nostream")
                #expect(last3.stdout.contains("out-line-18") && last3.stdout.contains("out-line-20"), "\(last3)")
                #expect(!tokens(last3.stdout).contains("out-line-17"), "--lines 3 shows only the last 3:\n\(last3)")
                #expect(!last3.stdout.contains("err-line-oops"), "--out hides stderr:\n\(last3)")

                let errOnly = try await box.pmlOK("logs", "talk", "--err", "--nostream")
                #expect(errOnly.stdout.contains("err-line-oops"), "\(errOnly)")
                #expect(!errOnly.stdout.contains("out-line-20"), "--err hides stdout:\n\(errOnly)")

                let everything = try await box.pmlOK("logs", "--nostream")
                #expect(everything.stdout.contains("out-line-20"), "pml logs without a name shows every app:\n\(everything)")

                // pml logs streams by default (as pm2 logs): start it, then make the worker print a new line.
                let follower = try ChildProcess(box, box.binary, ["logs", "talk"])
                defer {
                    if follower.isRunning { kill(follower.pid, SIGKILL) }
                    follower.process.waitUntilExit()
                }
                func followed() -> String { follower.stdout + follower.stderr }
                try await box.waitFor("pml logs to print the existing tail") {
                    followed().contains("out-line-20") ? true : nil
                }
                #expect(follower.isRunning, "pml logs keeps running:\n\(followed())")
                try box.write("trigger", "go")
                try await box.waitFor("pml logs to print a line written later") {
                    followed().contains("late-line-after-trigger") ? true : nil
                }

                try await box.pmlOK("flush", "talk")
                #expect(!box.read(outLog).contains("out-line"), "flush empties the out log")
                #expect(!box.read(errLog).contains("err-line-oops"), "flush empties the err log")
                let after = try await box.pmlOK("logs", "talk", "--nostream")
                #expect(!after.stdout.contains("out-line-20"), "\(after)")
            }
        }

        @Test("stop keeps the rows and kills the process group; restart brings new pids; delete removes")
        func stopRestartDelete() async throws {
            try await withSandbox { box in
                try box.write("fam.sh", """
                    #!/bin/sh
                    sleep 1000 &
                    echo $! >> \(box.work)/fam.pids
                    echo $$ >> \(box.work)/fam.pids
                    wait
                    """, executable: true)
                let file = try box.write("fam.lua", """
                    return { name = "fam", cmd = { "sh", "fam.sh" }, instances = 2, kill_timeout = 1000 }
                    """)
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("fam", count: 2)
                let pids = try await box.waitFor("4 pids recorded") {
                    let p = box.numbers("fam.pids").map(Int32.init)
                    return p.count >= 4 ? p : nil
                }

                let stop = try await box.pml("stop", "fam")
                #expect(stop.ok, "\(stop)")
                let stopped = try await box.waitFor("both fam workers stopped") {
                    let r = try await box.rows("fam")
                    return r.count == 2 && r.allSatisfy({ $0.status == "stopped" && $0.pid == nil }) ? r : nil
                }
                #expect(Set(stopped.map(\.id)) == Set(rows.map(\.id)), "a stopped app keeps its rows")
                try await box.waitFor("every process of the group gone after stop", timeout: 5) {
                    pids.allSatisfy { !Proc.alive($0) } ? true : nil
                }
                await sleepMs(500)
                #expect(try await box.rows("fam").allSatisfy { $0.status == "stopped" }, "a stopped app stays stopped")

                try await box.pmlOK("restart", "fam")
                let again = try await box.waitOnline("fam", count: 2)
                #expect(Set(again.compactMap(\.pid)).isDisjoint(with: Set(pids)), "restart spawns new processes")

                // restart of a running app replaces its processes too.
                let before = Set(again.compactMap(\.pid))
                try await box.pmlOK("restart", String(again[0].id))
                try await box.waitFor("worker \(again[0].id) to get a new pid") {
                    let r = try await box.rows("fam")
                    let w0 = r.first { $0.id == again[0].id }
                    return w0?.status == "online" && w0?.pid != nil && !before.contains(w0!.pid!) ? true : nil
                }
                let w1 = try await box.rows("fam").first { $0.id == again[1].id }
                #expect(w1?.pid == again[1].pid, "restarting one id leaves the other worker alone")

                let del = try await box.pml("delete", "fam")
                #expect(del.ok, "\(del)")
                try await box.waitFor("fam gone from ls") { try await box.rows("fam").isEmpty ? true : nil }
                let latest = box.numbers("fam.pids").map(Int32.init)
                try await box.waitFor("no fam process left after delete", timeout: 5) {
                    latest.allSatisfy { !Proc.alive($0) } ? true : nil
                }

                for cmd in ["stop", "restart", "delete"] {
                    let r = try await box.pml(cmd, "fam")
                    r.expectCleanFailure(mentioning: ["fam"])
                }
            }
        }

        @Test("pml start <script> and pml start -- <cmd>: interpreters, --name, --env, -i")
        func startScriptsAndCommands() async throws {
            try await withSandbox { box in
                try box.write("w.sh", """
                    echo "sh:$K:$PML_INSTANCE" >> \(box.work)/seen
                    exec sleep 1000
                    """)
                try box.write("w.py", """
                    import os, time
                    with open(\(lua(box.work + "/seen")), "a") as f:
                        f.write("py:" + os.environ.get("K", "") + "\\n")
                    time.sleep(1000)
                    """)
                try box.write("w.js", """
                    require('fs').appendFileSync(\(lua(box.work + "/seen")), 'js:' + process.env.K + '\\n');
                    setInterval(() => {}, 1000);
                    """)
                let sh = try await box.pml("start", "w.sh", "--name", "shapp", "--env", "K=v1", "-i", "2")
                #expect(sh.ok, "\(sh)")
                let py = try await box.pml("start", "w.py", "--name", "pyapp", "--env", "K=v2")
                #expect(py.ok, "\(py)")
                let cmd = try await box.pml("start", "--name", "cmdapp", "--", "sh", "-c",
                                            "echo cmd:$0:$1 >> \(box.work)/seen; exec sleep 1000", "a1", "a2")
                #expect(cmd.ok, "\(cmd)")

                try await box.waitOnline("shapp", count: 2)
                try await box.waitOnline("pyapp")
                try await box.waitOnline("cmdapp")
                try await box.waitFor("every worker wrote to seen") {
                    let s = Set(box.lines("seen"))
                    return s.isSuperset(of: ["sh:v1:0", "sh:v1:1", "py:v2", "cmd:a1:a2"]) ? true : nil
                }

                if FileManager.default.isExecutableFile(atPath: "/usr/bin/node") {
                    let js = try await box.pml("start", "w.js", "--name", "jsapp", "--env", "K=v3")
                    #expect(js.ok, "\(js)")
                    try await box.waitOnline("jsapp")
                    try await box.waitFor("the node worker ran") { box.lines("seen").contains("js:v3") ? true : nil }
                }

                let ls = try await box.pmlOK("ls")
                for name in ["shapp", "pyapp", "cmdapp"] {
                    #expect(ls.stdout.contains(name), "pml ls shows \(name):\n\(ls)")
                }

                // A script named without --name gets a name from its file.
                let noName = try await box.pml("start", "w.sh")
                #expect(noName.ok, "\(noName)")
                let names = Set(try await box.ls().map(\.name))
                #expect(names.count >= 4, "a new app was added: \(names)")

                let stopAll = try await box.pml("stop", "all")
                #expect(stopAll.ok, "\(stopAll)")
                try await box.waitFor("everything stopped") {
                    try await box.ls().allSatisfy { $0.status == "stopped" && $0.pid == nil } ? true : nil
                }
                try await box.pmlOK("delete", "all")
                #expect(try await box.ls().isEmpty)
            }
        }

        @Test("pml signal delivers a signal to the worker")
        func signalReachesWorker() async throws {
            try await withSandbox { box in
                try box.write("sig.sh", """
                    trap 'echo usr1 >> \(box.work)/got' USR1
                    while :; do sleep 0.1; done
                    """)
                let file = try box.write("sig.lua", """
                    return { name = "sig", cmd = { "sh", "sig.sh" } }
                    """)
                try await box.pmlOK("start", file)
                let row = try await box.waitOnline("sig")[0]
                await sleepMs(300) // let sh install its trap
                let r = try await box.pml("signal", "SIGUSR1", "sig")
                #expect(r.ok, "\(r)")
                try await box.waitFor("the worker's USR1 trap ran") { box.lines("got").contains("usr1") ? true : nil }
                let after = try await box.rows("sig")[0]
                #expect(after.pid == row.pid && after.status == "online", "a trapped signal does not restart it: \(after)")

                let bad = try await box.pml("signal", "SIGUSR1", "nosuch")
                bad.expectCleanFailure(mentioning: ["nosuch"])
            }
        }
    }
}
