"""A SUT whose leader dies mid-run: run as `sh -c 'python orphaning_server.py PORT N & wait'`,
it serves HTTP and, at its N-th request, SIGKILLs the shell that started it, so the run's
SUT (the shell) exits while this child keeps serving in its process group."""

from __future__ import annotations

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, KILL_PARENT_AT = int(sys.argv[1]), int(sys.argv[2])
_served = 0
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        global _served
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
        with _lock:
            _served += 1
            kill = _served == KILL_PARENT_AT
        if kill:
            os.kill(os.getppid(), signal.SIGKILL)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
