"""The OpenTelemetry SDK set-up every real-world service does: from the standard OTEL_*
environment, a BatchSpanProcessor with the OTLP/HTTP span exporter and, when
OTEL_METRICS_EXPORTER names otlp, a periodic OTLP/HTTP metric reader; plus the span-drop
fault every Python stack shares (REALWORLD_FAULT=drop-spans:N)."""

from __future__ import annotations

import json
import os
import threading
from urllib.parse import urlsplit

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

# REALWORLD_FAULT=drop-spans:N drops every Nth SERVER span of the load driver's GET
# /items/... requests before export, the way a lossy pipeline (a filtering processor, a
# full queue) loses them, and counts each drop in REALWORLD_COUNTS_FILE. Only /items/...:
# the driver's trace-context and bizCode phases never request it, so the loss is the load
# phase's alone and the trace-context checks still judge every request they sent.
DROP_FAULT = "drop-spans"
DROP_PATH_PREFIX = "/items/"
DRIVER_USER_AGENT = "obsconform-driver"  # agent.evidence.DRIVER_USER_AGENT: its requests only


def configure() -> TracerProvider:
    """Install the global tracer (and meter) provider; call once per process, after fork.

    Everything comes from the environment, as in the OTel Python docs: the resource from
    OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, the endpoint from
    OTEL_EXPORTER_OTLP_ENDPOINT, batching from OTEL_BSP_*, the interval from
    OTEL_METRIC_EXPORT_INTERVAL. The SDK flushes both providers at interpreter exit.
    """
    resource = Resource.create()
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp") != "none":
        processor: SpanProcessor = BatchSpanProcessor(OTLPSpanExporter())
        kind, _, every = os.environ.get("REALWORLD_FAULT", "").partition(":")
        if kind == DROP_FAULT:
            processor = DropEveryNthServerSpan(processor, int(every),
                                               os.environ.get("REALWORLD_COUNTS_FILE"))
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    if "otlp" in os.environ.get("OTEL_METRICS_EXPORTER", "").split(","):
        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    return provider


def downstream_url(path: str) -> str:
    """The downstream a fan-out route calls: OBSCONFORM_DOWNSTREAM_URL + path."""
    base = os.environ.get("OBSCONFORM_DOWNSTREAM_URL", "http://127.0.0.1:9")
    return base.rstrip("/") + path


class DropEveryNthServerSpan(SpanProcessor):
    """Passes spans on to ``inner`` except every ``every``th driver SERVER span of GET
    /items/...; the drops so far are in ``counts_file`` + ".<pid>" ({"dropped_server_spans": n})."""

    def __init__(self, inner: SpanProcessor, every: int, counts_file: str | None) -> None:
        if every < 1:
            raise ValueError(f"drop-spans: N must be 1 or more, not {every}")
        self._inner, self._every = inner, every
        # One file per process: gunicorn's workers each count their own (the test sums).
        self._path = f"{counts_file}.{os.getpid()}" if counts_file else None
        self._lock = threading.Lock()
        self._seen = self._dropped = 0

    def on_start(self, span, parent_context=None) -> None:
        self._inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if _droppable(span):
            with self._lock:
                self._seen += 1
                drop = self._seen % self._every == 0
                if drop:
                    self._dropped += 1
                    self._write_counts()  # now, not at exit: uvicorn's exit skips atexit
            if drop:
                return
        self._inner.on_end(span)

    def _write_counts(self) -> None:
        if self._path is None:
            return
        tmp = f"{self._path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"dropped_server_spans": self._dropped}, f)
        os.replace(tmp, self._path)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _droppable(span: ReadableSpan) -> bool:
    """A SERVER span of the driver's GET /items/... request (old or stable semconv names)."""
    if span.kind is not SpanKind.SERVER:
        return False
    a = span.attributes or {}
    ua = a.get("user_agent.original", a.get("http.user_agent", ""))
    method = a.get("http.request.method", a.get("http.method", ""))
    path = a.get("url.path") or str(a.get("http.target", "")).partition("?")[0] or \
        urlsplit(str(a.get("http.url", ""))).path
    return str(ua).startswith(DRIVER_USER_AGENT) and method == "GET" and \
        path.startswith(DROP_PATH_PREFIX)
