"""The OTLP/gRPC receiver against the real SDK's gRPC exporters, and on the wire: limits, gzip, errors."""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from agent.errors import ObsconformError
from agent.evidence import EvidenceWriter, RunMeta, load_evidence
from agent.otlp import OtlpReceiver
from agent.otlp_decode import LOGS, METRICS, TRACES
from agent.otlp_grpc import SERVICES, OtlpGrpcReceiver

from .conftest import http_request
from .test_otlp_wire import PROTOBUF, trace_request

RESOURCE = Resource.create({"service.name": "grpc-intake", "deployment.environment.name": "ci"})
LIMIT = 64 * 1024  # a small message limit, so "oversize" is cheap to build
EMPTY_REQUEST = {TRACES: b"", METRICS: ExportMetricsServiceRequest().SerializeToString(),
                 LOGS: ExportLogsServiceRequest().SerializeToString()}  # fmt: skip


@dataclasses.dataclass
class Intake:
    receiver: OtlpReceiver
    writer: EvidenceWriter

    def evidence(self):
        self.writer.meta(RunMeta(run_id="t", started_at="2025-01-01T00:00:00Z"))
        return load_evidence(self.writer.run_dir)


@pytest.fixture
def over_http(tmp_path: Path) -> Iterator[Intake]:
    writer = EvidenceWriter(tmp_path / "http")
    receiver = OtlpReceiver(writer, max_body_bytes=LIMIT).start()
    yield Intake(receiver, writer)
    receiver.stop()
    writer.close()


@pytest.fixture
def over_grpc(tmp_path: Path) -> Iterator[tuple[Intake, OtlpGrpcReceiver]]:
    """A sink whose only transport is gRPC (its OTLP/HTTP server is never started)."""
    writer = EvidenceWriter(tmp_path / "grpc")
    sink = OtlpReceiver(writer, max_body_bytes=LIMIT)
    front = OtlpGrpcReceiver(sink).start()  # the message limit is the sink's body limit
    yield Intake(sink, writer), front
    front.stop()
    writer.close()


def _stub(front: OtlpGrpcReceiver, signal: str):
    """A raw unary call (bytes in, bytes out) on the signal's Export method: no SDK in the way."""
    channel = grpc.insecure_channel(f"127.0.0.1:{front.port}")
    return channel, channel.unary_unary(f"/{SERVICES[signal]}/Export")


def _flat(records: list) -> list[dict]:
    """Records as dicts without the arrival time (the one field two transports must differ in)."""
    return [{k: v for k, v in dataclasses.asdict(r).items() if k != "received_ns"} for r in records]


