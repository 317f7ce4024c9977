"""The reference service's W3C trace-context test-harness endpoint (POST /test): the contract
itself against stubs, and obsconform driving it through the real CLI (harness mode), honest and
with FAULT_BREAK_PROPAGATION."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.refservice import SCENARIO_PATH

from .service import REPO_ROOT, free_port, new_traceparent
from .stubs import SPAN_KIND_CLIENT, SPAN_KIND_SERVER

TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
HARNESS_CASES = 19  # the tc phase's @harness cases (tests/phases/test_harness_plan.py lists them)
HARNESS_CALLBACKS = HARNESS_CASES - 1 + 3  # tc/multiple-callbacks asks for three


def post_test(service, actions, headers=None):
    body = json.dumps(actions).encode()
    return service.request("POST", "/test", {"Content-Type": "application/json", **(headers or {})},
                           body, keepalive=False)


def calls_to(downstream, prefix: str, n: int):
    """The stub's calls whose path starts with ``prefix``, once there are ``n`` of them."""
    def enough(calls):
        hits = [c for c in calls if c.path.startswith(prefix)]
        return hits if len(hits) >= n else None

    return downstream.calls.wait_for(enough)


def test_each_action_is_called_back_in_order_with_the_trace(service, otlp, downstream):
    header, trace_id, parent_id = new_traceparent()
    actions = [{"url": f"{downstream.url}/w3c/order?call={i}", "arguments": [{"n": i}]} for i in range(2)]
    reply = post_test(service, actions, {"traceparent": header, "tracestate": TRACESTATE})
    assert reply.status == 200, reply.body
    assert [r["status"] for r in reply.json()["results"]] == [200, 200]

    calls = calls_to(downstream, "/w3c/order", 2)
    assert [c.path for c in calls] == ["/w3c/order?call=0", "/w3c/order?call=1"]
    assert [json.loads(c.body) for c in calls] == [[{"n": 0}], [{"n": 1}]]
    tps = [c.headers["traceparent"].split("-") for c in calls]
    assert all(tp[1] == trace_id and tp[2] != parent_id for tp in tps)
    assert all(c.headers["tracestate"] == TRACESTATE for c in calls)
    # Each callback's parent-id is its own CLIENT span, a child of the request's server span.
    server = otlp.server_span(trace_id)
    assert server.parent_span_id == parent_id and server.name == "POST /test"
    clients = otlp.spans.wait_for(lambda spans: len(found := [
        s for s in spans if s.trace_id == trace_id and s.kind == SPAN_KIND_CLIENT]) == 2 and found)
    assert {s.span_id for s in clients} == {tp[2] for tp in tps}
    assert all(s.parent_span_id == server.span_id for s in clients)


def test_without_traceparent_the_callback_starts_a_trace_of_the_service(service, otlp, downstream):
    reply = post_test(service, [{"url": f"{downstream.url}/w3c/missing", "arguments": []}])
    assert reply.status == 200
    (call,) = calls_to(downstream, "/w3c/missing", 1)
    _, trace_id, span_id, _ = call.headers["traceparent"].split("-")
    server = otlp.spans.wait_for(lambda spans: [s for s in spans if s.trace_id == trace_id
                                                and s.kind == SPAN_KIND_SERVER])[0]
    assert server.parent_span_id == "" and trace_id != "0" * 32
    assert call.body == b"[]"


@pytest.mark.parametrize(("body", "fragment"), [
    ({"url": "http://127.0.0.1:9/x"}, "the body must be a JSON list"),
    ([{"arguments": []}], "[0].url must be an http:// URL"),
    ([{"url": "https://127.0.0.1:9/x"}], "[0].url must be an http:// URL"),
    ([{"url": "http://192.0.2.1/x"}], "[0].url: this service only calls loopback addresses back"),
    ([{"url": "http://127.0.0.1:9/x"}] * 17, "at most 16 actions"),
], ids=["not-a-list", "no-url", "https", "not-loopback", "too-many"])
def test_a_bad_action_list_is_request_invalid_and_calls_nobody(service, downstream, body, fragment):
    before = len(downstream.calls.snapshot())
    reply = post_test(service, body)
    assert reply.status == 400 and reply.headers["x-error-code"] == "REQUEST_001"
    assert fragment in reply.json()["message"]
    assert len(downstream.calls.snapshot()) == before


