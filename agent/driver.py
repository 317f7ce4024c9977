"""Load driver: sends a plan of requests over keep-alive HTTP/1.1 connections, one per worker."""

from __future__ import annotations

import http.client
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent._http import client_target, user_agent
from agent.evidence import DRIVER_MARKER, DRIVER_USER_AGENT, DriverRecord, EvidenceWriter
from agent.tracecontext import new_traceparent, parse_traceparent
from agent.urlpath import wire_path

log = logging.getLogger(__name__)

BODY_KEEP_BYTES = 4096
# Responses are read to the end (to reuse the connection) but not without bound.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# A reused keep-alive connection the server closed while idle fails with one of these
# before any response byte: the request is sent once more on a fresh connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.CannotSendRequest)


@dataclass
class PlannedRequest:
    """One request of a plan. A header given as a list is sent once per value, in order."""

    method: str
    path: str
    headers: dict[str, str | list[str]] = field(default_factory=dict)
    body: bytes | None = None
    phase: str = "load"
    case: str = ""


def load_plan(n: int, paths: list[str], phase: str = "load") -> list[PlannedRequest]:
    """N GETs round-robin over ``paths``, each with a fresh valid, sampled ``traceparent``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not paths:
        raise ValueError("paths must name at least one path")
    return [
        PlannedRequest("GET", path, {"traceparent": str(new_traceparent())}, phase=phase)
        for path, _ in zip(itertools.cycle(paths), range(n))
    ]


class LoadDriver:
    """Sends plans to ``base_url``; every planned request gets exactly one DriverRecord.

    The path of ``base_url`` is a prefix put before every planned path (agent.urlpath); the
    record's ``path`` is the target as sent. Every request carries the User-Agent
    ``obsconform-driver/<version> req/<run_tag>-<seq>`` unless the plan sets its own: the
    marker is unique in the run (``run_tag`` is random per driver unless given), so a span
    recording User-Agent names its request without any trace context.
    """

    def __init__(
        self,
        base_url: str,
        writer: EvidenceWriter | None = None,
        timeout_s: float = 10.0,
        keep_alive: bool = True,
        run_tag: str | None = None,
    ) -> None:
        parts = client_target(base_url, timeout_s, "base_url")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must have no query or fragment, got {base_url!r}")
        tag = secrets.token_hex(3) if run_tag is None else run_tag
        if not tag or not tag.isascii() or not all(c.isalnum() or c in "-_." for c in tag):
            raise ValueError(f"run_tag must be letters, digits, '-', '_' or '.', got {run_tag!r}")
        self.run_tag = tag
        self._ua_prefix = f"{user_agent(DRIVER_USER_AGENT)}{DRIVER_MARKER}"
        self.base_url = base_url
        self.writer = writer
        self.timeout_s = timeout_s
        self.keep_alive = keep_alive
        self._parts = parts
        self._prefix = parts.path.rstrip("/")
        self._host = parts.netloc
        self._next_seq = 0  # seq stays unique across the runs of one driver (one run dir)

    def run(
        self,
        plan: Iterable[PlannedRequest],
        concurrency: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[DriverRecord]:
        """Send every planned request once with ``concurrency`` workers; records in plan order.

        ``progress(done, total)`` is called after each request, from the worker threads but
        one call at a time, with ``done`` increasing.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        requests = list(plan)
        total = len(requests)
        base_seq, self._next_seq = self._next_seq, self._next_seq + total
        records: list[DriverRecord | None] = [None] * total
        lock, progress_lock = threading.Lock(), threading.Lock()
        state = {"next": 0, "done": 0, "progress_ok": progress is not None}

        def take() -> int:
            with lock:
                i = state["next"]
                state["next"] = i + 1
                return i

        def finished() -> None:
            if progress is None:
                return
            with progress_lock:
                state["done"] += 1
                if not state["progress_ok"]:
                    return
                try:
                    progress(state["done"], total)
                except Exception as e:  # noqa: BLE001 - a progress bar must not stop the load
                    state["progress_ok"] = False
                    log.warning("load driver: progress callback failed, disabled: %s", e)

        def worker() -> None:
            conn = _Conn(self)
            try:
                while (i := take()) < total:
                    records[i] = conn.send(base_seq + i, requests[i])
                    finished()
            finally:
                conn.close()

        threads = [threading.Thread(target=worker, name=f"driver-{n}", daemon=True) for n in range(min(concurrency, total))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = [r for r in records if r is not None]
        if self.writer is not None:
            self.writer.driver(out)
        return out

    def target(self, path: str) -> str:
        """The request target sent for a planned ``path``: the base URL's path before it."""
        return wire_path(self._prefix, path)

    def marker(self, seq: int) -> str:
        """The User-Agent marker of request ``seq`` (see agent.evidence.driver_marker)."""
        return f"{self.run_tag}-{seq}"


class _Conn:
    """One worker's connection: reopened whenever the server (or an error) closed it."""

    def __init__(self, driver: LoadDriver) -> None:
        self.d = driver
        self.http: http.client.HTTPConnection | None = None
        self.used = False  # at least one request went over the current connection

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        self.http, self.used = None, False

    def _open(self) -> http.client.HTTPConnection:
        p = self.d._parts
        cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        conn = cls(p.hostname, p.port, timeout=self.d.timeout_s)
        conn.connect()
        self.http, self.used = conn, False
        return conn

    def send(self, seq: int, req: PlannedRequest) -> DriverRecord:
        headers = self._headers(seq, req)
        sent: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            sent[key] = f"{sent[key]}, {value}" if key in sent else value
        tp = parse_traceparent(sent.get("traceparent"))  # duplicates join to an invalid value
        rec = DriverRecord(
            seq=seq,
            phase=req.phase,
            method=req.method,
            path=self.d.target(req.path),  # as sent: compares with the kernel's target
            request_headers=sent,
            trace_id=tp.trace_id if tp else "",
            parent_id=tp.parent_id if tp else "",
            t_send_ns=time.time_ns(),
            case=req.case,
        )
        for attempt in (1, 2):
            reused = self.http is not None and self.used
            try:
                self._exchange(rec, req, headers)
                return rec
            except _STALE as e:
                self.close()
                if reused and attempt == 1:
                    continue  # idle keep-alive connection closed under us: once more, fresh
                rec.error = _describe(e)
            except (OSError, http.client.HTTPException, ValueError) as e:
                self.close()
                rec.error = _describe(e)
            except Exception as e:  # noqa: BLE001 - one bad request must not end the run
                self.close()
                rec.error = _describe(e)
                log.warning("load driver: unexpected error on %s %s: %s", req.method, req.path, rec.error)
            rec.t_recv_ns = time.time_ns()
            return rec
        return rec  # not reached

    def _headers(self, seq: int, req: PlannedRequest) -> list[tuple[str, str]]:
        given = {name.lower() for name in req.headers}
        out: list[tuple[str, str]] = []
        if "host" not in given:
            out.append(("Host", self.d._host))
        if "user-agent" not in given:
            out.append(("User-Agent", self.d._ua_prefix + self.d.marker(seq)))
        for name, value in req.headers.items():
            for v in value if isinstance(value, list) else [value]:
                out.append((name, v))
        if "content-length" not in given and "transfer-encoding" not in given:
            if req.body is not None or req.method.upper() in _BODY_METHODS:
                out.append(("Content-Length", str(len(req.body or b""))))
        if not self.d.keep_alive and "connection" not in given:
            out.append(("Connection", "close"))
        return out

    def _exchange(self, rec: DriverRecord, req: PlannedRequest, headers: list[tuple[str, str]]) -> None:
        conn = self.http or self._open()
        conn.putrequest(req.method, rec.path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        self.used = True
        rec.t_send_ns = time.time_ns()  # after connect: the request bytes go out now
        conn.endheaders(req.body)
        resp = conn.getresponse()
        deadline = time.monotonic() + self.d.timeout_s
        rec.status = resp.status
        got: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            got[key] = f"{got[key]}, {value}" if key in got else value
        rec.response_headers = got
        kept, total = bytearray(), 0
        while chunk := resp.read(65536):
            total += len(chunk)
            if len(kept) < BODY_KEEP_BYTES:
                kept += chunk[: BODY_KEEP_BYTES - len(kept)]
            if total > MAX_RESPONSE_BYTES or time.monotonic() > deadline:
                rec.error = f"response body cut after {total} bytes ({'size' if total > MAX_RESPONSE_BYTES else 'time'} limit)"
                resp.close()
                self.close()
                break
        rec.t_recv_ns = time.time_ns()
        rec.response_body = kept.decode("utf-8", errors="replace")
        if resp.will_close or not self.d.keep_alive:
            self.close()


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
