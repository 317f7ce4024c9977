"""errortrace layers on the fault-free service: errcodes, fan-out propagation, bizCode, scenario."""

from __future__ import annotations

import json

import pytest

from examples.refservice import demo_paths, load_scenario
from examples.refservice.errcodes import load_catalogue

from .service import new_traceparent
from .stubs import SPAN_KIND_CLIENT, STATUS_ERROR, STATUS_UNSET

CATALOGUE = load_catalogue()


@pytest.mark.parametrize(
    "name, code, status, grpc, retryable",
    [
        ("AUTH_TOKEN_EXPIRED", "AUTH_001", 401, "UNAUTHENTICATED", False),
        ("PAYMENT_INSUFFICIENT_FUNDS", "PAYMENT_105", 402, "FAILED_PRECONDITION", False),
        ("INVENTORY_BACKEND_UNAVAILABLE", "INVENTORY_01A", 503, "UNAVAILABLE", True),
        ("INTERNAL_ERROR", "SYSTEM_001", 500, "INTERNAL", False),
    ],
    ids=["auth", "payment", "retryable-503", "internal-500"],
)
def test_catalogue_has_the_profile_examples(name, code, status, grpc, retryable):
    err = CATALOGUE[name]
    assert (err.code, err.http_status, err.grpc_code, err.retryable) == (code, status, grpc, retryable)


@pytest.mark.parametrize("err", CATALOGUE.values(), ids=lambda e: e.code)
def test_errcode_trigger_answers_per_catalogue(service, otlp, err):
    header, trace_id, _ = new_traceparent()
    t = err.trigger
    body = json.dumps(t["body"]).encode() if t.get("body") is not None else None
    reply = service.request(t["method"], t["path"], {**t["headers"], "traceparent": header}, body)
    assert reply.status == err.http_status
    assert reply.headers["x-error-code"] == err.code
    assert reply.headers["x-error-trace-id"] == trace_id
    doc = reply.json()
    assert (doc["code"], doc["trace_id"]) == (err.code, trace_id) and doc["message"]
    span = otlp.server_span(trace_id)
    assert span.attributes["error.type"] == err.code
    assert span.attributes["retryable"] is err.retryable
    assert span.status_code == (STATUS_ERROR if err.http_status >= 500 else STATUS_UNSET)
    line = service.logs.wait_for(lambda ls: [r for r in ls if r.get("trace_id") == trace_id and r.get("msg") == "request"])
    assert line[0]["error_code"] == err.code


def test_fanout_continues_the_trace_through_a_client_span(service, otlp, downstream):
    header, trace_id, parent_id = new_traceparent()
    reply = service.request(
        "POST", "/orders",
        {"traceparent": header, "tracestate": "vendor=abc", "X-Biz-Code": " vip-7 ", "Content-Type": "application/json"},
        json.dumps({"item_id": 4, "quantity": 9001}).encode(),
    )
    assert reply.status == 201 and reply.json()["reservation"] == {"reserved": True}
    call = downstream.calls.wait_for(lambda cs: [c for c in cs if json.loads(c.body)["quantity"] == 9001])[0]
    assert (call.method, call.path) == ("POST", "/inventory/reserve")
    version, out_trace, out_parent, flags = call.headers["traceparent"].split("-")
    assert (version, out_trace, flags) == ("00", trace_id, "01")
    assert call.headers["tracestate"] == "vendor=abc"
    assert call.headers["x-biz-code"] == "vip-7"
    server = otlp.server_span(trace_id)
    client = otlp.spans.wait_for(lambda ss: [s for s in ss if s.span_id == out_parent])[0]
    assert client.kind == SPAN_KIND_CLIENT and client.parent_span_id == server.span_id
    assert server.parent_span_id == parent_id
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["url.full"] == f"{downstream.url}/inventory/reserve"
    assert client.attributes["biz.code"] == server.attributes["biz.code"] == "vip-7"


def test_fanout_without_biz_code_sends_default(service, downstream):
    before = len(downstream.calls.snapshot())
    assert service.request("GET", "/fanout").status == 200
    calls = downstream.calls.wait_for(lambda cs: cs[before:])
    assert calls[0].headers["x-biz-code"] == "default"


def test_unreachable_downstream_answers_the_retryable_errcode(start_service, otlp):
    svc = start_service(OBSCONFORM_DOWNSTREAM_URL="http://127.0.0.1:9")  # discard port: refused
    header, trace_id, _ = new_traceparent()
    reply = svc.request("GET", "/fanout", {"traceparent": header})
    assert (reply.status, reply.headers["x-error-code"]) == (503, "INVENTORY_01A")
    server = otlp.server_span(trace_id)
    client = otlp.spans.wait_for(lambda ss: [s for s in ss if s.parent_span_id == server.span_id])[0]
    assert client.status_code == STATUS_ERROR
    assert client.attributes["error.type"] == "ConnectionRefusedError"


def test_scenario_routes_are_the_routes_spans_report(service, otlp, downstream):
    scenario = load_scenario()
    assert load_catalogue(scenario["catalogue"]) == CATALOGUE
    for entry in scenario["load"]:
        header, trace_id, _ = new_traceparent()
        body = json.dumps(entry["body"]).encode() if "body" in entry else None
        reply = service.request(entry["method"], entry["path"], {**entry.get("headers", {}), "traceparent": header}, body)
        assert reply.status < 400, (entry, reply)
        span = otlp.server_span(trace_id)
        assert span.attributes["http.route"] == scenario["routes"][entry["path"]]
        fans_out = span.attributes["http.route"] in scenario["fanout"]["routes"]
        calls = [c for c in downstream.calls.snapshot() if trace_id in c.headers.get("traceparent", "")]
        assert bool(calls) == fans_out, entry
    assert demo_paths() == [e["path"] for e in scenario["load"] if e["method"] == "GET"]
