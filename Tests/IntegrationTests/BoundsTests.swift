// Bounds on what peers can pile up in the daemon (issue 9): connections waiting for a worker stay
// below the fd limit (the kernel's backlog holds the rest, nothing spins), idle control clients are
// closed, and numbers read back from state files are checked.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Sandbox {
    /// Starts the keeper and daemon with `pml ping` under `ulimit -n fdLimit` (soft and hard: the
    /// daemon can raise neither) and `env`; later commands talk to that daemon. `withoutCapSysResource`:
    /// started under setpriv (util-linux) without CAP_SYS_RESOURCE and CAP_SYS_ADMIN, for good
    /// (bounding set), as a plain user's daemon: the kernel holds it to its limit on fds in flight.
    func startDaemon(fdLimit: Int? = nil, withoutCapSysResource: Bool = false, env extra: [String: String] = [:]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        let limit = fdLimit.map { "ulimit -n \($0) && " } ?? ""
        let caps = withoutCapSysResource ? "setpriv --inh-caps=-sys_resource,-sys_admin --bounding-set=-sys_resource,-sys_admin " : ""
        p.arguments = ["-c", "\(limit)exec \(caps)\"$0\" ping", binary]
        var env = ProcessInfo.processInfo.environment
        env["PML_HOME"] = home
        for (k, v) in extra { env[k] = v }
        p.environment = env
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw HarnessError("pml ping (starting the daemon) exited \(p.terminationStatus)") }
    }
}

extension Integration {
    @Suite("Bounds on what peers pile up")
    struct Bounds {
        /// Whether `client`'s connection has been closed by the daemon (without waiting).
        static func closedByDaemon(_ client: RawClient) -> Bool {
            var p = pollfd(fd: client.fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 0) == 1 else { return false }
            if case .closed = client.readReply() { return true }
            return false
        }

