// What users and scripts feed pml must never take the daemon down, freeze it, or touch other
// apps' workers (issue 9): after each hostile input the daemon still answers `pml ls` promptly,
// with the same pid, and a bystander app keeps its worker.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Hostile input")
    struct HostileInput {
        /// The daemon and a bystander app's worker, before the hostile part of a test.
        struct Baseline {
            let daemon: Int32
            let bystander: Row
        }

        /// Starts a bystander app (and with it the daemon) and records their pids.
        static func baseline(_ box: Sandbox) async throws -> Baseline {
            try await box.pmlOK("start", "--name", "bystander", "--", "sleep", "1000")
            let row = try #require(try await box.waitOnline("bystander").first)
            return Baseline(daemon: try #require(box.daemonPid), bystander: row)
        }

        /// The daemon answers `pml ls` within a second, with the same pid, and the bystander's
        /// worker is untouched.
        static func expectUnharmed(_ box: Sandbox, _ before: Baseline,
                                   sourceLocation: SourceLocation = #_sourceLocation) async throws {
            let started = nowMs()
            let ls = try await box.pml(["ls", "--json"], timeout: 5)
            #expect(ls.ok, "\(ls)", sourceLocation: sourceLocation)
            #expect(nowMs() - started < 1000, "pml ls took \(Int(nowMs() - started)) ms", sourceLocation: sourceLocation)
            #expect(box.daemonPid == before.daemon && Proc.alive(before.daemon), "the daemon changed or died",
                    sourceLocation: sourceLocation)
            let now = try await box.rows("bystander").first
            #expect(now?.pid == before.bystander.pid && now?.restarts == 0 && now?.status == "online",
                    "bystander: \(String(describing: now)) (was \(before.bystander))", sourceLocation: sourceLocation)
        }

        /// An app file running `top` at its top level, then returning an app named `name`.
        static func appFile(_ box: Sandbox, _ file: String, name: String = "hostile", _ top: String) throws -> String {
            try box.write(file, """
                \(top)
                return { name = \(lua(name)), cmd = "sleep 1000" }
                """)
        }

        // MARK: Lua

        static let closeChain = """
            local coro = false
            for i = 1, 20000 do
              local previous = coro
              coro = coroutine.create(function()
                local cc <close> = setmetatable({}, { __close = function()
                  if previous then assert(coroutine.close(previous)) end
                end })
                coroutine.yield()
              end)
              coroutine.resume(coro)
            end
            assert(coroutine.close(coro))
            """

        @Test("20,000 nested coroutine.close: pml check and pml start print one error line; the daemon lives on")
        func nestedCoroutineClose() async throws {
            try await withSandbox { box in
                let file = try Self.appFile(box, "chain.lua", Self.closeChain)
                let check = try await box.pml("check", file)
                #expect(check.status == 1 && !check.timedOut, "\(check)")
                check.expectCleanFailure(mentioning: ["coroutines nested too deeply"])

                let before = try await Self.baseline(box)
                let start = try await box.pml("start", file)
                start.expectCleanFailure(mentioning: ["coroutines nested too deeply"])
                try await Self.expectUnharmed(box, before)
            }
        }

        @Test("finalizers through shared metatables are refused: pml start fails with one line, nothing spins")
        func sharedMetatableFinalizers() async throws {
            try await withSandbox { box in
                let before = try await Self.baseline(box)
                let cases = [
                    "getmetatable(io.stdout).__gc = function() while true do end end",
                    "getmetatable(io.tmpfile()).__gc = function() while true do end end",
                    "getmetatable('').__gc = function() while true do end end",
                    "setmetatable({}, { __gc = function() while true do end end })",
                ]
                for (i, top) in cases.enumerated() {
                    let file = try Self.appFile(box, "gc\(i).lua", top + "\ncollectgarbage()")
                    let start = try await box.pml("start", file)
                    start.expectCleanFailure()
                    #expect(start.stderr.contains("gc\(i).lua:1:"), "\(start)")
                }
                try await Self.expectUnharmed(box, before)
                // The daemon is idle: no finalizer is spinning in it.
                try await box.waitFor("the daemon idle (no spinning finalizer)", timeout: 10) {
                    Self.cpuPercent(of: [before.daemon], overMs: 500) < 50 ? true : nil
                }
            }
        }

        @Test("a FIFO opened or required by an app file, and io.read, fail at once; the daemon is not blocked")
        func blockingFiles() async throws {
            try await withSandbox { box in
                let before = try await Self.baseline(box)
                let fifo = box.work + "/pipe"
                #expect(mkfifo(fifo, 0o600) == 0)
                #expect(mkfifo(box.work + "/stuck.lua", 0o600) == 0)
                let cases: [(top: String, needle: String)] = [
                    ("local f = assert(io.open(\(lua(fifo))))", "not a regular file"),
                    ("local f = assert(io.open(\(lua(fifo)), 'w'))", "not a regular file"),
                    ("for l in io.lines(\(lua(fifo))) do end", "not a regular file"),
                    ("require 'stuck'", "not a regular file"),
                    ("io.read()", "scripts have no standard input or output"),
                    ("io.write('x')", "scripts have no standard input or output"),
                ]
                for (i, c) in cases.enumerated() {
                    let file = try Self.appFile(box, "io\(i).lua", c.top)
                    let started = nowMs()
                    let start = try await box.pml(["start", file], timeout: 10)
                    start.expectCleanFailure(mentioning: [c.needle])
                    #expect(nowMs() - started < 3000, "\(c.top) took \(Int(nowMs() - started)) ms")
                }
                try await Self.expectUnharmed(box, before)
            }
        }

        // MARK: Numbers

        @Test("pml.after(math.maxinteger) and friends are refused with one line; the daemon lives on")
        func scriptNumbers() async throws {
            try await withSandbox { box in
                let before = try await Self.baseline(box)
                for (i, top) in ["pml.after(math.maxinteger, function() end)", "pml.every(math.huge, function() end)",
                                 "pml.after(0/0, function() end)", "pml.every(-1, function() end)"].enumerated() {
                    let start = try await box.pml("start", try Self.appFile(box, "timer\(i).lua", top))
                    start.expectCleanFailure(mentioning: ["ms must be an integer from 1 to 86400000"])
                }
                let bad: [(key: String, value: String)] = [
                    ("instances", "math.maxinteger"), ("instances", "1e300"), ("instances", "0/0"), ("instances", "0"), ("instances", "-2000"),
                    ("kill_timeout", "math.huge"), ("ready_timeout", "-1"), ("min_uptime", "1e300"),
                    ("max_restarts", "math.mininteger"), ("listen", "70000"), ("listen", "-1"), ("listen", "math.maxinteger"),
                    ("autoscale", "{ max = 2, every = math.maxinteger, rule = function() end }"),
                    ("autoscale", "{ max = 2, cooldown = -1, rule = function() end }"),
                    ("autoscale", "{ max = 1e300, rule = function() end }"),
                ]
                for (i, c) in bad.enumerated() {
                    let file = try box.write("spec\(i).lua", "return { name = 'n\(i)', cmd = 'sleep 1000', \(c.key) = \(c.value) }")
                    let start = try await box.pml("start", file)
                    start.expectCleanFailure(mentioning: [c.key.hasPrefix("autoscale") ? "autoscale" : c.key])
                }
                try await Self.expectUnharmed(box, before)
            }
        }

        @Test("onCrash returning delay = 1e300, -1 or NaN is reported; the worker goes on under the default policy")
        func onCrashDelays() async throws {
            try await withSandbox { box in
                let before = try await Self.baseline(box)
                for (i, delay) in ["1e300", "-1", "0/0", "math.maxinteger"].enumerated() {
                    let file = try box.write("crash\(i).lua", """
                        return {
                          name = "crash\(i)", cmd = "sleep 0.3; exit 3", min_uptime = 10000,
                          onCrash = function() return { delay = \(delay) } end,
                        }
                        """)
                    try await box.pmlOK("start", file)
                    try await box.waitFor("crash\(i)'s onCrash error reported", timeout: 10) {
                        let (d, _) = try await box.describe("crash\(i)")
                        return d.workers.first?.lastHookError?.contains("returned delay") == true ? true : nil
                    }
                }
                try await Self.expectUnharmed(box, before)
            }
        }

        @Test("pml scale with absurd counts, and control requests with absurd numbers, get one clear line")
        func clientNumbers() async throws {
            try await withSandbox { box in
                let before = try await Self.baseline(box)
                for count in ["+9223372036854775807", "-9223372036854775808", "9223372036854775807", "-9223372036854775807",
                              "+99999999999999999999", "0", "+-1", "1e3", "+1024"] {
                    let r = try await box.pml("scale", "bystander", count)
                    r.expectCleanFailure(mentioning: ["scale takes N, +N or -N giving 1 to 1024 workers"])
                }
                for line in [
                    #"{"v":1,"cmd":"scale","target":"bystander","count":"+9223372036854775807"}"#,
                    #"{"v":1e300,"cmd":"list"}"#,
                    #"{"v":9223372036854775808,"cmd":"list"}"#,
                    #"{"v":1,"cmd":"reload","target":"bystander","parallel":1e400}"#,
                    #"{"v":1,"cmd":"reload","target":"nope","parallel":-9223372036854775808}"#,
                    #"{"v":1,"cmd":"start","start":{"app":{"name":"x","cmd":"sleep 1","instances":1e308}}}"#,
                    #"{"v":1,"cmd":"start","start":{"app":{"name":"x","cmd":"sleep 1","kill_timeout":-1e308}}}"#,
                ] {
                    let client = try RawClient(path: box.socketPath)
                    #expect(client.send(Array((line + "\n").utf8)))
                    let reply = client.readReply()
                    guard case .line(let text) = reply else { Issue.record("\(line): \(reply)"); continue }
                    #expect(text.contains("\"ok\":false"), "\(line): \(text)")
                }
                try await Self.expectUnharmed(box, before)
            }
        }

        // MARK: Workers

        @Test("a flood of non-JSON lines on a worker's IPC channel stops it as a crash: autorestart = false holds, backoff applies")
        func ipcGarbageFlood() async throws {
            try await withSandbox { box in
                let before = try await Self.baseline(box)
                let flood = "while :; do echo 'garbage {'; done >&$PML_IPC_FD"
                let file = try box.write("flood.lua", """
                    return {
                      { name = "once", cmd = { "sh", "-c", \(lua(flood)) }, autorestart = false },
                      { name = "again", cmd = { "sh", "-c", \(lua(flood)) } },
                    }
                    """)
                try await box.pmlOK("start", file)
                let stopped = try await box.waitFor("the flooding worker stopped, not restarted", timeout: 10) {
                    try await box.rows("once").first.flatMap { $0.status == "stopped" ? $0 : nil }
                }
                #expect(stopped.restarts == 0, "\(stopped)")
                // The other one crashes like any crashing worker: a handful of restarts, with backoff,
                // then errored (it was 1,800 restarts in 3 s).
                await sleepMs(3000)
                let again = try #require(try await box.rows("again").first)
                #expect(again.restarts <= 16, "\(again)")
                #expect(box.read(box.daemonLog).contains("lines that are not JSON within 10 s; pml closed the channel and kills the worker"))
                try await Self.expectUnharmed(box, before)
            }
        }

        // MARK: pml:listen

        /// A worker that sends each request of FX_REQUESTS (a JSON list) as a pml:listen line and
        /// writes every reply it gets to FX_REPLIES, one per line.
        static let listenClient = #"""
            import json, os, socket, sys, time
            ipc = socket.socket(fileno=int(os.environ["PML_IPC_FD"]))
            requests = json.loads(os.environ["FX_REQUESTS"])
            for i, r in enumerate(requests):
                r.update({"type": "pml:listen", "id": i})
                ipc.sendall((json.dumps(r) + "\n").encode())
            buf, got = b"", 0
            with open(os.environ["FX_REPLIES"], "a") as out:
                while got < len(requests):
                    chunk = ipc.recv(65536)
                    if not chunk: break
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if b"NODE_PML_LISTEN_REPLY" in line:
                            out.write(line.decode() + "\n"); out.flush(); got += 1
            time.sleep(1000)
            """#

        static func replies(_ box: Sandbox, _ file: String, count: Int) async throws -> [[String: Any]] {
            try await box.waitFor("\(count) listen replies", timeout: 10) {
                let lines = box.lines(file)
                return lines.count >= count ? lines.compactMap { Daemon.json($0) } : nil
            }
        }

        @Test("pml:listen: no unix path unless declared (never PML_HOME's socket), only declared addresses, refusals answered")
        func listenRequests() async throws {
            try await withSandbox { box in
                let before = try await Self.baseline(box)
                let script = try box.write("listen.py", Self.listenClient)
                let port = try Net.freePort(), other = try Net.freePort()
                let requests = #"[{"path": "\#(box.socketPath)"}, {"path": "\#(box.work)/any.sock"}, {"port": \#(other)}, {"port": \#(port)}]"#
                let file = try box.write("listen.lua", """
                    return {
                      { name = "bare", cmd = { "python3", \(lua(script)) },
                        env = { FX_REQUESTS = \(lua(requests)), FX_REPLIES = \(lua(box.work + "/bare.replies")) } },
                      { name = "declared", cmd = { "python3", \(lua(script)) }, listen = \(port),
                        env = { FX_REQUESTS = \(lua(requests)), FX_REPLIES = \(lua(box.work + "/declared.replies")) } },
                    }
                    """)
                try await box.pmlOK("start", file)
                let bare = try await Self.replies(box, box.work + "/bare.replies", count: 4)
                #expect(bare.map { $0["code"] as? String } == ["EACCES", "EACCES", "EADDRNOTAVAIL", "EADDRNOTAVAIL"], "\(bare)")
                let declared = try await Self.replies(box, box.work + "/declared.replies", count: 4)
                #expect(declared.map { $0["ok"] as? Bool } == [false, false, false, true], "\(declared)")
                // The control socket is still the daemon's, and nothing was bound elsewhere.
                var st = stat()
                #expect(lstat(box.socketPath, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK)
                #expect(!FileManager.default.fileExists(atPath: box.work + "/any.sock"))
                #expect(box.read(box.daemonLog).contains("listen refused: pml binds a unix socket only when the app declares it"))
                try await Self.expectUnharmed(box, before)
            }
        }

        @Test("an app may not declare a unix socket inside PML_HOME")
        func declaredSocketInHome() async throws {
            try await withSandbox { box in
                let before = try await Self.baseline(box)
                let file = try box.write("home.lua", "return { name = 'h', cmd = 'sleep 1000', listen = \(lua("unix:" + box.socketPath)) }")
                let r = try await box.pml("start", file)
                r.expectCleanFailure(mentioning: ["is inside PML_HOME"])
                try await Self.expectUnharmed(box, before)
            }
        }

        @Test("300 pml:listen requests from a Node worker hold at most 16 sockets")
        func listenFlood() async throws {
            try await withSandbox { box in
                let before = try await Self.baseline(box)
                let base = try Net.freePort()
                let script = try box.write("flood.js", """
                    for (let i = 0; i < 300; i++) process.send({ type: "pml:listen", id: i, port: \(base) + i });
                    setInterval(() => {}, 1000);
                    """)
                let fds = { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(before.daemon)/fd").count) ?? -1 }
                let fdsBefore = fds()
                try await box.pmlOK("start", "--name", "flood", "--", "node", script)
                try await box.waitFor("the refusals logged", timeout: 15) {
                    box.read(box.daemonLog).contains("already has 16 listening sockets (100 refusals)") ? true : nil
                }
                // The worker's own pipes and channel, and at most 16 listening sockets.
                #expect(fds() - fdsBefore <= 16 + 8, "the daemon holds \(fds() - fdsBefore) more fds")
                try await Self.expectUnharmed(box, before)
            }
        }

        // MARK: File descriptors

        @Test("under ulimit -n 64, a flood of control and metrics connections does not make the daemon spin; it answers once they go")
        func descriptorFlood() async throws {
            try await withSandbox { box in
                let metricsPort = try Net.freePort()
                // The daemon (and its keeper) inherit the limit from the command that starts them.
                try box.startDaemon(fdLimit: 64, env: ["PML_METRICS_LISTEN": "127.0.0.1:\(metricsPort)"])
                let before = try await Self.baseline(box)
                var clients: [RawClient] = []
                var tcp: [RawConnection] = []
                for _ in 0..<80 {
                    if let c = try? RawClient(path: box.socketPath, timeoutSeconds: 1) { clients.append(c) }
                    if let c = try? RawConnection(.local(metricsPort)) { tcp.append(c) }
                }
                try await box.waitFor("the daemon out of descriptors", timeout: 10) {
                    box.read(box.daemonLog).contains("out of file descriptors (limit 64)") ? true : nil
                }
                // The keeper and the daemon (the workers sleep).
                let cpu = Self.cpuPercent(of: Proc.pids(withEnvironment: "PML_HOME=\(box.home)"), overMs: 1000)
                #expect(cpu < 30, "pml used \(Int(cpu)) % CPU while out of descriptors")
                clients.removeAll()
                tcp.removeAll()
                try await box.waitFor("pml ls answering again", timeout: 10) {
                    try await box.pml(["ls"], timeout: 5).ok ? true : nil
                }
                try await Self.expectUnharmed(box, before)
            }
        }

        // MARK: Handles never acknowledged

        /// A worker that takes each handle without ACK, then leaves and rejoins the rotation
        /// (pml:unlisten, pml:listen); it counts the handles it got in FX_COUNT.
        static let noAckWorker = #"""
            import json, os, socket, time
            ipc = socket.socket(fileno=int(os.environ["PML_IPC_FD"]))
            port = int(os.environ["FX_PORT"])
            ipc.sendall(b'"ready"\n')
            got, kept = 0, []
            while True:
                data, fds, _, _ = socket.recv_fds(ipc, 65536, 16)
                if not data: break
                kept += fds
                handles = data.count(b"NODE_HANDLE")
                if handles:
                    got += handles
                    open(os.environ["FX_COUNT"], "w").write(str(got))
                    ipc.sendall(json.dumps({"type": "pml:unlisten", "port": port}).encode() + b"\n" +
                                json.dumps({"type": "pml:listen", "id": got, "port": port}).encode() + b"\n")
            """#

        @Test("a worker that never ACKs and rejoins the rotation gets one handle, leaks nothing; pml drops its copy after 10 s")
        func handleWithoutAck() async throws {
            try await withSandbox { box in
                let before = try await Self.baseline(box)
                let port = try Net.freePort()
                let script = try box.write("noack.py", Self.noAckWorker)
                let count = box.work + "/handles"
                let file = try box.write("noack.lua", """
                    return { name = "noack", cmd = { "python3", \(lua(script)) }, listen = \(port), ready = "message",
                             env = { FX_PORT = "\(port)", FX_COUNT = \(lua(count)) } }
                    """)
                try await box.pmlOK("start", file)
                _ = try await box.waitOnline("noack")
                let fds = { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(before.daemon)/fd").count) ?? -1 }
                let fdsBefore = fds()
                var clients: [RawConnection] = []
                for _ in 0..<20 {
                    clients.append(try RawConnection(.local(port)))
                    await sleepMs(20)
                }
                try await box.waitFor("the first handle", timeout: 10) { box.numbers(count).first }
                await sleepMs(500)
                #expect(box.numbers(count).first == 1, "the worker got \(box.numbers(count)) handles")
                // Its handle and at most one waiting connection; no fd per connection.
                #expect(fds() - fdsBefore <= 3, "the daemon holds \(fds() - fdsBefore) more fds")
                _ = try await box.waitFor("pml dropping the unacknowledged handle", timeout: 15) {
                    box.read(box.daemonLog).contains("did not acknowledge a connection within 10000 ms") ? true : nil
                }
                try await Self.expectUnharmed(box, before)
            }
        }

        // MARK: Timers of refused starts

        @Test("a timer started at the top level of an app file never runs when the start is refused")
        func timersOfRefusedStarts() async throws {
            try await withSandbox { box in
                let before = try await Self.baseline(box)
                func timer(_ mark: String) -> String {
                    "pml.after(200, function() local f = io.open(\(lua(box.work + "/" + mark)), 'w'); f:write('ran'); f:close() end)"
                }
                let refused: [(name: String, text: String)] = [
                    ("badkey", timer("badkey") + "\nreturn { name = 'badkey', cmd = 'sleep 1000', instances = 0 }"),
                    ("raises", timer("raises") + "\nerror('refused after the timer')"),
                    ("homesock", timer("homesock") + "\nreturn { name = 'homesock', cmd = 'sleep 1000', listen = \(lua("unix:" + box.socketPath)) }"),
                    ("nouser", timer("nouser") + "\nreturn { name = 'nouser', cmd = 'sleep 1000', uid = 'no-such-user-pml' }"),
                    ("taken", timer("taken") + "\nreturn { name = 'bystander', cmd = 'sleep 1000' }"),
                ]
                for c in refused {
                    let start = try await box.pml("start", try box.write(c.name + ".lua", c.text))
                    start.expectCleanFailure()
                }
                // The same timer in a file that starts does run: the refused ones had their chance.
                try await box.pmlOK("start", try box.write("fine.lua", timer("fine") + "\nreturn { name = 'fine', cmd = 'sleep 1000' }"))
                try await box.waitFor("the accepted file's timer", timeout: 10) {
                    FileManager.default.fileExists(atPath: box.work + "/fine") ? true : nil
                }
                await sleepMs(300)
                for c in refused {
                    #expect(!FileManager.default.fileExists(atPath: box.work + "/" + c.name), "\(c.name)'s timer ran")
                }
                try await Self.expectUnharmed(box, before)
            }
        }

        // MARK: PML_HOME

        @Test("a PML_HOME writable by others, or another user's, is refused with one line and left untouched")
        func unsafeHome() async throws {
            try await withSandbox { box in
                let open = box.work + "/open-home"
                #expect(mkdir(open, 0o777) == 0 && chmod(open, 0o777) == 0)
                let r = try await box.pml(["ls"], env: ["PML_HOME": open])
                r.expectCleanFailure(mentioning: ["\(open) (PML_HOME) is writable by other users (mode 777)"])
                #expect(!FileManager.default.fileExists(atPath: open + "/pml.sock"), "no daemon started there")

                // Another user's folder: a folder given to nobody (as root), else one of root's.
                var theirs = "/usr/share"
                if geteuid() == 0 {
                    theirs = box.work + "/their-home"
                    #expect(mkdir(theirs, 0o700) == 0 && chown(theirs, 65534, 65534) == 0)
                }
                let other = try await box.pml(["ping"], env: ["PML_HOME": theirs])
                other.expectCleanFailure(mentioning: ["\(theirs) (PML_HOME) belongs to another user"])
                let run = try await box.pml(["run", "--name", "x", "--", "true"], env: ["PML_HOME": theirs])
                run.expectCleanFailure(mentioning: ["belongs to another user"])
                #expect(!FileManager.default.fileExists(atPath: theirs + "/pml.sock"))
            }
        }

        @Test("with HOME unset, PML_HOME defaults to the passwd entry's home, never /tmp/.pml")
        func homeFromPasswd() async throws {
            let binary = try PMLBinary.require()
            let p = Process()
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = ["logs", "no-such-app-\(getpid())", "--nostream"]
            p.environment = ProcessInfo.processInfo.environment.filter { $0.key != "HOME" && $0.key != "PML_HOME" }
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            let account = try #require(getpwuid(geteuid())?.pointee.pw_dir.map { String(cString: $0) })
            #expect(text.contains("\(account)/.pml/logs"), "\(text)")
            #expect(!text.contains("/tmp/.pml"), "\(text)")
        }

        /// CPU use of `pids` together over `ms`, in % of one core.
        static func cpuPercent(of pids: [Int32], overMs ms: Int) -> Double {
            func ticks() -> Double {
                pids.reduce(0) { sum, pid in
                    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                          let close = stat.lastIndex(of: ")") else { return sum }
                    let fields = stat[stat.index(after: close)...].split(separator: " ")
                    return sum + (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0) // utime, stime
                }
            }
            let a = ticks()
            usleep(useconds_t(ms * 1000))
            return (ticks() - a) / Double(sysconf(Int32(_SC_CLK_TCK))) * 100_000 / Double(ms)
        }
    }
}
