"""A round-robin cluster worker in plain Python: pml accepts, we serve.

Each connection arrives on the IPC channel (a unix socket at fd PML_IPC_FD) as one JSON line,
{"cmd":"NODE_HANDLE","type":"net.Socket","msg":{"type":"pml:connection",...}}, with the
accepted socket attached (SCM_RIGHTS). We answer {"cmd":"NODE_HANDLE_ACK"} at once, since pml
sends this worker no other connection until then, and serve the connection on a thread.
"""
import json
import os
import socket
import sys
import threading

PID = os.getpid()
channel = socket.socket(fileno=int(os.environ["PML_IPC_FD"]))
send_lock = threading.Lock()


def send(message):
    with send_lock:
        channel.sendall((json.dumps(message, separators=(",", ":")) + "\n").encode())


def serve(conn):
    with conn:
        conn.settimeout(10)
        request = b""
        try:
            while b"\r\n\r\n" not in request and len(request) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            body = f"hello from {PID}\n".encode()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            pass


def main():
    send("ready")
    flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
    buffer, fds = b"", []          # fds arrive with the first bytes of their line: keep them in order
    while True:
        data, new_fds, msg_flags, _ = socket.recv_fds(channel, 65536, 16, flags)
        if not data:
            return                 # pml closed the channel
        if msg_flags & getattr(socket, "MSG_CTRUNC", 0):
            print("control data truncated: a connection was lost", file=sys.stderr, flush=True)
        fds.extend(new_fds)
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            message = json.loads(line)
            if isinstance(message, dict) and message.get("cmd") == "NODE_HANDLE":
                if not fds:
                    send({"cmd": "NODE_HANDLE_NACK"})  # pml sends it again
                    continue
                conn = socket.socket(fileno=fds.pop(0))
                send({"cmd": "NODE_HANDLE_ACK"})
                threading.Thread(target=serve, args=(conn,)).start()
            elif message == "shutdown" or (isinstance(message, dict) and message.get("type") == "shutdown"):
                return             # pml has taken us out of rotation; threads finish their requests
            else:
                print(f"message from pml: {message!r}", flush=True)


if __name__ == "__main__":
    print(f"worker {os.environ.get('PML_INSTANCE')} up, pid {PID}", flush=True)
    main()
