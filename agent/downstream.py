"""Downstream sink: a stand-in for the services a SUT calls, recording every request it gets."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from agent._http import BackgroundServer, BodyError, QuietHandler, read_body
from agent.evidence import DownstreamRecord, EvidenceWriter

log = logging.getLogger(__name__)

BODY_KEEP_BYTES = 4096
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
OK_BODY = json.dumps({"ok": True}).encode()


@dataclass
class Rule:
    """How the sink answers one path (exact match, query string ignored)."""

    status: int = 200
    delay_s: float = 0.0
    body: bytes = OK_BODY
    content_type: str = "application/json"


class DownstreamSink:
    """Answers any method on any path with 200 ``{"ok": true}`` (or a per-path ``Rule``).

    Give ``url`` to the SUT (``OBSCONFORM_DOWNSTREAM_URL``) as the base of its outbound calls.
    """

    def __init__(self, writer: EvidenceWriter | None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.writer = writer
        self.records: list[DownstreamRecord] = []
        self.max_body_bytes = DEFAULT_MAX_BODY_BYTES
        self.errors = 0
        self._rules: dict[str, Rule] = {}
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._server = BackgroundServer(_SinkHandler, self, host, port, "downstream-sink")

    def start(self) -> DownstreamSink:
        self._stopping.clear()
        self._server.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # cut configured delays short
        self._server.stop()

    def __enter__(self) -> DownstreamSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self._server.base_url

    def respond(self, path: str, status: int = 200, delay_s: float = 0.0, body: Any = None) -> None:
        """Answer ``path`` with ``status`` after ``delay_s``; ``body`` as bytes, text or JSON-able."""
        if not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status}")
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        rule = Rule(status=status, delay_s=delay_s)
        if isinstance(body, bytes):
            rule.body, rule.content_type = body, "application/octet-stream"
        elif isinstance(body, str):
            rule.body, rule.content_type = body.encode(), "text/plain; charset=utf-8"
        elif body is not None:
            rule.body = json.dumps(body).encode()
        with self._cond:
            self._rules[path] = rule

    def wait_for(self, n: int, timeout_s: float) -> bool:
        """Block until at least ``n`` requests were recorded; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.records) >= n, timeout=timeout_s)

    def _rule(self, path: str) -> Rule:
        with self._cond:
            return self._rules.get(path) or _DEFAULT_RULE

    def _record(self, record: DownstreamRecord) -> None:
        if self.writer is not None:
            try:
                self.writer.downstream([record])
            except Exception as e:  # noqa: BLE001 - keep answering; the count says evidence is short
                with self._cond:
                    self.errors += 1
                    first = self.errors == 1
                if first:
                    log.warning("downstream sink: could not store a record: %s (further failures counted)", e)
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()


_DEFAULT_RULE = Rule()


class _SinkHandler(QuietHandler):
    server_version = "obsconform-sink"

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler dispatches to do_<METHOD>: take every method, even odd ones.
        if name.startswith("do_"):
            return self._any
        raise AttributeError(name)

    def _any(self) -> None:
        sink: DownstreamSink = self.server.owner  # type: ignore[attr-defined]
        t_ns = time.time_ns()
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            # RFC 9110 field values exclude surrounding whitespace (the parser keeps trailing).
            headers.setdefault(name.lower(), []).append(value.strip(" \t"))
        try:
            body = read_body(self, sink.max_body_bytes)
        except BodyError as e:
            self.close_connection = True
            body = b""
            status = e.status
        else:
            status = 0
        path = self.path.split("?", 1)[0]
        sink._record(
            DownstreamRecord(
                t_ns=t_ns,
                method=self.command,
                path=self.path,
                headers=headers,
                body=body[:BODY_KEEP_BYTES].decode("utf-8", errors="replace"),
            )
        )
        if status:
            self.reply(status, b"", "text/plain")
            return
        rule = sink._rule(path)
        if rule.delay_s:
            sink._stopping.wait(rule.delay_s)
        self.reply(rule.status, rule.body, rule.content_type)
