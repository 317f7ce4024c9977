"""WSGI instrumentation: one SERVER span and one histogram observation timing the same section."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from werkzeug.exceptions import HTTPException

from .bizcode import DEFAULT_BIZ_CODE, biz_code_of, with_biz_code
from .errcodes import ENV_ERROR_CODE
from .faults import ActiveFaults
from .logs import LOGGER_NAME
from .propagation import ENVIRON_GETTER, inbound_propagator
from .telemetry import Telemetry

# The agent's own traffic (scrapes, health probes) is neither traced nor counted.
UNINSTRUMENTED_PATHS = frozenset({"/metrics", "/healthz"})
ENV_BIZ_CODE = "refservice.biz_code"  # WSGI environ key: this request's bizCode

log = logging.getLogger(LOGGER_NAME)


def _split_host(host: str) -> tuple[str, int]:
    """Host header → (address, port or 0); handles `[v6]:port`."""
    address, sep, port = host.rpartition(":")
    if sep and port.isdigit() and not address.endswith(":"):
        return address.strip("[]"), int(port)
    return host.strip("[]"), 0


# time.sleep overshoots by ~0.1 ms here; sleeping to this much before the deadline and
# spinning the rest makes the hidden latency exact to a few µs, so that benchmarks measure
# the agent's resolution rather than the sleep's.
_SPIN_S = 0.0003


def hide_latency(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    if seconds > _SPIN_S:
        time.sleep(seconds - _SPIN_S)
    while time.perf_counter() < deadline:
        pass


class _ClosingBody:
    """Wraps the response body so the instrumented section ends after the server wrote it."""

    __slots__ = ("_body", "_finish")

    def __init__(self, body: Iterable[bytes], finish: Callable[[], None]) -> None:
        self._body = body
        self._finish = finish

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()


class InstrumentationMiddleware:
    """Wraps the Flask WSGI app: extract context, start the span, time, log, observe, export.

    The section starts when the server hands over the parsed request and ends when the server
    has written the last body byte (gunicorn closes the body iterable after writing it), so the
    span and the histogram cover what the kernel sees, minus header parsing.
    """

    def __init__(self, app: Flask, telemetry: Telemetry, faults: ActiveFaults) -> None:
        self._wsgi = app.wsgi_app
        self._url_map = app.url_map
        self._tracer = telemetry.tracer
        self._metrics = telemetry.metrics
        self._propagator = inbound_propagator(faults)
        self._error_statuses = 400 if faults.span_error_on_4xx else 500
        self._hidden_latency_s = faults.hidden_latency_ms / 1000.0

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in UNINSTRUMENTED_PATHS:
            return self._wsgi(environ, start_response)
        if self._hidden_latency_s:
            # FAULT_HIDDEN_LATENCY_MS: real work the telemetry never sees.
            hide_latency(self._hidden_latency_s)
        start_ns = time.time_ns()
        start_mono = time.perf_counter_ns()
        method = environ.get("REQUEST_METHOD", "GET")
        route = self._route_of(environ)
        biz_code = biz_code_of(environ)
        environ[ENV_BIZ_CODE] = biz_code
        parent = self._propagator.extract(environ, getter=ENVIRON_GETTER)
        span = self._tracer.start_span(
            f"{method} {route}" if route else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=self._request_attributes(environ, method, route, biz_code),
            start_time=start_ns,
        )
        token = context.attach(with_biz_code(biz_code, trace.set_span_in_context(span, parent)))
        status: list[int] = [500]

        def _start_response(status_line: str, headers: list, exc_info: Any = None) -> Any:
            status[0] = int(status_line[:3])
            return start_response(status_line, headers, exc_info)

        def finish() -> None:
            self._finish(environ, span, token, method, route, status[0], start_ns, start_mono)

        try:
            body = self._wsgi(environ, _start_response)
        except BaseException as exc:
            span.record_exception(exc)
            finish()
            raise
        return _ClosingBody(body, finish)

    def _route_of(self, environ: dict) -> str:
        """The Flask rule template matching this request, '' when none matches."""
        try:
            rule, _ = self._url_map.bind_to_environ(environ).match(return_rule=True)
        except HTTPException:
            return ""
        return rule.rule

    @staticmethod
    def _request_attributes(environ: dict, method: str, route: str, biz_code: str) -> dict[str, Any]:
        address, port = _split_host(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
        attrs: dict[str, Any] = {
            "http.request.method": method,
            "url.path": environ.get("PATH_INFO", ""),
            "url.scheme": environ.get("wsgi.url_scheme", "http"),
            "server.address": address,
            "server.port": port or int(environ.get("SERVER_PORT") or 80),
            "network.protocol.version": environ.get("SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2],
            "client.address": environ.get("REMOTE_ADDR", ""),
            "biz.code": biz_code,
        }
        if route:
            attrs["http.route"] = route
        if environ.get("QUERY_STRING"):
            attrs["url.query"] = environ["QUERY_STRING"]
        if environ.get("HTTP_USER_AGENT"):
            attrs["user_agent.original"] = environ["HTTP_USER_AGENT"]
        return attrs

    def _finish(
        self,
        environ: dict,
        span: trace.Span,
        token: object,
        method: str,
        route: str,
        status: int,
        start_ns: int,
        start_mono: int,
    ) -> None:
        # One clock reading, taken first, ends both the span and the histogram observation:
        # the work ended when the server wrote the last body byte; the attributes and the log
        # line below are bookkeeping (the log's write lets other threads take the GIL).
        elapsed_ns = time.perf_counter_ns() - start_mono
        try:
            span.set_attribute("http.response.status_code", status)
            if status >= self._error_statuses:
                # OTel HTTP semconv: server spans are errors for 5xx only; 4xx is the client's
                # (FAULT_4XX_SPAN_ERROR lowers the bar to 400).
                span.set_status(Status(StatusCode.ERROR))
                if not (getattr(span, "attributes", None) or {}).get("error.type"):
                    span.set_attribute("error.type", str(status))
            span_ctx = span.get_span_context()
            fields = {
                "method": method,
                "path": environ.get("PATH_INFO", ""),
                "route": route,
                "status": status,
                "biz_code": environ.get(ENV_BIZ_CODE, DEFAULT_BIZ_CODE),
            }
            if ENV_ERROR_CODE in environ:
                fields["error_code"] = environ[ENV_ERROR_CODE]
            log.info("request", extra={"fields": fields})
            span.end(end_time=start_ns + elapsed_ns)
            trace_id = format(span_ctx.trace_id, "032x")
            exemplar = None
            if span_ctx.trace_flags.sampled:
                exemplar = {"trace_id": trace_id, "span_id": format(span_ctx.span_id, "016x")}
            self._metrics.observe_request(method, route, status, elapsed_ns / 1e9, exemplar, trace_id)
        finally:
            context.detach(token)
