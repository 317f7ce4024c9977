"""TC-001..TC-005 on the simulated reference service (OTel's own W3C propagator and SDK),
with and without kernel truth, and the witnesses that tie outbound calls to requests."""

from __future__ import annotations

import pytest

from agent.evidence import DriverRecord, Span
from agent.tracecontext import new_span_id, new_traceparent
from conformance import evaluate
from conformance.model import Status
from tests.conformance.builders import MS, Req, result
from tests.conformance.simsut import refservice_scenario


def one(ev, check_id):
    return result(evaluate(ev, select=[check_id]), check_id)


CASES = [
    # (check, sim arguments, expected status, message fragment)
    pytest.param("TC-001", {}, Status.PASS, "continue the inbound traceparent", id="TC-001-pass"),
    pytest.param("TC-001", {"kernel": False}, Status.PASS, "continue the inbound", id="TC-001-pass-no-ebpf"),
    pytest.param("TC-001", {"restart_traces": True}, Status.FAIL, "does not continue it",
                 id="TC-001-fail-restarted-traces"),
    pytest.param("TC-002", {}, Status.PASS, "witness: kernel (parent_request)", id="TC-002-pass-kernel-witness"),
    pytest.param("TC-002", {"kernel": False}, Status.PASS, "downstream (time window)",
                 id="TC-002-pass-downstream-witness"),
    pytest.param("TC-002", {"break_propagation": True}, Status.FAIL, "no traceparent",
                 id="TC-002-fail-no-outbound-traceparent"),
    pytest.param("TC-002", {"drop_tracestate": True}, Status.FAIL,
                 "tracestate not forwarded: rojo=00f067aa0ba902b7, congo=t61rcWkgMzE missing",
                 id="TC-002-fail-tracestate-dropped"),
    pytest.param("TC-002", {"restart_traces": True, "kernel": False}, Status.FAIL,
                 "is not the inbound", id="TC-002-fail-new-trace-id-downstream-witness"),
    pytest.param("TC-003", {}, Status.PASS, "(11 kinds) started a new trace", id="TC-003-pass"),
    pytest.param("TC-003", {"accept_invalid": True}, Status.FAIL,
                 "tc/invalid/version-ff: sent 'ff-", id="TC-003-fail-version-ff-continued"),
    pytest.param("TC-003", {"first_of_duplicates": True}, Status.FAIL,
                 "tc/invalid/duplicate-header", id="TC-003-fail-first-of-duplicate-headers"),
    pytest.param("TC-004", {}, Status.PASS, "valid and unique", id="TC-004-pass"),
    pytest.param("TC-004", {"fixed_trace_id": True}, Status.FAIL,
                 "0af7651916cd43dd8448eb211c80319c for 24 requests", id="TC-004-fail-fixed-trace-id"),
    pytest.param("TC-005", {}, Status.PASS, "no orphan, no cycle", id="TC-005-pass"),
    pytest.param("TC-005", {"orphan_child": True}, Status.FAIL,
                 "names parent 1234567890abcdef, which was never exported", id="TC-005-fail-orphans"),
]


@pytest.mark.parametrize("check_id, kw, status, fragment", CASES)
def test_tc_checks_pass_and_fail(sim, check_id, kw, status, fragment):
    r = one(sim(**kw), check_id)
    assert r.status == status, r.message
    assert fragment in r.message
    assert r.observed is not None and r.expected is not None


def test_tc002_failure_is_a_transcript(sim):
    r = one(sim(break_propagation=True), "TC-002")
    f = r.evidence["failures"][0]
    assert f["traceparent_sent"].startswith("00-") and f["traceparent"] == []
    assert f["witness"] == "kernel (parent_request)" and f["outbound"].startswith("POST ")
    assert f["span"]["trace_id"] == f["traceparent_sent"].split("-")[1]


def test_tc003_counts_every_w3c_variant(sim):
    r = one(sim(), "TC-003")
    variants = r.observed["by_variant"]
    assert len(variants) == 11 and all(v == {"judged": 2, "failed": 0} for v in variants.values())
    r = one(sim(accept_invalid=True), "TC-003")
    failed = {k for k, v in r.observed["by_variant"].items() if v["failed"]}
    # what a lenient parser accepts: any version, any case, data after the flags
    assert failed == {"version-ff", "uppercase-hex", "version-00-trailing-data",
                      "bad-flags-length", "duplicate-header"}


@pytest.mark.parametrize("check_id", ["TC-002", "BC-001"])
def test_fanout_checks_skip_without_fanout_routes(sim, check_id):
    scenario = refservice_scenario(fanout={"routes": []})
    r = one(sim(scenario=scenario), check_id)
    assert r.status == Status.SKIP
    assert "no request went to a fan-out route (scenario fanout.routes: none)" in r.message


def test_bc002_without_fanout_still_judges_the_spans(sim):
    r = one(sim(scenario=refservice_scenario(fanout={"routes": []})), "BC-002")
    assert r.status == Status.PASS and r.observed["judged"] == r.observed["concurrent_requests"]


