"""A threaded HTTP/1.1 server run as a child process: the process the kernel tests trace.

Prints "port <n>" once it listens (--port chooses it). Routes: / (200 "ok"), /sleep?ms=N,
/status/NNN, /abort (closes without a response), /proxy?port=P (calls 127.0.0.1:P/downstream,
forwarding traceparent and x-biz-code, and answers with its status), /tls?port=P (opens a
TLS connection to 127.0.0.1:P; answers 200 whatever came of it), /burst?n=N (N HTTP
exchanges over an in-process socketpair, as fast as they go), POST echoes.
With --fork-on-stdin, each "fork" line on stdin forks a child that serves on a new port
and prints "child <pid> <port>" (the test ends it with a signal).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms Nagle/delayed-ACK stalls between requests

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes = b"ok") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/sleep":
            time.sleep(int(query.get("ms", "20")) / 1000)
            self.reply(200)
        elif url.path.startswith("/status/"):
            self.reply(int(url.path.rsplit("/", 1)[1]))
        elif url.path == "/abort":
            self.close_connection = True  # nothing written: the kernel sees a close
        elif url.path == "/proxy":
            self.proxy(int(query["port"]))
        elif url.path == "/tls":
            self.tls(int(query["port"]))
        elif url.path == "/burst":
            burst(int(query.get("n", "200")))
            self.reply(200)
        else:
            self.reply(200)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(200, body)

    def proxy(self, port: int) -> None:
        headers = {k: v for k in ("traceparent", "x-biz-code") if (v := self.headers.get(k))}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/downstream", headers=headers)
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        self.reply(resp.status)


    def tls(self, port: int) -> None:
        ctx = ssl.create_default_context()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost"):
                    pass
        except (OSError, ssl.SSLError):
            pass  # the peer is no TLS server: only the ClientHello matters
        self.reply(200)


BURST_REQ = b"GET /in-burst HTTP/1.1\r\nHost: x\r\n\r\n"
BURST_RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def burst(n: int) -> None:
    """Many kernel records in a few milliseconds: more than any consumer drains meanwhile."""
    a, b = socket.socketpair()
    with a, b:
        for _ in range(n):
            a.send(BURST_REQ)
            b.recv(4096)
            b.send(BURST_RESP)
            a.recv(4096)


def serve(port: int = 0) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    return srv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fork-on-stdin", action="store_true")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    srv = serve(args.port)
    print(f"port {srv.server_address[1]}", flush=True)
    if not args.fork_on_stdin:
        srv.serve_forever()
        return
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    for line in sys.stdin:
        if line.strip() != "fork":
            continue
        pid = os.fork()
        if pid == 0:  # the child: a new server, started after the parent became a target
            child = serve()
            print(f"child {os.getpid()} {child.server_address[1]}", flush=True)
            child.serve_forever()
            os._exit(0)


if __name__ == "__main__":
    main()
