// Dispatch modes beyond rr (issue 12): `reuseport` (one SO_REUSEPORT socket per worker slot, held
// by pml, which accepts on a slot itself while it has no worker) and `least-busy` (rr to the
// worker with the fewest open connections). Real daemons, real Node and Python workers, real
// sockets; requests and load come from HTTPClient.swift and LoadGenerator.swift.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Dispatch modes")
    struct Dispatch {
        /// A Node app file for ReloadFixture.server with `dispatch`.
        static func app(_ box: Sandbox, name: String, port: Int, instances: Int, dispatch: String,
                        env: [String: String] = [:], extra: String = "") throws -> String {
            try Reload.nodeApp(box, name: name, script: ReloadFixture.server, port: port, instances: instances,
                               env: env, extra: "  dispatch = \(lua(dispatch)),\n\(extra)")
        }

        /// Connections handed over by pml to each worker (`dispatched` in describe --json), by pid.
        static func dispatched(_ box: Sandbox, _ app: String) async throws -> [Int32: Int] {
            var out: [Int32: Int] = [:]
            for w in try await box.rawWorkers(app) {
                guard let p = w["process"] as? [String: Any], let pid = p["pid"] as? Int else { continue }
                out[Int32(pid)] = w["dispatched"] as? Int ?? 0
            }
            return out
        }

        // MARK: reuseport

        @Test("reuseport: 3 Node workers, each on its own socket; the kernel spreads 90 connections over all 3, none through pml")
        func reusePortServes() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.app(box, name: "rp", port: port, instances: 3, dispatch: "reuseport")
                try await box.pmlOK("start", file)
                let pids = Row.pids(try await box.waitServing("rp", count: 3))
                let replies = try box.answers(port: port, count: 90)
                var counts: [Int32: Int] = [:]
                for r in replies { counts[r.pid ?? -1, default: 0] += 1 }
                #expect(Set(counts.keys) == pids, "every worker served: \(counts) vs \(pids.sorted())")
                let handed = try await Self.dispatched(box, "rp")
                #expect(handed.values.reduce(0, +) == 0, "no connection went through pml: \(handed)")
                #expect(ListenQueues.sockets(port: port) == 3, "one listening socket per slot")
            }
        }

        @Test("reuseport: kill -9 of a stopped worker with connections queued on its socket: all are answered by the others, through pml")
        func reusePortKillKeepsQueue() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                // A long restart delay: the slot has no worker for 5 s, and pml serves its queue meanwhile.
                let file = try Self.app(box, name: "rp", port: port, instances: 3, dispatch: "reuseport",
                                        extra: "  restart_delay = 5000,")
                try await box.pmlOK("start", file)
                let rows = try await box.waitServing("rp", count: 3)
                let victim = rows[1].pid!
                let load = LoadGenerator(.local(port), pauseMs: 3)
                load.start(fast: 2, slow: 0)
                await sleepMs(300)

                // Stopped, it accepts nothing: whatever the kernel sends to its slot waits in that socket's queue.
                kill(victim, SIGSTOP)
                try await box.waitFor("worker \(victim) stopped") { Proc.state(victim) == "T" ? true : nil }
                let total = 24
                let clients = ParallelGets(port: port, count: total, timeout: 12)
                // Its own socket (its fd 3), not the longest queue on the port: under load a live worker's
                // backlog can be the longest, and those connections are its own to serve, not pml's to hand.
                let queued = try await box.waitFor("every connection answered or queued on the stopped worker's socket") { () -> Int? in
                    let q = ListenQueues.queue(port: port, pid: victim, fd: 3) ?? 0
                    return clients.finished + q >= total && q > 0 ? q : nil
                }
                kill(victim, SIGKILL)
                let killedAt = nowMs()
                let results = await clients.wait()
                // Its replacement starts 5 s later: answers before that came from the live workers.
                #expect(nowMs() - killedAt < 4000, "the queue was served by the others, not by the replacement")
                let samples = await load.stop()
                let failed = failuresOf(results)
                #expect(failed.isEmpty, "all \(total) connections answered, \(queued) of them queued on the dead worker's socket: \(failed.prefix(4))")
                #expect(!servedBy(results).contains(victim), "the dead worker answered none")
                let handed = try await Self.dispatched(box, "rp")
                #expect(handed.values.reduce(0, +) >= queued, "pml handed the \(queued) queued connections to the live workers: \(handed)")
                // The load: 2 sequential clients, so the worker had at most 2 of their requests in flight
                // (accepted before it stopped); whatever was only queued on its socket was served.
                #expect(samples.failed.count <= 2 && samples.failed.allSatisfy { $0.start < killedAt },
                        "no more failures than it had in flight: \(samples.summary())")
                // The replacement takes the slot back; pml stops accepting on it.
                let after = try await box.waitServing("rp", count: 3, timeout: 20)
                #expect(!Row.pids(after).contains(victim))
                // Once it serves, pml no longer accepts on its slot: nothing more is handed over.
                let before = try await Self.dispatched(box, "rp").values.reduce(0, +)
                let replies = try box.answers(port: port, count: 30)
                #expect(Set(replies.compactMap(\.pid)) == Row.pids(after), "all 3 serve again")
                #expect(try await Self.dispatched(box, "rp").values.reduce(0, +) == before, "the kernel spreads them, not pml")
            }
        }

        @Test("reuseport: 3 graceful reloads under load, 0 failed; every slot keeps one socket, the replacements serve")
        func reusePortReloads() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.app(box, name: "rp", port: port, instances: 3, dispatch: "reuseport")
                try await box.pmlOK("start", file)
                let first = Row.pids(try await box.waitServing("rp", count: 3))
                let load = LoadGenerator(.local(port), pauseMs: 3)
                load.start(fast: 2, slow: 2)
                await sleepMs(500)
                let pids = try await box.gracefulReloads("rp", count: 3, replacing: first, pauseMs: 400)
                let samples = await load.stop()
                #expect(samples.failed.isEmpty, "no request failed: \(samples.summary())")
                #expect(samples.count > 60, "the load ran: \(samples.summary())")
                #expect(Set(samples.compactMap(\.pid)).isSuperset(of: pids), "the final workers served")
                #expect(ListenQueues.sockets(port: port) == 3, "still one socket per slot")
            }
        }

        @Test("reuseport: scale 2 → 4 → 1 under load, 0 failed; slots are added, then drained into the last worker and closed")
        func reusePortScale() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.app(box, name: "rp", port: port, instances: 2, dispatch: "reuseport")
                try await box.pmlOK("start", file)
                try await box.waitServing("rp", count: 2)
                let load = LoadGenerator(.local(port), pauseMs: 3)
                load.start(fast: 2, slow: 1)
                await sleepMs(300)

                try await box.pmlOK("scale", "rp", "4")
                let four = Row.pids(try await box.waitServing("rp", count: 4))
                try await box.waitFor("4 slot sockets") { ListenQueues.sockets(port: port) == 4 ? true : nil }
                let replies = try box.answers(port: port, count: 80)
                #expect(Set(replies.compactMap(\.pid)) == four, "all 4 serve after scaling up")

                try await box.pmlOK("scale", "rp", "1")
                let one = Row.pids(try await box.waitServing("rp", count: 1))
                try await box.waitFor("the removed slots' sockets are closed") { ListenQueues.sockets(port: port) == 1 ? true : nil }
                let last = try box.answers(port: port, count: 20)
                #expect(Set(last.compactMap(\.pid)) == one, "only the remaining worker answers")
                let samples = await load.stop()
                #expect(samples.failed.isEmpty, "no request failed while scaling: \(samples.summary())")
            }
        }

        @Test("reuseport: kill -9 of the daemon under load: 0 failed, the same workers serve; the successor holds the slot sockets (a worker killed next has its queue served)")
        func reusePortDaemonDeath() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.app(box, name: "rp", port: port, instances: 2, dispatch: "reuseport",
                                        extra: "  restart_delay = 4000,")
                try await box.pmlOK("start", file)
                let pids = Row.pids(try await box.waitServing("rp", count: 2))
                let daemon = try #require(box.daemonPid)
                let load = LoadGenerator(.local(port), pauseMs: 3)
                load.start(fast: 2, slow: 1)
                await sleepMs(400)
                #expect(kill(daemon, SIGKILL) == 0)
                try await box.waitFor("a successor daemon", timeout: 10, every: 20) {
                    box.daemonPid.flatMap { $0 != daemon && Proc.alive($0) ? $0 : nil }
                }
                let rows = try await box.waitServing("rp", count: 2)
                #expect(Row.pids(rows) == pids, "the same workers, adopted: \(rows)")
                #expect(ListenQueues.sockets(port: port) == 2, "still one socket per slot (none bound twice)")
                await sleepMs(300)
                let samples = await load.stop()
                #expect(samples.failed.isEmpty, "no request failed across the daemon's death: \(samples.summary())")

                // The successor holds the slots too: a worker killed now has its queue served by the other.
                let victim = rows[1].pid!
                kill(victim, SIGSTOP)
                try await box.waitFor("worker \(victim) stopped") { Proc.state(victim) == "T" ? true : nil }
                let clients = ParallelGets(port: port, count: 12, timeout: 12)
                try await box.waitFor("connections queued on the stopped worker's socket") { () -> Bool? in
                    let q = ListenQueues.queue(port: port, pid: victim, fd: 3) ?? 0
                    return clients.finished + q >= 12 && q > 0 ? true : nil
                }
                kill(victim, SIGKILL)
                let killedAt = nowMs()
                let results = await clients.wait()
                #expect(nowMs() - killedAt < 3500, "served before the replacement (4 s later)")
                let failed = failuresOf(results)
                #expect(failed.isEmpty, "\(failed.prefix(3))")
            }
        }

        @Test("reuseport, a Python program: LISTEN_FDS=1 with its own SO_REUSEPORT socket (a different one per worker), both serve")
        func reusePortListenFds() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let worker = try box.write("shared.py", ClusterFixture.pythonShared)
                let envDir = box.work + "/env"
                try FileManager.default.createDirectory(atPath: envDir, withIntermediateDirectories: true)
                let file = try box.write("py.lua", """
                    return {
                      name = "py", script = \(lua(worker)), instances = 2,
                      dispatch = "reuseport", listen = "127.0.0.1:\(port)",
                      env = { FX_ENV_DIR = \(lua(envDir)) },
                    }
                    """)
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("py", count: 2)
                let records = try await box.sharedRecords("py", in: envDir, count: 2)
                var inodes: Set<Int> = []
                for rec in records {
                    #expect(rec["LISTEN_FDS"] as? String == "1", "\(rec)")
                    #expect(rec["LISTEN_PID"] as? String == String(rec["pid"] as? Int ?? -1), "LISTEN_PID is the worker: \(rec)")
                    #expect(rec["PML_IPC_FD"] as? String == "4", "\(rec)")
                    let fds = rec["listen_fds"] as? [[String: Any]] ?? []
                    #expect(fds.count == 1 && fds[0]["listening"] as? Bool == true && fds[0]["port"] as? Int == port, "\(fds)")
                    #expect(fds.first?["reuseport"] as? Bool == true, "SO_REUSEPORT is set: \(fds)")
                    if let ino = fds.first?["inode"] as? Int { inodes.insert(ino) }
                }
                #expect(inodes.count == 2, "each worker has a socket of its own: \(inodes)")
                let results = HTTP.sequential(.local(port), 60)
                #expect(failuresOf(results).isEmpty, "\(failuresOf(results).prefix(3))")
                #expect(Set(tally(results).keys) == Set(rows.compactMap(\.pid)), "both serve: \(tally(results))")
            }
        }

        @Test("reuseport, a Python program that says pml:handoff: a killed worker's queued connections are served by the other, through pml")
        func reusePortPythonHandoff() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let worker = try box.write("rp.py", ClusterFixture.pythonReusePort)
                let file = try box.write("rp.lua", """
                    return { name = "rp", script = \(lua(worker)), instances = 2, dispatch = "reuseport",
                             listen = "127.0.0.1:\(port)", restart_delay = 5000 }
                    """)
                try await box.pmlOK("start", file)
                let rows = try await box.waitServing("rp", count: 2)
                let victim = rows[1].pid!, survivor = rows[0].pid!
                try await box.waitFor("the survivor takes handed connections") { () -> Bool? in
                    let workers = try await box.rawWorkers("rp")
                    return workers.allSatisfy { (($0["serving"] as? [Any]) ?? []).count == 1 } ? true : nil
                }
                kill(victim, SIGSTOP)
                try await box.waitFor("worker \(victim) stopped") { Proc.state(victim) == "T" ? true : nil }
                let clients = ParallelGets(port: port, count: 16, timeout: 12)
                // Its own socket (fd 3): the survivor's backlog under load is the survivor's to serve.
                let queued = try await box.waitFor("connections queued on the stopped worker's socket") { () -> Int? in
                    let q = ListenQueues.queue(port: port, pid: victim, fd: 3) ?? 0
                    return clients.finished + q >= 16 && q > 0 ? q : nil
                }
                kill(victim, SIGKILL)
                let killedAt = nowMs()
                let results = await clients.wait()
                #expect(nowMs() - killedAt < 4000, "served before the replacement (5 s later)")
                let failed = failuresOf(results)
                #expect(failed.isEmpty, "all answered, \(queued) of them queued on the dead worker's socket: \(failed.prefix(3))")
                let pids = Set(servedBy(results))
                #expect(pids == [survivor], "the survivor answered them all: \(pids)")
                let handed = try await Self.dispatched(box, "rp")
                #expect(handed[survivor] ?? 0 >= queued, "the \(queued) queued on the dead worker's socket were handed over by pml: \(handed)")
            }
        }

        @Test("reuseport needs TCP addresses and a fixed port: one clear line, nothing started")
        func reusePortValidation() async throws {
            try await withSandbox { box in
                let script = try box.write("app.js", ClusterFixture.seedApp(port: 1))
                let unix = try box.write("u.lua", """
                    return { name = "u", script = "app.js", dispatch = "reuseport", listen = "unix:\(box.work)/u.sock" }
                    """)
                try await box.pml("start", unix).expectCleanFailure(mentioning: ["unix sockets cannot share"])
                try await box.pml("start", script, "--dispatch", "reuseport").expectCleanFailure(mentioning: ["needs a listen address"])
                try await box.pml("start", script, "--dispatch", "reuseport", "--port", "0").expectCleanFailure(mentioning: ["fixed port"])
                try await box.pml("start", script, "--dispatch", "sideways").expectCleanFailure(mentioning: ["least-busy", "reuseport"])
                #expect(try await box.ls().isEmpty, "nothing was started")
            }
        }

        // MARK: least-busy

        @Test("least-busy: while one worker holds a slow request, every new connection goes to the idle one (rr would alternate)")
        func leastBusyAvoidsTheBusyWorker() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let marks = box.work + "/marks"
                try FileManager.default.createDirectory(atPath: marks, withIntermediateDirectories: true)
                let js = try box.write("lb.js", """
                    const fs = require('fs');
                    require('http').createServer((req, res) => {
                      const reply = () => res.end('hello from ' + process.pid + '\\n');
                      if (req.url === '/hold') { fs.writeFileSync(process.env.FX_MARKS + '/' + process.pid, 'held'); setTimeout(reply, 4000); }
                      else reply();
                    }).listen(\(port));

                    """)
                let file = try box.write("lb.lua", """
                    return { name = "lb", script = \(lua(js)), instances = 2, listen = \(port), dispatch = "least-busy",
                             env = { FX_MARKS = \(lua(marks)) } }
                    """)
                try await box.pmlOK("start", file)
                let pids = Row.pids(try await box.waitServing("lb", count: 2))
                // Warm up both (and let each report it is idle again).
                _ = try box.answers(port: port, count: 4)

                let hold = ParallelGets(port: port, count: 1, timeout: 10, path: "/hold")
                let busy: Int32 = try await box.waitFor("a worker holds the slow request") {
                    (try? FileManager.default.contentsOfDirectory(atPath: marks))?.first.flatMap { Int32($0) }
                }
                let idle = pids.subtracting([busy])
                // New connections a little apart, as clients come: each worker's report of a closed one has arrived.
                var replies: [HTTPReply] = []
                for _ in 0..<12 {
                    replies += try box.answers(port: port, count: 1)
                    usleep(10_000)
                }
                let counts = Dictionary(grouping: replies.compactMap(\.pid), by: { $0 }).mapValues(\.count)
                #expect(counts == [idle.first!: 12], "all 12 went to the idle worker \(idle), not to \(busy): \(counts)")
                let held = await hold.wait()
                if case .success(let r) = held.first { #expect(r.pid == busy) } else { Issue.record("the slow request failed: \(held)") }
            }
        }

        @Test("least-busy, a Python program: a worker whose connections metric says 50 gets no connection while the other has fewer")
        func leastBusyMetric() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Cluster.rrApp(box, name: "py", listen: String(port), instances: 2,
                                             env: ["FX_BUSY_INSTANCE": "0"], extra: "dispatch = \"least-busy\",")
                try await box.pmlOK("start", file)
                let rows = try await box.waitServing("py", count: 2)
                let busy = rows.first { $0.instance == 0 }!.pid!, idle = rows.first { $0.instance == 1 }!.pid!
                try await box.waitFor("the busy worker's metric reached pml") { () -> Bool? in
                    let w = try await box.rawWorkers("py").first { ($0["process"] as? [String: Any])?["instance"] as? Int == 0 }
                    return (w?["metrics"] as? [String: Any])?["connections"] != nil ? true : nil
                }
                // The idle one never reports: each connection handed to it counts as open, 20 < 50.
                let results = HTTP.sequential(.local(port), 20)
                #expect(failuresOf(results).isEmpty, "\(failuresOf(results).prefix(3))")
                #expect(tally(results) == [idle: 20], "all to \(idle), none to the busy \(busy): \(tally(results))")
            }
        }
    }
}