        @Test("with PML_CONTROL_IDLE_MS=1500: an idle control client is closed, one that keeps talking and one waiting 3 s for its stop are not; the 257th client is told to try again while 256 are served")
        func controlClients() async throws {
            try await withSandbox { box in
                try box.startDaemon(env: ["PML_CONTROL_IDLE_MS": "1500"])
                let stubborn = try box.write("stubborn.lua", """
                    return { name = "stubborn", cmd = { "sh", "-c", "trap '' TERM; while true; do sleep 0.2; done" }, kill_timeout = 3000 }
                    """)
                try await box.pmlOK("start", stubborn)
                _ = try await box.waitOnline("stubborn")
                let ping = Array(#"{"v":1,"cmd":"ping"}"#.utf8) + [10]
                let idle = try RawClient(path: box.socketPath)
                let active = try RawClient(path: box.socketPath)
                let waiting = try RawClient(path: box.socketPath, timeoutSeconds: 10)
                let opened = nowMs()
                // A request under way is not idle: this stop is answered after kill_timeout (3 s).
                #expect(waiting.send(Array(#"{"v":1,"cmd":"stop","targets":["stubborn"]}"#.utf8) + [10]))
                await sleepMs(500)
                #expect(!Self.closedByDaemon(idle), "not closed before its idle time")
                while nowMs() - opened < 3000 {
                    #expect(active.send(ping))
                    guard case .line(let line) = active.readReply(), line.contains(#""ok":true"#) else {
                        Issue.record("the active client lost its connection after \(Int(nowMs() - opened)) ms")
                        break
                    }
                    await sleepMs(400)
                }
                #expect(Self.closedByDaemon(idle), "the idle client is closed after 1.5 s")
                let stopped = waiting.readReply()
                guard case .line(let line) = stopped else { Issue.record("the waiting client got \(stopped)"); return }
                #expect(line.contains(#""ok":true"#) && nowMs() - opened >= 2900, "answered after kill_timeout: \(line)")

                // 256 clients at once (the two still open among them); the 257th gets one line and is closed.
                var clients = [active, waiting]
                while clients.count < 256 { clients.append(try RawClient(path: box.socketPath)) }
                let extra = try RawClient(path: box.socketPath)
                let refused = extra.readReply()
                guard case .line(let text) = refused else { Issue.record("the 257th client got \(refused)"); return }
                #expect(text.contains(#""ok":false"#) && text.contains("256 clients already; try again"), "\(text)")
                #expect(extra.readReply().description == "connection closed")
                #expect(clients[255].send(ping))
                guard case .line(let still) = clients[255].readReply() else { Issue.record("the 256th client lost"); return }
                #expect(still.contains(#""ok":true"#), "the 256 are served: \(still)")
            }
        }

        /// An rr worker (ready by message) that logs each handle it gets to FX_LOG. The first to
        /// get one (FX_MARK) answers it without an ACK and then floods its channel with lines
        /// that are not JSON; the others acknowledge and answer.
        static let floodAfterHandle = #"""
            import os, select, socket, sys
            PID = os.getpid()
            ipc = socket.socket(fileno=int(os.environ["PML_IPC_FD"]))
            \#(ClusterFixture.pythonAcceptLoop)
            ipc.sendall(b'"ready"\n')
            buffer, fds = b"", []
            while True:
                data, new_fds, _, _ = socket.recv_fds(ipc, 65536, 16)
                if not data:
                    select.select([], [], [], 30)
                    sys.exit(0)
                fds.extend(new_fds)
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if b"NODE_HANDLE" not in line:
                        continue
                    conn = socket.socket(fileno=fds.pop(0))
                    with open(os.environ["FX_LOG"], "a") as f:
                        f.write("%d\n" % PID)
                    try:
                        os.close(os.open(os.environ["FX_MARK"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                        flooder = True
                    except FileExistsError:
                        flooder = False
                        ipc.sendall(b'{"cmd":"NODE_HANDLE_ACK"}\n')
                    respond(conn)
                    if flooder:
                        ipc.sendall(b"this is not json\n" * 200)
            """#

        @Test("a worker cut off for flooding its channel after it took a handle (no ACK) keeps that connection: it is not handed to another worker too")
        func cutOffKeepsItsHandle() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let worker = try box.write("flood.py", Self.floodAfterHandle)
                let log = box.work + "/handles", mark = box.work + "/flooder"
                try await box.pmlOK("start", try box.write("flood.lua", """
                    return { name = "flood", cmd = { "python3", \(lua(worker)) }, instances = 2, listen = \(port),
                             ready = "message", restart_delay = 60000, env = { FX_LOG = \(lua(log)), FX_MARK = \(lua(mark)) } }
                    """))
                let rows = try await box.waitOnline("flood", count: 2)
                let conn = try RawConnection(.local(port))
                #expect(conn.send("GET / HTTP/1.0\r\n\r\n"))
                let answer = conn.readAll()
                #expect(answer.contains("hello from "), "answered: \(answer)")
                try await box.waitFor("pml cutting the flooder off", timeout: 10) {
                    box.read(box.daemonLog).contains("pml closed the channel and kills the worker") ? true : nil
                }
                // Its sibling is idle in the rotation: a re-queued handle would have reached it by now.
                let sibling = try await box.waitFor("the flooder gone, its sibling online", timeout: 10) { () -> Row? in
                    let now = try await box.rows("flood")
                    let alive = now.filter { $0.status == "online" }
                    return alive.count == 1 && rows.contains(where: { $0.pid == alive[0].pid }) ? alive[0] : nil
                }
                #expect(answer.contains("hello from \(box.numbers(log).first ?? -1)"))
                try await box.waitFor("the sibling serving", timeout: 5) { () -> Bool? in
                    guard let c = try? RawConnection(.local(port)) else { return nil }
                    return c.send("GET / HTTP/1.0\r\n\r\n") && c.readAll().contains("hello from \(sibling.pid!)") ? true : nil
                }
                let handed = box.numbers(log)
                #expect(handed.count == 2 && handed[1] == Int(sibling.pid!),
                        "one handle to the flooder, then the next connection to its sibling, none twice: \(handed)")
                #expect(box.read(box.daemonLog).contains("was cut off with a connection handed to it and not acknowledged; it stays with that worker"))
            }
        }

        @Test("with PML_CONTROL_IDLE_MS=1500: a client pipelining ls and never reading is not read past about 1 MiB of answers (the daemon's RSS stays flat), other clients are served, and it is closed once its answers stop moving")
        func clientThatNeverReads() async throws {
            try await withSandbox { box in
                try box.startDaemon(env: ["PML_CONTROL_IDLE_MS": "1500"])
                let before = try await Integration.HostileInput.baseline(box)
                // Ten rows make each answer a few KiB.
                try await box.pmlOK("start", "--name", "wide", "-i", "10", "--", "sleep", "1000")
                _ = try await box.waitOnline("wide", count: 10)
                let rss = { () -> Int in
                    let status = (try? String(contentsOfFile: "/proc/\(before.daemon)/status", encoding: .utf8)) ?? ""
                    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
                    return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
                }
                let rssBefore = rss()
                let flooder = try RawClient(path: box.socketPath)
                let chunk = Array(String(repeating: #"{"v":1,"cmd":"list"}"# + "\n", count: 3000).utf8)
                var accepted = 0, lastAccepted = nowMs(), closed = false
                let started = nowMs()
                // Writes until the daemon has taken nothing for a second (it stopped reading), at most 10 s.
                while nowMs() - lastAccepted < 1000 && nowMs() - started < 10_000 {
                    // Whole lines only: a send taken in part goes on where it stopped.
                    let n = chunk[(accepted % chunk.count)...].withUnsafeBytes {
                        send(flooder.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
                    }
                    if n > 0 { accepted += n; lastAccepted = nowMs() }
                    else if n < 0 && errno != EAGAIN && errno != EINTR { closed = true; break }
                    else { await sleepMs(5) }
                }
                #expect(!closed && nowMs() - started < 10_000, "the daemon stops reading the flooder: \(accepted) bytes taken")
                let grown = (rss() - rssBefore) / 1024
                #expect(grown < 24, "the daemon's RSS grew by \(grown) MiB while \(accepted / 1024) KiB of requests were taken")
                try await Integration.HostileInput.expectUnharmed(box, before)
                // Its answers do not move: closed after the idle time (1.5 s), which a send notices.
                let gone = try await box.waitFor("the flooder closed by the daemon", timeout: 10) { () -> Bool? in
                    let n = chunk.withUnsafeBytes { send(flooder.fd, $0.baseAddress, 1, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
                    return n < 0 && (errno == EPIPE || errno == ECONNRESET) ? true : nil
                }
                #expect(gone)
                #expect(rss() - rssBefore < 24 * 1024)
                try await Integration.HostileInput.expectUnharmed(box, before)
            }
        }

        @Test("a tampered state.json (a worker id of Int.max, counters at Int.max, a start at Int.min) does not trap the successor: it comes up, says once what it refused or clamped, and every instance runs")
        func tamperedStateFile() async throws {
            try await withSandbox { box in
                try await box.pmlOK("start", "--name", "t", "-i", "2", "--", "sleep", "3000")
                let before = try await box.waitOnline("t", count: 2)
                let daemon = try #require(box.daemonPid)
                // Stopped, the daemon cannot write state.json again before it dies.
                kill(daemon, SIGSTOP)
                let path = box.home + "/state.json"
                var state = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
                var apps = try #require(state["apps"] as? [[String: Any]])
                var workers = try #require(apps.first?["workers"] as? [[String: Any]])
                let refused = try #require(workers.first { $0["instance"] as? Int == 0 })["pid"] as? Int
                for i in workers.indices {
                    if workers[i]["instance"] as? Int == 0 { workers[i]["id"] = Int.max }
                    else { workers[i]["restarts"] = Int.max; workers[i]["backoff_step"] = Int.max; workers[i]["started_at_ms"] = Int.min }
                }
                apps[0]["workers"] = workers
                state["apps"] = apps
                try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: path))
                kill(daemon, SIGKILL)
                let successor = try await box.waitFor("a successor", timeout: 10, every: 20) {
                    box.daemonPid.flatMap { $0 != daemon && Proc.alive($0) ? $0 : nil }
                }
                let rows = try await box.waitOnline("t", count: 2)
                let log = box.read(box.daemonLog)
                #expect(log.contains("t: worker id \(Int.max) is outside 0...\(Int32.max); record refused"), "\(log.suffix(1500))")
                #expect(log.contains("t: worker 1: started_at_ms \(Int.min), restarts \(Int.max), backoff_step \(Int.max) out of range; clamped"))
                #expect(rows[0].pid != before[0].pid && rows[0].pid != refused.map(Int32.init) && rows[0].id == 2,
                        "instance 0 started afresh with the next id: \(rows)")
                #expect(rows[1].pid == before[1].pid && rows[1].restarts == 1 << 40, "instance 1 adopted, its count clamped: \(rows)")
                #expect((rows[1].uptimeMs ?? -1) >= 0)
                // Its next crash counts on from there, in the same successor.
                kill(before[1].pid!, SIGKILL)
                let after = try await box.waitFor("instance 1 restarted", timeout: 10) { () -> [Row]? in
                    let r = try await box.rows("t")
                    return r.count == 2 && r[1].pid != before[1].pid && r[1].status == "online" ? r : nil
                }
                #expect(after[1].restarts == (1 << 40) + 1)
                #expect(box.daemonPid == successor && Proc.alive(successor))
            }
        }

        @Test("a tampered dump.json of thousands of apps (most of them repeats) does not take the daemon down: pml resurrect answers with one line saying what was left out, the daemon keeps its pid and answers pml ls")
        func tamperedDumpOfManyApps() async throws {
            try await withSandbox { box in
                try await box.pmlOK("start", "--name", "t", "--", "sleep", "3000")
                let before = try await box.waitOnline("t", count: 1)
                let daemon = try #require(box.daemonPid)
                // Each app fails to start at once (nothing to run): before, every answer started the
                // next app one stack frame deeper.
                let app = { (name: String) in
                    #"{"name":"\#(name)","instances":1,"running":true,"start":{"app":{"cmd":[]},"client_cwd":"/","client_env":{},"env":{}}}"#
                }
                let apps = (0..<3000).map { app("a\($0)") } + Array(repeating: app("a0"), count: 20_000)
                try #"{"version":1,"apps":[\#(apps.joined(separator: ","))]}"#.write(toFile: box.home + "/dump.json", atomically: true, encoding: .utf8)
                let r = try await box.pml(["resurrect"], timeout: 60)
                #expect(!r.ok && !r.timedOut)
                let line = r.stderr.trimmingCharacters(in: .newlines)
                #expect(!line.contains("\n"), "one line: \(line.prefix(500))")
                #expect(line.hasPrefix("pml: resurrected 0 app(s); failed: a0: ") && line.contains("; and 995 more (see daemon.log)"), "\(line.prefix(500))")
                #expect(line.contains("20000 app record(s) repeating an earlier app's name left out"), "\(line.suffix(300))")
                let log = box.read(box.daemonLog)
                #expect(log.contains("3000 apps: the 2000 past the first \(1000) left out"))
                #expect(box.daemonPid == daemon && Proc.alive(daemon))
                let rows = try await box.rows("t")
                #expect(rows.count == 1 && rows[0].pid == before[0].pid && rows[0].status == "online")
                #expect(try await box.ls().count == 1, "none of the failed apps is listed")
            }
        }

        @Test("a tampered state.json whose listener tags are \"w.\" and another worker's channel: the successor leaves those listeners out (one line each) and does not spin, that app says it could not be taken up; started again it serves, and deleting it drops no other worker's channels (a second successor still adopts them)")
        func tamperedListenerTags() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let webFile = try Integration.Cluster.rrApp(box, name: "web", listen: lua("127.0.0.1:\(port)"), instances: 1)
                try await box.pmlOK("start", webFile)
                try await box.pmlOK("start", "--name", "other", "--", "sleep", "3000")
                _ = try await box.waitServing("web", count: 1)
                let other = try #require(try await box.waitOnline("other").first?.pid)
                let daemon = try #require(box.daemonPid)
                kill(daemon, SIGSTOP)
                let path = box.home + "/state.json"
                var state = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
                var apps = try #require(state["apps"] as? [[String: Any]])
                let web = try #require(apps.firstIndex { $0["name"] as? String == "web" })
                var listeners = try #require(apps[web]["listeners"] as? [[String: Any]])
                #expect(listeners.count == 1)
                listeners[0]["tag"] = "w.\(other).ipc"
                var prefix = listeners[0]
                prefix["tag"] = "w."
                apps[web]["listeners"] = listeners + [prefix]
                state["apps"] = apps
                try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: path))
                kill(daemon, SIGKILL)
                let successor = try await box.waitFor("a successor", timeout: 10, every: 20) {
                    box.daemonPid.flatMap { $0 != daemon && Proc.alive($0) ? $0 : nil }
                }
                // web's listening socket is not found under any tag it names: it cannot come back in this
                // successor (its port is still held until the take-over ends), and says so.
                try await box.waitFor("the successor done taking over", timeout: 10) {
                    box.read(box.daemonLog).contains("its successor adopted 1 worker; could not take up web: ") ? true : nil
                }
                #expect(try await box.rows("other").first?.pid == other)
                let log = box.read(box.daemonLog)
                #expect(log.contains(#"web: listener tag "w.\#(other).ipc" is not one pml writes, or appears twice; listener left out"#), "\(log.suffix(1500))")
                #expect(log.contains(#"web: listener tag "w." is not one pml writes, or appears twice; listener left out"#))
                let cpu = Integration.HostileInput.cpuPercent(of: [successor], overMs: 1000)
                #expect(cpu < 30, "the successor used \(Int(cpu)) % CPU")
                // Started again by hand, it binds its port afresh and serves.
                try await box.pmlOK("start", webFile)
                _ = try await box.waitServing("web", count: 1)
                try await box.pmlOK("delete", "web")
                // Had "w." been dropped, the keeper would hold none of other's fds: its next successor could not adopt it.
                kill(successor, SIGKILL)
                try await box.waitFor("a second successor", timeout: 10, every: 20) {
                    box.daemonPid.flatMap { $0 != successor && $0 != daemon && Proc.alive($0) ? $0 : nil }
                }
                let rows = try await box.waitFor("other adopted again", timeout: 10) { () -> [Row]? in
                    let r = try await box.rows("other")
                    return r.first?.status == "online" ? r : nil
                }
                #expect(rows.first?.pid == other && rows.first?.restarts == 0, "the same process, adopted: \(rows)")
            }
        }

        @Test("under ulimit -n 128, a reuseport slot whose worker is gone and whose survivor holds what it is handed: pml takes one connection at a time from the slot, the rest wait in the slot's backlog, nothing spins, no accept pauses and another app keeps serving; all are served once the worker takes them")
        func waitingConnectionsStayInTheBacklog() async throws {
            try await withSandbox { box in
                try box.startDaemon(fdLimit: 128)
                let before = try await Integration.HostileInput.baseline(box)
                let port = try Net.freePort(), otherPort = try Net.freePort()
                let worker = try box.write("hold.py", ClusterFixture.pythonReusePort)
                try await box.pmlOK("start", try box.write("hold.lua", """
                    return { name = "hold", script = \(lua(worker)), instances = 2, dispatch = "reuseport",
                             listen = "127.0.0.1:\(port)", restart_delay = 60000,
                             env = { FX_HOLD = "1" } }
                    """))
                try await box.pmlOK("start", try Integration.Cluster.rrApp(box, name: "other", listen: lua("127.0.0.1:\(otherPort)"), instances: 1))
                let rows = try await box.waitServing("hold", count: 2)
                _ = try await box.waitServing("other", count: 1)
                let victim = rows[1].pid!, survivor = rows[0].pid!
                // Slot 1 loses its worker for a minute: pml accepts its connections for the survivor,
                // which holds what it is handed (FX_HOLD) until it is sent "ack".
                kill(victim, SIGKILL)
                try await box.waitFor("worker \(victim) gone") { try await box.rows("hold")[1].status != "online" ? true : nil }
                let fdCount = { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(before.daemon)/fd").count) ?? -1 }
                let fdsBefore = fdCount()

                var clients: [RawConnection] = []
                for _ in 0..<160 {
                    let c = try RawConnection(.local(port))
                    #expect(c.send("GET / HTTP/1.0\r\n\r\n"))
                    clients.append(c)
                }
                let queued = try await box.waitFor("the rest queued in the slot's backlog", timeout: 5) { () -> Int? in
                    let q = ListenQueues.longestQueue(port: port)
                    return q > 0 ? q : nil
                }
                let held = fdCount() - fdsBefore
                #expect(held >= 0 && held <= 3, "the daemon holds \(held) more fds: the one handed")
                let cpu = Integration.HostileInput.cpuPercent(of: Proc.pids(withEnvironment: "PML_HOME=\(box.home)"), overMs: 1000)
                #expect(cpu < 30, "pml used \(Int(cpu)) % CPU while the slot waited")
                #expect(!box.read(box.daemonLog).contains("pausing accept"))
                // The other app is served all along.
                for _ in 0..<5 {
                    let c = try RawConnection(.local(otherPort))
                    #expect(c.send("GET / HTTP/1.0\r\n\r\n"))
                    let answer = c.readAll()
                    #expect(answer.contains("hello from "), "the other app: \(answer.prefix(200))")
                }
                try await Integration.HostileInput.expectUnharmed(box, before)

                // The worker takes them now: pml hands out what waits and accepts the backlog again.
                try await box.pmlOK("send", "hold", "ack")
                let answers = clients.map { $0.readAll() }
                let bad = answers.filter { !$0.contains("hello from ") }
                #expect(bad.isEmpty, "\(bad.count) of 160 unanswered (\(queued) were in the backlog): \(bad.prefix(2))")
                #expect(answers.allSatisfy { $0.contains("hello from \(survivor)") }, "all by the survivor")
            }
        }
    }
}
