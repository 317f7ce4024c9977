"""SC-003 on OTel SDK spans in the shapes the Python HTTP instrumentations (contrib 0.66b1,
OTEL_SEMCONV_STABILITY_OPT_IN=http / http/dup / unset) give them, exported through the OTLP
encoder and the agent's decoder."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agent.evidence import DriverRecord
from agent.otlp_decode import spans_from_request
from agent.tracecontext import new_traceparent
from conformance import evaluate
from conformance.httpsem import server_span_status_problem
from conformance.model import Status as Result
from tests.conformance.builders import MS, result

PATH = "/items/7?verbose=1"
COMMON = {"url.scheme": "http", "server.address": "127.0.0.1", "server.port": 8080,
          "network.protocol.version": "1.1", "user_agent.original": "obsconform-driver/0.1",
          "client.address": "127.0.0.1", "url.path": "/items/7", "url.query": "verbose=1"}
OLD = {"http.method": "GET", "http.scheme": "http", "http.target": PATH, "http.flavor": "1.1",
       "net.host.name": "127.0.0.1", "net.host.port": 8080}


def stable(route, status=200, **extra):
    return {"http.request.method": "GET", **COMMON, "http.route": route,
            "http.response.status_code": status, **extra}


def old(route, status=200):
    return {**OLD, "http.route": route, "http.status_code": status}


def sc003(run, name, attrs, *, status=200, kind=SpanKind.SERVER, span_status=None):
    """One driver request and the span an instrumentation would export for it."""
    b = run()
    tp = new_traceparent()
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    ctx = TraceContextTextMapPropagator().extract({"traceparent": str(tp)})
    span = provider.get_tracer("opentelemetry.instrumentation").start_span(
        name, context=ctx, kind=kind, attributes=attrs, start_time=b.t + MS)
    if span_status is not None:
        span.set_status(Status(span_status))
    span.end(end_time=b.t + 2 * MS)
    b.driver.append(DriverRecord(seq=0, phase="load", method="GET", path=PATH,
                                 request_headers={"traceparent": str(tp)}, trace_id=tp.trace_id,
                                 parent_id=tp.parent_id, t_send_ns=b.t, t_recv_ns=b.t + 3 * MS,
                                 status=status, case="load"))
    b.spans = spans_from_request(encode_spans(memory.get_finished_spans()))
    return result(evaluate(b.build(), select=["SC-003"]), "SC-003")


PASSING = [
    pytest.param("GET /items/<int:item_id>", stable("/items/<int:item_id>"), 200, None,
                 id="flask-wsgi-stable"),
    pytest.param("GET /items/{item_id}", stable("/items/{item_id}"), 200, None,
                 id="fastapi-asgi-stable"),
    # aiohttp-server: span named by the resource's canonical path, http.route = handler name
    pytest.param("GET /items/{id}", stable("get_item"), 200, None, id="aiohttp-server-stable"),
    pytest.param("GET /items/{item_id}", {**stable("/items/{item_id}"), **old("/items/{item_id}")},
                 200, None, id="dual-emission-http-dup"),
    pytest.param("GET", {k: v for k, v in stable(None, 404).items() if v is not None}, 404, None,
                 id="unrouted-404-named-by-method"),
    pytest.param("GET /items/{item_id}", stable("/items/{item_id}", 503, **{"error.type": "503"}),
                 503, StatusCode.ERROR, id="5xx-error-with-error-type"),
    pytest.param("GET /items/{item_id}", stable("/items/{item_id}"), 200, StatusCode.OK,
                 id="2xx-marked-ok"),
]


@pytest.mark.parametrize("name, attrs, status, span_status", PASSING)
def test_sc003_passes_what_the_instrumentations_emit(run, name, attrs, status, span_status):
    r = sc003(run, name, attrs, status=status, span_status=span_status)
    assert r.status == Result.PASS, r.evidence.get("failures")


def test_sc003_notes_dual_emission(run):
    attrs = {**stable("/items/{item_id}"), **old("/items/{item_id}")}
    r = sc003(run, "GET /items/{item_id}", attrs)
    assert r.observed["dual_emission_spans"] == 1 and "http/dup" in r.evidence["notes"][0]


FAILING = [
    pytest.param("GET /items/<int:item_id>", old("/items/<int:item_id>"), {},
                 "set OTEL_SEMCONV_STABILITY_OPT_IN=http", id="old-semconv-default-mode"),
    pytest.param("GET /items/7", stable("/items/{item_id}"), {}, "name 'GET /items/7' is not",
                 id="raw-path-in-name"),
    pytest.param("flask.request", stable("/items/{item_id}"), {}, "name 'flask.request'",
                 id="name-not-method-route"),
    pytest.param("GET /items/{item_id}", stable("/items/{item_id}"), {"kind": SpanKind.INTERNAL},
                 "kind INTERNAL, not SERVER", id="kind-internal"),
    pytest.param("GET /items/{item_id}", stable("/items/{item_id}", 503, **{"error.type": "503"}),
                 {"status": 503}, "status UNSET on a 503: must be ERROR", id="5xx-not-error"),
    pytest.param("GET /items/{item_id}", stable("/items/{item_id}", 503), {"status": 503,
                 "span_status": StatusCode.ERROR}, "error.type is missing on a 503", id="5xx-no-error-type"),
    pytest.param("GET /items/{item_id}", stable("/items/{item_id}", 404),
                 {"status": 404, "span_status": StatusCode.ERROR}, "status ERROR on a 404",
                 id="4xx-marked-error"),
    pytest.param("GET /items/{item_id}", stable("/items/{item_id}", 404),
                 {"status": 404, "span_status": StatusCode.OK}, "span status OK on a 404: must be left unset",
                 id="4xx-marked-ok"),
    pytest.param("GET /items/{item_id}", stable("/items/{item_id}", 500, **{"error.type": "500"}),
                 {"status": 500, "span_status": StatusCode.OK}, "span status OK on a 500: must be ERROR",
                 id="5xx-marked-ok"),
    pytest.param("GET /items/{item_id}", stable("/items/{item_id}", "200"), {},
                 "http.response.status_code is '200' (str), not an int", id="status-code-string"),
    pytest.param("GET /items/{item_id}", {k: v for k, v in stable("/items/{item_id}").items()
                                          if k != "url.scheme"}, {},
                 "required attribute url.scheme is missing", id="no-url-scheme"),
    pytest.param("GET /items/{item_id}", {k: v for k, v in stable("/items/{item_id}").items()
                                          if k != "url.query"}, {},
                 "url.query is missing", id="no-url-query"),
    pytest.param("GET /items/{item_id}", stable("/items/{item_id}", 201), {},
                 "http.response.status_code is 201, the wire says 200", id="status-disagrees"),
]


@pytest.mark.parametrize("name, attrs, kw, fragment", FAILING)
def test_sc003_fails_with_what_is_wrong(run, name, attrs, kw, fragment):
    r = sc003(run, name, attrs, **kw)
    assert r.status == Result.FAIL
    assert fragment in r.message, r.message
    f = r.evidence["failures"][0]
    assert f["case"] == "load" and f["traceparent_sent"].startswith("00-")


@pytest.mark.parametrize("kw, status, fragment", [
    pytest.param({}, Result.PASS, "follow the stable HTTP semconv", id="SC-003-pass-sim"),
    pytest.param({"old_semconv": True}, Result.FAIL, "OTEL_SEMCONV_STABILITY_OPT_IN=http",
                 id="SC-003-fail-sim-old-names"),
    pytest.param({"error_on_4xx": True}, Result.FAIL, "status ERROR on a 401", id="SC-003-fail-sim-4xx"),
])
def test_sc003_on_the_simulated_service(sim, kw, status, fragment):
    r = result(evaluate(sim(**kw), select=["SC-003"]), "SC-003")
    assert r.status == status and fragment in r.message, r.message


@pytest.mark.parametrize("http_status, span_status, problem", [
    (500, "ERROR", None), (500, "UNSET", "must be ERROR"), (500, "OK", "must be ERROR"),
    (404, "UNSET", None), (404, "ERROR", "must be left unset"), (404, "OK", "must be left unset"),
    (200, "UNSET", None), (200, "OK", None), (200, "ERROR", "must be left unset"),
    (None, "ERROR", None),
], ids=lambda v: str(v))
def test_the_server_span_status_rule(http_status, span_status, problem):
    got = server_span_status_problem(http_status, span_status)
    assert (got is None) if problem is None else (problem in got), got


@pytest.mark.parametrize("fault, span_status", [("error_on_4xx", "ERROR"), ("ok_on_4xx", "OK")])
def test_ec004_and_sc003_judge_a_4xx_span_status_by_the_same_rule(sim, fault, span_status):
    results = evaluate(sim(**{fault: True}), select=["EC-004", "SC-003"])
    for cid in ("EC-004", "SC-003"):
        r = result(results, cid)
        assert r.status == Result.FAIL, (cid, r.message)
        assert f"span status {span_status} on a 401: must be left unset" in r.message, r.message
