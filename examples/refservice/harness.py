"""The W3C trace-context test-harness contract (w3c/trace-context test/): ``POST /test`` takes a
JSON list of ``{"url", "arguments"}`` and POSTs each ``arguments`` (as JSON) to its ``url`` in a
CLIENT span, propagating the request's trace context like the fan-out call does."""

from __future__ import annotations

import http.client
import ipaddress
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .faults import ActiveFaults
from .outbound import mark_answer, mark_unreachable, outbound_headers

TIMEOUT_S = 2.0
MAX_ACTIONS = 16
# The contract lets the caller name any URL; a test service that POSTs wherever it is told
# is an open relay, so this one only calls loopback addresses (where harnesses run).
LOCAL_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class Action:
    url: SplitResult
    arguments: Any


def _loopback(host: str) -> bool:
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_actions(body: Any) -> list[Action]:
    """The harness's request body → actions; ValueError saying what is wrong."""
    if not isinstance(body, list):
        raise ValueError('the body must be a JSON list of {"url": ..., "arguments": [...]}')
    if len(body) > MAX_ACTIONS:
        raise ValueError(f"at most {MAX_ACTIONS} actions per request")
    out = []
    for i, item in enumerate(body):
        url = item.get("url") if isinstance(item, dict) else None
        try:
            parts = urlsplit(url) if isinstance(url, str) else None
            parts and parts.port  # noqa: B018 - raises ValueError on a port that is no number
        except ValueError:
            parts = None
        if parts is None or parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"[{i}].url must be an http:// URL")
        if not _loopback(parts.hostname):
            raise ValueError(f"[{i}].url: this service only calls loopback addresses back")
        out.append(Action(parts, item.get("arguments") or []))
    return out


class HarnessCaller:
    """POSTs one action in a CLIENT span whose id is the outbound parent-id."""

    def __init__(self, tracer: trace.Tracer, faults: ActiveFaults) -> None:
        self._tracer = tracer
        self._faults = faults
        self._propagator = TraceContextTextMapPropagator()

    def call(self, action: Action, biz_code: str) -> dict[str, Any]:
        """``{"url", "status"}`` or ``{"url", "error"}``; never raises for a failed call."""
        u = action.url
        port = u.port or 80
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        url = u.geturl()
        attributes = {"http.request.method": "POST", "server.address": u.hostname,
                      "server.port": port, "url.full": url, "biz.code": biz_code}
        with self._tracer.start_as_current_span(
            "POST", kind=SpanKind.CLIENT, attributes=attributes, record_exception=False,
            set_status_on_exception=False,
        ) as span:
            headers = outbound_headers(biz_code, self._faults, self._propagator)
            conn = http.client.HTTPConnection(u.hostname, port, timeout=TIMEOUT_S)
            try:
                conn.request("POST", path, body=json.dumps(action.arguments).encode(), headers=headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                mark_unreachable(span, exc)
                return {"url": url, "error": f"{type(exc).__name__}: {exc}"}
            finally:
                conn.close()
            mark_answer(span, resp.status)
            return {"url": url, "status": resp.status}