def test_a_failing_callback_is_reported_not_raised(service):
    port = free_port()  # nothing listens there
    reply = post_test(service, [{"url": f"http://127.0.0.1:{port}/w3c/x", "arguments": []}])
    assert reply.status == 200
    (result,) = reply.json()["results"]
    assert result["url"].endswith("/w3c/x") and "ConnectionRefusedError" in result["error"]


def test_break_propagation_strips_the_callbacks_trace_context(start_service, downstream):
    svc = start_service(FAULT_BREAK_PROPAGATION="1")
    header, _, _ = new_traceparent()
    assert post_test(svc, [{"url": f"{downstream.url}/w3c/broken", "arguments": []}],
                     {"traceparent": header, "tracestate": TRACESTATE}).status == 200
    (call,) = calls_to(downstream, "/w3c/broken", 1)
    assert "traceparent" not in call.headers and "tracestate" not in call.headers


# ------------------------------------------------------------ obsconform in harness mode
def cli_run(out: Path, env: dict[str, str] | None = None) -> tuple[int, dict]:
    """`obsconform run --no-ebpf --scenario refservice` (w3c_harness: /test) through the CLI."""
    port = free_port()
    p = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--no-ebpf", "--exec",
         f"{sys.executable} -m examples.refservice --port {port}", "--url", f"http://127.0.0.1:{port}",
         "--scenario", str(SCENARIO_PATH), "-n", "30", "-c", "4", "--out", str(out)],
        cwd=REPO_ROOT, env={**{k: v for k, v in os.environ.items() if not k.startswith("FAULT_")},
                            **(env or {})},
        capture_output=True, text=True, timeout=120)
    report = json.loads((out / "CNCF-compliance-report.json").read_text())
    return p.returncode, {c["id"]: c for c in report["checks"]}


def test_harness_mode_honest_reference_passes_tc(tmp_path):
    code, checks = cli_run(tmp_path / "out")
    assert code == 3  # --no-ebpf: KT inconclusive, everything else passes
    for cid in ("TC-001", "TC-002", "TC-003", "TC-004", "TC-005"):
        assert checks[cid]["status"] == "pass", f"{cid}: {checks[cid]['message']}"
    tc2 = checks["TC-002"]["observed"]
    assert tc2["harness_cases"] == HARNESS_CASES and tc2["harness_cases_missing_callbacks"] == 0
    assert tc2["witnesses"]["downstream (callback path)"] == HARNESS_CALLBACKS
    variants = checks["TC-003"]["observed"]["by_variant"]
    harness = {k for k, v in variants.items() if k.endswith("@harness") and v == {"judged": 1, "failed": 0}}
    assert len(harness) == 12 and "future-version-bad-delimiter@harness" in harness
    assert checks["TC-004"]["observed"]["duplicated_ids"] == 0


def test_harness_mode_break_propagation_fails_tc002_on_every_callback(tmp_path):
    code, checks = cli_run(tmp_path / "out", {"FAULT_BREAK_PROPAGATION": "1"})
    tc2 = checks["TC-002"]
    assert code == 2 and tc2["status"] == "fail", tc2["message"]
    assert tc2["observed"]["harness_calls_failing"] == HARNESS_CALLBACKS
    failing = {f["case"] for f in tc2["evidence"]["harness_failures"]}
    assert {"tc/valid@harness", "tc/missing@harness"} <= failing
    assert all(f["problems"] == ["no traceparent"] for f in tc2["evidence"]["harness_failures"])
    assert checks["TC-001"]["status"] == "pass"  # the server spans still continue the trace
