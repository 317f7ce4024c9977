"""Fixtures for the intake tests: evidence writer, OTLP receiver, HTTP helpers, a witness server."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.evidence import EvidenceWriter
from agent.otlp import OtlpReceiver


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[EvidenceWriter]:
    w = EvidenceWriter(tmp_path / "run")
    yield w
    w.close()


@pytest.fixture
def receiver(writer: EvidenceWriter) -> Iterator[OtlpReceiver]:
    r = OtlpReceiver(writer).start()
    yield r
    r.stop()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def http_request(
    base_url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Reply:
    """One request on a fresh connection (plain http.client: independent of the code under test)."""
    host_port = base_url.removeprefix("http://")
    conn = http.client.HTTPConnection(host_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@pytest.fixture
def post() -> Callable[..., Reply]:
    def _post(base_url: str, path: str, body: bytes, content_type: str, **headers: str) -> Reply:
        hdrs = {"Content-Type": content_type}
        hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
        return http_request(base_url, "POST", path, body, hdrs)

    return _post


@dataclass
class Seen:
    """What the witness server saw: one entry per request, plus connection bookkeeping."""

    method: str
    path: str
    headers: list[tuple[str, str]]  # wire order, names lower-cased
    conn_id: int
    body: bytes = b""


@dataclass
class Witness:
    """A plain stdlib threaded HTTP/1.1 server that records every request it answers.

    ``gate`` (when set) makes each request wait until ``gate`` requests are in flight or
    ``gate_timeout_s`` passed: a deterministic way to measure concurrency.
    """

    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    gate: int = 0
    gate_timeout_s: float = 0.5
    gate_first: int = 0  # gate only the first N requests (0: all)
    hang: threading.Event | None = None  # when set, requests block until it is set
    # "" keep-alive; "header": answer with Connection: close; "silent": close the
    # connection after the answer without saying so (a keep-alive timeout on the server).
    close_mode: str = ""
    cond: threading.Condition = field(default_factory=threading.Condition)


def _witness_handler(w: Witness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 64 * 1024  # one write per response (handle_one_request flushes)

        def log_message(self, *args: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with w.cond:
                w.connections += 1
                self.conn_id = w.connections

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with w.cond:
                w.requests.append(
                    Seen(self.command, self.path, [(k.lower(), v) for k, v in self.headers.items()], self.conn_id, body)
                )
                w.in_flight += 1
                w.max_in_flight = max(w.max_in_flight, w.in_flight)
                w.cond.notify_all()
                if w.gate_first and len(w.requests) <= w.gate_first:
                    # max_in_flight only grows: no waiter misses the moment the gate opened.
                    w.cond.wait_for(lambda: w.max_in_flight >= w.gate, timeout=w.gate_timeout_s)
                elif w.gate and not w.gate_first:
                    w.cond.wait_for(lambda: w.in_flight >= w.gate, timeout=w.gate_timeout_s)
            if w.hang is not None:
                w.hang.wait(30)
            with w.cond:
                w.in_flight -= 1
            payload = f'{{"path": "{self.path}"}}'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Dup", "a")
            self.send_header("X-Dup", "b")
            if w.close_mode == "header":
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            if w.close_mode == "silent":
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = _any

    return Handler


@pytest.fixture
def witness() -> Iterator[Witness]:
    w = Witness()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _witness_handler(w))
    server.daemon_threads = True
    w.url = f"http://127.0.0.1:{server.server_address[1]}"
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    yield w
    if w.hang is not None:
        w.hang.set()
    server.shutdown()
    server.server_close()
    t.join(5)


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL where nothing listens."""
    from tests.ports import free_port

    return f"http://127.0.0.1:{free_port()}"
