"""The OTLP receiver on the wire: encodings, compression, error answers, concurrency, settling."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import http.client
import json
import threading
import time

import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from agent.errors import ObsconformError
from agent.otlp import OtlpReceiver
from agent.otlp_decode import exponential_to_explicit

from .conftest import http_request

# Ids with leading zero nibbles and bytes that are not printable: a base64/hex mix-up shows.
TRACE_ID = "00f067aa0ba902b7ff0000000000004f"
SPAN_ID = "0b00000000ffe1c0"
PARENT_ID = "00000000000000a1"
PROTOBUF, JSON = "application/x-protobuf", "application/json"


def _kv(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def trace_request() -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", string_value="wire")])
    ss = rs.scope_spans.add()
    ss.scope.name = "wire.scope"
    span = ss.spans.add(
        trace_id=bytes.fromhex(TRACE_ID), span_id=bytes.fromhex(SPAN_ID), parent_span_id=bytes.fromhex(PARENT_ID),
        name="GET /x", kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=1_700_000_000_000_000_001,
        end_time_unix_nano=1_700_000_000_002_000_000, trace_state="vendor=1",
    )  # fmt: skip
    span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    span.attributes.extend([
        _kv("http.response.status_code", int_value=-9_007_199_254_740_993),  # beyond float precision
        _kv("blob", bytes_value=b"\x00\xff"),
        _kv("list", array_value={"values": [AnyValue(string_value="a"), AnyValue(bool_value=True)]}),
        _kv("map", kvlist_value={"values": [_kv("k", double_value=1.5)]}),
    ])  # fmt: skip
    link = span.links.add(trace_id=bytes.fromhex(TRACE_ID), span_id=bytes.fromhex(PARENT_ID))
    assert link.span_id
    span.events.add(name="ev", time_unix_nano=1_700_000_000_001_000_000).attributes.extend([_kv("n", int_value=1)])
    ss.spans.add(trace_id=bytes.fromhex(TRACE_ID), span_id=bytes.fromhex(PARENT_ID), name="root")
    return req


def metrics_request() -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    sm = req.resource_metrics.add().scope_metrics.add()
    cumulative = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    m = sm.metrics.add(name="requests", unit="1")
    m.sum.is_monotonic, m.sum.aggregation_temporality = True, cumulative
    m.sum.data_points.add(as_int=7, time_unix_nano=5).attributes.extend([_kv("route", string_value="/x")])
    sm.metrics.add(name="temp").gauge.data_points.add(as_double=-1.25)
    h = sm.metrics.add(name="latency", unit="s").histogram
    h.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    dp = h.data_points.add(count=3, sum=0.6, explicit_bounds=[0.1, 1.0], bucket_counts=[1, 2, 0])
    dp.exemplars.add(as_double=0.4, trace_id=bytes.fromhex(TRACE_ID), span_id=bytes.fromhex(SPAN_ID))
    s = sm.metrics.add(name="rtt").summary.data_points.add(count=2, sum=3.0)
    s.quantile_values.add(quantile=0.5, value=1.0)
    e = sm.metrics.add(name="sizes").exponential_histogram.data_points.add(count=3, sum=12.0, scale=0, zero_count=1)
    e.positive.offset, e.positive.bucket_counts[:] = 1, [1, 1]
    return req


def logs_request() -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    sl.log_records.add(
        time_unix_nano=9, severity_number=17, severity_text="ERROR", body=AnyValue(string_value="boom"),
        trace_id=bytes.fromhex(TRACE_ID), span_id=bytes.fromhex(SPAN_ID),
    )  # fmt: skip
    sl.log_records.add(observed_time_unix_nano=11, body=AnyValue(bytes_value=b"\x01"))
    return req


REQUESTS = {"traces": trace_request, "metrics": metrics_request, "logs": logs_request}
STORES = {"traces": "spans", "metrics": "metrics", "logs": "logs"}
_ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def otlp_json(msg) -> bytes:
    """OTLP/JSON as an exporter writes it: proto3 JSON, except ids are hex (not base64)."""

    def fix(node):
        if isinstance(node, dict):
            return {k: (base64.b64decode(v).hex() if k in _ID_KEYS else fix(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(x) for x in node]
        return node

    return json.dumps(fix(json_format.MessageToDict(msg))).encode()


def _records(receiver: OtlpReceiver, signal: str) -> list[dict]:
    return [{k: v for k, v in dataclasses.asdict(r).items() if k != "received_ns"} for r in getattr(receiver, STORES[signal])]


def _post_chunked(url: str, path: str, body: bytes, ctype: str) -> int:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    try:
        pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
        conn.request("POST", path, body=iter(pieces), headers={"Content-Type": ctype}, encode_chunked=True)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.mark.parametrize("transport", ["plain", "gzip", "chunked"])
@pytest.mark.parametrize("signal", ["traces", "metrics", "logs"])
def test_otlp_json_decodes_the_same_as_protobuf(signal, transport, post):
    msg = REQUESTS[signal]()
    results = []
    for ctype, body in ((PROTOBUF, msg.SerializeToString()), (JSON, otlp_json(msg))):
        with OtlpReceiver(None) as receiver:
            path = f"/v1/{signal}"
            if transport == "chunked":
                status = _post_chunked(receiver.endpoint, path, body, ctype)
            elif transport == "gzip":
                status = post(receiver.endpoint, path, gzip.compress(body), ctype, Content_Encoding="gzip").status
            else:
                status = post(receiver.endpoint, path, body, ctype).status
            assert status == 200, ctype
            assert receiver.counts()["errors"] == 0
            results.append(_records(receiver, signal))
    from_protobuf, from_json = results
    assert from_protobuf and from_json == from_protobuf


def test_decoded_values_are_plain_python(post):
    with OtlpReceiver(None) as receiver:
        post(receiver.endpoint, "/v1/traces", otlp_json(trace_request()), JSON)
        post(receiver.endpoint, "/v1/metrics", otlp_json(metrics_request()), JSON)
        post(receiver.endpoint, "/v1/logs", otlp_json(logs_request()), JSON)
        span, root = receiver.spans
        metrics = {m.name: m for m in receiver.metrics}
        log, bytes_log = receiver.logs
    assert (span.trace_id, span.span_id, span.parent_span_id, root.parent_span_id) == (TRACE_ID, SPAN_ID, PARENT_ID, "")
    assert (span.kind, span.status_code, root.kind, root.status_code) == ("SERVER", "ERROR", "UNSPECIFIED", "UNSET")
    assert span.attributes == {
        "http.response.status_code": -9_007_199_254_740_993, "blob": "AP8=", "list": ["a", True], "map": {"k": 1.5},
    }  # fmt: skip
    assert (span.start_ns, span.trace_state, span.scope, span.resource) == (
        1_700_000_000_000_000_001, "vendor=1", "wire.scope", {"service.name": "wire"},
    )  # fmt: skip
    assert span.events == [{"name": "ev", "time_ns": 1_700_000_000_001_000_000, "attributes": {"n": 1}}]
    assert (metrics["requests"].value, metrics["requests"].temporality, metrics["requests"].monotonic) == (7.0, "CUMULATIVE", True)
    assert (metrics["temp"].kind, metrics["temp"].value) == ("gauge", -1.25)
    lat = metrics["latency"]
    assert (lat.temporality, lat.count, lat.sum, lat.bucket_bounds, lat.bucket_counts) == ("DELTA", 3, 0.6, [0.1, 1.0], [1, 2, 0])
    assert lat.exemplars == [{"value": 0.4, "time_ns": 0, "trace_id": TRACE_ID, "span_id": SPAN_ID, "attributes": {}}]
    assert (metrics["rtt"].kind, metrics["rtt"].count, metrics["rtt"].sum) == ("summary", 2, 3.0)
    assert (metrics["sizes"].bucket_bounds, metrics["sizes"].bucket_counts) == ([0.0, 4.0, 8.0], [1, 1, 1, 0])
    assert (log.trace_id, log.span_id, log.severity_number, log.body, log.time_ns) == (TRACE_ID, SPAN_ID, 17, "boom", 9)
    assert (bytes_log.trace_id, bytes_log.time_ns, bytes_log.body) == ("", 11, "AQ==")


def test_spec_example_with_upper_case_hex_and_numeric_enums(post):
    # Shape of opentelemetry-proto's examples/trace.json: upper-case hex ids, int kind, int64 as text.
    body = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
            "scopeSpans": [{"scope": {"name": "my.library", "version": "1.0.0"}, "spans": [{
                "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174",
                "parentSpanId": "EEE19B7EC3C1B173", "name": "I'm a server span", "kind": 2,
                "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": 1544712661000000000,
                "attributes": [{"key": "my.span.attr", "value": {"intValue": "42"}}],
                "status": {"code": "STATUS_CODE_OK"}, "futureField": {"ignored": True}}]}]}]}  # fmt: skip
    with OtlpReceiver(None) as receiver:
        assert post(receiver.endpoint, "/v1/traces", json.dumps(body).encode(), "application/json; charset=utf-8").status == 200
        (span,) = receiver.spans
    assert (span.trace_id, span.span_id, span.parent_span_id) == (
        "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173",
    )  # fmt: skip
    assert (span.kind, span.status_code, span.attributes, span.end_ns) == ("SERVER", "OK", {"my.span.attr": 42}, 1544712661000000000)


@pytest.mark.parametrize(
    ("ctype", "want_body"),
    [pytest.param(PROTOBUF, b"", id="protobuf"), pytest.param(JSON, b"{}", id="json")],
)
def test_success_answer_is_the_empty_export_response_in_the_request_encoding(receiver, post, ctype, want_body):
    body = trace_request().SerializeToString() if ctype == PROTOBUF else otlp_json(trace_request())
    reply = post(receiver.endpoint, "/v1/traces", body, ctype)
    assert (reply.status, reply.headers["content-type"], reply.body) == (200, ctype, want_body)


BOMB = gzip.compress(b"\0" * (2 * 1024 * 1024))
ERROR_CASES = [
    # id, method, path, body, headers, status, fragment of the google.rpc.Status message
    ("garbage-protobuf", "POST", "/v1/traces", b"\xff\xff\xff\xffnot protobuf", {"Content-Type": PROTOBUF}, 400, "not a valid OTLP protobuf traces"),
    ("wrong-wire-type", "POST", "/v1/metrics", b"\x0f", {"Content-Type": PROTOBUF}, 400, "not a valid OTLP protobuf metrics"),
    ("garbage-json", "POST", "/v1/logs", b"{not json", {"Content-Type": JSON}, 400, "not a valid OTLP/JSON logs"),
    ("json-not-object", "POST", "/v1/traces", b"[1, 2]", {"Content-Type": JSON}, 400, "not a JSON object"),
    ("json-wrong-field-type", "POST", "/v1/traces", b'{"resourceSpans": 5}', {"Content-Type": JSON}, 400, "not a valid OTLP/JSON"),
    ("bad-gzip", "POST", "/v1/traces", b"\x1f\x8bnot gzip", {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, 400, "bad gzip body"),
    ("truncated-gzip", "POST", "/v1/traces", BOMB[:40], {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, 400, "truncated"),
    ("gzip-bomb", "POST", "/v1/traces", BOMB, {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, 413, "inflated body exceeds"),
    ("too-large", "POST", "/v1/traces", b"\0" * (1024 * 1024 + 1), {"Content-Type": PROTOBUF}, 413, "exceeds the 1048576-byte limit"),
    ("brotli", "POST", "/v1/traces", b"x", {"Content-Type": PROTOBUF, "Content-Encoding": "br"}, 415, "Content-Encoding 'br'"),
    ("text-plain", "POST", "/v1/traces", b"hello", {"Content-Type": "text/plain"}, 415, "Content-Type 'text/plain'"),
    ("no-content-type", "POST", "/v1/traces", b"hello", {}, 415, "Content-Type ''"),
    ("unknown-path", "POST", "/v1/profiles", b"", {"Content-Type": PROTOBUF}, 404, "no OTLP route '/v1/profiles'"),
    ("get-route", "GET", "/v1/traces", None, {}, 405, "GET /v1/traces"),
    ("delete-elsewhere", "DELETE", "/", None, {}, 404, "DELETE /"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "fragment"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_bad_requests_are_answered_counted_and_survived(method, path, body, headers, status, fragment, post):
    with OtlpReceiver(None, max_body_bytes=1024 * 1024) as receiver:
        reply = http_request(receiver.endpoint, method, path, body, headers)
        assert reply.status == status
        assert receiver.counts() == {"spans": 0, "metrics": 0, "logs": 0, "requests": 1, "errors": 1}
        if reply.headers["content-type"] == JSON:
            err = json.loads(reply.body)
        else:
            err = json_format.MessageToDict(status_pb2.Status.FromString(reply.body))
        assert fragment in err["message"]
        assert reply.headers.get("connection") == "close"
        # Still serving.
        assert post(receiver.endpoint, "/v1/traces", trace_request().SerializeToString(), PROTOBUF).status == 200
        assert receiver.counts()["spans"] == 2


def test_concurrent_exporters_lose_nothing(receiver, post):
    body = trace_request().SerializeToString()  # 2 spans per request
    threads, per_thread = 8, 25
    failures: list[int] = []

    def exporter() -> None:
        conn = http.client.HTTPConnection(receiver.endpoint.removeprefix("http://"), timeout=10)
        for _ in range(per_thread):  # keep-alive connection, like a real exporter
            conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": PROTOBUF})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                failures.append(resp.status)
        conn.close()

    workers = [threading.Thread(target=exporter) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    elapsed = time.perf_counter() - t0
    assert failures == []
    assert receiver.counts() == {"spans": 2 * threads * per_thread, "metrics": 0, "logs": 0, "requests": threads * per_thread, "errors": 0}
    print(f"{threads * per_thread} exports in {elapsed * 1000:.0f} ms")


def test_wait_quiet_waits_for_exports_to_stop(receiver, post):
    body = trace_request().SerializeToString()
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            post(receiver.endpoint, "/v1/traces", body, PROTOBUF)
            stop.wait(0.02)  # pacing of a chatty exporter, not synchronisation

    t = threading.Thread(target=trickle)
    t.start()
    try:
        t0 = time.monotonic()
        assert receiver.wait_quiet(quiet_s=0.5, timeout_s=0.8) is False
        assert 0.8 <= time.monotonic() - t0 < 3.0
    finally:
        stop.set()
        t.join(5)
    t0 = time.monotonic()
    assert receiver.wait_quiet(quiet_s=0.2, timeout_s=5) is True
    assert 0.2 <= time.monotonic() - t0 < 1.0


@pytest.mark.parametrize(
    ("scale", "neg", "zero", "pos", "bounds", "counts"),
    [
        pytest.param(0, (0, []), 0, (0, [2]), [0.0, 2.0], [0, 2, 0], id="one-positive-bucket"),
        pytest.param(0, (0, [3]), 4, (1, [1, 2]), [-1.0, 0.0, 4.0, 8.0], [3, 4, 1, 2, 0], id="negative-zero-positive"),
        pytest.param(1, (0, []), 0, (-2, [5]), [0.0, 2**-0.5], [0, 5, 0], id="scale-1-below-one"),
        pytest.param(-1, (0, []), 0, (1, [1]), [0.0, 16.0], [0, 1, 0], id="scale-minus-1"),
        pytest.param(0, (0, []), 0, (0, []), [], [0], id="empty"),
    ],
)
def test_exponential_buckets_become_explicit_le_bounds(scale, neg, zero, pos, bounds, counts):
    dp = metrics_pb2.ExponentialHistogramDataPoint(scale=scale, zero_count=zero)
    dp.negative.offset, dp.negative.bucket_counts[:] = neg
    dp.positive.offset, dp.positive.bucket_counts[:] = pos
    got_bounds, got_counts = exponential_to_explicit(dp)
    assert got_bounds == pytest.approx(bounds) and got_counts == counts


def test_a_decoder_bug_costs_one_export_not_the_receiver(receiver, post, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr("agent.otlp.dec.decode", broken)
    assert post(receiver.endpoint, "/v1/traces", trace_request().SerializeToString(), PROTOBUF).status == 500
    monkeypatch.undo()
    assert post(receiver.endpoint, "/v1/traces", trace_request().SerializeToString(), PROTOBUF).status == 200
    assert receiver.counts() == {"spans": 2, "metrics": 0, "logs": 0, "requests": 2, "errors": 1}


def test_a_busy_port_is_a_one_line_error_that_says_what_to_do():
    with OtlpReceiver(None) as first:
        with pytest.raises(ObsconformError, match=rf"cannot listen on 127\.0\.0\.1:{first.port} .*choose another"):
            OtlpReceiver(None, port=first.port).start()