def test_sdk_signals_over_grpc_match_the_same_signals_over_http(over_http, over_grpc):
    grpc_intake, front = over_grpc
    # One SDK, each signal handed to an OTLP/HTTP and an OTLP/gRPC exporter at once.
    tracing = TracerProvider(resource=RESOURCE)
    tracing.add_span_processor(SimpleSpanProcessor(HttpSpanExporter(endpoint=f"{over_http.receiver.endpoint}/v1/traces")))
    tracing.add_span_processor(SimpleSpanProcessor(GrpcSpanExporter(endpoint=front.endpoint)))
    tracer = tracing.get_tracer("grpc.tests", "1.0")
    with tracer.start_as_current_span("GET /items/{id}", kind=SpanKind.SERVER,
                                      attributes={"http.response.status_code": 503, "tags": ["a", "b"]}) as server:
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as client:
            client.add_event("retry", {"attempt": 2})
        server.set_status(Status(StatusCode.ERROR, "upstream down"))
        ctx = server.get_span_context()

    logging = LoggerProvider(resource=RESOURCE)
    logging.add_log_record_processor(SimpleLogRecordProcessor(HttpLogExporter(endpoint=f"{over_http.receiver.endpoint}/v1/logs")))
    logging.add_log_record_processor(SimpleLogRecordProcessor(GrpcLogExporter(endpoint=front.endpoint)))
    logger = logging.get_logger("grpc.logs")
    with tracer.start_as_current_span("serve"):
        logger.emit(severity_number=SeverityNumber.WARN, severity_text="WARN", body="payment declined",
                    attributes={"order.id": 7})  # fmt: skip
    logger.emit(severity_number=SeverityNumber.INFO, body={"event": "tick", "n": [1, 2]})

    # One collection, exported by both: the points (and their timestamps) are the same data.
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    meter = meters.get_meter("grpc.metrics")
    meter.create_counter("requests", unit="{request}").add(3, {"route": "/a"})
    meter.create_histogram("latency", unit="s", explicit_bucket_boundaries_advisory=[0.1, 1.0]).record(0.5)
    meter.create_gauge("temperature").set(21.5)
    data = reader.get_metrics_data()
    assert HttpMetricExporter(endpoint=f"{over_http.receiver.endpoint}/v1/metrics").export(data) is MetricExportResult.SUCCESS
    assert GrpcMetricExporter(endpoint=front.endpoint).export(data) is MetricExportResult.SUCCESS
    for provider in (tracing, logging, meters):
        provider.shutdown()

    via_http, via_grpc = over_http.evidence(), grpc_intake.evidence()
    assert [s.name for s in via_grpc.spans] == ["GET", "GET /items/{id}", "serve"]
    assert [p.name for p in via_grpc.metrics] == ["requests", "latency", "temperature"]
    assert [r.body for r in via_grpc.logs] == ["payment declined", {"event": "tick", "n": [1, 2]}]
    server_span = via_grpc.spans[1]
    assert (server_span.trace_id, server_span.kind, server_span.status_code) == (
        format(ctx.trace_id, "032x"), "SERVER", "ERROR")
    for kind in ("spans", "metrics", "logs"):
        assert _flat(getattr(via_grpc, kind)) == _flat(getattr(via_http, kind)), kind
    assert all(r.received_ns > 0 for r in via_grpc.spans + via_grpc.metrics + via_grpc.logs)
    assert grpc_intake.receiver.counts() == {"spans": 3, "metrics": 3, "logs": 2, "requests": 6, "errors": 0}
    assert grpc_intake.receiver.transports() == {
        "grpc": {"requests": 6, "errors": 0, "spans": 3, "metrics": 3, "logs": 2}}


def test_one_sink_counts_each_transport(tmp_path, post):
    writer = EvidenceWriter(tmp_path / "both")
    with OtlpReceiver(writer) as sink, OtlpGrpcReceiver(sink) as front:
        assert post(sink.endpoint, "/v1/traces", trace_request().SerializeToString(), PROTOBUF).status == 200
        _export_once(front)
        assert sink.counts() == {"spans": 4, "metrics": 0, "logs": 0, "requests": 2, "errors": 0}
        assert sink.transports("http", "grpc", "other") == {
            "http": {"requests": 1, "errors": 0, "spans": 2, "metrics": 0, "logs": 0},
            "grpc": {"requests": 1, "errors": 0, "spans": 2, "metrics": 0, "logs": 0},
            "other": {"requests": 0, "errors": 0, "spans": 0, "metrics": 0, "logs": 0},
        }
    writer.close()
    assert len(load_evidence_spans(tmp_path / "both")) == 4


def load_evidence_spans(run_dir: Path) -> list:
    EvidenceWriter(run_dir).meta(RunMeta(run_id="t", started_at="2025-01-01T00:00:00Z"))
    return load_evidence(run_dir).spans


def test_grpc_exports_keep_the_settle_phase_waiting(over_grpc):
    intake, front = over_grpc
    stop = threading.Event()

    def trickle() -> None:
        channel, export = _stub(front, TRACES)
        with channel:
            while not stop.is_set():
                export(trace_request().SerializeToString(), timeout=5)
                stop.wait(0.02)  # pacing of a chatty exporter, not synchronisation

    t = threading.Thread(target=trickle)
    t.start()
    try:
        assert intake.receiver.wait_quiet(quiet_s=0.5, timeout_s=0.8) is False
    finally:
        stop.set()
        t.join(5)
    assert intake.receiver.wait_quiet(quiet_s=0.2, timeout_s=5) is True
    assert intake.receiver.counts()["spans"] >= 2 * 10


