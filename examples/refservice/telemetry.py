"""Per-worker OpenTelemetry tracing set-up (OTLP/HTTP or gRPC, batching) and the span-dropping fault."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind

from .faults import ActiveFaults, DropPolicy
from .logs import LOGGER_NAME
from .metrics import Metrics

DEFAULT_SERVICE_NAME = "refservice"
# The SDK's own default (5 s) makes a short test run wait for its spans; a service under
# test wants them out quickly. Used only when OTEL_BSP_SCHEDULE_DELAY is not set.
DEFAULT_BSP_SCHEDULE_DELAY_MS = 200
SUPPORTED_PROTOCOLS = ("http/protobuf", "grpc")

log = logging.getLogger(LOGGER_NAME)


@dataclass
class Telemetry:
    """What one worker process instruments with."""

    provider: TracerProvider
    tracer: trace.Tracer
    metrics: Metrics

    def shutdown(self) -> None:
        """Flush and stop the span pipeline (called when the worker exits)."""
        self.provider.shutdown()


class DroppingSpanProcessor(SpanProcessor):
    """FAULT_DROP_SPANS: swallows chosen server spans (and their local children) before export.

    Sampler-independent on purpose: the spans are sampled and recorded as usual, so trace ids,
    exemplars and logs look normal; only the export is lost, as with a real pipeline loss.
    """

    def __init__(
        self, inner: SpanProcessor, policy: DropPolicy, on_drop: Callable[[ReadableSpan], None]
    ) -> None:
        self._inner = inner
        self._policy = policy
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._server_spans = 0
        self._dropping: set[int] = set()  # span ids chosen for dropping, until they end

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        span_id = span.get_span_context().span_id
        parent = span.parent
        with self._lock:
            if span.kind is SpanKind.SERVER:
                self._server_spans += 1
                drop = self._policy.should_drop(self._server_spans)
            else:
                # A child of a dropped server span would be an orphan: drop it with its parent.
                drop = parent is not None and not parent.is_remote and parent.span_id in self._dropping
            if drop:
                self._dropping.add(span_id)
        if not drop:
            self._inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        span_id = span.get_span_context().span_id
        with self._lock:
            dropped = span_id in self._dropping
            self._dropping.discard(span_id)
        if not dropped:
            self._inner.on_end(span)
        elif span.kind is SpanKind.SERVER:
            self._on_drop(span)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class FixedTraceIdGenerator(RandomIdGenerator):
    """FAULT_FIXED_TRACE_ID: every trace this process starts gets the same (valid) trace id."""

    def __init__(self) -> None:
        self._trace_id = super().generate_trace_id()

    def generate_trace_id(self) -> int:
        return self._trace_id


def build_resource() -> Resource:
    """Resource from OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME, named `refservice` otherwise."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _exporter():
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    ).strip()
    if protocol and protocol not in SUPPORTED_PROTOCOLS:
        log.warning(
            "OTLP protocol not supported, using http/protobuf",
            extra={"fields": {"requested": protocol}},
        )
    # Imported here: the exporters pull in requests/grpc/protobuf, needed only in workers.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*


def start_worker_telemetry(faults: ActiveFaults) -> Telemetry:
    """Create this process's tracer provider and metrics; call once per worker, after fork."""
    resource = build_resource()
    metrics = Metrics(resource.attributes, faults.trace_id_label, faults.bad_metric_names)
    provider = TracerProvider(
        resource=resource,
        id_generator=FixedTraceIdGenerator() if faults.fixed_trace_id else None,
    )
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none":
        delay = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else DEFAULT_BSP_SCHEDULE_DELAY_MS
        processor: SpanProcessor = BatchSpanProcessor(_exporter(), schedule_delay_millis=delay)
        if faults.drop_spans is not None:
            processor = DroppingSpanProcessor(
                processor, faults.drop_spans, lambda span: _record_drop(metrics, span)
            )
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return Telemetry(provider, provider.get_tracer("examples.refservice"), metrics)


def _record_drop(metrics: Metrics, span: ReadableSpan) -> None:
    metrics.dropped_spans.inc()
    ctx = span.get_span_context()
    log.info(
        "fault: server span dropped",
        extra={
            "fields": {
                "fault": "FAULT_DROP_SPANS",
                "trace_id": format(ctx.trace_id, "032x"),
                "span_id": format(ctx.span_id, "016x"),
                "span_name": span.name,
            }
        },
    )
