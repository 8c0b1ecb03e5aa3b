"""A worker for systemd-style socket activation: takes its listening sockets from fd 3 on."""
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn

SD_LISTEN_FDS_START = 3

# Only when the fds are meant for this very process (systemd's rule: LISTEN_PID is our pid).
if os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("LISTEN_PID is not this process: start me with pml (dispatch = \"shared\") or systemd")
count = int(os.environ.get("LISTEN_FDS", "0"))
if count < 1:
    sys.exit("no listening sockets passed (LISTEN_FDS)")
for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
    os.environ.pop(name, None)     # not for our children


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True

    def __init__(self, fd):
        sock = socket.socket(fileno=fd)          # family and type are read from the fd
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock


servers = [Server(fd) for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)]
print(f"worker {os.environ.get('PML_INSTANCE')} (pid {os.getpid()}) serving {count} socket(s)", flush=True)
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
servers[0].serve_forever()        # SIGTERM from pml ends the process
