"""The OTLP receiver against the real opentelemetry-sdk and its official OTLP/HTTP exporters."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from agent.evidence import RunMeta, load_evidence
from agent.otlp import OtlpReceiver

RESOURCE = Resource.create({"service.name": "intake-test", "deployment.environment.name": "ci"})


@pytest.fixture
def tracing(receiver: OtlpReceiver) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A TracerProvider exporting synchronously to the receiver and to memory (the SDK's own view)."""
    provider = TracerProvider(resource=RESOURCE)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider, memory
    provider.shutdown()


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def test_sdk_spans_arrive_with_exact_ids_parents_kinds_status_and_attributes(tracing, receiver):
    provider, memory = tracing
    tracer = provider.get_tracer("intake.tests", "1.0")
    attrs = {"http.request.method": "GET", "http.response.status_code": 503, "ratio": 0.25,
             "retryable": True, "tags": ["a", "b"], "codes": [1, 2, 3]}  # fmt: skip
    with tracer.start_as_current_span("GET /items/{id}", kind=SpanKind.SERVER, attributes=attrs) as server:
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as client:
            client.add_event("retry", {"attempt": 2})
            client.set_status(Status(StatusCode.OK))
        server.set_status(Status(StatusCode.ERROR, "upstream down"))
    with tracer.start_as_current_span("produce", kind=SpanKind.PRODUCER):
        pass

    sdk_spans = memory.get_finished_spans()
    got = {s.span_id: s for s in receiver.spans}
    assert len(got) == len(sdk_spans) == 3
    assert receiver.counts()["errors"] == 0
    for want in sdk_spans:
        span = got[format(want.context.span_id, "016x")]
        assert span.trace_id == format(want.context.trace_id, "032x")
        assert span.parent_span_id == (format(want.parent.span_id, "016x") if want.parent else "")
        assert (span.name, span.kind) == (want.name, want.kind.name)
        assert (span.status_code, span.status_message) == (want.status.status_code.name, want.status.description or "")
        assert (span.start_ns, span.end_ns) == (want.start_time, want.end_time)
        assert span.attributes == {k: _plain(v) for k, v in want.attributes.items()}
        assert span.resource == dict(want.resource.attributes)
        assert span.scope == "intake.tests"
        assert span.events == [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes)} for e in want.events
        ]
        assert span.received_ns >= span.end_ns
    server_span = got[format(sdk_spans[1].context.span_id, "016x")]
    assert (server_span.kind, server_span.status_code, server_span.attributes["codes"]) == ("SERVER", "ERROR", [1, 2, 3])


def test_exporter_configured_by_standard_env_reaches_the_receiver(receiver, monkeypatch):
    # What --exec does for a SUT: OTEL_EXPORTER_OTLP_ENDPOINT is the base URL.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    with provider.get_tracer("env").start_as_current_span("hello") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()
    assert [(s.name, s.trace_id) for s in receiver.spans] == [("hello", trace_id)]


