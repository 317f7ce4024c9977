"""The fan-out call to the inventory service: a CLIENT span with trace context and bizCode."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .faults import ActiveFaults

RESERVE_PATH = "/inventory/reserve"
TIMEOUT_S = 2.0



def outbound_headers(biz_code: str, faults, propagator) -> dict[str, str]:
    """Headers of a call the service makes while serving a request: JSON, this request's
    bizCode and, unless a fault breaks it, its trace context (parent-id = the current span)."""
    headers = {"Content-Type": "application/json", "X-Biz-Code": biz_code}
    if not faults.break_propagation:
        propagator.inject(headers)
    if faults.drop_tracestate:
        headers.pop("tracestate", None)
    return headers

def mark_unreachable(span, exc: BaseException) -> None:
    """A client span whose call got no answer."""
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, str(exc)))


def mark_answer(span, status: int) -> bool:
    """Record a client span's answer; True when it is an error (client spans: 4xx and 5xx
    both, OTel HTTP semconv)."""
    span.set_attribute("http.response.status_code", status)
    if status < 400:
        return False
    span.set_attribute("error.type", str(status))
    span.set_status(Status(StatusCode.ERROR))
    return True


class DownstreamError(Exception):
    """The inventory service could not be reached or answered with an error."""


def parse_downstream_url(base_url: str):
    """urlsplit of OBSCONFORM_DOWNSTREAM_URL; ValueError naming the variable when unusable."""
    try:
        parts = urlsplit(base_url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"OBSCONFORM_DOWNSTREAM_URL: expected http(s)://host[:port][/prefix], got {base_url!r}")
    return parts


class InventoryClient:
    """POSTs reservations to `<OBSCONFORM_DOWNSTREAM_URL>/inventory/reserve`."""

    def __init__(self, base_url: str, tracer: trace.Tracer, faults: ActiveFaults) -> None:
        parts = parse_downstream_url(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path.rstrip("/") + RESERVE_PATH
        self._url = f"{parts.scheme}://{parts.netloc}{self._path}"
        self._tracer = tracer
        self._faults = faults
        self._propagator = TraceContextTextMapPropagator()

    def reserve(self, payload: dict[str, Any], biz_code: str) -> dict[str, Any]:
        """Reserve stock; raises DownstreamError on any failure. One connection per call."""
        body = json.dumps(payload).encode()
        attributes = {
            "http.request.method": "POST",
            "server.address": self._host,
            "server.port": self._port,
            "url.full": self._url,
            "biz.code": biz_code,
        }
        with self._tracer.start_as_current_span(
            "POST", kind=SpanKind.CLIENT, attributes=attributes, record_exception=False,
            set_status_on_exception=False,
        ) as span:
            headers = outbound_headers(biz_code, self._faults, self._propagator)
            conn_cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = conn_cls(self._host, self._port, timeout=TIMEOUT_S)
            try:
                conn.request("POST", self._path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                mark_unreachable(span, exc)
                raise DownstreamError(f"inventory unreachable: {exc}") from exc
            finally:
                conn.close()
            if mark_answer(span, resp.status):
                raise DownstreamError(f"inventory answered {resp.status}")
        try:
            return json.loads(data) if data else {}
        except ValueError as exc:
            raise DownstreamError("inventory answered non-JSON") from exc
