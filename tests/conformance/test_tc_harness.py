"""TC-001..TC-004 on @harness cases: the simulated reference service gets a W3C test-harness
endpoint (the real planner's requests, OTel's propagator and SDK), and the checks judge its
callbacks to the sink; plus the level 1 tracestate forwarding rule, case by case."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from agent import phases as P
from agent.evidence import DownstreamRecord
from agent.tracecontext import parse_traceparent
from conformance import evaluate
from conformance.checks import tc_harness as H
from conformance.model import Status
from tests.conformance.builders import NO_LOSS, US, RunBuilder, result
from tests.conformance.simsut import PROP, Faults, SimSut, refservice_scenario

SINK = "http://127.0.0.1:4444"
HARNESS_PATH = "/test"
N_HARNESS = len(P.plan_tc_harness(refservice_scenario(), SINK))


@dataclass
class HarnessFaults:
    """Ways a harness endpoint breaks the contract or level 1 (all off = honest)."""

    no_callbacks: bool = False  # answers, calls nobody back
    first_callback_only: bool = False
    strict_version: bool = False  # a parser that only knows version 00 restarts version cc
    cut_tracestate: int = 0  # forwards only the first N inbound members
    own_member: bool = False  # adds its own member at the front (32 + 1: drops the last)


class HarnessSim(SimSut):
    """SimSut with ``POST /test``: each action's url is called in a CLIENT span, as the
    reference service does (OTel's propagator injects the context)."""

    def __init__(self, builder: RunBuilder, faults: Faults, harness: HarnessFaults,
                 kernel: bool) -> None:
        super().__init__(builder, faults, refservice_scenario(), kernel)
        self.h = harness
        self._actions: list[dict] | None = None

    def run(self, requests: int = 12, concurrency: int = 4) -> HarnessSim:
        self.scrape("before")
        for phase in P.plan(self.scenario, requests=requests, concurrency=concurrency,
                            sink_url=SINK).phases:
            for i, req in enumerate(phase.requests):
                self.serve(req, thread=i % 4, step_ns=1_000_000 if phase.concurrency > 1 else None)
            self.b.t += 10_000_000
        self.scrape("after")
        return self

    def serve(self, req: Any, thread: int = 0, step_ns: int | None = None) -> None:
        self._actions = json.loads(req.body) if req.path == HARNESS_PATH else None
        try:
            super().serve(req, thread, step_ns)
        finally:
            self._actions = None

    def _fanout_templates(self) -> set[str]:
        extra = {HARNESS_PATH} if self._actions is not None else set()
        return super()._fanout_templates() | extra

    def _extract(self, sent: dict[str, list[str]]) -> Any:
        values = sent.get("traceparent", [])
        if self.h.strict_version and values and not values[0].startswith("00-"):
            return otel_context.Context()
        return super()._extract(sent)

    def _call_out(self, server_span: Any, kernel: Any, biz: str, t: int) -> None:
        if self._actions is None:
            return super()._call_out(server_span, kernel, biz, t)
        actions = [] if self.h.no_callbacks else self._actions[:1] if self.h.first_callback_only \
            else self._actions
        for i, action in enumerate(actions):
            start = t + i * 600 * US
            client = self.tracer.start_span("POST", context=trace.set_span_in_context(server_span),
                                            kind=SpanKind.CLIENT, start_time=start)
            headers: dict[str, str] = {}
            if not self.f.break_propagation:
                PROP.inject(headers, context=trace.set_span_in_context(client))
            self._mutate_tracestate(headers)
            url = urlsplit(action["url"])
            self.b.downstream.append(DownstreamRecord(
                t_ns=start + 200 * US, method="POST", path=f"{url.path}?{url.query}",
                headers={k.lower(): [v] for k, v in headers.items()},
                body=json.dumps(action["arguments"])))
            client.end(end_time=start + 500 * US)

    def _mutate_tracestate(self, headers: dict[str, str]) -> None:
        ts = headers.get("tracestate")
        if self.f.drop_tracestate:
            headers.pop("tracestate", None)
        elif ts and self.h.cut_tracestate:
            headers["tracestate"] = ",".join(ts.split(",")[: self.h.cut_tracestate])
        elif ts and self.h.own_member:
            members = ["sim=1", *ts.split(",")]
            headers["tracestate"] = ",".join(members[:32])  # 3.3.1.5: the right-most goes


@pytest.fixture
def hsim(tmp_path):
    """Factory: evidence of the harness simulation, ``hsim(kernel=False, break_propagation=True,
    harness=HarnessFaults(...), spans=False)``."""
    runs = iter(range(100))

    def make(kernel: bool = True, harness: HarnessFaults | None = None, spans: bool = True,
             **faults: Any):
        b = RunBuilder(tmp_path / f"h{next(runs)}", ebpf=kernel,
                       kernel_stats=dict(NO_LOSS) if kernel else {},
                       degraded_reason="" if kernel else "--no-ebpf: kernel truth was not collected")
        sim = HarnessSim(b, Faults(**faults), harness or HarnessFaults(), kernel).run()
        ev = sim.build()
        if not spans:
            ev.spans = []
        return ev

    return make


def one(ev, check_id):
    return result(evaluate(ev, select=[check_id]), check_id)


def harness_failures(r) -> set[str]:
    return {f["case"] for f in r.evidence.get("harness_failures", r.evidence.get("failures", []))
            if f["case"].endswith(H.HARNESS_SUFFIX)}


CASES = [
    # (check, sim arguments, status, message fragment)
    pytest.param("TC-002", {}, Status.PASS, "witness: downstream (callback path)", id="TC-002-pass"),
    pytest.param("TC-002", {"kernel": False, "spans": False}, Status.PASS, "downstream (callback path)",
                 id="TC-002-pass-wire-only"),
    pytest.param("TC-002", {"harness": HarnessFaults(own_member=True)}, Status.PASS, "carry the trace",
                 id="TC-002-pass-own-tracestate-member-drops-the-33rd"),
    pytest.param("TC-002", {"break_propagation": True}, Status.FAIL, "no traceparent",
                 id="TC-002-fail-no-callback-traceparent"),
    pytest.param("TC-002", {"harness": HarnessFaults(no_callbacks=True)}, Status.FAIL, "made 0 of 1 callback(s) to the sink: does the SUT implement the W3C "
                 "test-harness contract at /test?", id="TC-002-fail-no-callbacks"),
    pytest.param("TC-002", {"harness": HarnessFaults(cut_tracestate=16)}, Status.FAIL,
                 "tracestate not forwarded: bar17=17, bar18=18, bar19=19 and 13 more missing",
                 id="TC-002-fail-tracestate-cut-under-the-limits"),
    pytest.param("TC-002", {"harness": HarnessFaults(strict_version=True)}, Status.FAIL,
                 "tc/future-version@harness", id="TC-002-fail-future-version-restarted"),
    pytest.param("TC-001", {"kernel": False, "spans": False}, Status.PASS,
                 "harness case(s) without a span kept it on the wire", id="TC-001-pass-wire-only"),
    pytest.param("TC-001", {"harness": HarnessFaults(strict_version=True)}, Status.FAIL,
                 "tc/future-version@harness", id="TC-001-fail-future-version-not-continued"),
    pytest.param("TC-001", {"kernel": False, "spans": False, "restart_traces": True}, Status.FAIL,
                 "called back in another trace", id="TC-001-fail-wire-only-restarted"),
    pytest.param("TC-003", {"kernel": False, "spans": False}, Status.PASS, "(23 kinds) started a new trace",
                 id="TC-003-pass-wire-only"),
    pytest.param("TC-003", {"accept_invalid": True, "kernel": False, "spans": False}, Status.FAIL,
                 "continues the invalid trace-id", id="TC-003-fail-wire-only"),
    pytest.param("TC-004", {"kernel": False, "spans": False}, Status.PASS, "valid and unique",
                 id="TC-004-pass-wire-only"),
    pytest.param("TC-004", {"fixed_trace_id": True, "kernel": False, "spans": False}, Status.FAIL,
                 "0af7651916cd43dd8448eb211c80319c", id="TC-004-fail-wire-only-fixed-trace-id"),
]


@pytest.mark.parametrize("check_id, kw, status, fragment", CASES)
def test_tc_checks_judge_harness_cases(hsim, check_id, kw, status, fragment):
    r = one(hsim(**kw), check_id)
    assert r.status == status, r.message
    assert fragment in r.message or fragment in json.dumps(r.evidence), r.message
    assert r.observed is not None and r.expected is not None


def test_tc002_counts_every_harness_case_and_callback(hsim):
    r = one(hsim(), "TC-002")
    o = r.observed
    assert o["harness_cases"] == N_HARNESS and o["harness_cases_missing_callbacks"] == 0
    assert o["witnesses"]["downstream (callback path)"] == N_HARNESS - 1 + P.HARNESS_CALLBACKS
    assert o["harness_calls_failing"] == 0 and o["unattributed_downstream_records"] == 0


def test_tc002_names_the_harness_cases_that_lost_the_trace(hsim):
    r = one(hsim(break_propagation=True), "TC-002")
    assert r.observed["harness_calls_failing"] == N_HARNESS - 1 + P.HARNESS_CALLBACKS
    failing = harness_failures(r)
    assert "tc/valid@harness" in failing
    f = r.evidence["harness_failures"][0]
    assert f["witness"] == "downstream (callback path)" and f["outbound"].startswith("POST /w3c/tc/")
    assert f["traceparent"] == [] and f["problems"] == ["no traceparent"]


def test_a_missing_callback_of_several_is_a_failure(hsim):
    r = one(hsim(harness=HarnessFaults(first_callback_only=True)), "TC-002")
    assert r.status == Status.FAIL and r.observed["harness_cases_missing_callbacks"] == 1
    assert harness_failures(r) == {"tc/multiple-callbacks@harness"}
    assert "made 1 of 3 callback(s)" in json.dumps(r.evidence)


def test_tc003_judges_every_invalid_variant_through_the_harness(hsim):
    r = one(hsim(kernel=False, spans=False), "TC-003")
    harness = {k: v for k, v in r.observed["by_variant"].items() if k.endswith(H.HARNESS_SUFFIX)}
    assert set(harness) == {f"{v}{H.HARNESS_SUFFIX}" for v in P.HARNESS_INVALID_TRACEPARENTS}
    assert all(v == {"judged": 1, "failed": 0} for v in harness.values())
    r = one(hsim(accept_invalid=True, kernel=False, spans=False), "TC-003")
    failed = {k for k, v in r.observed["by_variant"].items() if v["failed"]}
    # the simulated lenient parser takes any version and anything after the flags
    assert {"version-ff@harness", "future-version-bad-delimiter@harness",
            "version-00-trailing-data@harness"} <= failed


def test_without_spans_tc001_judges_the_callbacks_not_the_spans(hsim):
    r = one(hsim(kernel=False, spans=False), "TC-001")
    valid = ("tc/valid", "tc/valid-unsampled", "tc/future-version", "tc/tracestate",
             "tc/tracestate-32-members", "tc/multiple-callbacks")
    assert r.observed["harness_judged_on_the_wire"] == len(valid)
    assert r.observed["continued"] == 0


def test_the_callback_path_reader_ignores_other_sink_records():
    assert H.callback_of("/inventory/reserve") is None
    assert H.callback_of("/w3c/tc/invalid/version-ff?call=0&of=1") == ("tc/invalid/version-ff", 1)
    assert H.callback_of("/w3c/tc/x") == ("tc/x", 1)
    assert H.callback_of("/w3c/tc/x?of=bad") == ("tc/x", 1)
    assert H.CALLBACK_PREFIX == P.HARNESS_CALLBACK_PREFIX and H.HARNESS_SUFFIX == P.HARNESS_SUFFIX


TS = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
M32 = [f"bar{i:02d}={i:02d}" for i in range(1, 33)]
BIG, HUGE = "big=" + "x" * 256, "huge=" + "y" * 256  # longer than 128, together over 512


@pytest.mark.parametrize(("sent", "got", "problem"), [
    (TS, [TS], None),
    (TS, ["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"], None),
    (TS, [f"sim=1,{TS}"], None),
    (TS, [f"{TS},sim=1"], None),  # SHOULD add at the front; not a MUST failure
    (TS, ["rojo=new,congo=t61rcWkgMzE"], None),
    (TS, ["congo=t61rcWkgMzE,rojo=new"], "updated tracestate member(s) rojo=new not moved"),
    (TS, ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"], "forwarded out of order"),
    (TS, ["rojo=00f067aa0ba902b7"], "tracestate not forwarded: congo=t61rcWkgMzE missing"),
    (TS, [], "tracestate not forwarded: rojo=00f067aa0ba902b7, congo=t61rcWkgMzE missing"),
    (TS, ["Rojo=1"], "is not valid (level 1 grammar)"),
    ("Rojo=1,congo=2", [], None),  # an invalid inbound tracestate may be dropped
    (None, ["sim=1"], None),
    (",".join(M32), [",".join(["sim=1", *M32[:31]])], None),  # 33 would be too many
    (",".join(M32), [",".join(M32[:31])], "bar32=32 missing"),  # nothing added: no cut allowed
    (",".join(M32), [",".join(M32[1:])], "bar01=01 missing"),  # cut from the left
    (f"a=1,{BIG},b=2,{HUGE}", [f"a=1,b=2,{HUGE}"], None),  # over 512: a long one goes
    (f"a=1,{BIG},b=2,{HUGE}", [f"{BIG},b=2,{HUGE}"], "a=1 missing"),  # short, not from the right
], ids=["kept", "split-fields", "own-front", "own-end", "updated-front", "updated-late",
        "reordered", "one-dropped", "none", "invalid-out", "invalid-in", "nothing-sent",
        "33-drops-last", "32-cut-for-nothing", "32-cut-left", "over-512-long-cut",
        "over-512-short-cut-on-the-left"])
def test_level1_tracestate_forwarding(sent, got, problem):
    problems = H.tracestate_problems(sent, got)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


def test_harness_sim_propagates_like_the_reference_service(hsim):
    """The fixture itself: honest callbacks keep the trace-id of valid cases."""
    ev = hsim(kernel=False)
    by_case = {d.case: d for d in ev.driver if d.case.endswith(H.HARNESS_SUFFIX)}
    rec = next(x for x in ev.downstream if x.path.startswith("/w3c/tc/future-version?"))
    tp = parse_traceparent(rec.headers["traceparent"][0])
    assert tp.trace_id == by_case["tc/future-version@harness"].trace_id
    assert tp.parent_id != by_case["tc/future-version@harness"].parent_id
