"""Start the reference service as a real gunicorn subprocess on a free loopback port."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.ports import free_port  # noqa: F401  (re-exported to the refservice tests)

from .stubs import Recorder

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
# Variables the service reads: cleared so the caller's environment cannot leak into a test.
_SCRUBBED_PREFIXES = ("OTEL_", "FAULT_", "OBSCONFORM_", "PROMETHEUS_MULTIPROC_DIR", "PORT")


def new_traceparent() -> tuple[str, str, str]:
    """(header, trace_id, parent_id) with fresh random ids."""
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    elapsed_s: float

    def json(self) -> Any:
        return json.loads(self.body)


class RefService:
    """One running service process; stdout JSON lines are collected in `logs`."""

    def __init__(self, env: dict[str, str], workers: int = 1, log_dir: Path | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.logs = Recorder()
        self.other_stdout: list[str] = []
        child_env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
        child_env.update(env)
        child_env["PYTHONUNBUFFERED"] = "1"
        self._stderr_path = (log_dir or Path("/tmp")) / f"refservice-{self.port}.stderr"
        self._stderr = open(self._stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "examples.refservice", "--port", str(self.port),
             "--workers", str(workers)],
            cwd=REPO_ROOT,
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self._conn: http.client.HTTPConnection | None = None
        self._wait_ready()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                self.logs.add([json.loads(line)])
            except ValueError:
                self.other_stdout.append(line)

    def stderr_text(self) -> str:
        return self._stderr_path.read_text(errors="replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.stderr_text()}")
            try:
                if self.request("GET", "/healthz", keepalive=False).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)  # polling a port that is not listening yet; bounded by the deadline
        self.stop()
        raise AssertionError(f"service not ready within {START_TIMEOUT_S}s:\n{self.stderr_text()}")

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        keepalive: bool = True,
    ) -> Reply:
        """One HTTP/1.1 request; keep-alive reuses one connection (no connect in the timing)."""
        conn = self._conn if keepalive else None
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.connect()
        try:
            t0 = time.perf_counter()
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            elapsed = time.perf_counter() - t0
        except (OSError, http.client.HTTPException):
            conn.close()
            self._conn = None
            raise
        reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, elapsed)
        if keepalive and not resp.will_close:
            self._conn = conn
        else:
            conn.close()
            if keepalive:
                self._conn = None
        return reply

    def metrics_text(self, openmetrics: bool = False) -> str:
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
        reply = self.request("GET", "/metrics", headers=accept, keepalive=False)
        assert reply.status == 200, reply
        return reply.body.decode()

    def wait_metrics(self, predicate, timeout: float = 5.0, openmetrics: bool = False) -> str:
        """Scrape until predicate(text) holds: a request is observed just *after* its last
        byte is written, so a scrape racing the final response may not count it yet."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.metrics_text(openmetrics)
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"metrics did not settle within {timeout}s:\n{text}")
            time.sleep(0.02)  # between scrapes; bounded by the deadline

    def stop(self) -> int:
        """SIGTERM (graceful: workers flush their spans) and wait for the exit code."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("service ignored SIGTERM")
        self._reader.join(5)
        self._stderr.close()
        return self.proc.returncode

    def __enter__(self) -> RefService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def service_env(otlp_url: str, downstream_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "refservice-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    if downstream_url:
        env["OBSCONFORM_DOWNSTREAM_URL"] = downstream_url
    env.update(extra)
    return env
