"""OTLP/HTTP receiver: /v1/traces, /v1/metrics, /v1/logs (protobuf or JSON, gzip) → evidence.

``OtlpReceiver.export`` is the one intake path: the OTLP/gRPC front end (agent.otlp_grpc)
hands its messages to it too, so both transports share records, files, counts and settling."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from agent import otlp_decode as dec
from agent._http import BackgroundServer, BodyError, QuietHandler, decode_content, read_body
from agent.evidence import EvidenceWriter, LogRecord, MetricPoint, Span

log = logging.getLogger(__name__)

# An OTLP exporter batches at most a few MiB; anything larger is a client bug or an attack.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
ROUTES = {"/v1/traces": dec.TRACES, "/v1/metrics": dec.METRICS, "/v1/logs": dec.LOGS}
# Signal → the record list (and EvidenceWriter method) its records go to.
_STORE = {dec.TRACES: "spans", dec.METRICS: "metrics", dec.LOGS: "logs"}
PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
JSON_TYPE = "application/json"
# google.rpc.Code values used in the error Status body the OTLP spec asks for.
_RPC_CODE = {400: 3, 404: 5, 405: 12, 413: 8, 415: 3, 500: 13}
HTTP, GRPC = "http", "grpc"  # transports, as named in transports()
_TALLIES = ("requests", "errors", "spans", "metrics", "logs")


class ExportFailed(RuntimeError):
    """An export the receiver could not decode or store through its own fault (a bug, a full disk)."""


class OtlpReceiver:
    """Receives OTLP exports, keeps the flattened records and appends them to the run.

    It serves OTLP/HTTP itself; an ``OtlpGrpcReceiver`` (agent.otlp_grpc) feeds it OTLP/gRPC.

    ``endpoint`` is a base URL: give it to a service as ``OTEL_EXPORTER_OTLP_ENDPOINT`` and
    its exporters post to ``{endpoint}/v1/traces`` etc.
    """

    def __init__(
        self,
        writer: EvidenceWriter | None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        self.writer = writer
        self.max_body_bytes = max_body_bytes
        self.spans: list[Span] = []
        self.metrics: list[MetricPoint] = []
        self.logs: list[LogRecord] = []
        self._requests = 0
        self._errors = 0
        self._cond = threading.Condition()
        self._last_arrival = time.monotonic()
        self._logged: set[str] = set()
        self._by_transport: dict[str, dict[str, int]] = {}
        self._server = BackgroundServer(_OtlpHandler, self, host, port, "otlp-receiver")

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return self._server.base_url

    @property
    def port(self) -> int:
        return self._server.port

    def counts(self) -> dict[str, int]:
        with self._cond:
            return {
                "spans": len(self.spans),
                "metrics": len(self.metrics),
                "logs": len(self.logs),
                "requests": self._requests,
                "errors": self._errors,
            }

    def transports(self, *always: str) -> dict[str, dict[str, int]]:
        """Requests, errors and records per transport (``http``, ``grpc``) that got an export,
        and per transport named in ``always`` even if none came (all zero then)."""
        with self._cond:
            out = {t: dict.fromkeys(_TALLIES, 0) for t in always}
            out.update((t, dict(tally)) for t, tally in self._by_transport.items())
            return out

    def export(self, signal: str, body: bytes, *, is_json: bool = False, received_ns: int = 0,
               transport: str = HTTP) -> None:
        """Decode one export request body, keep and write its records, and count it.

        Raises ``OtlpDecodeError`` for a body that is no valid export (the sender's fault) or
        ``ExportFailed`` (ours); either is counted as an error and logged once per kind.
        """
        try:
            records = dec.decode(signal, body, is_json, received_ns)
        except dec.OtlpDecodeError as e:
            self._note(f"{transport}-invalid", "OTLP receiver (%s): refused a %s export: %s", transport, signal, e)
            self._arrived(transport, ok=False)
            raise
        except Exception as e:  # noqa: BLE001 - a decoder bug must cost one export, not the receiver
            self._note("decode", "OTLP receiver: could not decode %s: %r", signal, e)
            self._arrived(transport, ok=False)
            raise ExportFailed(f"could not decode {signal}: {e!r}") from e
        try:
            self._ingest(signal, records)
        except Exception as e:  # noqa: BLE001 - the receiver must outlive any bad export
            self._note("ingest", "OTLP receiver: could not store %s: %s", signal, e)
            self._arrived(transport, ok=False)
            raise ExportFailed(f"could not store {signal}: {e}") from e
        self._arrived(transport, ok=True, store=_STORE[signal], records=len(records))

    def wait_quiet(self, quiet_s: float, timeout_s: float) -> bool:
        """Block until no export arrived for ``quiet_s``, at most ``timeout_s``; True if it went quiet.

        The quiet window starts no earlier than this call, so a settle phase always gives
        exporters a full ``quiet_s`` to deliver what they still hold.
        """
        now = time.monotonic()
        deadline = now + timeout_s
        with self._cond:
            start = now
            while True:
                now = time.monotonic()
                quiet_since = max(self._last_arrival, start)
                left = quiet_s - (now - quiet_since)
                if left <= 0:
                    return True
                if now >= deadline:
                    return False
                self._cond.wait(min(left, deadline - now))

    # Called from handler threads.

    def _arrived(self, transport: str, ok: bool, store: str = "", records: int = 0) -> None:
        with self._cond:
            self._requests += 1
            tally = self._by_transport.get(transport)
            if tally is None:
                tally = self._by_transport[transport] = dict.fromkeys(_TALLIES, 0)
            tally["requests"] += 1
            if not ok:
                self._errors += 1
                tally["errors"] += 1
            if store:
                tally[store] += records
            self._last_arrival = time.monotonic()
            self._cond.notify_all()

    def _ingest(self, signal: str, records: list[Any]) -> None:
        store = _STORE[signal]
        if self.writer is not None and records:
            getattr(self.writer, store)(records)
        with self._cond:
            getattr(self, store).extend(records)

    def _note(self, key: str, message: str, *args: object) -> None:
        """Log the first occurrence of each kind of problem; later ones go to debug."""
        with self._cond:
            first = key not in self._logged
            self._logged.add(key)
        log.log(logging.WARNING if first else logging.DEBUG, message, *args)


class _OtlpHandler(QuietHandler):
    server_version = "obsconform-otlp"

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        owner: OtlpReceiver = self.server.owner  # type: ignore[attr-defined]
        received_ns = time.time_ns()
        path = self.path.split("?", 1)[0]
        signal = ROUTES.get(path)
        is_json = False
        try:
            if signal is None:
                raise BodyError(404, f"no OTLP route {path!r} (use /v1/traces, /v1/metrics, /v1/logs)")
            ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
            is_json = ctype == JSON_TYPE
            if not is_json and ctype not in PROTOBUF_TYPES:
                raise BodyError(415, f"unsupported Content-Type {ctype!r} (application/x-protobuf or application/json)")
            body = read_body(self, owner.max_body_bytes)
            body = decode_content(body, self.headers.get("Content-Encoding") or "", owner.max_body_bytes)
        except BodyError as e:
            owner._note(f"{e.status}", "OTLP receiver: %s %s answered %d: %s", self.command, path, e.status, e)
            owner._arrived(HTTP, ok=False)
            self._fail(e.status, str(e), is_json)
            return
        try:
            owner.export(signal, body, is_json=is_json, received_ns=received_ns)
        except (dec.OtlpDecodeError, ExportFailed) as e:  # counted and logged by export()
            self._fail(400 if isinstance(e, dec.OtlpDecodeError) else 500, str(e), is_json)
            return
        self.reply(200, dec.response_body(signal, is_json), JSON_TYPE if is_json else PROTOBUF_TYPES[0])

    def _fail(self, status: int, message: str, is_json: bool) -> None:
        """Answer an error with a google.rpc.Status body in the request's encoding."""
        # The body may be unread (or half read): never reuse this connection.
        self.close_connection = True
        code = _RPC_CODE.get(status, 2)
        if is_json:
            body = json.dumps({"code": code, "message": message}).encode()
        else:
            body = _rpc_status(code, message)
        extra = {"Allow": "POST"} if status == 405 else None
        try:
            self.reply(status, body, JSON_TYPE if is_json else PROTOBUF_TYPES[0], extra)
        except OSError:
            pass  # the exporter went away; nothing to tell it

    def __getattr__(self, name: str) -> Any:
        # Any other method on any path: 405 on OTLP routes, 404 elsewhere, never a 501 page.
        if name.startswith("do_"):
            return self._other_method
        raise AttributeError(name)

    def _other_method(self) -> None:
        owner: OtlpReceiver = self.server.owner  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        status = 405 if path in ROUTES else 404
        owner._arrived(HTTP, ok=False)
        self._fail(status, f"{self.command} {path}: OTLP/HTTP takes POST on /v1/traces|metrics|logs", False)


def _rpc_status(code: int, message: str) -> bytes:
    """A google.rpc.Status {code, message} in protobuf wire format (no googleapis dependency)."""
    msg = message[:1024].encode("utf-8")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(msg)) + msg


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