def test_sdk_metrics_arrive_with_values_buckets_and_exemplars(tracing, receiver):
    provider, _ = tracing
    otlp = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{receiver.endpoint}/v1/metrics"), export_interval_millis=3_600_000
    )
    meters = MeterProvider(
        metric_readers=[otlp],
        resource=RESOURCE,
        views=[View(instrument_name="payload.size", aggregation=ExponentialBucketHistogramAggregation())],
    )
    meter = meters.get_meter("intake.metrics")
    requests = meter.create_counter("requests", unit="{request}")
    latency = meter.create_histogram("latency", unit="s", explicit_bucket_boundaries_advisory=[0.01, 0.1, 1.0])
    sizes = meter.create_histogram("payload.size", unit="By")
    inflight = meter.create_up_down_counter("inflight")
    temp = meter.create_gauge("temperature", unit="Cel")

    requests.add(3, {"route": "/a"})
    requests.add(2, {"route": "/b"})
    span_ids = {}
    for value in (0.005, 0.05, 0.5, 5.0):
        with provider.get_tracer("m").start_as_current_span("op") as span:
            latency.record(value)  # sampled span in context: the SDK keeps it as an exemplar
            ctx = span.get_span_context()
            span_ids[format(ctx.span_id, "016x")] = format(ctx.trace_id, "032x")
    size_values = [0.5, 3.0, 3.0, 100.0, 1000.0]
    for v in size_values:
        sizes.record(v)
    inflight.add(5)
    inflight.add(-2)
    temp.set(21.5)
    meters.shutdown()  # one final collect + export

    points = {}
    for p in receiver.metrics:
        points.setdefault(p.name, []).append(p)
    assert {n: len(v) for n, v in points.items()} == {
        "requests": 2, "latency": 1, "payload.size": 1, "inflight": 1, "temperature": 1,
    }  # fmt: skip

    by_route = {p.attributes["route"]: p for p in points["requests"]}
    assert {r: p.value for r, p in by_route.items()} == {"/a": 3.0, "/b": 2.0}
    assert {(p.kind, p.monotonic, p.temporality, p.unit) for p in by_route.values()} == {
        ("sum", True, "CUMULATIVE", "{request}")
    }

    (lat,) = points["latency"]
    assert (lat.kind, lat.count, lat.unit) == ("histogram", 4, "s")
    assert lat.sum == pytest.approx(5.555)
    assert (lat.bucket_bounds, lat.bucket_counts) == ([0.01, 0.1, 1.0], [1, 1, 1, 1])
    assert lat.exemplars, "the SDK's trace-based exemplar filter should have kept exemplars"
    for e in lat.exemplars:
        assert span_ids[e["span_id"]] == e["trace_id"]
    assert sorted(e["value"] for e in lat.exemplars) == [0.005, 0.05, 0.5, 5.0]

    (size,) = points["payload.size"]
    assert (size.kind, size.count, size.sum) == ("exponential_histogram", 5, sum(size_values))
    assert len(size.bucket_counts) == len(size.bucket_bounds) + 1
    placed = [0] * len(size.bucket_counts)
    for v in size_values:
        placed[bisect.bisect_left(size.bucket_bounds, v)] += 1  # le semantics: v <= bound
    assert size.bucket_counts == placed

    assert (points["inflight"][0].value, points["inflight"][0].monotonic) == (3.0, False)
    assert (points["temperature"][0].kind, points["temperature"][0].value) == ("gauge", 21.5)
    assert points["temperature"][0].resource["service.name"] == "intake-test"
    assert points["temperature"][0].scope == "intake.metrics"


def test_sdk_logs_arrive_with_trace_context_severity_and_body(tracing, receiver):
    provider, _ = tracing
    logs = LoggerProvider(resource=RESOURCE)
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{receiver.endpoint}/v1/logs")))
    logger = logs.get_logger("intake.logs")
    with provider.get_tracer("l").start_as_current_span("serve") as span:
        ctx = span.get_span_context()
        logger.emit(severity_number=SeverityNumber.WARN, severity_text="WARN", body="payment declined",
                    attributes={"order.id": 7})  # fmt: skip
    logger.emit(severity_number=SeverityNumber.INFO, body={"event": "tick", "n": [1, 2]})
    logs.shutdown()

    assert receiver.counts()["logs"] == 2
    inside, outside = receiver.logs
    assert (inside.source, inside.trace_id, inside.span_id) == (
        "otlp", format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"),
    )  # fmt: skip
    assert (inside.severity_text, inside.severity_number, inside.body) == ("WARN", 13, "payment declined")
    assert inside.attributes == {"order.id": 7}
    assert inside.resource["service.name"] == "intake-test"
    assert inside.time_ns > 0 and inside.received_ns >= inside.time_ns
    assert (outside.trace_id, outside.span_id, outside.body) == ("", "", {"event": "tick", "n": [1, 2]})


def test_records_reach_the_run_directory(tracing, receiver, writer):
    provider, _ = tracing
    tracer = provider.get_tracer("files")
    for i in range(5):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    writer.meta(RunMeta(run_id="t", started_at="2025-01-01T00:00:00Z"))
    assert load_evidence(writer.run_dir).spans == receiver.spans
