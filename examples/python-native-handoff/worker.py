"""A round-robin cluster worker in plain Python on pml's native handoff channel.

pml gives rr and least-busy workers two unix sockets: the IPC channel (PML_IPC_FD, JSON lines:
"ready", "shutdown", NODE_HANDLE connections) and the native handoff channel (PML_HANDOFF_FD).
On the latter we write "H <fds per message> <window> 2\\n" once: from then on pml sends each batch
of connections as "<address>\\n" with up to <fds per message> sockets attached (SCM_RIGHTS), never
more than <window> that we have not credited back. We credit them with "C <n>\\n" once per batch
we read, not once per connection, before reading any of their bytes. The "2" (said only when
PML_HANDOFF_REVISION says pml speaks revision 2) means we echo marks: after a daemon death, pml's
successor puts "E <epoch> " before the address of the first message it sends us; we credit what
we read before that message, write "E <epoch>\\n", then go on as usual, so the successor can
tell its own credits from those for what the dead daemon sent. If this process dies, pml gives
the connections it sent and we did not read to the other workers (it reads them back from its copy
of our end of the channel); the ones we read and had not answered yet are lost. (Out of fds, a message comes with fewer sockets than pml sent,
MSG_CTRUNC: we credit what arrived, and pml gives the rest's credits back when it expires them.)
For least-busy, we tell pml how many connections we closed in all ({"type":"pml:load","closed":C}
on the IPC channel, once per loop turn that closed some).

One thread, one selector: the two channels and every connection are non-blocking.
"""
import array
import json
import os
import selectors
import socket
import sys

PID = os.getpid()
FDS_PER_MESSAGE = 8
WINDOW = 32
# The protocol's revision pml speaks; we say 2 (we echo marks) only if it does: an older pml
# would take our hello for garbage.
try:
    REVISION = int(os.environ.get("PML_HANDOFF_REVISION", "1"))
except ValueError:
    REVISION = 1
FD_SPACE = socket.CMSG_SPACE(FDS_PER_MESSAGE * array.array("i").itemsize)
CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

ipc = socket.socket(fileno=int(os.environ["PML_IPC_FD"]))
handoff = socket.socket(fileno=int(os.environ["PML_HANDOFF_FD"]))
sel = selectors.DefaultSelector()
body = f"hello from {PID}\n".encode()
response = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)
stopping = False
closed = 0       # connections answered and closed in all (least-busy load)


def on_connection(conn, state):
    """Reads the request head, then writes the answer and closes."""
    global closed
    try:
        chunk = conn.recv(65536)
    except BlockingIOError:
        return
    except OSError:
        chunk = b""
    state["request"] += chunk
    if chunk and b"\r\n\r\n" not in state["request"] and len(state["request"]) < 65536:
        return
    sel.unregister(conn)
    if chunk:
        try:
            conn.setblocking(True)
            conn.settimeout(5)
            conn.sendall(response)
        except OSError:
            pass
    conn.close()
    closed += 1


def on_handoff():
    """Takes every message waiting on the handoff channel, then credits them in one line."""
    taken = 0
    while True:
        try:
            # recvmsg, not socket.recv_fds: before Python 3.13 recv_fds ignores its flags.
            data, ancillary, flags, _ = handoff.recvmsg(256, FD_SPACE, socket.MSG_DONTWAIT | CLOEXEC)
        except BlockingIOError:
            break
        fds = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        if not data:
            sel.unregister(handoff)   # pml is gone; the IPC channel says what to do
            return
        if data.startswith(b"E "):
            # A successor daemon's mark: the credits for what came before it go first, then the echo.
            if taken:
                handoff.sendall(b"C %d\n" % taken)
                taken = 0
            handoff.sendall(b"E %s\n" % data.split(b" ", 2)[1])
        if flags & socket.MSG_CTRUNC:
            print("control data truncated: connections were lost", file=sys.stderr, flush=True)
        for fd in fds:
            conn = socket.socket(fileno=fd)
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ, ("conn", {"request": b""}))
        taken += len(fds)
    if taken:
        handoff.sendall(b"C %d\n" % taken)


ipc_buffer = b""


def on_ipc():
    """pml's JSON lines: "shutdown" ends us once our connections are answered. A connection pml
    sent before it read our hello comes here as NODE_HANDLE (+ fd) and is acknowledged."""
    global stopping, ipc_buffer
    data, fds, _, _ = socket.recv_fds(ipc, 65536, 16)
    if not data:
        stopping = True
        sel.unregister(ipc)
        return
    ipc_buffer += data
    while b"\n" in ipc_buffer:
        line, ipc_buffer = ipc_buffer.split(b"\n", 1)
        message = json.loads(line)
        if isinstance(message, dict) and message.get("cmd") == "NODE_HANDLE":
            if not fds:
                ipc.sendall(b'{"cmd":"NODE_HANDLE_NACK"}\n')
                continue
            conn = socket.socket(fileno=fds.pop(0))
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ, ("conn", {"request": b""}))
            ipc.sendall(b'{"cmd":"NODE_HANDLE_ACK"}\n')
        elif message == "shutdown" or (isinstance(message, dict) and message.get("type") == "shutdown"):
            stopping = True
            sel.unregister(ipc)
            return


def main():
    handoff.sendall(b"H %d %d%s\n" % (FDS_PER_MESSAGE, WINDOW, b" 2" if REVISION >= 2 else b""))
    ipc.sendall(b'"ready"\n')
    print(f"native handoff worker up, pid {PID}", flush=True)
    sel.register(ipc, selectors.EVENT_READ, ("ipc", None))
    sel.register(handoff, selectors.EVENT_READ, ("handoff", None))
    reported = 0
    while not (stopping and len(sel.get_map()) <= 1):
        if closed != reported and not stopping:
            reported = closed
            ipc.sendall(b'{"type":"pml:load","closed":%d}\n' % closed)
        for key, _ in sel.select(timeout=1 if stopping else None):
            kind, state = key.data
            if kind == "conn":
                on_connection(key.fileobj, state)
            elif kind == "handoff":
                on_handoff()
            else:
                on_ipc()


main()
