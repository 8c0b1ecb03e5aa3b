// Worker programs for the cluster-mode tests, written into each sandbox by `ClusterFixture`.
// They are plain programs (Python 3 standard library, Node.js core): nothing pml-specific beyond
// the contract in PRODUCT.md §5 (PML_IPC_FD, NODE_HANDLE + SCM_RIGHTS, LISTEN_FDS, NOTIFY_SOCKET).
//
// Kept as Swift strings rather than files under the test target so SwiftPM has no unhandled
// resources to warn about.

import Foundation

enum ClusterFixture {
    /// The seed's app.js, unchanged but for the port.
    static func seedApp(port: Int) -> String {
        "require('http').createServer((req, res) => res.end('hello from ' + process.pid + '\\n')).listen(\(port))\n"
    }

    /// The seed's server plus a `process.on('message')` that records what pml sends and answers a
    /// ping with `process.send({type:'pong', ...})`. Env: FX_OUT (file of received messages).
    static func nodeMessenger(port: Int) -> String {
        """
        const fs = require('fs');
        require('http').createServer((req, res) => res.end('hello from ' + process.pid + '\\n')).listen(\(port));
        process.on('message', (m) => {
          if (m && typeof m === 'object' && typeof m.cmd === 'string' && m.cmd.startsWith('NODE_')) return;
          fs.appendFileSync(process.env.FX_OUT, JSON.stringify({ pid: process.pid, msg: m }) + '\\n');
          if (m && m.type === 'ping') process.send({ type: 'pong', tag: m.tag, pid: process.pid });
        });

        """
    }

    /// A round-robin worker in plain Python: reads NODE_HANDLE lines + SCM_RIGHTS fds from
    /// PML_IPC_FD, ACKs each, serves "hello from <pid>" over HTTP/1.0.
    ///
    /// Behaviour switches (environment):
    /// - FX_READY: "message" (send "ready" at once, the default), "file" (send {"type":"ready"}
    ///   once the file FX_READY_FILE exists), "never", "none" (say nothing), "notify"
    ///   (READY=1 + STATUS= on NOTIFY_SOCKET instead of IPC).
    /// - FX_METRIC=1: after ready, send {"type":"metric","name":"queue","value":7}.
    /// - FX_BUSY_INSTANCE=<n>: the worker with PML_INSTANCE=n says, after ready, that it has 50
    ///   connections open ({"type":"metric","name":"connections","value":50}: least-busy).
    /// - FX_GARBAGE_MARK=<file>: if the file does not exist, create it, wait 300 ms and write a
    ///   non-JSON line on the IPC channel (then keep running as if nothing happened).
    /// - FX_DIE_MARK=<file>, FX_DIE_INSTANCE=<n>: the worker with PML_INSTANCE=n, if the file does
    ///   not exist, creates it on its first NODE_HANDLE and exits at once (os._exit(1)) without ACK.
    /// - FX_PIDS=<file>: each start appends "<instance> <pid>".
    static let pythonRR = #"""
        import json, os, socket, sys, time

        PID = os.getpid()
        INSTANCE = os.environ.get("PML_INSTANCE", "?")
        ipc = socket.socket(fileno=int(os.environ["PML_IPC_FD"]))

        def send(value):
            ipc.sendall((json.dumps(value) + "\n").encode())

        \#(pythonRespond)

        if os.environ.get("FX_PIDS"):
            with open(os.environ["FX_PIDS"], "a") as f:
                f.write("%s %d\n" % (INSTANCE, PID))
        print("rr worker %s up, pid %d" % (INSTANCE, PID), flush=True)

        mode = os.environ.get("FX_READY", "message")
        if mode == "message":
            send("ready")
        elif mode == "file":
            while not os.path.exists(os.environ["FX_READY_FILE"]):
                time.sleep(0.02)
            send({"type": "ready"})
        elif mode == "notify":
            n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            addr = os.environ["NOTIFY_SOCKET"]
            if addr.startswith("@"):
                addr = "\0" + addr[1:]
            n.sendto(b"READY=1\nSTATUS=serving from %d" % PID, addr)
            n.close()
        elif mode == "never":
            pass

        if os.environ.get("FX_METRIC") == "1":
            send({"type": "metric", "name": "queue", "value": 7})
        if os.environ.get("FX_BUSY_INSTANCE") == INSTANCE:
            send({"type": "metric", "name": "connections", "value": 50})

        garbage = os.environ.get("FX_GARBAGE_MARK")
        if garbage and not os.path.exists(garbage):
            open(garbage, "w").write(str(PID))
            time.sleep(0.3)
            ipc.sendall(b"this is { not json\n")

        die_mark = os.environ.get("FX_DIE_MARK")
        die_here = bool(die_mark) and os.environ.get("FX_DIE_INSTANCE") == INSTANCE and not os.path.exists(die_mark)