def _export_once(front: OtlpGrpcReceiver) -> None:
    channel, export = _stub(front, TRACES)
    with channel:
        assert export(trace_request().SerializeToString(), timeout=5) == b""


class CountingRelay:
    """A loopback TCP relay to the receiver that counts what the client sent: the wire size."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sent = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return  # closed before any client came
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        self._socks += [client, upstream]
        for src, dst, counted in ((client, upstream, True), (upstream, client, False)):
            t = threading.Thread(target=self._pump, args=(src, dst, counted), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    self.sent += len(data)  # counted before it is forwarded: complete once answered
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # closed by close(), or the peer went away

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() if no client ever came
        except OSError:
            pass
        self._listener.close()
        for sock in self._socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv (close alone does not)
            except OSError:
                pass
            sock.close()
        for t in self._threads:
            t.join(5)


PAD = 16 * 1024  # one attribute of this many "x": 16 KiB raw, well under 1 KiB gzipped


@pytest.mark.parametrize(
    ("compression", "wire_max", "wire_min"),
    [pytest.param(grpc.Compression.Gzip, 2048, 0, id="gzip"),
     pytest.param(grpc.Compression.NoCompression, None, PAD, id="identity")],
)
def test_sdk_exports_arrive_whole_gzipped_or_not(over_grpc, compression, wire_max, wire_min):
    intake, front = over_grpc
    relay = CountingRelay(front.port)
    try:
        tracing = TracerProvider(resource=RESOURCE)
        exporter = GrpcSpanExporter(endpoint=f"http://127.0.0.1:{relay.port}", compression=compression)
        tracing.add_span_processor(SimpleSpanProcessor(exporter))
        with tracing.get_tracer("gz").start_as_current_span("zipped", attributes={"pad": "x" * PAD}) as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
        sent = relay.sent
        tracing.shutdown()
    finally:
        relay.close()
    assert [(s.name, s.trace_id, s.attributes["pad"]) for s in intake.receiver.spans] == [("zipped", trace_id, "x" * PAD)]
    # The wire size tells the exporter really compressed (and the receiver really inflated).
    print(f"{compression.name}: {sent} bytes on the wire")
    assert sent >= wire_min and (wire_max is None or sent <= wire_max), sent


def _oversize_request() -> bytes:
    """A valid trace export four times LIMIT (one attribute pads it), and very compressible."""
    req = trace_request()
    req.resource_spans[0].resource.attributes.add(key="pad").value.string_value = "x" * (4 * LIMIT)
    return req.SerializeToString()


@pytest.mark.parametrize(
    "compression",
    [
        pytest.param(grpc.Compression.NoCompression, id="plain"),
        # About a kilobyte on the wire, over the limit once inflated: a gzip bomb is bounded.
        pytest.param(grpc.Compression.Gzip, id="gzip-inflates-over"),
    ],
)
def test_an_oversize_message_is_resource_exhausted_and_the_server_keeps_serving(over_grpc, compression):
    intake, front = over_grpc
    channel, export = _stub(front, TRACES)
    with channel:
        with pytest.raises(grpc.RpcError) as err:
            export(_oversize_request(), timeout=5, compression=compression)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in err.value.details()
        assert export(trace_request().SerializeToString(), timeout=5) == b""
    assert intake.receiver.counts()["spans"] == 2


GARBAGE = [
    pytest.param(TRACES, b"not a protobuf", id="traces-text"),
    pytest.param(METRICS, b"\x0a\xff\xff\xff\xff\x0f", id="metrics-length-past-the-end"),
    pytest.param(LOGS, b"\x0a\x05\x0a\x03\x0a", id="logs-truncated-nested"),
    pytest.param(TRACES, b"\x0f" * 32, id="traces-wire-type-7"),
]


@pytest.mark.parametrize(("signal", "body"), GARBAGE)
def test_garbage_is_invalid_argument_counted_and_survived(over_grpc, signal, body):
    intake, front = over_grpc
    channel, export = _stub(front, signal)
    with channel:
        with pytest.raises(grpc.RpcError) as err:
            export(body, timeout=5)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert f"not a valid OTLP protobuf {signal} export" in err.value.details()
        assert export(EMPTY_REQUEST[signal], timeout=5) == b""  # still serving
    assert intake.receiver.counts() == {"spans": 0, "metrics": 0, "logs": 0, "requests": 2, "errors": 1}


def test_a_decoder_bug_is_internal_and_costs_one_export(over_grpc, monkeypatch):
    intake, front = over_grpc

    def broken(*args, **kwargs):
        raise KeyError("bug")

    channel, export = _stub(front, TRACES)
    with channel:
        monkeypatch.setattr("agent.otlp.dec.decode", broken)
        with pytest.raises(grpc.RpcError) as err:
            export(trace_request().SerializeToString(), timeout=5)
        assert (err.value.code(), "could not decode traces" in err.value.details()) == (grpc.StatusCode.INTERNAL, True)
        monkeypatch.undo()
        export(trace_request().SerializeToString(), timeout=5)
    assert intake.receiver.counts() == {"spans": 2, "metrics": 0, "logs": 0, "requests": 2, "errors": 1}


def test_an_unknown_service_is_unimplemented(over_grpc):
    _, front = over_grpc
    channel = grpc.insecure_channel(f"127.0.0.1:{front.port}")
    with channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export")(b"", timeout=5)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_concurrent_grpc_exporters_lose_nothing(over_grpc):
    intake, front = over_grpc
    body = trace_request().SerializeToString()  # 2 spans per export
    threads, per_thread = 6, 20
    failures: list[grpc.StatusCode] = []

    def exporter() -> None:
        channel, export = _stub(front, TRACES)  # one channel (one HTTP/2 connection) per exporter
        with channel:
            for _ in range(per_thread):
                try:
                    export(body, timeout=10)
                except grpc.RpcError as e:
                    failures.append(e.code())

    workers = [threading.Thread(target=exporter) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert failures == []
    assert intake.receiver.counts() == {"spans": 2 * threads * per_thread, "metrics": 0, "logs": 0,
                                        "requests": threads * per_thread, "errors": 0}
    assert len(intake.evidence().spans) == 2 * threads * per_thread


def test_a_busy_port_is_a_one_line_error_that_says_why():
    sink = OtlpReceiver(None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ObsconformError, match=rf"cannot listen on 127\.0\.0\.1:{port} \(Address already in use\): choose another"):
            OtlpGrpcReceiver(sink, port=port).start()
    # gRPC's default SO_REUSEPORT would let a second receiver share a live one's port.
    with OtlpGrpcReceiver(sink) as first:
        with pytest.raises(ObsconformError, match="Address already in use"):
            OtlpGrpcReceiver(sink, port=first.port).start()


def test_stop_closes_the_port_and_is_idempotent():
    front = OtlpGrpcReceiver(OtlpReceiver(None)).start()
    port = front.port
    front.stop()
    front.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again


@pytest.mark.parametrize("limit", [0, -1])
def test_a_bad_message_limit_is_a_value_error_naming_it(limit):
    with pytest.raises(ValueError, match=f"max_message_bytes must be positive, got {limit}"):
        OtlpGrpcReceiver(OtlpReceiver(None), max_message_bytes=limit)


def test_http_answers_are_unchanged_beside_grpc(over_http):
    # The refactor that made export() shared keeps the OTLP/HTTP error answer and its count.
    reply = http_request(over_http.receiver.endpoint, "POST", "/v1/traces", b"not a protobuf", {"Content-Type": PROTOBUF})
    assert reply.status == 400
    assert over_http.receiver.transports() == {"http": {"requests": 1, "errors": 1, "spans": 0, "metrics": 0, "logs": 0}}