@pytest.mark.parametrize("check_id, fragment", [
    ("TC-001", "no valid traceparent"), ("TC-003", "no invalid traceparent"),
    ("TC-004", "every request carried a valid traceparent")])
def test_nothing_to_check_is_a_skip(run, check_id, fragment):
    b = run()
    b.request(Req(traceparent=check_id != "TC-001"))
    r = one(b.build(), check_id)
    assert r.status == Status.SKIP and fragment in r.message


def test_tc002_without_any_witness_is_inconclusive(sim):
    ev = sim(kernel=False)
    ev.downstream = []
    r = one(ev, "TC-002")
    assert r.status == Status.INCONCLUSIVE and "OBSCONFORM_DOWNSTREAM_URL" in r.message


def test_concurrent_outbound_calls_are_tied_by_trace_id_when_windows_overlap(sim):
    r = one(sim(kernel=False), "TC-002")
    w = r.observed["witnesses"]
    assert w["downstream (trace-id)"] >= 40  # bc/concurrent: 64 overlapping requests
    assert w["downstream (time window)"] >= 20  # the one-at-a-time phases
    assert r.observed["unattributed_downstream_records"] == 0


def _span(trace_id, span_id, parent, name="x", kind="INTERNAL", start=0, end=1):
    return Span(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name, kind=kind,
                start_ns=start, end_ns=end)


def _driver_with_server_span(b):
    k = b.request(Req(path="/items/1"))
    d = b.driver[-1]
    return d, b.spans[-1], k


def test_tc005_finds_cycles_and_extra_roots(run):
    b = run()
    d, server, _ = _driver_with_server_span(b)
    a, c = new_span_id(), new_span_id()
    b.spans += [_span(d.trace_id, a, c), _span(d.trace_id, c, a),  # a <-> c
                _span(d.trace_id, new_span_id(), "", name="stray-root")]
    r = one(b.build(), "TC-005")
    assert r.status == Status.FAIL
    assert r.observed["cycles"] >= 1 and r.observed["extra_roots"] == 1
    assert "extra root" in r.message and "stray-root" in r.message


def test_tc005_child_outside_parent_window_is_a_should_note(run):
    b = run()
    d, server, _ = _driver_with_server_span(b)
    b.spans.append(_span(d.trace_id, new_span_id(), server.span_id, start=server.start_ns,
                         end=server.end_ns + 50 * MS))
    r = one(b.build(), "TC-005")
    assert r.status == Status.PASS and "outside their parent's window (SHOULD)" in r.message
    assert r.evidence["outside_parent_window (SHOULD)"][0]["end_after_parent_us"] == 50_000


def test_tc001_counts_a_continuing_non_server_span_as_continued(run):
    b = run()
    tp = new_traceparent()
    b.driver.append(DriverRecord(seq=0, phase="load", method="GET", path="/x",
                                 request_headers={"traceparent": str(tp)}, trace_id=tp.trace_id,
                                 parent_id=tp.parent_id, t_send_ns=b.t, t_recv_ns=b.t + MS,
                                 status=200))
    b.spans.append(_span(tp.trace_id, new_span_id(), tp.parent_id, kind="INTERNAL"))
    r = one(b.build(), "TC-001")
    assert r.status == Status.PASS  # context continued; the wrong kind is SC-003's to report


def test_a_request_without_span_never_takes_the_next_requests_span(run):
    """An unsampled request (no span) answered 0.3 ms before the next one was sent: the
    next request's root span starts inside the first one's slop but belongs to the second."""
    b = run(ebpf=False, kernel_stats={})
    unsampled = new_traceparent(sampled=False)
    t = b.t
    b.driver.append(DriverRecord(seq=0, phase="tc", method="GET", path="/items/1",
                                 request_headers={"traceparent": str(unsampled)},
                                 trace_id=unsampled.trace_id, parent_id=unsampled.parent_id,
                                 t_send_ns=t, t_recv_ns=t + 2 * MS, status=200,
                                 case="tc/valid-unsampled"))
    b.driver.append(DriverRecord(seq=1, phase="tc", method="GET", path="/items/1",
                                 request_headers={}, trace_id="", parent_id="",
                                 t_send_ns=t + 2 * MS + 300_000, t_recv_ns=t + 4 * MS, status=200,
                                 case="tc/missing"))
    root = _span(new_traceparent().trace_id, new_span_id(), "", name="GET /items/<id>",
                 kind="SERVER", start=t + 2 * MS + 400_000, end=t + 4 * MS - 100_000)
    root.attributes = {"http.request.method": "GET", "url.path": "/items/1"}
    b.spans.append(root)
    ev = b.build()
    assert one(ev, "TC-001").status == Status.INCONCLUSIVE  # no span for the unsampled one
    assert one(ev, "TC-004").observed["with_generated_id"] == 1