// MARK: - Helpers

/// Listening TCP sockets on a port, as `ss` sees them (sock_diag: the kernel lists only the
/// listeners of that port): how many, and how many connections wait in each one's accept queue.
/// Not /proc/net/tcp{,6}: they list every socket of the machine, megabytes of TIME_WAIT after the
/// load tests (a probe took 400 ms), and Foundation reads only their first 4 KB, so with more than
/// a couple of dozen listeners on the machine a port's sockets went missing.
enum ListenQueues {
    /// Each listener on `port`: its socket inode and accept-queue length (Recv-Q of a listener).
    static func listeners(port: Int) -> [(inode: Substring, queue: Int)] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["ss", "-ltnHe", "sport = :\(port)"]
        let out = Pipe()
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return [] }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        // LISTEN <Recv-Q> <Send-Q> <local> <peer> ... ino:<inode> ...
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard f.count > 5, f[0] == "LISTEN", let queue = Int(f[1]),
                  let inode = f.first(where: { $0.hasPrefix("ino:") })?.dropFirst(4) else { return nil }
            return (inode, queue)
        }
    }

    static func sockets(port: Int) -> Int { listeners(port: port).count }
    /// The longest accept queue among them.
    static func longestQueue(port: Int) -> Int { listeners(port: port).map(\.queue).max() ?? 0 }

    /// The accept queue of the socket on `port` that process `pid` has as `fd` (a reuseport
    /// worker's slot socket is fd 3); nil if that is not one of them.
    static func queue(port: Int, pid: Int32, fd: Int32) -> Int? {
        guard let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)"),
              link.hasPrefix("socket:[") else { return nil }
        let inode = link.dropFirst("socket:[".count).dropLast()
        return listeners(port: port).first { $0.inode == inode }?.queue
    }
}

extension Proc {
    /// The state letter in /proc/<pid>/stat ("R", "S", "T" for stopped…), or nil if gone.
    static func state(_ pid: Int32) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        return text[text.index(after: close)...].split(separator: " ").first.map(String.init)
    }
}
