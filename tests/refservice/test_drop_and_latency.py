"""Step-1 fault switches (span loss, hidden latency) and multi-worker metrics."""

from __future__ import annotations

import os

import pytest

from examples.refservice.faults import ActiveFaults, DropPolicy

from .metrics_util import counter_value, delta, histogram_counts, histogram_sum
from .service import new_traceparent


@pytest.mark.parametrize(
    "value, n, dropped",
    [
        ("every:5", 20, [5, 10, 15, 20]),
        ("every:1", 3, [1, 2, 3]),
        ("0.1", 30, [10, 20, 30]),
        ("0.25", 8, [4, 8]),
        ("1", 3, [1, 2, 3]),
    ],
    ids=["every-5", "every-1", "tenth", "quarter", "all"],
)
def test_drop_policy_is_deterministic(value, n, dropped):
    policy = DropPolicy.parse(value)
    assert [i for i in range(1, n + 1) if policy.should_drop(i)] == dropped


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"FAULT_DROP_SPANS": "every:0"}, "FAULT_DROP_SPANS: expected"),
        ({"FAULT_DROP_SPANS": "1.5"}, "FAULT_DROP_SPANS: expected"),
        ({"FAULT_DROP_SPANS": "some"}, "FAULT_DROP_SPANS: expected"),
        ({"FAULT_HIDDEN_LATENCY_MS": "-3"}, "FAULT_HIDDEN_LATENCY_MS: expected"),
        ({"FAULT_HIDDEN_LATENCY_MS": "nan"}, "FAULT_HIDDEN_LATENCY_MS: expected"),
    ],
    ids=["every-0", "fraction-above-1", "word", "negative-ms", "nan-ms"],
)
def test_bad_fault_values_name_the_variable(env, fragment):
    with pytest.raises(ValueError, match=fragment):
        ActiveFaults.from_env(env)


def test_no_fault_variables_means_no_fault():
    assert ActiveFaults.from_env({}).describe() == {}


def test_drop_spans_every_5_drops_exactly_one_in_five(start_service, otlp):
    svc = start_service(FAULT_DROP_SPANS="every:5")
    started = [r for r in svc.logs.snapshot() if r.get("msg") == "starting"]
    assert started and started[0]["faults"]["drop_spans"] == {"every": 5, "fraction": 0.0}
    trace_ids = []
    for _ in range(20):
        header, trace_id, _ = new_traceparent()
        assert svc.request("GET", "/items/2", {"traceparent": header}).status == 200
        trace_ids.append(trace_id)
    svc.wait_metrics(lambda text: counter_value(text, "refservice_fault_dropped_spans_total") >= 4)
    dropped_counter = counter_value(svc.metrics_text(), "refservice_fault_dropped_spans_total")
    assert svc.stop() == 0  # flushes: whatever was going to be exported now is
    exported = {s.trace_id for s in otlp.spans.snapshot()} & set(trace_ids)
    missing = [t for t in trace_ids if t not in exported]
    assert missing == [trace_ids[i - 1] for i in (5, 10, 15, 20)]
    assert dropped_counter == 4
    logged = [r["trace_id"] for r in svc.logs.snapshot() if r.get("msg") == "fault: server span dropped"]
    assert logged == missing


def test_hidden_latency_is_seen_by_the_client_but_not_by_telemetry(start_service, otlp):
    svc = start_service(FAULT_HIDDEN_LATENCY_MS="15")
    before = svc.metrics_text()
    for _ in range(5):
        header, trace_id, _ = new_traceparent()
        reply = svc.request("GET", "/items/4", {"traceparent": header})
        assert reply.elapsed_s >= 0.015
        span_s = otlp.server_span(trace_id).duration_s
        assert span_s < 0.008, "the hidden sleep must stay outside the span"
        # The span ends once the response is written: the client may have it a little
        # before, so the two durations overlap by up to that much.
        assert reply.elapsed_s - span_s >= 0.015 - 0.001
    count = ("GET", "/items/<int:item_id>", "200")
    after = svc.wait_metrics(lambda t: histogram_counts(t).get(count, 0) >= 5)
    observed = histogram_sum(after, "GET", "/items/<int:item_id>", "200") - histogram_sum(
        before, "GET", "/items/<int:item_id>", "200"
    )
    assert observed < 5 * 0.008, "the hidden sleep must stay outside the histogram"


def test_workers_share_metrics_through_multiprocess_mode(start_service, otlp):
    svc = start_service(workers=2)
    started = [r for r in svc.logs.snapshot() if r.get("msg") == "starting"][0]
    prom_dir = started["prometheus_multiproc_dir"]
    assert prom_dir and os.path.isdir(prom_dir)
    before = histogram_counts(svc.metrics_text())
    trace_ids = []
    for _ in range(12):
        header, trace_id, _ = new_traceparent()
        svc.request("GET", "/items/8", {"traceparent": header}, keepalive=False)
        trace_ids.append(trace_id)
    key = ("GET", "/items/<int:item_id>", "200")
    after = histogram_counts(svc.wait_metrics(lambda t: histogram_counts(t).get(key, 0) - before.get(key, 0) >= 12))
    assert delta(before, after) == {key: 12}
    for trace_id in trace_ids:
        otlp.server_span(trace_id)
    assert svc.stop() == 0
    assert not os.path.exists(prom_dir), "the service removes the multiprocess dir it made"
