// pml's native handoff channel (PML_HANDOFF_FD, docs/PROTOCOL.md): rr and least-busy workers that
// opt in get connections several in flight, several per message, credited back in batches. Real
// daemons, the real Node preload and the real Python example worker, real HTTP.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A Python worker on the handoff channel with knobs for hostile behaviour (the example worker,
/// examples/python-native-handoff/worker.py, is the well-behaved one):
/// - FX_HELLO: the hello line it writes (default "H 8 4").
/// - FX_SILENT_INSTANCE=n: that instance (`all`: every one) opts in but never reads its handoff
///   channel (never credits), until FX_WAKE names a file that exists: then it reads and credits.
/// - FX_GARBAGE_INSTANCE=n, FX_GARBAGE_MARK=<file>: that instance, if the file does not exist,
///   creates it and writes a line that is not a record on the handoff channel after its hello.
/// - FX_FLOOD_INSTANCE=n, FX_FLOOD_LINE=<line>: that instance, after its hello, writes that line
///   on its handoff channel in a loop, 10,000 at a time, until pml cuts it off.
/// - FX_LAZY_INSTANCE=n, FX_HOLDS=<file>: that instance reads 4 messages, keeps their connections
///   (no credit, no answer), creates the file and reads no more; once FX_TRIGGER exists, it
///   writes `C 4` (late credits) and the hello FX_REHELLO (so a test can see both were read).
/// - FX_TRIGGER=<file>, FX_ON_TRIGGER: the silent instance, once that file exists, writes a line
///   that is not a record ("garbage") or shuts down its writing side ("shutwr"), waits 1.5 s (pml
///   reads a worker with its window in use within 1 s: `paceCredits`), then reads and serves what
///   its handoff channel holds (the file is removed: once); or ("close")
///   closes its handoff channel unread, or ("shutrdwr") shuts it down both ways unread, and serves
///   NODE_HANDLE lines only from then on.
/// - FX_NO_ECHO_INSTANCE=n: that instance never echoes a successor's mark (it says revision 2 all the same).
/// NODE_HANDLE lines on the IPC channel are served too (what pml sends before it reads the hello).
private let hostileHandoffWorker = #"""
    import array, json, os, selectors, socket, sys, time
    PID = os.getpid()
    INSTANCE = os.environ.get("PML_INSTANCE")
    ipc = socket.socket(fileno=int(os.environ["PML_IPC_FD"]))
    handoff = socket.socket(fileno=int(os.environ["PML_HANDOFF_FD"]))
    body = ("hello from %d\n" % PID).encode()
    response = b"HTTP/1.0 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    def serve(fd):
        conn = socket.socket(fileno=fd)
        conn.settimeout(5)
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            conn.sendall(response)
        except OSError:
            pass
        conn.close()

    handoff.sendall((os.environ.get("FX_HELLO", "H 8 4") + "\n").encode())
    mark = os.environ.get("FX_GARBAGE_MARK")
    if os.environ.get("FX_GARBAGE_INSTANCE") == INSTANCE and mark and not os.path.exists(mark):
        open(mark, "w").write(str(PID))
        handoff.sendall(b"this is not a record\n")
    ipc.sendall(b'"ready"\n')
    if os.environ.get("FX_FLOOD_INSTANCE") == INSTANCE:
        flood = (os.environ["FX_FLOOD_LINE"] + "\n").encode() * 10000
        try:
            while True:
                handoff.sendall(flood)
        except OSError:
            sys.exit(0)
    silent = os.environ.get("FX_SILENT_INSTANCE") in (INSTANCE, "all")
    wake = os.environ.get("FX_WAKE")
    sel = selectors.DefaultSelector()
    sel.register(ipc, selectors.EVENT_READ, "ipc")
    if not silent:
        sel.register(handoff, selectors.EVENT_READ, "handoff")
    buffer, pending = b"", []
    trigger = os.environ.get("FX_TRIGGER")
    lazy = os.environ.get("FX_LAZY_INSTANCE") == INSTANCE
    echoes = os.environ.get("FX_NO_ECHO_INSTANCE") != INSTANCE
    kept = []
    while True:
        if lazy and trigger and os.path.exists(trigger):
            os.remove(trigger)
            trigger = None
            handoff.sendall(b"C %d\n%s\n" % (len(kept), os.environ["FX_REHELLO"].encode()))
        if silent and wake and os.path.exists(wake):
            silent = False
            sel.register(handoff, selectors.EVENT_READ, "handoff")
        if silent and trigger and os.path.exists(trigger):
            os.remove(trigger)   # once: a restarted worker does not do it again
            trigger = None
            if os.environ.get("FX_ON_TRIGGER") in ("close", "shutrdwr"):
                if os.environ["FX_ON_TRIGGER"] == "close":
                    handoff.close()
                else:
                    handoff.shutdown(socket.SHUT_RDWR)
                continue
            if os.environ.get("FX_ON_TRIGGER") == "garbage":
                handoff.sendall(b"garbage\n")
            else:
                handoff.shutdown(socket.SHUT_WR)
            time.sleep(1.5)
            handoff.setblocking(False)
            while True:
                try:
                    data, anc, _, _ = handoff.recvmsg(256, socket.CMSG_SPACE(8 * 4))
                except OSError:
                    break
                if not data:
                    break
                for level, kind, payload in anc:
                    for fd in array.array("i", payload[:len(payload) - len(payload) % 4]):
                        serve(fd)
        for key, _ in sel.select(0.1):
            if key.data == "handoff":
                data, anc, _, _ = handoff.recvmsg(256, socket.CMSG_SPACE(8 * 4))
                if not data:
                    sys.exit(0)
                fds = array.array("i")
                for level, kind, payload in anc:
                    fds.frombytes(payload[:len(payload) - len(payload) % 4])
                if lazy:
                    kept.extend(fds)
                    if len(kept) >= 4:
                        sel.unregister(handoff)
                        open(os.environ["FX_HOLDS"], "w").close()
                    continue
                if data.startswith(b"E ") and echoes:
                    handoff.sendall(b"E %s\n" % data.split(b" ", 2)[1])
                handoff.sendall(b"C %d\n" % len(fds))
                for fd in fds:
                    serve(fd)
            else:
                data, fds, _, _ = socket.recv_fds(ipc, 65536, 16)
                if not data:
                    sys.exit(0)
                pending.extend(fds)
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    message = json.loads(line)
                    if isinstance(message, dict) and message.get("cmd") == "NODE_HANDLE":
                        ipc.sendall(b'{"cmd":"NODE_HANDLE_ACK"}\n')
                        serve(pending.pop(0))
                    elif message == "shutdown":
                        sys.exit(0)
    """#

/// Runs the Node preload the way pml does, without pml: an IPC channel nobody answers and a
/// handoff channel whose other end reads the hello, then closes (EOF for the shim). Prints the hello
/// and what the app (`preloadReopenApp`) prints.
private let preloadDriver = #"""
    import os, socket, subprocess, sys
    preload, app, work = sys.argv[1], sys.argv[2], sys.argv[3]
    ipc, ipc_child = socket.socketpair()
    handoff, handoff_child = socket.socketpair()
    env = dict(os.environ, PML_APP="t", NODE_CHANNEL_FD=str(ipc_child.fileno()), NODE_CHANNEL_SERIALIZATION_MODE="json",
               PML_HANDOFF_FD=str(handoff_child.fileno()), PML_HANDOFF_REVISION="2", FX_HANDOFF_FD=str(handoff_child.fileno()),
               FX_DIR=work, NODE_OPTIONS="--require " + preload)
    p = subprocess.Popen(["node", app], env=env, pass_fds=(ipc_child.fileno(), handoff_child.fileno()))
    ipc_child.close()
    handoff_child.close()
    handoff.settimeout(10)
    print("hello", handoff.recv(64).decode().strip(), flush=True)
    handoff.close()
    sys.exit(p.wait(timeout=20))
    """#

/// A Node app under the preload: listens (the shim opens its handoff channel), closes that server
/// once the channel is at EOF and the shim let its channel go (2 s), opens files until one gets the
/// handoff channel's old fd number, listens again, and prints what that file holds.
private let preloadReopenApp = #"""
    const net = require('net'), fs = require('fs'), path = require('path');
    const wanted = Number(process.env.FX_HANDOFF_FD);
    const first = net.createServer();
    first.listen(7);
    setTimeout(() => {
      first.close(() => {});
      setTimeout(() => {
        let target = null;
        for (let i = 0; i < 64 && target === null; i++) {
          const f = path.join(process.env.FX_DIR, 'file' + i);
          if (fs.openSync(f, 'w+') === wanted) target = f;
        }
        console.log('reused ' + (target !== null));
        net.createServer().listen(8);
        setTimeout(() => {
          console.log('content ' + JSON.stringify(target ? fs.readFileSync(target, 'latin1') : null));
          process.exit(0);
        }, 500);
      }, 2500);
    }, 500);
    """#

extension Integration {
    @Suite("Native handoff")
    struct Handoff {
        /// How pml hands each worker of `app` its connections (`handoff` in describe --json), by pid.
        static func modes(_ box: Sandbox, _ app: String) async throws -> [Int32: String] {
            var out: [Int32: String] = [:]
            for w in try await box.rawWorkers(app) {
                guard let p = w["process"] as? [String: Any], let pid = p["pid"] as? Int else { continue }
                out[Int32(pid)] = w["handoff"] as? String ?? "-"
            }
            return out
        }

        /// Waits until every one of `count` workers of `app` is on the handoff channel as `mode`.
        @discardableResult
        static func waitMode(_ box: Sandbox, _ app: String, count: Int, _ mode: String) async throws -> [Int32: String] {
            try await box.waitFor("\(count) worker(s) of \(app) with handoff \(mode)") {
                let m = try await modes(box, app)
                return m.count == count && m.values.allSatisfy { $0 == mode } ? m : nil
            }
        }

        /// Waits until state.json records every one of `count` workers of `app` with `handoff`
        /// [fds per message, window(, revision)]: what a successor will assume of them.
        static func waitSaved(_ box: Sandbox, _ app: String, count: Int, _ handoff: [Int]) async throws {
            try await box.waitFor("state.json: \(count) worker(s) of \(app) with handoff \(handoff)") { () -> Bool? in
                guard let data = FileManager.default.contents(atPath: box.home + "/state.json"),
                      let state = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                      let apps = state["apps"] as? [[String: Any]],
                      let workers = apps.first(where: { $0["name"] as? String == app })?["workers"] as? [[String: Any]] else { return nil }
                let saved = workers.compactMap { $0["handoff"] as? [Int] }
                return saved.count == count && saved.allSatisfy { $0 == handoff } ? true : nil
            }
        }

        /// The example worker (examples/python-native-handoff/worker.py) as an app on `port`.
        /// 3 graceful reloads of a 2-worker app under load on the handoff channel: no request fails,
        /// and the new workers are on the channel in `mode` again.
        static func reloadsUnderLoad(_ box: Sandbox, _ app: String, port: Int, mode: String,
                                     pauseMs: Int, fast: Int, slow: Int) async throws {
            let pids = Row.pids(try await box.waitServing(app, count: 2))
            try await waitMode(box, app, count: 2, mode)
            let load = LoadGenerator(.local(port), pauseMs: pauseMs)
            load.start(fast: fast, slow: slow)
            await sleepMs(400)
            try await box.gracefulReloads(app, count: 2, replacing: pids, pauseMs: 300)
            let samples = await load.stop()
            #expect(samples.failed.isEmpty, "no request failed: \(samples.summary())")
            #expect(samples.count > 30, "\(samples.summary())")
            try await waitMode(box, app, count: 2, mode)
        }

        static func exampleApp(_ box: Sandbox, name: String, port: Int, instances: Int, dispatch: String = "rr") throws -> String {
            let worker = PMLBinary.packageRoot.appendingPathComponent("examples/python-native-handoff/worker.py").path
            return try box.write("\(name).lua", """
                return {
                  name = \(lua(name)), script = \(lua(worker)), instances = \(instances), listen = \(port),
                  dispatch = \(lua(dispatch)), ready = "message", restart_delay = 100,
                }
                """)
        }

        static func hostileApp(_ box: Sandbox, name: String, port: Int, instances: Int, env: [String: String]) throws -> String {
            let worker = try box.write("hostile.py", hostileHandoffWorker)
            let envLua = env.sorted { $0.key < $1.key }.map { "\($0.key) = \(lua($0.value))" }.joined(separator: ", ")
            return try box.write("\(name).lua", """
                return {
                  name = \(lua(name)), script = \(lua(worker)), instances = \(instances), listen = \(port),
                  ready = "message", restart_delay = 100, env = { \(envLua) },
                }
                """)
        }

        @Test("Node rr workers take their connections on the handoff channel (credits, 1 fd per message, revision 2 as state.json records); every request is answered by both")
        func nodeUsesHandoff() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Dispatch.app(box, name: "web", port: port, instances: 2, dispatch: "rr")
                try await box.pmlOK("start", file)
                let pids = Row.pids(try await box.waitServing("web", count: 2))
                try await Self.waitMode(box, "web", count: 2, "credits 16, 1 fd/message")
                try await Self.waitSaved(box, "web", count: 2, [1, 16, 2])
                let replies = try box.answers(port: port, count: 60)
                #expect(Set(replies.compactMap(\.pid)) == pids, "both workers answered")
                let handed = try await Dispatch.dispatched(box, "web")
                #expect(handed.values.reduce(0, +) >= 60, "pml handed every connection: \(handed)")
            }
        }

        /// Credits that wait unread while most of the window is free must never leave the worker
        /// unserved until the once-a-second read: a stall shows as a round of ~1 s.
        @Test("1 Node rr worker, 12 concurrent requests × 20 rounds: every round under 400 ms (credits waiting unread never stall it until the 1 s expiry), also with a handoff socket that fills at once (PML_HANDOFF_SNDBUF=1)",
              arguments: [[:], ["PML_HANDOFF_SNDBUF": "1"]])
        func noStallWhileCreditsWait(env: [String: String]) async throws {
            try await withSandbox { box in
                try box.startDaemon(env: env)
                let port = try Net.freePort()
                try await box.pmlOK("start", try Dispatch.app(box, name: "web", port: port, instances: 1, dispatch: "rr"))
                _ = try await box.waitServing("web", count: 1)
                try await Self.waitMode(box, "web", count: 1, "credits 16, 1 fd/message")
                let rounds = await Self.timedRounds(port: port, rounds: 20, concurrent: 12)
                #expect(rounds.max()! < 400, "slowest round \(rounds.max()!) ms: \(rounds)")
            }
        }

        /// `rounds` rounds of `concurrent` requests at once: how long each round took (ms); every
        /// request must be answered.
        static func timedRounds(port: Int, rounds: Int, concurrent: Int) async -> [Int] {
            var times: [Int] = []
            for _ in 0..<rounds {
                let start = nowMs()
                let results = await ParallelGets(port: port, count: concurrent, timeout: 5).wait()
                times.append(Int(nowMs() - start))
                let failed = failuresOf(results)
                #expect(failed.isEmpty, "\(failed.count) failed: \(failed.prefix(4))")
            }
            return times
        }

        /// Unread credits count toward the bound that pauses accept (64 under ulimit -n 256, less
        /// than 6 windows of 32): once it pauses, every worker's credits must be read at once.
        @Test("under ulimit -n 256, 6 workers of the Python example (window 32 each, bound 64), 100 concurrent requests × 8 rounds: every round under 800 ms (a pause of accept never waits for the 1 s expiry to read credits)")
        func noStallWhileAcceptPaused() async throws {
            try await withSandbox { box in
                try box.startDaemon(fdLimit: 256)
                let port = try Net.freePort()
                try await box.pmlOK("start", try Self.exampleApp(box, name: "py", port: port, instances: 6))
                _ = try await box.waitOnline("py", count: 6)
                try await Self.waitMode(box, "py", count: 6, "credits 32, 8 fds/message")
                let rounds = await Self.timedRounds(port: port, rounds: 8, concurrent: 100)
                #expect(rounds.max()! < 800, "slowest round \(rounds.max()!) ms: \(rounds)")
            }
        }

        @Test("kill -9 of the daemon: Node rr workers (revision 2) echo the successor's mark, so it counts their credits again: 100 requests after it, each worker taking far more than its window of 16")
        func nodeEchoesTheSuccessorsMark() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                try await box.pmlOK("start", try Dispatch.app(box, name: "web", port: port, instances: 2, dispatch: "rr"))
                let pids = Row.pids(try await box.waitServing("web", count: 2))
                try await Self.waitMode(box, "web", count: 2, "credits 16, 1 fd/message")
                try await Self.waitSaved(box, "web", count: 2, [1, 16, 2])
                _ = try box.answers(port: port, count: 10)
                let old = box.daemonPid!
                kill(old, SIGKILL)
                try await box.waitFor("a successor daemon") { box.daemonPid.flatMap { $0 != old && Proc.alive($0) ? $0 : nil } }
                try await Self.waitMode(box, "web", count: 2, "credits 16, 1 fd/message")
                let before = try await Dispatch.dispatched(box, "web")
                let replies = try box.answers(port: port, count: 100)
                #expect(Set(replies.compactMap(\.pid)) == pids, "both adopted workers answered")
                let after = try await Dispatch.dispatched(box, "web")
                let taken = pids.map { (after[$0] ?? 0) - (before[$0] ?? 0) }
                #expect(taken.allSatisfy { $0 > 32 }, "each took far more than its window since the death: \(taken)")
            }
        }

        @Test("the Python example (least-busy): 8 fds per message, window 32; 200 concurrent requests all answered, by both workers")
        func pythonExampleServes() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.exampleApp(box, name: "py", port: port, instances: 2, dispatch: "least-busy")
                try await box.pmlOK("start", file)
                let pids = Row.pids(try await box.waitOnline("py", count: 2))
                try await Self.waitMode(box, "py", count: 2, "credits 32, 8 fds/message")
                let gets = ParallelGets(port: port, count: 200, timeout: 10)
                let results = await gets.wait()
                let failed = failuresOf(results)
                #expect(failed.isEmpty, "\(failed.count) failed: \(failed.prefix(4))")
                let served = Set(servedBy(results))
                #expect(served == pids, "both workers answered: \(served) vs \(pids)")
            }
        }

        @Test("kill -9 of a Python handoff worker under load: no more failures than the load had in flight; the rest served")
        func killUnderLoad() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.exampleApp(box, name: "py", port: port, instances: 2)
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("py", count: 2)
                try await Self.waitMode(box, "py", count: 2, "credits 32, 8 fds/message")
                let load = LoadGenerator(.local(port), pauseMs: 3)
                load.start(fast: 3, slow: 0)
                await sleepMs(500)
                kill(rows[0].pid!, SIGKILL)
                let killedAt = nowMs()
                try await box.waitOnline("py", count: 2, timeout: 15)
                try await Self.waitMode(box, "py", count: 2, "credits 32, 8 fds/message")
                await sleepMs(500)
                let samples = await load.stop()
                // 3 sequential clients: at most 3 requests were with the worker when it died.
                #expect(samples.failed.count <= 3, "\(samples.summary())")
                #expect(samples.filter { $0.start > killedAt + 200 && $0.failure == nil }.count > 10,
                        "the load went on: \(samples.summary()); \(samples.filter { $0.start > killedAt }.count) after the kill, last at +\(Int((samples.map(\.start).max() ?? 0) - killedAt)) ms")
            }
        }

        @Test("3 graceful reloads of Node rr workers on the handoff channel under load: 0 failed")
        func reloadsUnderLoad() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Dispatch.app(box, name: "web", port: port, instances: 2, dispatch: "rr")
                try await box.pmlOK("start", file)
                try await Self.reloadsUnderLoad(box, "web", port: port, mode: "credits 16, 1 fd/message",
                                                pauseMs: 3, fast: 3, slow: 1)
            }
        }

        @Test("3 graceful reloads of the Python example under load: 0 failed (what an old worker had not taken goes to the others)")
        func pythonReloadsUnderLoad() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.exampleApp(box, name: "py", port: port, instances: 2)
                try await box.pmlOK("start", file)
                try await Self.reloadsUnderLoad(box, "py", port: port, mode: "credits 32, 8 fds/message",
                                                pauseMs: 2, fast: 4, slow: 0)
            }
        }

        @Test("kill -9 of the daemon under load: the successor keeps the Python workers on their handoff channels, 0 failed (the example, which echoes marks, and a worker of revision 1, which does not)",
              arguments: ["example", "revision 1"])
        func daemonDeath(worker: String) async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = worker == "example" ? try Self.exampleApp(box, name: "py", port: port, instances: 2)
                    : try Self.hostileApp(box, name: "py", port: port, instances: 2, env: ["FX_HELLO": "H 8 32"])
                try await box.pmlOK("start", file)
                let pids = Row.pids(try await box.waitOnline("py", count: 2))
                try await Self.waitMode(box, "py", count: 2, "credits 32, 8 fds/message")
                // What the successor will assume: the example says revision 2 (pml says it speaks it).
                try await Self.waitSaved(box, "py", count: 2, worker == "example" ? [8, 32, 2] : [8, 32])
                let load = LoadGenerator(.local(port), pauseMs: 3)
                load.start(fast: 3, slow: 0)
                await sleepMs(400)
                let old = box.daemonPid!
                kill(old, SIGKILL)
                try await box.waitFor("a successor daemon") { box.daemonPid.flatMap { $0 != old && Proc.alive($0) ? $0 : nil } }
                let modes = try await Self.waitMode(box, "py", count: 2, "credits 32, 8 fds/message")
                #expect(Set(modes.keys) == pids, "the same workers, adopted")
                await sleepMs(800)
                let samples = await load.stop()
                #expect(samples.failed.isEmpty, "\(samples.summary())")
                let replies = try box.answers(port: port, count: 40)
                #expect(Set(replies.compactMap(\.pid)) == pids, "both still serve")
            }
        }

        @Test("hostile: a worker flooding its handoff channel (the same hello, or credits) is cut off; pml ls answers within 1 s throughout; no state.json.tmp left; the same daemon",
              arguments: ["H 8 4", "C 1"])
        func floodCutOff(line: String) async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.hostileApp(box, name: "h", port: port, instances: 1,
                                               env: ["FX_FLOOD_INSTANCE": "0", "FX_FLOOD_LINE": line])
                try await box.pmlOK("start", file)
                let daemon = box.daemonPid
                let log = box.logsDir + "/h-err.log"
                var slowest = 0.0
                let until = nowMs() + 3000
                while nowMs() < until {
                    let t0 = nowMs()
                    let r = try await box.pml(["ls"], timeout: 10)
                    slowest = max(slowest, nowMs() - t0)
                    #expect(r.ok, "\(r)")
                    await sleepMs(100)
                }
                #expect(slowest < 1000, "pml ls took \(Int(slowest)) ms at worst under the flood")
                try await box.waitFor("the cut-off said in the app's log") {
                    box.read(log).contains("handoff channel; pml closed the channel") ? true : nil
                }
                #expect(box.daemonPid == daemon && daemon.map(Proc.alive) == true, "the same daemon")
                // A write in progress has one for a few ms; a leftover stays.
                try await box.waitFor("no state.json.tmp left", timeout: 3) {
                    try FileManager.default.contentsOfDirectory(atPath: box.home).contains { $0.contains(".tmp") } ? nil : true
                }
                #expect(await box.pingOK(), "the daemon answers")
            }
        }

        @Test("after a daemon death, late credits for what the dead daemon sent count for none of the successor's connections: the worker that echoes marks dies holding them unread, and they are all served by the other")
        func lateCreditsAfterDaemonDeath() async throws {
            try await withSandbox { box in
                try box.startDaemon(env: ["PML_HANDOFF_EXPIRY_MS": "60000"])
                let port = try Net.freePort()
                let holds = box.work + "/holds", trigger = box.work + "/trigger"
                let file = try Self.hostileApp(box, name: "h", port: port, instances: 2,
                                               env: ["FX_HELLO": "H 1 4 2", "FX_LAZY_INSTANCE": "0", "FX_HOLDS": holds,
                                                     "FX_TRIGGER": trigger, "FX_REHELLO": "H 2 4 2"])
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("h", count: 2)
                try await Self.waitMode(box, "h", count: 2, "credits 4, 1 fd/message")
                let lazy = rows[0].pid!, good = rows[1].pid!
                // The first daemon sends the lazy worker 4, which it reads and does not credit.
                let first = ParallelGets(port: port, count: 12, timeout: 30)
                try await box.waitFor("the lazy worker read 4") { FileManager.default.fileExists(atPath: holds) ? true : nil }
                try await box.waitFor("the other answered the other 8") { first.finished == 8 ? true : nil }
                let old = box.daemonPid!
                kill(old, SIGKILL)
                try await box.waitFor("a successor daemon") { box.daemonPid.flatMap { $0 != old && Proc.alive($0) ? $0 : nil } }
                try await Self.waitMode(box, "h", count: 2, "credits 4, 1 fd/message")
                // The successor sends it 4 more (its window), the first marked; it does not read them.
                let before = try await Dispatch.dispatched(box, "h")[lazy] ?? 0
                let second = ParallelGets(port: port, count: 12, timeout: 30)
                try await box.waitFor("the successor sent the lazy worker 4") { try await Dispatch.dispatched(box, "h")[lazy] == before + 4 ? true : nil }
                // Its late credits for the first daemon's 4, then a hello the successor shows once read.
                try box.write("trigger", "")
                try await box.waitFor("the late credits read") { try await Self.modes(box, "h")[lazy] == "credits 4, 2 fds/message" ? true : nil }
                kill(lazy, SIGKILL)
                let answers = await second.wait()
                let failed = failuresOf(answers)
                #expect(failed.isEmpty, "\(failed.count) of the successor's 12 failed: \(failed.prefix(3))")
                let pids = servedBy(answers)
                #expect(pids.allSatisfy { $0 == good }, "the 4 the lazy worker never read went to \(good): \(pids)")
                // The first daemon's 4 were read by the worker that died: those alone are lost.
                let lost = await first.wait().filter { if case .failure = $0 { true } else { false } }.count
                #expect(lost == 4, "lost \(lost) of the first daemon's 12")
            }
        }

        /// Two workers, instance 0 silent (window 4): 12 concurrent requests; once it holds 4, it is
        /// triggered (`onTrigger`); returns the answers, the two pids, the daemon's open fds before the
        /// requests and the port.
        static func heldThenTriggered(_ box: Sandbox, onTrigger: String) async throws -> (answers: [Result<HTTPReply, RequestFailure>], silent: Int32, good: Int32, fds: Int, port: Int) {
            let port = try Net.freePort()
            let trigger = box.work + "/trigger"
            let file = try Self.hostileApp(box, name: "h", port: port, instances: 2,
                                           env: ["FX_SILENT_INSTANCE": "0", "FX_TRIGGER": trigger, "FX_ON_TRIGGER": onTrigger])
            try await box.pmlOK("start", file)
            let rows = try await box.waitOnline("h", count: 2)
            try await Self.waitMode(box, "h", count: 2, "credits 4, 8 fds/message")
            let silent = rows[0].pid!, good = rows[1].pid!
            let fds = daemonFDs(box)
            let gets = ParallelGets(port: port, count: 12, timeout: 10)
            try await box.waitFor("the silent worker holds 4") { try await Dispatch.dispatched(box, "h")[silent] == 4 ? true : nil }
            try box.write("trigger", "")
            return (await gets.wait(), silent, good, fds, port)
        }

        @Test("the Node preload opens its handoff channel once: after EOF, a later listen writes no hello into an app file that got the channel's old fd number")
        func preloadNeverReopensAClosedChannel() async throws {
            try await withSandbox { box in
                let driver = try box.write("driver.py", preloadDriver)
                let app = try box.write("app.js", preloadReopenApp)
                let preload = PMLBinary.packageRoot.appendingPathComponent("shims/node/preload.js").path
                let r = try await ChildProcess(box, "/usr/bin/env", ["python3", driver, preload, app, box.work]).finish(timeout: 30)
                #expect(r.status == 0 && r.stdout.contains("hello H 1 16 2"), "the shim said hello once: \(r)")
                #expect(r.stdout.contains("reused true"), "an app file got the old fd number: \(r)")
                #expect(r.stdout.contains("content \"\""), "nothing was written into it: \(r)")
            }
        }

        /// `count` requests one after another (5 s each): how many each pid answered.
        static func answeredBy(port: Int, count: Int) -> [Int32: Int] {
            var by: [Int32: Int] = [:]
            for _ in 0..<count {
                switch HTTP.get(.local(port), path: "/", timeout: 5) {
                case .success(let r): by[r.pid ?? -1, default: 0] += 1
                case .failure: by[0, default: 0] += 1
                }
            }
            return by
        }

        /// Under ulimit -n 256 (the daemon's bound on connections waiting or in flight is then 64,
        /// the handoff expiry 60 s): app "h", 6 workers that read and credit nothing (window 64
        /// each) until the sandbox's `wake` file exists, all on the handoff channel. Its port and rows.
        static func sixSilentUnderLimit(_ box: Sandbox, withoutCapSysResource: Bool = false) async throws -> (port: Int, rows: [Row]) {
            try box.startDaemon(fdLimit: 256, withoutCapSysResource: withoutCapSysResource, env: ["PML_HANDOFF_EXPIRY_MS": "60000"])
            let port = try Net.freePort()
            let file = try Self.hostileApp(box, name: "h", port: port, instances: 6,
                                           env: ["FX_HELLO": "H 1 64", "FX_SILENT_INSTANCE": "all", "FX_WAKE": box.work + "/wake"])
            try await box.pmlOK("start", file)
            let rows = try await box.waitOnline("h", count: 6)
            try await Self.waitMode(box, "h", count: 6, "credits 64, 1 fd/message")
            return (port, rows)
        }

        /// How many fds the daemon has open (-1 if it cannot be read).
        static func daemonFDs(_ box: Sandbox) -> Int {
            guard let pid = box.daemonPid else { return -1 }
            return (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
        }

        @Test("a garbage cut-off kills the worker: the connections it had not read go to the other worker, all answered; once it is back, the daemon's fd count is where it was")
        func garbageCutOffRequeues() async throws {
            try await withSandbox { box in
                let (answers, silent, good, fds, _) = try await Self.heldThenTriggered(box, onTrigger: "garbage")
                let failed = failuresOf(answers)
                #expect(failed.isEmpty, "\(failed.count) failed: \(failed.prefix(4))")
                let pids = servedBy(answers)
                #expect(!pids.contains(silent) && pids.allSatisfy { $0 == good }, "the killed worker served none: \(pids)")
                try await box.waitFor("worker 0 back", timeout: 10) { () -> Bool? in
                    let rows = try await box.rows("h")
                    return rows.count == 2 && rows.allSatisfy { $0.status == "online" } && rows[0].pid != silent ? true : nil
                }
                try await box.waitFor("the daemon's fds back to \(fds)", timeout: 5) { Self.daemonFDs(box) == fds ? true : nil }
            }
        }

        @Test("a worker shutting down its writing side keeps reading: what it holds is served once, by it")
        func shutWriteKeepsConnections() async throws {
            try await withSandbox { box in
                let (answers, silent, good, _, _) = try await Self.heldThenTriggered(box, onTrigger: "shutwr")
                let failed = failuresOf(answers)
                #expect(failed.isEmpty, "\(failed.count) failed: \(failed.prefix(4))")
                let pids = servedBy(answers)
                #expect(pids.filter { $0 == silent }.count == 4, "the 4 it held were answered by it, not handed to \(good): \(pids)")
                #expect(await box.pingOK())
            }
        }

        @Test("hostile: an absurd grant is clamped to 64 in flight, 8 fds per message")
        func absurdGrantClamped() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.hostileApp(box, name: "h", port: port, instances: 1, env: ["FX_HELLO": "H 100000 999999999999999999999"])
                try await box.pmlOK("start", file)
                try await box.waitOnline("h", count: 1)
                try await Self.waitMode(box, "h", count: 1, "credits 64, 8 fds/message")
                #expect(try box.answers(port: port, count: 20).count == 20)
            }
        }

        @Test("hostile: a silent worker granting 999 gets exactly 64 connections, no more")
        func absurdGrantSilentGetsExactly64() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.hostileApp(box, name: "h", port: port, instances: 1,
                                               env: ["FX_HELLO": "H 1 999", "FX_SILENT_INSTANCE": "0"])
                try await box.pmlOK("start", file)
                let pid = try await box.waitOnline("h", count: 1)[0].pid!
                try await Self.waitMode(box, "h", count: 1, "credits 64, 1 fd/message")
                let gets = ParallelGets(port: port, count: 80, timeout: 3)
                try await box.waitFor("64 handed to the silent worker") { try await Dispatch.dispatched(box, "h")[pid] == 64 ? true : nil }
                let answers = await gets.wait()
                #expect(answers.allSatisfy { if case .failure = $0 { true } else { false } }, "nobody answers")
                #expect(try await Dispatch.dispatched(box, "h")[pid] == 64, "still 64 once the 80 clients gave up")
            }
        }

        @Test("hostile: garbage on the handoff channel cuts the worker off (killed, restarted, said in its log); the other serves meanwhile")
        func garbageCutsOff() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let mark = box.work + "/garbage"
                let file = try Self.hostileApp(box, name: "h", port: port, instances: 2,
                                               env: ["FX_GARBAGE_INSTANCE": "1", "FX_GARBAGE_MARK": mark])
                try await box.pmlOK("start", file)
                try await box.waitFor("the garbage was written") { FileManager.default.fileExists(atPath: mark) ? true : nil }
                let rows = try await box.waitFor("worker 1 restarted after the cut-off") { () -> [Row]? in
                    let rows = try await box.rows("h")
                    return rows.count == 2 && rows.allSatisfy { $0.status == "online" } && rows[1].restarts >= 1 ? rows : nil
                }
                #expect(box.read(box.logsDir + "/h-err.log").contains("not a record"),
                        "the cut-off is said in the app's log")
                try await Self.waitMode(box, "h", count: 2, "credits 4, 8 fds/message")
                let replies = try box.answers(port: port, count: 30)
                #expect(Set(replies.compactMap(\.pid)) == Row.pids(rows))
                #expect(await box.pingOK(), "the daemon answers")
            }
        }

        @Test("hostile: a worker that never credits back gets its window (4) and no more; the other serves everything else")
        func silentWorkerRunsOutOfCredits() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                let file = try Self.hostileApp(box, name: "h", port: port, instances: 2, env: ["FX_SILENT_INSTANCE": "0"])
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("h", count: 2)
                try await Self.waitMode(box, "h", count: 2, "credits 4, 8 fds/message")
                let silent = rows[0].pid!, good = rows[1].pid!
                // 40 requests one after another, 1 s timeout each: the first few sent to the silent worker time out.
                var answered = 0, timedOut = 0
                for _ in 0..<40 {
                    switch HTTP.get(.local(port), path: "/", timeout: 1) {
                    case .success(let r): answered += 1; #expect(r.pid == good)
                    case .failure: timedOut += 1
                    }
                }
                let handed = try await Dispatch.dispatched(box, "h")
                #expect(handed[silent] == 4, "the silent worker got its window and no more: \(handed)")
                #expect(timedOut == 4 && answered == 36, "answered \(answered), timed out \(timedOut)")
            }
        }

        @Test("under ulimit -n 256, 6 workers that never credit (window 64 each): pml sends them only as many as its bound (64, what it could take back into its own fds), keeps none of them itself, and the rest wait in the backlog; pml ls answers throughout; once they read, all 300 are answered")
        func unreadConnectionsTakeNoDaemonFDs() async throws {
            try await withSandbox { box in
                let port = try await Self.sixSilentUnderLimit(box).port
                let before = Self.daemonFDs(box)
                // 300 connections: far more than the bound, which counts every one sent and not credited.
                let gets = ParallelGets(port: port, count: 300, timeout: 30)
                try await box.waitFor("the bound (64) handed to the silent workers", timeout: 20) {
                    try await Dispatch.dispatched(box, "h").values.reduce(0, +) == 64 ? true : nil
                }
                // The daemon answers, not frozen: every `pml ls` succeeds, the best of 5 within 1 s
                // (one sample includes starting the CLI process, which alone can take longer on a
                // loaded 2-core machine; a frozen daemon makes all of them slow).
                var times: [Double] = []
                for _ in 0..<5 {
                    let t0 = nowMs()
                    let r = try await box.pml(["ls"], timeout: 10)
                    times.append(nowMs() - t0)
                    #expect(r.ok, "pml ls answers while the connections are in flight: \(r)")
                    await sleepMs(100)
                }
                #expect(times.min()! < 1000, "pml ls took \(times.map { Int($0) }) ms")
                try await box.waitFor("the daemon's fds back to \(before) with 64 in flight", timeout: 5) {
                    Self.daemonFDs(box) == before ? true : nil
                }
                #expect(try await Dispatch.dispatched(box, "h").values.reduce(0, +) == 64, "no more than the bound sent")
                let log = box.read(box.daemonLog)
                #expect(log.contains("pausing accept") && !log.contains("out of file descriptors"), "paused at the bound, never out of fds")
                try box.write("wake", "")
                let answers = await gets.wait()
                let failed = failuresOf(answers)
                #expect(failed.isEmpty, "\(failed.count) of 300 failed: \(failed.prefix(3))")
            }
        }

        @Test("kill -9 of the daemon while a revision-2 worker's socket is full: the successor's marked message cannot go; once the worker reads (credits the successor ignores), it gets the mark, echoes it and takes connections again")
        func fullSocketAtTakeOverRecovers() async throws {
            try await withSandbox { box in
                // A small send buffer: the socket is full after a few messages, not ~280.
                try box.startDaemon(env: ["PML_HANDOFF_SNDBUF": "4096", "PML_HANDOFF_EXPIRY_MS": "60000"])
                let port = try Net.freePort()
                let wake = box.work + "/wake"
                let file = try Self.hostileApp(box, name: "h", port: port, instances: 2,
                                               env: ["FX_HELLO": "H 1 64 2", "FX_SILENT_INSTANCE": "0", "FX_WAKE": wake])
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("h", count: 2)
                try await Self.waitMode(box, "h", count: 2, "credits 64, 1 fd/message")
                try await Self.waitSaved(box, "h", count: 2, [1, 64, 2])
                let silent = rows[0].pid!, good = rows[1].pid!
                // The first daemon fills the silent worker's socket; the other answers the rest.
                let first = ParallelGets(port: port, count: 60, timeout: 60)
                let held = try await box.waitFor("every request answered or held by the silent worker", timeout: 20) { () -> Int? in
                    let h = try await Dispatch.dispatched(box, "h")[silent] ?? 0
                    return h + first.finished == 60 ? h : nil
                }
                #expect(held < 30, "its socket was full before its window (64) or its turns (30): it holds \(held)")
                let old = box.daemonPid!
                kill(old, SIGKILL)
                try await box.waitFor("a successor daemon") { box.daemonPid.flatMap { $0 != old && Proc.alive($0) ? $0 : nil } }
                try await Self.waitMode(box, "h", count: 2, "credits 64, 1 fd/message")
                // The successor's first message to it (marked) finds the socket full: the other serves.
                let meanwhile = Self.answeredBy(port: port, count: 4)
                #expect(meanwhile == [good: 4], "the other answered while the socket is full: \(meanwhile)")
                try box.write("wake", "")
                let answers = await first.wait()
                #expect(answers.allSatisfy { if case .success = $0 { true } else { false } }, "what it held is answered once it reads")
                let by = Self.answeredBy(port: port, count: 30)
                #expect((by[silent] ?? 0) >= 10 && (by[good] ?? 0) >= 10, "both serve after it read its socket: \(by)")
            }
        }

        @Test("a worker that says revision 2 and never echoes a successor's mark gets its window; after the expiry (4 s) daemon.log says so once, describe shows it, and it takes connections again as in revision 1")
        func neverEchoedFallsBackToRevision1() async throws {
            try await withSandbox { box in
                try box.startDaemon(env: ["PML_HANDOFF_EXPIRY_MS": "4000"])
                let port = try Net.freePort()
                let file = try Self.hostileApp(box, name: "h", port: port, instances: 2,
                                               env: ["FX_HELLO": "H 1 4 2", "FX_NO_ECHO_INSTANCE": "0"])
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("h", count: 2)
                try await Self.waitMode(box, "h", count: 2, "credits 4, 1 fd/message")
                try await Self.waitSaved(box, "h", count: 2, [1, 4, 2])
                let mute = rows[0].pid!, good = rows[1].pid!
                let old = box.daemonPid!
                kill(old, SIGKILL)
                try await box.waitFor("a successor daemon") { box.daemonPid.flatMap { $0 != old && Proc.alive($0) ? $0 : nil } }
                try await Self.waitMode(box, "h", count: 2, "credits 4, 1 fd/message")
                // It reads its window (4), answers and credits it; the credits are ignored (no echo),
                // so it gets nothing more until the successor's entries expire. The other serves the rest.
                let answers = await ParallelGets(port: port, count: 12, timeout: 15).wait()
                #expect(try await Dispatch.dispatched(box, "h")[mute] == 4, "its window, then nothing")
                let failed = failuresOf(answers)
                #expect(failed.isEmpty, "\(failed.count) of 12 failed: \(failed.prefix(3))")
                #expect(servedBy(answers).filter { $0 == mute }.count == 4, "it answered its window")
                let said = "worker \(rows[0].id) declared handoff revision 2 but never echoed the mark"
                try await box.waitFor("the missing echo said in daemon.log", timeout: 10) { box.read(box.daemonLog).contains(said) ? true : nil }
                try await box.waitFor("describe shows it") {
                    try await Self.modes(box, "h")[mute] == "credits 4, 1 fd/message, mark never echoed" ? true : nil
                }
                let then = Self.answeredBy(port: port, count: 20)
                #expect((then[mute] ?? 0) >= 8 && (then[good] ?? 0) >= 8, "both serve again: \(then)")
                #expect(box.read(box.daemonLog).components(separatedBy: said).count == 2, "said once")
            }
        }

        @Test("with PML_HANDOFF_EXPIRY_MS=1000: a silent worker's 4 expire after 1 s (said in the daemon's log), it gets no more, and the daemon's fd count is where it was")
        func expiryGivesNoMore() async throws {
            try await withSandbox { box in
                try box.startDaemon(env: ["PML_HANDOFF_EXPIRY_MS": "1000"])
                let port = try Net.freePort()
                let file = try Self.hostileApp(box, name: "h", port: port, instances: 2, env: ["FX_SILENT_INSTANCE": "0"])
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("h", count: 2)
                try await Self.waitMode(box, "h", count: 2, "credits 4, 8 fds/message")
                let fds = { Self.daemonFDs(box) }
                let before = fds()
                let gets = ParallelGets(port: port, count: 12, timeout: 4)
                try await box.waitFor("the silent worker holds 4") { try await Dispatch.dispatched(box, "h")[rows[0].pid!] == 4 ? true : nil }
                try await box.waitFor("the expiry said in the daemon's log", timeout: 5) {
                    box.read(box.daemonLog).contains("did not credit back 4 connection(s) within 1000 ms") ? true : nil
                }
                let answers = await gets.wait()
                let answered = answers.filter { if case .success = $0 { true } else { false } }.count
                #expect(answered == 8, "the good worker answered the rest")
                #expect(try await Dispatch.dispatched(box, "h")[rows[0].pid!] == 4, "no more after the expiry")
                try await box.waitFor("the daemon's fds back to \(before)", timeout: 5) { fds() == before ? true : nil }
            }
        }

        /// Two workers on the handoff channel (window 4, 1 fd per message); the first is stopped
        /// (SIGSTOP) and gets its window unread while the other answers the rest of 12 requests.
        /// Returns the requests, the stopped worker's pid, the other's, and the daemon's fds before.
        static func stoppedHoldingFour(_ box: Sandbox, port: Int) async throws -> (gets: ParallelGets, stopped: Int32, good: Int32, fds: Int) {
            let file = try Self.hostileApp(box, name: "h", port: port, instances: 2, env: ["FX_HELLO": "H 1 4 2"])
            try await box.pmlOK("start", file)
            let rows = try await box.waitOnline("h", count: 2)
            try await Self.waitMode(box, "h", count: 2, "credits 4, 1 fd/message")
            try await Self.waitSaved(box, "h", count: 2, [1, 4, 2])
            let stopped = rows[0].pid!, good = rows[1].pid!
            let before = try await Dispatch.dispatched(box, "h")[stopped] ?? 0
            let fds = Self.daemonFDs(box)
            kill(stopped, SIGSTOP)
            let gets = ParallelGets(port: port, count: 12, timeout: 30)
            try await box.waitFor("the stopped worker was sent 4") { try await Dispatch.dispatched(box, "h")[stopped] == before + 4 ? true : nil }
            try await box.waitFor("the other answered the other 8") { gets.finished == 8 ? true : nil }
            return (gets, stopped, good, fds)
        }

        /// kill -9 of the stopped worker: its 4 unread connections are answered by the other, and once
        /// a new worker 0 is online the daemon holds `fds` descriptors again.
        static func killStoppedThenCheck(_ box: Sandbox, _ held: (gets: ParallelGets, stopped: Int32, good: Int32, fds: Int), fds: Int) async throws {
            kill(held.stopped, SIGKILL)
            let answers = await held.gets.wait()
            let failed = failuresOf(answers)
            #expect(failed.isEmpty, "\(failed.count) of 12 failed: \(failed.prefix(4))")
            let pids = servedBy(answers)
            #expect(pids.count == 12 && pids.allSatisfy { $0 == held.good }, "all answered by the other: \(pids)")
            try await box.waitFor("worker 0 back", timeout: 10) { () -> Bool? in
                let rows = try await box.rows("h")
                return rows.count == 2 && rows.allSatisfy { $0.status == "online" } && rows[0].pid != held.stopped ? true : nil
            }
            try await box.waitFor("the daemon's fds back to \(fds)", timeout: 5) { Self.daemonFDs(box) == fds ? true : nil }
        }

        @Test("a stopped worker (SIGSTOP) holds 4 connections unread in its handoff channel, pml no copy of them; kill -9: all 4 are answered by the other worker, and the daemon's fd count is back where it was")
        func killedUnreadAreReclaimed() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                try box.startDaemon()
                let held = try await Self.stoppedHoldingFour(box, port: port)
                // No copies: the 4 in flight take none of the daemon's fds.
                try await box.waitFor("the daemon's fds at \(held.fds) with 4 in flight", timeout: 5) { Self.daemonFDs(box) == held.fds ? true : nil }
                try await Self.killStoppedThenCheck(box, held, fds: held.fds)
            }
        }

        @Test("the same after a kill -9 of the daemon first: the successor takes the 4 unread connections back from the keeper's copy of the worker's end, all answered by the other")
        func killedUnreadAreReclaimedBySuccessor() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                try box.startDaemon()
                let held = try await Self.stoppedHoldingFour(box, port: port)
                let old = box.daemonPid!
                kill(old, SIGKILL)
                try await box.waitFor("a successor daemon") { box.daemonPid.flatMap { $0 != old && Proc.alive($0) ? $0 : nil } }
                try await Self.waitMode(box, "h", count: 2, "credits 4, 1 fd/message")
                let fds = Self.daemonFDs(box)
                try await Self.killStoppedThenCheck(box, held, fds: fds)
            }
        }

        @Test("kill -9 of the daemon and, right after, of the stopped worker holding 4 unread: the successor finds it gone (at adoption, or reported by the keeper) and all 4 are answered by the other")
        func daemonAndStoppedWorkerKilled() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                try box.startDaemon()
                let held = try await Self.stoppedHoldingFour(box, port: port)
                let old = box.daemonPid!
                kill(old, SIGKILL)
                kill(held.stopped, SIGKILL)
                let answers = await held.gets.wait()
                let failed = failuresOf(answers)
                #expect(failed.isEmpty, "\(failed.count) of 12 failed: \(failed.prefix(4))")
                #expect(servedBy(answers).allSatisfy { $0 == held.good }, "all answered by the other: \(servedBy(answers))")
            }
        }

        @Test("a worker that shuts its handoff channel down both ways holding 4 unread: pml takes them back at once (all 12 answered within 10 s, the expiry being 60 s) and the worker gets its connections as NODE_HANDLE")
        func shutDownBothWaysIsTakenBack() async throws {
            try await withSandbox { box in
                try box.startDaemon(env: ["PML_HANDOFF_EXPIRY_MS": "60000"])
                // Within the requests' 10 s, long before the expiry (60 s): taken back at once.
                let (answers, silent, _, _, port) = try await Self.heldThenTriggered(box, onTrigger: "shutrdwr")
                let failed = failuresOf(answers)
                #expect(failed.isEmpty, "\(failed.count) failed: \(failed.prefix(4))")
                try await box.waitFor("it is on NODE_HANDLE") { try await Self.modes(box, "h")[silent] == "NODE_HANDLE" ? true : nil }
                let then = Self.answeredBy(port: port, count: 10)
                #expect((then[silent] ?? 0) >= 3 && then[0] == nil, "it serves again, as NODE_HANDLE: \(then)")
            }
        }

        @Test("a worker that closes its handoff channel unread (pml's copy of its end hides the EOF) is found out at the expiry (1 s): the 4 it left are answered by the others, and it gets its connections as NODE_HANDLE")
        func closedChannelFoundAtExpiry() async throws {
            try await withSandbox { box in
                try box.startDaemon(env: ["PML_HANDOFF_EXPIRY_MS": "1000"])
                let (answers, silent, _, _, port) = try await Self.heldThenTriggered(box, onTrigger: "close")
                let failed = failuresOf(answers)
                #expect(failed.isEmpty, "\(failed.count) failed: \(failed.prefix(4))")
                try await box.waitFor("said in the daemon's log") { box.read(box.daemonLog).contains("closed its handoff channel") ? true : nil }
                try await box.waitFor("it is on NODE_HANDLE") { try await Self.modes(box, "h")[silent] == "NODE_HANDLE" ? true : nil }
                let then = Self.answeredBy(port: port, count: 10)
                #expect((then[silent] ?? 0) >= 3 && then[0] == nil, "it serves again, as NODE_HANDLE: \(then)")
            }
        }

        @Test("under ulimit -n 256, 6 stopped workers that never read (window 64 each) and then all killed at once: pml takes back only what its bound has room for, the rest as it drains; the restarted workers answer all 300")
        func killAllUnderLimit() async throws {
            try await withSandbox { box in
                let (port, rows) = try await Self.sixSilentUnderLimit(box)
                let gets = ParallelGets(port: port, count: 300, timeout: 30)
                try await box.waitFor("the bound (64) handed to the silent workers", timeout: 20) {
                    try await Dispatch.dispatched(box, "h").values.reduce(0, +) == 64 ? true : nil
                }
                // Stopped, they cannot read what they were sent when they see the wake file; their
                // replacements read from the start.
                let pids = rows.compactMap(\.pid)
                for p in pids { kill(p, SIGSTOP) }
                try box.write("wake", "")
                for p in pids { kill(p, SIGKILL) }
                let failed = failuresOf(await gets.wait())
                #expect(failed.isEmpty, "\(failed.count) of 300 failed: \(failed.prefix(3))")
                let log = box.read(box.daemonLog)
                #expect(!log.contains("Too many open files") && !log.contains("out of file descriptors"), "never out of fds: \(log.suffix(1500))")
                try await box.waitOnline("h", count: 6)
            }
        }

        @Test("under ulimit -n 256 (bound 64), two daemons each send 64 to 6 silent workers (128 unread), which are then killed and replaced by workers as silent: the daemon takes back only what its bound has room for and keeps the rest in the reclaim ends (and the keeper's copies); killed with -9, its successor takes back from those; once the workers read, all 128 are answered")
        func takeBackWaitsForRoomAndOutlivesTheDaemon() async throws {
            try await withSandbox { box in
                let (port, rows) = try await Self.sixSilentUnderLimit(box)
                try await Self.waitSaved(box, "h", count: 6, [1, 64])
                let gets = ParallelGets(port: port, count: 128, timeout: 60)
                func successor() async throws {
                    let old = box.daemonPid!
                    kill(old, SIGKILL)
                    try await box.waitFor("a successor daemon") { box.daemonPid.flatMap { $0 != old && Proc.alive($0) ? $0 : nil } }
                }
                // The first daemon sends its bound, its successor (the workers' windows free for it) as much again.
                try await box.waitFor("the first daemon paused at its bound", timeout: 20) { box.read(box.daemonLog).contains("pausing accept") ? true : nil }
                try await successor()
                try await box.waitFor("the successor paused at its bound", timeout: 20) {
                    box.read(box.daemonLog).components(separatedBy: "pausing accept").count == 3 ? true : nil
                }
                try await Self.waitMode(box, "h", count: 6, "credits 64, 1 fd/message")
                let before = Self.daemonFDs(box)
                // All six killed: 128 unread in their reclaim ends. Their replacements read nothing
                // either (no wake file yet): the bound is full again with what went to them, and at
                // least 64 stay in the reclaim ends.
                for p in rows.compactMap(\.pid) { kill(p, SIGKILL) }
                let replaced = try await box.waitFor("6 replacements online", timeout: 20) { () -> [Row]? in
                    let now = try await box.rows("h")
                    return now.count == 6 && now.allSatisfy { $0.status == "online" && !rows.map(\.pid).contains($0.pid) } ? now : nil
                }
                try await Self.waitMode(box, "h", count: 6, "credits 64, 1 fd/message")
                await sleepMs(500)
                #expect(Self.daemonFDs(box) <= before + 64, "the daemon never takes back past its bound: \(Self.daemonFDs(box)) fds, \(before) before")
                #expect(!box.read(box.daemonLog).contains("exited under the daemon before"))
                // What is left in the reclaim ends outlives the daemon: the keeper's copies bring it to the successor.
                try await successor()
                try await box.waitFor("the successor takes back what was left", timeout: 20) {
                    box.read(box.daemonLog).contains("a worker that exited under the daemon before left") ? true : nil
                }
                try box.write("wake", "")
                let failed = failuresOf(await gets.wait())
                #expect(failed.isEmpty, "\(failed.count) of 128 failed: \(failed.prefix(3))")
                #expect(!box.read(box.daemonLog).contains("Too many open files"), "never out of fds")
                #expect(try await box.rows("h").map(\.pid) == replaced.map(\.pid), "the replacements served them, adopted")
            }
        }

        @Test("a worker found silent at the expiry that closes its handoff channel only afterwards: found at a later expiry tick, what it never read goes to the other worker, and it serves again as NODE_HANDLE")
        func closeAfterExpiryIsFound() async throws {
            try await withSandbox { box in
                try box.startDaemon(env: ["PML_HANDOFF_EXPIRY_MS": "1000"])
                let port = try Net.freePort()
                let trigger = box.work + "/trigger"
                let file = try Self.hostileApp(box, name: "h", port: port, instances: 2,
                                               env: ["FX_SILENT_INSTANCE": "0", "FX_TRIGGER": trigger, "FX_ON_TRIGGER": "close"])
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("h", count: 2)
                try await Self.waitMode(box, "h", count: 2, "credits 4, 8 fds/message")
                let silent = rows[0].pid!
                let gets = ParallelGets(port: port, count: 12, timeout: 15)
                try await box.waitFor("the silent worker holds 4") { try await Dispatch.dispatched(box, "h")[silent] == 4 ? true : nil }
                try await box.waitFor("its connections expired", timeout: 10) { box.read(box.daemonLog).contains("did not credit back") ? true : nil }
                // Only now does it close its end.
                try box.write("trigger", "")
                let failed = failuresOf(await gets.wait())
                #expect(failed.isEmpty, "\(failed.count) failed: \(failed.prefix(4))")
                #expect(box.read(box.daemonLog).contains("closed its handoff channel"), "found out")
                let then = Self.answeredBy(port: port, count: 10)
                #expect((then[silent] ?? 0) >= 3, "it serves again, as NODE_HANDLE: \(then)")
            }
        }

        @Test("a daemon without CAP_SYS_RESOURCE (a non-root user's limits, ulimit -n 256) whose user already has 230 fds in flight: the kernel refuses its sends (ETOOMANYREFS) past 256; the channels stay, pml tries again, and once those fds are read all 100 requests are answered by the same workers")
        func refusedSendsKeepTheChannels() async throws {
            try await withSandbox { box in
                let (port, rows) = try await Self.sixSilentUnderLimit(box, withoutCapSysResource: true)
                let caps = box.read("/proc/\(box.daemonPid ?? 0)/status").split(separator: "\n").first { $0.hasPrefix("CapEff") }
                #expect(caps != nil && !caps!.hasSuffix("ffffffffff"), "the daemon runs without every capability: \(String(describing: caps))")
                // The same user (the kernel counts fds in flight per user) puts 230 in flight and
                // reads none of them until told; the daemon's bound (64) alone would stay under 256.
                let release = box.work + "/release"
                let holder = Process()
                holder.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                holder.arguments = ["python3", "-c", """
                    import os, socket, sys, time
                    a, b = socket.socketpair()
                    r, w = os.pipe()
                    for _ in range(230):
                        socket.send_fds(a, [b"x"], [r])
                    open(sys.argv[1] + ".ready", "w").close()
                    end = time.monotonic() + 60
                    while not os.path.exists(sys.argv[1]) and time.monotonic() < end:
                        time.sleep(0.05)
                    """, release]
                try holder.run()
                defer { kill(holder.processIdentifier, SIGKILL) }
                try await box.waitFor("230 fds in flight") { FileManager.default.fileExists(atPath: release + ".ready") ? true : nil }
                let gets = ParallelGets(port: port, count: 100, timeout: 30)
                try await box.waitFor("the daemon's sends refused", timeout: 20) {
                    box.read(box.daemonLog).contains("the kernel refused to pass connections") ? true : nil
                }
                try box.write("release", "")
                try box.write("wake", "")
                let failed = failuresOf(await gets.wait())
                #expect(failed.isEmpty, "\(failed.count) of 100 failed: \(failed.prefix(3))")
                let after = try await box.rows("h")
                #expect(after.map(\.pid) == rows.map(\.pid) && after.allSatisfy { $0.restarts == 0 }, "the same workers, never cut off: \(after)")
            }
        }
    }
}
