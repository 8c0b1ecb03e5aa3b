// Cluster mode (issue 3): pml owns the listening sockets and passes each accepted connection to
// the next ready worker (rr), or lets workers inherit them (shared, LISTEN_FDS); readiness,
// IPC messages both ways, scaling and crashes under load. Real daemons, real workers (Node.js
// and Python), real sockets; every port comes from `Net.freePort()`.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Cluster mode")
    struct Cluster {
        // MARK: fixtures

        /// Writes the Python rr worker into the sandbox; returns its path.
        static func rrWorker(_ box: Sandbox) throws -> String {
            try box.write("rr.py", ClusterFixture.pythonRR)
        }

        /// An app file for the Python rr worker: `name`, `listen` (Lua source), extra keys (Lua source).
        static func rrApp(_ box: Sandbox, name: String, listen: String, instances: Int,
                          env: [String: String] = [:], extra: String = "") throws -> String {
            let worker = try rrWorker(box)
            let envLua = env.sorted { $0.key < $1.key }.map { "\($0.key) = \(lua($0.value))" }.joined(separator: ", ")
            return try box.write("\(name).lua", """
                return {
                  name = \(lua(name)),
                  script = \(lua(worker)),
                  instances = \(instances),
                  listen = \(listen),
                  env = { \(envLua) },
                  restart_delay = 100,
                  \(extra)
                }
                """)
        }

        // MARK: the seed, unchanged

        @Test("the seed's app.js under `pml start app.js -i 4`: 100 sequential requests, 25 to each worker pid in ls")
        func seedAppRoundRobin() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                try box.write("app.js", ClusterFixture.seedApp(port: port))
                let start = try await box.pml("start", "app.js", "-i", "4")
                #expect(start.ok, "\(start)")

                let rows = try await box.waitServing("app", count: 4)
                for row in rows { #expect(row.mode == "cluster", "a listening app is in cluster mode: \(row)") }
                let (_, raw) = try await box.describe("app")
                let listening = raw["listening"] as? [String] ?? []
                #expect(listening.contains { $0.hasSuffix(String(port)) }, "describe lists the port: \(listening)")

                let results = HTTP.sequential(.local(port), 100)
                let failed = failuresOf(results)
                #expect(failed.isEmpty, "every request is answered:\n\(failed.prefix(5).joined(separator: "\n"))")
                let counts = tally(results)
                #expect(Set(counts.keys) == Row.pids(rows),
                        "responders \(counts) are the workers of pml ls \(rows)")
                #expect(counts.count == 4 && counts.values.allSatisfy { $0 == 25 }, "round-robin, 25 each: \(counts)")
            }
        }

        // MARK: Python workers: rr and shared

        @Test("a Python recv_fds worker (rr, started with --port): 3 workers x 8 sequential requests = 8 each")
        func pythonRoundRobinExact() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let worker = try Self.rrWorker(box)
                let start = try await box.pml("start", worker, "--name", "pyrr", "-i", "3", "--port", String(port))
                #expect(start.ok, "\(start)")
                let rows = try await box.waitServing("pyrr", count: 3)
                for row in rows { #expect(row.mode == "cluster", "\(row)") }

                let results = HTTP.sequential(.local(port), 24)
                let failed = failuresOf(results)
                #expect(failed.isEmpty, "\(failed.prefix(5))")
                let counts = tally(results)
                #expect(Set(counts.keys) == Row.pids(rows), "responders \(counts) vs ls \(rows)")
                #expect(counts.count == 3 && counts.values.allSatisfy { $0 == 8 }, "exactly 8 each: \(counts)")
            }
        }

        @Test("shared dispatch: LISTEN_PID is the worker, LISTEN_FDS=2 from fd 3, PML_IPC_FD=5, both workers serve")
        func sharedListenFds() async throws {
            try await withSandbox { box in
                let p1 = try Net.freePort()
                var p2 = try Net.freePort()
                while p2 == p1 { p2 = try Net.freePort() }
                let worker = try box.write("shared.py", ClusterFixture.pythonShared)
                let envDir = box.work + "/env"
                try FileManager.default.createDirectory(atPath: envDir, withIntermediateDirectories: true)
                let file = try box.write("shared.lua", """
                    return {
                      name = "sh",
                      script = \(lua(worker)),
                      instances = 2,
                      dispatch = "shared",
                      listen = { \(p1), "127.0.0.1:\(p2)" },
                      env = { FX_ENV_DIR = \(lua(envDir)) },
                    }
                    """)
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("sh", count: 2)
                for row in rows { #expect(row.mode == "cluster", "\(row)") }

                // What each worker found in its environment and fd table (written by the worker).
                let records = try await box.sharedRecords("sh", in: envDir, count: 2)
                for rec in records {
                    let pid = rec["pid"] as? Int ?? -1
                    #expect(rec["LISTEN_PID"] as? String == String(pid), "LISTEN_PID is the worker's own pid: \(rec)")
                    #expect(rec["LISTEN_FDS"] as? String == "2", "two listening fds: \(rec)")
                    #expect(rec["PML_IPC_FD"] as? String == "5", "IPC fd is 3 + LISTEN_FDS: \(rec)")
                    let names = (rec["LISTEN_FDNAMES"] as? String ?? "").split(separator: ":", omittingEmptySubsequences: false)
                    #expect(names.count == 2, "LISTEN_FDNAMES has one name per fd: \(rec)")
                    let fds = rec["listen_fds"] as? [[String: Any]] ?? []
                    #expect(fds.count == 2)
                    for (i, fd) in fds.enumerated() {
                        #expect(fd["listening"] as? Bool == true, "fd \(3 + i) is a listening socket: \(fd)")
                        #expect(fd["type"] as? Int == Int(SOCK_STREAM.rawValue), "fd \(3 + i) is a stream socket: \(fd)")
                    }
                    // In the order of `listen`: a bare port (any address, IPv4 or dual-stack IPv6), then 127.0.0.1.
                    #expect(fds.map { $0["port"] as? Int } == [p1, p2], "fd 3 is port \(p1), fd 4 is port \(p2): \(fds)")
                    #expect([Int(AF_INET), Int(AF_INET6)].contains(fds.first?["family"] as? Int ?? -1), "\(fds)")
                    #expect(fds.last?["family"] as? Int == Int(AF_INET), "127.0.0.1 is IPv4: \(fds)")
                    let ipc = rec["ipc"] as? [String: Any] ?? [:]
                    #expect(ipc["family"] as? Int == Int(AF_UNIX), "fd 5 is the unix IPC socket: \(ipc)")
                    #expect(ipc["listening"] as? Bool == false, "fd 5 is a connected socket, not a listener: \(ipc)")
                }

                // Both ports answer, and both workers serve. The workers race for each connection
                // (select, then accept): on a busy machine one may win many in a row, so requests go
                // on until both have answered, up to 400.
                var results: [Result<HTTPReply, RequestFailure>] = []
                for i in 0..<400 {
                    results.append(HTTP.get(.local(i % 2 == 0 ? p1 : p2)))
                    if i >= 39, tally(results).count >= 2 { break }
                }
                #expect(failuresOf(results).isEmpty, "\(failuresOf(results).prefix(5))")
                let counts = tally(results)
                #expect(Set(counts.keys) == Row.pids(rows), "both workers serve: \(counts) vs \(rows)")
            }
        }

        // MARK: crashes and scaling under load

        @Test("kill -9 of one Node worker under sequential load: no failed request, a replacement serves")
        func kill9UnderLoad() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                try box.write("app.js", ClusterFixture.seedApp(port: port))
                try await box.pmlOK("start", "app.js", "-i", "4")
                let before = try await box.waitServing("app", count: 4)
                let oldPids = Row.pids(before)

                let client = LoadGenerator(.local(port), pauseMs: 2)
                client.start()
                await sleepMs(800)
                // The worker that answered last: no request of this sequential client is in its hands.
                let victim = client.samples.last(where: { $0.pid != nil })?.pid ?? before[0].pid!
                #expect(oldPids.contains(victim))
                let killedAt = nowMs()
                #expect(kill(victim, SIGKILL) == 0)

                let replacement: Int32 = try await box.waitFor("a replacement pid in pml ls", timeout: 10) {
                    let rows = try await box.rows("app")
                    let fresh = rows.filter { $0.status == "online" && $0.pid != nil && !oldPids.contains($0.pid!) }
                    return rows.count == 4 ? fresh.first?.pid : nil
                }
                // Keep the load on for at least 3 s overall and until the replacement has answered (bounded).
                let until = max(killedAt + 2200, nowMs() + 300)
                let deadline = nowMs() + 10_000
                while nowMs() < until || (!client.samples.contains { $0.pid == replacement } && nowMs() < deadline) {
                    await sleepMs(50)
                }
                let samples = await client.stop()
                let after = samples.filter { $0.start > killedAt }

                #expect(samples.failed.isEmpty, "no request fails: \(samples.summary())")
                #expect(samples.count > 50, "the load was steady: \(samples.summary())")
                for pid in oldPids where pid != victim {
                    #expect(after.contains { $0.pid == pid }, "survivor \(pid) keeps serving after the kill: \(after.summary())")
                }
                #expect(!after.contains { $0.pid == victim && $0.start > killedAt + 50 }, "the dead worker answers nothing")
                #expect(after.contains { $0.pid == replacement }, "replacement \(replacement) serves: \(after.summary())")
                let row = try #require(try await box.rows("app").first { $0.pid == replacement })
                #expect(row.restarts >= 1, "\(row)")
            }
        }

        @Test("`pml scale web 6` then `pml scale web 2` under a sequential client: 6 then 2 workers, no failed request")
        func scaleUpDownUnderLoad() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                try box.write("app.js", ClusterFixture.seedApp(port: port))
                try await box.pmlOK("start", "app.js", "--name", "web", "-i", "4")
                try await box.waitServing("web", count: 4)

                let client = LoadGenerator(.local(port), pauseMs: 2)
                client.start()
                await sleepMs(300)

                let up = try await box.pml("scale", "web", "6")
                #expect(up.ok, "\(up)")
                let six = try await box.waitServing("web", count: 6)
                await sleepMs(400)

                let down = try await box.pml("scale", "web", "2")
                #expect(down.ok, "\(down)")
                let two = try await box.waitServing("web", count: 2)
                await sleepMs(400)
                let settled = nowMs()
                await sleepMs(300)
                let samples = await client.stop()

                #expect(six.count == 6 && two.count == 2)
                #expect(samples.failed.isEmpty, "no failed request while scaling: \(samples.summary())")
                let sixPids = Row.pids(six)
                let seenWhileSix = Set(samples.compactMap(\.pid)).intersection(sixPids)
                #expect(seenWhileSix.count == 6, "all 6 workers answered at some point: \(samples.summary())")
                let late = Set(samples.filter { $0.start > settled }.compactMap(\.pid))
                #expect(late.isSubset(of: Row.pids(two)) && !late.isEmpty,
                        "after scaling down only the 2 remaining workers answer: \(late) vs \(two)")
                let final = try await box.rows("web")
                #expect(final.count == 2, "ls shows 2 workers: \(final)")
            }
        }

        // MARK: messages

        @Test("`pml send` reaches process.on('message'); the worker's reply reaches onMessage, whose return goes back")
        func sendAndOnMessage() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let script = try box.write("messenger.js", ClusterFixture.nodeMessenger(port: port))
                let received = box.work + "/received.jsonl"
                let file = try box.write("msg.lua", """
                    return {
                      name = "msg",
                      script = \(lua(script)),
                      instances = 2,
                      env = { FX_OUT = \(lua(received)) },
                      onMessage = function(worker, msg)
                        if type(msg) == "table" and msg.type == "pong" then
                          pml.log("PONG tag=" .. tostring(msg.tag) .. " sender=" .. tostring(math.tointeger(msg.pid))
                                  .. " worker=" .. tostring(worker.pid))
                          return { type = "thanks", tag = msg.tag }
                        end
                      end,
                    }
                    """)
                try await box.pmlOK("start", file)
                let rows = try await box.waitServing("msg", count: 2)
                let workerPids = Row.pids(rows)

                let sent = try await box.pml("send", "msg", #"{"type":"ping","tag":"t42"}"#)
                #expect(sent.ok, "\(sent)")
                let plain = try await box.pml("send", "msg", "hello-plain")
                #expect(plain.ok, "\(plain)")

                func got() -> [(pid: Int32, msg: Any)] {
                    box.lines(received).compactMap { line in
                        guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                              let pid = o["pid"] as? Int else { return nil }
                        return (Int32(pid), o["msg"] as Any)
                    }
                }
                func has(_ pid: Int32, type: String) -> Bool {
                    got().contains { $0.pid == pid && ($0.msg as? [String: Any])?["type"] as? String == type
                        && ($0.msg as? [String: Any])?["tag"] as? String == "t42" }
                }
                // The ping reaches every worker, and so does the plain string (not JSON: sent as a string).
                try await box.waitFor("each worker got the ping and the string", timeout: 10) {
                    workerPids.allSatisfy { pid in
                        has(pid, type: "ping") && got().contains { $0.pid == pid && $0.msg as? String == "hello-plain" }
                    } ? true : nil
                }
                // Each pong reached onMessage with the right worker ...
                try await box.waitFor("onMessage logged both pongs in daemon.log", timeout: 10) {
                    let log = box.read(box.daemonLog)
                    return workerPids.allSatisfy { log.contains("PONG tag=t42 sender=\($0) worker=\($0)") } ? true : nil
                }
                // ... and what onMessage returned went back to that worker.
                try await box.waitFor("each worker got onMessage's reply", timeout: 10) {
                    workerPids.allSatisfy { has($0, type: "thanks") } ? true : nil
                }
            }
        }

        @Test("a worker's {type:metric, name:queue, value:7} shows in describe --json workers[].metrics.queue")
        func metricMessage() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.rrApp(box, name: "met", listen: String(port), instances: 1,
                                          env: ["FX_METRIC": "1"], extra: "ready = \"message\",")
                try await box.pmlOK("start", file)
                try await box.waitServing("met", count: 1)
                let value: Double = try await box.waitFor("metrics.queue in describe", timeout: 10) {
                    let w = try await box.rawWorkers("met").first
                    return ((w?["metrics"] as? [String: Any])?["queue"] as? NSNumber)?.doubleValue
                }
                #expect(value == 7)
            }
        }

        // MARK: addresses

        @Test("listen = \"unix:<dir>/s.sock\": requests over the unix socket are served round-robin")
        func unixSocketListen() async throws {
            try await withSandbox { box in
                let path = box.work + "/s.sock"
                // A stale socket file, as a crashed server leaves behind: pml replaces it.
                let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
                var sa = sockaddr_un()
                sa.sun_family = sa_family_t(AF_UNIX)
                withUnsafeMutableBytes(of: &sa.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
                let staleBound = withUnsafePointer(to: &sa) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(stale, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
                close(stale)
                #expect(staleBound == 0 && FileManager.default.fileExists(atPath: path), "stale socket file in place")

                let file = try Self.rrApp(box, name: "ux", listen: lua("unix:" + path), instances: 2,
                                          extra: "ready = \"message\",")
                try await box.pmlOK("start", file)
                let rows = try await box.waitServing("ux", count: 2)
                let (_, raw) = try await box.describe("ux")
                #expect((raw["listening"] as? [String] ?? []).contains { $0.contains(path) },
                        "describe lists the unix address: \(raw["listening"] ?? "nil")")

                let results = HTTP.sequential(.unix(path), 10)
                #expect(failuresOf(results).isEmpty, "\(failuresOf(results).prefix(5))")
                let counts = tally(results)
                #expect(Set(counts.keys) == Row.pids(rows) && counts.values.allSatisfy { $0 == 5 }, "\(counts)")

                // Deleting the app frees the address: the socket file goes away.
                try await box.pmlOK("delete", "ux")
                try await box.waitFor("\(path) removed after pml delete", timeout: 5) {
                    FileManager.default.fileExists(atPath: path) ? nil : true
                }
            }
        }

        @Test("listen = \"unix:<path>\" where <path> is a regular file: start fails cleanly and the file is kept")
        func unixListenKeepsRegularFile() async throws {
            try await withSandbox { box in
                let path = try box.write("notes.txt", "precious data\n")
                let worker = try Self.rrWorker(box)
                let start = try await box.pml("start", worker, "--name", "clobber", "--port", "unix:" + path)
                #expect(box.read(path) == "precious data\n",
                        "pml must not delete a file that is not a socket (gunicorn: \"is not a socket\"); start said:\n\(start)")
                start.expectCleanFailure()
            }
        }

        @Test("listen = \"[::1]:port\": served over IPv6 loopback (IPv4 if the machine has no ::1)")
        func ipv6Listen() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                // Not skipped on machines without IPv6 loopback: there it checks the IPv4 form instead.
                let v6 = Net.hasIPv6Loopback
                let address = v6 ? "[::1]:\(port)" : "127.0.0.1:\(port)"
                let file = try Self.rrApp(box, name: "v6", listen: lua(address), instances: 2,
                                          extra: "ready = \"message\",")
                try await box.pmlOK("start", file)
                let rows = try await box.waitServing("v6", count: 2)
                let (_, raw) = try await box.describe("v6")
                #expect((raw["listening"] as? [String] ?? []).contains(address), "describe: \(raw["listening"] ?? "nil")")

                let results = HTTP.sequential(.tcp(v6 ? "::1" : "127.0.0.1", port), 6)
                #expect(failuresOf(results).isEmpty, "\(failuresOf(results).prefix(5))")
                let counts = tally(results)
                #expect(Set(counts.keys) == Row.pids(rows) && counts.values.allSatisfy { $0 == 3 }, "\(counts)")
                if v6 {
                    // Bound to ::1 only, as asked: nothing listens on 127.0.0.1 at that port.
                    if case .success(let r) = HTTP.get(.local(port), timeout: 2) {
                        Issue.record("[::1]:\(port) should not answer on 127.0.0.1: \(r)")
                    }
                }
            }
        }

        // MARK: readiness

        @Test("ready = \"message\": the worker stays starting, a connection waits (not refused) and is served once ready; onReady runs then")
        func readyMessageHoldsConnections() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let go = box.work + "/go"
                let file = try Self.rrApp(box, name: "rdy", listen: String(port), instances: 1,
                                          env: ["FX_READY": "file", "FX_READY_FILE": go], extra: """
                                          ready = "message", ready_timeout = 20000,
                                          onReady = function(w) pml.log("ONREADY pid=" .. w.pid .. " status=" .. w.status) end,
                                          """)
                try await box.pmlOK("start", file)
                let row = try await box.waitFor("a starting worker with a pid") {
                    try await box.rows("rdy").first.flatMap { $0.pid.map(Proc.alive) == true ? $0 : nil }
                }
                let pid = try #require(row.pid)
                #expect(row.status == "starting", "not ready yet: \(row)")

                let client = LoadGenerator(.local(port), pauseMs: 0, timeout: 15)
                client.start()
                await sleepMs(1200)
                #expect(client.samples.isEmpty, "the request waits while no worker is ready: \(client.samples.summary())")
                let still = try #require(try await box.rows("rdy").first)
                #expect(still.status == "starting", "still starting without the ready message: \(still)")
                let (_, raw) = try await box.describe("rdy")
                #expect((raw["pending_connections"] as? Int ?? 0) >= 1, "describe counts the waiting connection: \(raw["pending_connections"] ?? "nil")")
                #expect(!box.read(box.daemonLog).contains("ONREADY"), "onReady has not run yet")

                let readyAt = nowMs()
                _ = FileManager.default.createFile(atPath: go, contents: Data())
                let first = try await box.waitFor("the waiting request to be answered", timeout: 10) { client.samples.first }
                let samples = await client.stop()
                #expect(first.failure == nil, "the waiting request is served, not refused: \(samples.summary())")
                #expect(first.pid == pid, "by the worker that became ready: \(first.result)")
                #expect(first.end >= readyAt, "answered only after the worker was ready")
                #expect(samples.failed.isEmpty, "\(samples.summary())")

                let online = try await box.waitOnline("rdy")
                #expect(online[0].pid == pid)
                try await box.waitFor("onReady in daemon.log", timeout: 5) {
                    box.read(box.daemonLog).contains("ONREADY pid=\(pid) status=online") ? true : nil
                }
            }
        }

        @Test("ready = <ms>: a worker that says nothing is starting until the delay, then online and serving")
        func readyDelay() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.rrApp(box, name: "dl", listen: String(port), instances: 1,
                                          env: ["FX_READY": "none"], extra: "ready = 1500,")
                let startedAt = nowMs()
                try await box.pmlOK("start", file)
                let row = try await box.waitFor("a worker with a pid") {
                    try await box.rows("dl").first.flatMap { $0.pid.map(Proc.alive) == true ? $0 : nil }
                }
                #expect(row.status == "starting", "\(row)")
                let client = LoadGenerator(.local(port), pauseMs: 0, timeout: 10)
                client.start()
                let online = try await box.waitOnline("dl", timeout: 10)
                let onlineAt = nowMs()
                let first = try await box.waitFor("the first request answered", timeout: 10) { client.samples.first }
                let samples = await client.stop()
                #expect(onlineAt - startedAt >= 1400, "online after ~1500 ms, took \(Int(onlineAt - startedAt)) ms")
                #expect(first.failure == nil && first.pid == online[0].pid, "\(samples.summary())")
                #expect(first.end - startedAt >= 1400, "the early request waited for readiness")
                #expect(samples.failed.isEmpty, "\(samples.summary())")
            }
        }

        @Test("onReady(worker) runs once per worker when it is ready, with its pid")
        func onReadyHook() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.rrApp(box, name: "hk", listen: String(port), instances: 2, extra: """
                    ready = "message",
                    onReady = function(w) pml.log("HOOK onReady " .. w.app .. " instance=" .. w.instance .. " pid=" .. w.pid) end,
                    """)
                try await box.pmlOK("start", file)
                let rows = try await box.waitServing("hk", count: 2)
                try await box.waitFor("onReady for both workers in daemon.log", timeout: 5) {
                    let log = box.read(box.daemonLog)
                    return rows.allSatisfy { log.contains("HOOK onReady hk instance=\($0.instance) pid=\($0.pid!)") } ? true : nil
                }
                let log = box.read(box.daemonLog)
                #expect(log.components(separatedBy: "HOOK onReady hk").count - 1 == 2, "exactly once each:\n\(log.suffix(1500))")
            }
        }

        @Test("sd_notify READY=1 and STATUS= on NOTIFY_SOCKET make a ready = \"message\" worker online with status_text")
        func notifySocketReady() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.rrApp(box, name: "nt", listen: String(port), instances: 1,
                                          env: ["FX_READY": "notify"], extra: "ready = \"message\", ready_timeout = 20000,")
                try await box.pmlOK("start", file)
                let rows = try await box.waitServing("nt", count: 1, timeout: 10)
                let pid = try #require(rows[0].pid)
                let text: String = try await box.waitFor("status_text in describe", timeout: 5) {
                    try await box.rawWorkers("nt").first?["status_text"] as? String
                }
                #expect(text == "serving from \(pid)")
                let r = HTTP.get(.local(port))
                #expect((try? r.get().pid) == pid, "\(r)")
            }
        }

        @Test("ready_timeout: a worker that never gets ready is restarted, and the reason says ready_timeout")
        func readyTimeoutRestarts() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.rrApp(box, name: "slow", listen: String(port), instances: 1,
                                          env: ["FX_READY": "never"], extra: """
                                          ready = "message", ready_timeout = 1500, kill_timeout = 500,
                                          """)
                try await box.pmlOK("start", file)
                let first = try await box.waitFor("a starting worker with a pid") {
                    try await box.rows("slow").first.flatMap { $0.pid.map(Proc.alive) == true ? $0 : nil }
                }
                #expect(first.status == "starting", "never online without a ready message: \(first)")
                let firstPid = try #require(first.pid)

                var reasons: [String] = []
                let restarted = try await box.waitFor("a restart after ready_timeout", timeout: 10) {
                    let (d, _) = try await box.describe("slow")
                    if let r = d.workers.first?.reason { reasons.append(r) }
                    let row = d.workers.first?.process
                    return (row?.restarts ?? 0) >= 1 && row?.pid != nil && row?.pid != firstPid ? row : nil
                }
                #expect(restarted.status != "online", "still never online: \(restarted)")
                #expect(!Proc.alive(firstPid), "the first process is gone")
                let errLog = box.read(box.logsDir + "/slow-err.log")
                let said = reasons.contains { $0.contains("ready_timeout") } || errLog.contains("ready_timeout")
                #expect(said, "reason or err log mentions ready_timeout; reasons seen: \(Set(reasons)); err log: \(errLog.suffix(500))")
            }
        }

        // MARK: misbehaving workers

        @Test("a worker writing a non-JSON line on its IPC channel keeps running and serving: the line is logged and dropped")
        func garbageOnIPC() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let mark = box.work + "/garbage.mark"
                let file = try Self.rrApp(box, name: "gb", listen: String(port), instances: 1,
                                          env: ["FX_GARBAGE_MARK": mark], extra: "ready = \"message\",")
                try await box.pmlOK("start", file)
                let offender: Int32 = try await box.waitFor("the worker to write garbage", timeout: 10) {
                    Int32(box.read(mark).trimmingCharacters(in: .whitespacesAndNewlines))
                }
                let line = try await box.waitFor("the dropped line in daemon.log", timeout: 10) {
                    box.lines(box.daemonLog).first { $0.contains("gb worker") && $0.contains("not JSON (dropped)") }
                }
                #expect(line.contains("\"this is { not json\""), "the log shows the line: \(line)")
                #expect(await box.pingOK())
                let row = try #require(try await box.rows("gb").first)
                #expect(row.pid == offender && row.restarts == 0 && row.status == "online", "\(row)")
                let r = HTTP.get(.local(port))
                #expect((try? r.get().pid) == offender, "the same worker serves: \(r)")
            }
        }

        @Test("a worker that takes a connection and dies before ACK: the request is still answered by another worker")
        func diesBeforeAck() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let mark = box.work + "/died.mark"
                let file = try Self.rrApp(box, name: "nack", listen: String(port), instances: 2,
                                          env: ["FX_DIE_MARK": mark, "FX_DIE_INSTANCE": "0"], extra: "ready = \"message\",")
                try await box.pmlOK("start", file)
                let rows = try await box.waitServing("nack", count: 2)
                let victim = try #require(rows.first { $0.instance == 0 }?.pid)
                let other = try #require(rows.first { $0.instance == 1 }?.pid)

                // Sequential requests until instance 0 has had its first connection (at most 2 in rr).
                var results: [Result<HTTPReply, RequestFailure>] = []
                while results.count < 4 && !FileManager.default.fileExists(atPath: mark) {
                    results.append(HTTP.get(.local(port), timeout: 8))
                }
                #expect(FileManager.default.fileExists(atPath: mark), "instance 0 received a connection and died")
                #expect(box.read(mark).trimmingCharacters(in: .whitespacesAndNewlines) == String(victim))
                #expect(failuresOf(results).isEmpty, "the connection instance 0 took is answered anyway: \(failuresOf(results))")
                #expect(results.compactMap { try? $0.get().pid }.allSatisfy { $0 == other }, "by instance 1: \(tally(results))")

                // Instance 0 comes back and serves again (the mark keeps it from dying twice).
                let back = try await box.waitFor("instance 0 replaced", timeout: 10) {
                    try await box.rows("nack").first {
                        $0.instance == 0 && $0.status == "online" && $0.pid != nil && $0.pid != victim
                    }
                }
                try await box.waitServing("nack", count: 2)
                #expect(back.restarts >= 1)
                let more = HTTP.sequential(.local(port), 4)
                #expect(failuresOf(more).isEmpty, "\(failuresOf(more))")
                #expect(Set(tally(more).keys) == [back.pid!, other], "\(tally(more))")
            }
        }
    }
}
