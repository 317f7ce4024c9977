"""The downstream sink: records what a SUT sends to its dependencies and answers as configured."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from agent.downstream import DownstreamSink
from agent.evidence import RunMeta, load_evidence

from .conftest import http_request


def _raw(url: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    if body:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body or None)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


@pytest.fixture
def sink(writer):
    with DownstreamSink(writer) as s:
        yield s


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "PURGE"])
def test_any_method_and_path_is_recorded_and_answered_ok(sink, method):
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    reply = http_request(sink.url, method, "/fan/out?q=1", b'{"a":1}', {"traceparent": tp, "X-Biz-Code": " gold "})
    assert (reply.status, json.loads(reply.body)) == (200, {"ok": True})
    (rec,) = sink.records
    assert (rec.method, rec.path, rec.body) == (method, "/fan/out?q=1", '{"a":1}')
    assert rec.headers["traceparent"] == [tp] and rec.headers["x-biz-code"] == ["gold"]  # RFC 9110: OWS is not part of the value
    assert rec.t_ns <= time.time_ns()


def test_repeated_headers_keep_every_value_in_wire_order(sink):
    _raw(sink.url, "GET", "/", [("Tracestate", "a=1"), ("X-Other", "x"), ("tracestate", "b=2"), ("TRACESTATE", "c=3")])
    assert sink.records[0].headers["tracestate"] == ["a=1", "b=2", "c=3"]


def test_body_kept_to_4_kib_and_records_reach_the_run_directory(sink, writer):
    big = ("é" * 3000).encode()  # 6000 bytes; the cut may split a character
    assert http_request(sink.url, "POST", "/big", big, {"Content-Type": "text/plain"}).status == 200
    rec = sink.records[0]
    assert rec.body.encode("utf-8", errors="surrogateescape")[:4000] == big[:4000]
    assert len(rec.body) <= 4096
    writer.meta(RunMeta(run_id="t", started_at="2025-01-01T00:00:00Z"))
    assert load_evidence(writer.run_dir).downstream == sink.records


def test_chunked_request_bodies_are_read(sink):
    conn = http.client.HTTPConnection(sink.url.removeprefix("http://"), timeout=10)
    conn.request("POST", "/c", body=iter([b"hel", b"lo"]), encode_chunked=True)
    assert conn.getresponse().status == 200
    conn.close()
    assert sink.records[0].body == "hello"


@pytest.mark.parametrize(
    ("body", "ctype", "want"),
    [
        (None, "application/json", b'{"ok": true}'),
        ({"code": "AUTH_001"}, "application/json", b'{"code": "AUTH_001"}'),
        ("down", "text/plain; charset=utf-8", b"down"),
        (b"\x00\x01", "application/octet-stream", b"\x00\x01"),
    ],
    ids=["default", "json", "text", "bytes"],
)
def test_per_path_status_and_body(sink, body, ctype, want):
    sink.respond("/flaky", status=503, body=body)
    reply = http_request(sink.url, "GET", "/flaky?retry=1")
    assert (reply.status, reply.headers["content-type"], reply.body) == (503, ctype, want)
    assert http_request(sink.url, "GET", "/other").status == 200


def test_delays_apply_per_path_and_requests_are_served_concurrently(sink):
    sink.respond("/slow", delay_s=0.3)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(http_request(sink.url, "GET", "/slow").status)) for _ in range(10)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - t0
    assert results == [200] * 10
    assert 0.3 <= elapsed < 1.5, "10 delayed requests must overlap, not queue"
    assert sink.wait_for(10, timeout_s=1)
    assert not sink.wait_for(11, timeout_s=0.05)


def test_stop_cuts_a_delayed_answer_short(writer):
    sink = DownstreamSink(writer).start()
    sink.respond("/hang", delay_s=30)
    ended: list[str] = []

    def call() -> None:
        try:
            _raw(sink.url, "GET", "/hang", [])
            ended.append("answered")
        except (http.client.HTTPException, OSError) as e:  # cut: closed without an answer
            ended.append(type(e).__name__)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    assert sink.wait_for(1, timeout_s=5)
    t0 = time.monotonic()
    sink.stop()
    t.join(5)
    assert time.monotonic() - t0 < 2 and not t.is_alive()
    assert ended  # answered early or cut, but ended without waiting out the delay


@pytest.mark.parametrize(("kwargs", "param"), [({"status": 42}, "status"), ({"delay_s": -1}, "delay_s")])
def test_bad_rules_name_the_parameter(sink, kwargs, param):
    with pytest.raises(ValueError, match=param):
        sink.respond("/x", **kwargs)