        \#(pythonReceive)
        while True:
            for message in receive(ipc):
                if isinstance(message, dict) and message.get("cmd") == "NODE_HANDLE":
                    if die_here:
                        open(die_mark, "w").write(str(PID))
                        os._exit(1)          # holding the connection, never ACKed
                    conn = socket.socket(fileno=fds.pop(0))
                    send({"cmd": "NODE_HANDLE_ACK"})
                    respond(conn)
                elif message == "shutdown" or (isinstance(message, dict) and message.get("type") == "shutdown"):
                    sys.exit(0)
                else:
                    print("message: %r" % (message,), flush=True)
        """#

    /// A `shared` worker (systemd socket activation): records what it inherited into
    /// FX_ENV_DIR/<instance>.json, then accepts on fds 3…3+LISTEN_FDS-1 itself.
    static let pythonShared = #"""
        import json, os, select, socket, sys, threading

        PID = os.getpid()
        INSTANCE = os.environ.get("PML_INSTANCE", "?")
        n = int(os.environ.get("LISTEN_FDS", "0"))

        def describe_fd(fd):
            try:
                s = socket.socket(fileno=os.dup(fd))
            except OSError as e:
                return {"fd": fd, "error": str(e)}
            try:
                info = {"fd": fd, "family": int(s.family), "type": int(s.type),
                        "listening": s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1,
                        "reuseport": s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1,
                        "inode": os.fstat(fd).st_ino}
                name = s.getsockname()
                info["port"] = name[1] if isinstance(name, tuple) else None
                return info
            finally:
                s.close()

        record = {
            "pid": PID,
            "LISTEN_PID": os.environ.get("LISTEN_PID"),
            "LISTEN_FDS": os.environ.get("LISTEN_FDS"),
            "LISTEN_FDNAMES": os.environ.get("LISTEN_FDNAMES"),
            "PML_IPC_FD": os.environ.get("PML_IPC_FD"),
            "listen_fds": [describe_fd(fd) for fd in range(3, 3 + n)],
            "ipc": describe_fd(3 + n),
        }
        path = os.path.join(os.environ["FX_ENV_DIR"], "%s.json" % INSTANCE)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)

        \#(pythonAcceptLoop)
        threads = [threading.Thread(target=accept_loop, args=(fd,), daemon=True) for fd in range(3, 3 + n)]
        for t in threads:
            t.start()
        print("shared worker %s (pid %d) accepting on %d fd(s)" % (INSTANCE, PID, n), flush=True)
        threading.Event().wait()
        """#

    /// A `reuseport` worker that is not Node: accepts on its inherited slot socket (fd 3) and,
    /// having said {"type":"pml:handoff"}, also serves connections pml hands over on PML_IPC_FD
    /// (those queued on the socket of a worker that died). Answers "hello from <pid>".
    /// With FX_HOLD=1 it holds handed connections unacknowledged until it is sent "ack".
    static let pythonReusePort = #"""
        import json, os, select, socket, sys, threading

        PID = os.getpid()
        ipc = socket.socket(fileno=int(os.environ["PML_IPC_FD"]))
        lock = threading.Lock()

        def send(value):
            with lock:
                ipc.sendall((json.dumps(value) + "\n").encode())

        \#(pythonAcceptLoop)
        threading.Thread(target=accept_loop, args=(3,), daemon=True).start()
        send({"type": "pml:handoff"})
        \#(pythonReceive)
        held = []
        holding = os.environ.get("FX_HOLD") == "1"
        while True:
            for message in receive(ipc):
                if isinstance(message, dict) and message.get("cmd") == "NODE_HANDLE":
                    held.append(socket.socket(fileno=fds.pop(0)))
                elif message == "ack":
                    holding = False
                while held and not holding:
                    conn = held.pop(0)
                    send({"cmd": "NODE_HANDLE_ACK"})
                    respond(conn)
        """#

    /// Python, at top level: `receive(ipc)` makes one read from the IPC channel and returns the
    /// whole JSON lines in it, parsed; the fds that came with them are appended to `fds`, in order.
    /// It exits 0 once pml closes the channel.
    static let pythonReceive = #"""
        import json, socket, sys

        pending, fds = b"", []

        def receive(ipc):
            global pending
            data, new_fds, _, _ = socket.recv_fds(ipc, 65536, 16)
            if not data:
                sys.exit(0)
            fds.extend(new_fds)
            pending += data
            *lines, pending = pending.split(b"\n")
            return [json.loads(line) for line in lines if line.strip()]
        """#

    /// Python, at top level: `respond(conn, delay_ms=0)` reads one HTTP request head and answers
    /// "hello from <PID>" (after `delay_ms`), then closes. Needs PID.
    static let pythonRespond = #"""
        import sys, time

        def respond(conn, delay_ms=0):
            conn.settimeout(5)
            try:
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                if delay_ms:
                    time.sleep(delay_ms / 1000.0)
                body = ("hello from %d\n" % PID).encode()
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
            except OSError as e:
                print("respond failed: %r" % e, file=sys.stderr, flush=True)
            finally:
                conn.close()
        """#

    /// Python, at top level: `respond` (above), and `accept_loop(fd)`, which accepts on an inherited
    /// (non-blocking) listening socket for ever and answers each connection. Needs PID, select, socket.
    static let pythonAcceptLoop = #"""
        \#(pythonRespond)

        def accept_loop(fd):
            sock = socket.socket(fileno=fd)
            while True:
                select.select([sock], [], [])
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                conn.setblocking(True)
                respond(conn)
        """#
}
