"""HTTP API routes of the daemon: /v1 runs (bearer token on every route), /healthz, /metrics."""

from __future__ import annotations

import hmac
import json
import logging
import re
import shutil
import tarfile
import tempfile
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from agent import REPORT_NAME, __version__
from agent.daemon.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from agent.daemon.spec import SpecError, run_out_dir, schema, validate

if TYPE_CHECKING:
    from agent.daemon.server import Daemon

log = logging.getLogger(__name__)

JSON = "application/json"
_RUN = re.compile(r"^/v1/runs/(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
                  r"(?P<sub>/report|/evidence|/cancel)?$")
# A client that stops sending mid-request is dropped after this long.
HANDLER_TIMEOUT_S = 30.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "obsconform"
    sys_version = ""
    timeout = HANDLER_TIMEOUT_S

    @property
    def daemon(self) -> "Daemon":
        return self.server.daemon  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        log.debug("%s " + format, self.client_address[0], *args)

    # -- plumbing ---------------------------------------------------------------------
    def send_response(self, code: int, message: str | None = None) -> None:
        # Counted before the first byte leaves: a client that has read this response and then
        # scrapes /metrics on another connection must already see it counted.
        if not self._counted:
            self._counted = True
            self.daemon.metrics.api_requests.labels(self._metric_route, str(code)).inc()
        super().send_response(code, message)


    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data, indent=1).encode() + b"\n", JSON, headers)

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        self._metric_route, self._counted = "other", False
        try:
            if path == "/v1" or path.startswith("/v1/"):
                self._authenticate()  # before routing: without a token nothing about /v1 is told
            self._metric_route, handler = self._route(path)
            handler()
        except ApiError as e:
            if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0").strip() != "0":
                self.close_connection = True  # the body may be unread: the connection is not reusable
            self._json(e.status, {"error": str(e)}, e.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # one bad request must not take the daemon down
            log.exception("API: %s %s failed", self.command, path)
            self.close_connection = True
            self._json(500, {"error": f"internal error: {type(e).__name__}; see the daemon log"})

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = _dispatch

    def _route(self, path: str):
        m = self.command
        table = {
            "/healthz": {"GET": self.get_health, "HEAD": self.get_health},
            "/metrics": {"GET": self.get_metrics},
            "/v1/runs": {"GET": self.list_runs, "POST": self.post_run},
            "/v1/schema/run-spec": {"GET": self.get_schema},
        }
        if path in table:
            methods, route = table[path], path
        else:
            match = _RUN.match(path)
            if not match:
                raise ApiError(404, f"no such route: {path}")
            run_id, sub = match["id"], match["sub"] or ""
            route = "/v1/runs/{id}" + sub
            methods = {
                "": {"GET": lambda: self.get_run(run_id), "DELETE": lambda: self.cancel_run(run_id)},
                "/cancel": {"POST": lambda: self.cancel_run(run_id)},
                "/report": {"GET": lambda: self.get_report(run_id)},
                "/evidence": {"GET": lambda: self.get_evidence(run_id)},
            }[sub]
        if m not in methods:
            raise ApiError(405, f"{m} is not allowed on {path}", {"Allow": ", ".join(methods)})
        return route, methods[m]

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization") or ""
        scheme, _, given = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="obsconform"'}
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>' "
                                "(obsconform run --agent URL --token-file FILE)", challenge)
        if not hmac.compare_digest(given.strip().encode(), self.daemon.token.encode()):
            raise ApiError(401, "wrong bearer token: use the daemon's --token-file", challenge)

    def _read_json(self) -> object:
        limit = self.daemon.cfg.max_body_bytes
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise ApiError(411, "send the run spec with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            raise ApiError(400, "bad Content-Length") from None
        if length > limit:
            raise ApiError(413, f"request body of {length} bytes exceeds the {limit}-byte limit")
        if length <= 0:
            raise ApiError(400, "empty body: POST a run spec as JSON (see GET /v1/schema/run-spec)")
        body = self.rfile.read(length)
        try:
            return json.loads(body)
        except ValueError as e:
            raise ApiError(400, f"the body is not JSON: {e}") from e

    def _run(self, run_id: str, since: int = 0):
        run = self.daemon.store.get(run_id, since=since)
        if run is None:
            raise ApiError(404, f"no run {run_id}")
        return run

    # -- routes -----------------------------------------------------------------------

    def get_health(self) -> None:
        counts = self.daemon.store.counts()
        self._json(200, {"status": "ok", "version": __version__, "queued": counts["queued"],
                         "running": self.daemon.worker.current})

    def get_metrics(self) -> None:
        self._send(200, self.daemon.metrics.exposition(), METRICS_CONTENT_TYPE)

    def get_schema(self) -> None:
        self._json(200, schema())

    def list_runs(self) -> None:
        runs = [{k: v for k, v in r.public().items() if k not in ("progress", "spec")}
                for r in self.daemon.store.list()]
        self._json(200, {"runs": runs})

    def post_run(self) -> None:
        spec = self._read_json()
        daemon = self.daemon
        try:
            validate(spec, allow_exec=daemon.cfg.allow_exec)
            run_id = str(uuid.uuid4())
            out_dir = run_out_dir(daemon.reports_dir, spec, run_id)  # type: ignore[arg-type]
        except SpecError as e:
            raise ApiError(e.status, str(e)) from e
        if daemon.store.count("queued") >= daemon.cfg.max_queued:
            raise ApiError(429, f"{daemon.cfg.max_queued} runs are already queued; try again later",
                           {"Retry-After": "60"})
        run = daemon.store.add(run_id, spec, out_dir)  # type: ignore[arg-type]
        daemon.worker.notify()
        body = {"id": run.id, "state": run.state, "position": daemon.store.queue_position(run.id),
                "links": {"self": f"/v1/runs/{run.id}", "report": f"/v1/runs/{run.id}/report",
                          "evidence": f"/v1/runs/{run.id}/evidence"}}
        self._json(202, body, {"Location": f"/v1/runs/{run.id}"})

    def get_run(self, run_id: str) -> None:
        query = parse_qs(urlsplit(self.path).query)
        try:
            since = max(0, int(query.get("since", ["0"])[0]))
        except ValueError:
            raise ApiError(400, "since must be an integer (the first progress message to return)") from None
        run = self._run(run_id, since)
        body = run.public()
        body["position"] = self.daemon.store.queue_position(run_id)
        self._json(200, body)

    def cancel_run(self, run_id: str) -> None:
        run = self._run(run_id)
        store = self.daemon.store
        if run.state == "queued" and store.cancel_queued(run_id):
            store.add_progress(run_id, "cancelled before it started")
        elif run.state in ("queued", "running"):
            store.request_cancel(run_id)
            self.daemon.worker.notify()
        else:
            raise ApiError(409, f"run {run_id} already ended ({run.state}); nothing to cancel")
        self._json(202, {"id": run_id, "state": self._run(run_id).state, "cancel_requested": True})

    def _finished(self, run_id: str):
        run = self._run(run_id)
        if run.state in ("queued", "running"):
            raise ApiError(409, f"run {run_id} is {run.state}; poll GET /v1/runs/{run_id} until it ends")
        return run

    def get_report(self, run_id: str) -> None:
        run = self._finished(run_id)
        path = Path(run.run_dir) / REPORT_NAME if run.run_dir else None
        if path is None or not path.is_file():
            raise ApiError(404, f"run {run_id} ended {run.state} without a report"
                                + (f": {run.reason}" if run.reason else ""))
        self._send(200, path.read_bytes(), JSON)

    def get_evidence(self, run_id: str) -> None:
        run = self._finished(run_id)
        out_dir = Path(run.out_dir)
        if not out_dir.is_dir():
            raise ApiError(404, f"run {run_id} has no evidence on this host")
        # Spooled to a temp file so that the response has a Content-Length and memory stays flat.
        with tempfile.TemporaryFile() as tmp:
            with tarfile.open(fileobj=tmp, mode="w:gz", compresslevel=6) as tar:
                for path in sorted(out_dir.rglob("*")):
                    if path.is_symlink() or not (path.is_file() or path.is_dir()):
                        continue  # never follow a link out of the run directory
                    tar.add(path, arcname=str(path.relative_to(out_dir)), recursive=False)
            size = tmp.tell()
            tmp.seek(0)
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Disposition", f'attachment; filename="obsconform-{run_id}.tar.gz"')
            self.end_headers()
            shutil.copyfileobj(tmp, self.wfile, 256 * 1024)
