"""Loopback test doubles: an OTLP/HTTP trace receiver and a downstream HTTP service."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2


@dataclass
class StubSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    trace_state: str
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _attrs(kvs) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode_traces(body: bytes) -> list[StubSpan]:
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    StubSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=s.kind,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        status_code=s.status.code,
                        trace_state=s.trace_state,
                        attributes=_attrs(s.attributes),
                        resource=resource,
                    )
                )
    return out


class Recorder:
    """A list guarded by a condition, with a deadline-bounded wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[Any] = []

    def add(self, items: list[Any]) -> None:
        with self._cond:
            self._items.extend(items)
            self._cond.notify_all()

    def snapshot(self) -> list[Any]:
        with self._cond:
            return list(self._items)

    def wait_for(self, predicate: Callable[[list[Any]], Any], timeout: float = 10.0) -> Any:
        """Wait until predicate(items) is truthy and return its value; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(list(self._items))
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s; have {len(self._items)} items")
                self._cond.wait(remaining)


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.stub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _OtlpHandler(_QuietHandler):
    def do_POST(self) -> None:
        body = self._body()
        if self.path != "/v1/traces":
            self._reply(404, b"", "text/plain")
            return
        self.server.stub.spans.add(decode_traces(body))  # type: ignore[attr-defined]
        self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")


class OtlpTraceStub(_Server):
    """OTLP/HTTP receiver for /v1/traces (protobuf); `spans` records every decoded span."""

    def __init__(self) -> None:
        self.spans = Recorder()
        super().__init__(_OtlpHandler)

    def server_span(self, trace_id: str, timeout: float = 10.0) -> StubSpan:
        """The single SERVER span of a trace, waiting for it to arrive."""

        def found(spans: list[StubSpan]) -> list[StubSpan]:
            return [s for s in spans if s.trace_id == trace_id and s.kind == SPAN_KIND_SERVER]

        hits = self.spans.wait_for(found, timeout)
        assert len(hits) == 1, f"expected one server span in trace {trace_id}, got {len(hits)}"
        return hits[0]


@dataclass
class DownstreamCall:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ","
    body: bytes


class _DownstreamHandler(_QuietHandler):
    def _record(self) -> None:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        call = DownstreamCall(self.command, self.path, headers, self._body())
        self.server.stub.calls.add([call])  # type: ignore[attr-defined]
        self._reply(200, json.dumps({"reserved": True}).encode(), "application/json")

    do_GET = do_POST = _record


class DownstreamStub(_Server):
    """Plays the service the SUT fans out to; `calls` records every request it receives."""

    def __init__(self) -> None:
        self.calls = Recorder()
        super().__init__(_DownstreamHandler)
