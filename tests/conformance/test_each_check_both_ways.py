"""SPEC §5: every check in the catalogue has a named fixture on which it passes and one on which
it fails, judged by the real engine; a check added to the catalogue without both fails here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import pytest

from agent.evidence import Evidence
from conformance import evaluate, load_catalogue
from conformance.model import Status
from tests.conformance.builders import MS, Req, RunBuilder, SemconvExporter, result
from tests.conformance.simsut import refservice_scenario
from tests.conformance.test_sc import COUNTER, FewBucketsExporter, scrapes


@dataclass(frozen=True)
class Tools:
    """The conftest factories a fixture builds its evidence with."""

    sim: Callable[..., Evidence]  # the simulated reference service, Faults knobs as keywords
    run: Callable[..., RunBuilder]  # the evidence builder, for shapes the simulator lacks


@dataclass(frozen=True)
class Fixture:
    name: str
    build: Callable[[Tools], Evidence]


class Case(NamedTuple):
    passing: Fixture
    failing: Fixture


def fault(name: str, **faults: Any) -> Fixture:
    """The simulated service with Faults knobs turned (none: the honest service)."""
    return Fixture(name, lambda t: t.sim(**faults))


def builder(name: str) -> Callable[[Callable[[Tools], Evidence]], Fixture]:
    """Decorator: the function builds the evidence of fixture ``name`` with the evidence builder."""
    def wrap(build: Callable[[Tools], Evidence]) -> Fixture:
        return Fixture(name, build)
    return wrap


HONEST = fault("honest")
DROPPED_SPANS = fault("dropped-spans", drop_spans_every=5)
HIDDEN_LATENCY = fault("hidden-latency", hidden_latency_ns=15 * MS)


@builder("metric-missed-a-request")
def metric_missed_a_request(t: Tools) -> Evidence:
    return t.run(exporter=SemconvExporter()).load(
        [Req(path=f"/items/{i}", counted=i != 3) for i in range(6)])


@builder("spans-start-10ms-early")
def spans_start_early(t: Tools) -> Evidence:
    return t.run(exporter=SemconvExporter()).load(
        [Req(path=f"/items/{i}", span_gap_ns=-10 * MS) for i in range(10)])


@builder("answer-the-kernel-never-saw")
def answer_unseen(t: Tools) -> Evidence:
    b = t.run()
    for i in range(5):
        b.request(Req(path=f"/items/{i}", seen=i != 2))
    return b.build()


@builder("duplicate-errcode-entry")
def duplicate_errcode_entry(t: Tools) -> Evidence:
    codes = refservice_scenario()["errcodes"]
    return t.sim(scenario=refservice_scenario(errcodes=[*codes, dict(codes[0])]))


@builder("counter-decreased")
def counter_decreased(t: Tools) -> Evidence:
    return scrapes(t.run, COUNTER % 5, COUNTER % 3)


@builder("few-buckets")
def few_buckets(t: Tools) -> Evidence:
    return t.run(exporter=FewBucketsExporter()).load([Req()])


CASES: dict[str, Case] = {
    "KT-001": Case(HONEST, DROPPED_SPANS),
    "KT-002": Case(HONEST, metric_missed_a_request),
    "KT-003": Case(HONEST, HIDDEN_LATENCY),
    "KT-004": Case(HONEST, HIDDEN_LATENCY),
    "KT-005": Case(HONEST, fault("span-status-off-by-one", span_status_off_by=1)),
    "KT-006": Case(HONEST, spans_start_early),
    "KT-007": Case(HONEST, answer_unseen),
    "TC-001": Case(HONEST, fault("restarted-traces", restart_traces=True)),
    "TC-002": Case(HONEST, fault("no-outbound-traceparent", break_propagation=True)),
    "TC-003": Case(HONEST, fault("invalid-traceparent-continued", accept_invalid=True)),
    "TC-004": Case(HONEST, fault("fixed-trace-id", fixed_trace_id=True)),
    "TC-005": Case(HONEST, fault("orphan-child", orphan_child=True)),
    "BC-001": Case(HONEST, fault("bizcode-not-forwarded", no_biz_header=True)),
    "BC-002": Case(HONEST, fault("thread-local-leak", leak_bizcode=True)),
    "BC-003": Case(HONEST, fault("no-biz-attribute", no_biz_attr=True)),
    "EC-001": Case(HONEST, fault("wrong-status", wrong_status={"PAYMENT_105": 400})),
    "EC-002": Case(HONEST, fault("no-error-code-header", no_error_code_header=True)),
    "EC-003": Case(HONEST, fault("wrong-error-trace-id", wrong_error_trace_id=True)),
    "EC-004": Case(HONEST, fault("retryable-as-string", retryable_as_string=True)),
    "EC-005": Case(HONEST, duplicate_errcode_entry),
    "AL-001": Case(HONEST, fault("spans-in-another-environment", other_environment=True)),
    "AL-002": Case(HONEST, DROPPED_SPANS),
    "AL-003": Case(HONEST, fault("logs-without-trace-id", logs_without_trace=True)),
    "AL-004": Case(HONEST, fault("trace-id-label", trace_id_label=True)),
    "SC-001": Case(HONEST, counter_decreased),
    "SC-002": Case(HONEST, fault("camelcase-milliseconds-metric", bad_metric_names=True)),
    "SC-003": Case(HONEST, fault("old-semconv-names", old_semconv=True)),
    "SC-004": Case(HONEST, few_buckets),
}


def test_table_covers_exactly_the_catalogue():
    ids = {c.id for c in load_catalogue().checks}
    assert set(CASES) == ids, (f"no fixtures for {sorted(ids - set(CASES))}; "
                               f"not in the catalogue: {sorted(set(CASES) - ids)}")


def _params(status: Status) -> list:
    params = []
    for cid, case in CASES.items():
        fx = case.passing if status == Status.PASS else case.failing
        params.append(pytest.param(cid, fx, id=f"{cid}-{status.value}-{fx.name}"))
    return params


@pytest.fixture
def tools(sim, run) -> Tools:
    return Tools(sim, run)


def judge(tools: Tools, check_id: str, fx: Fixture):
    return result(evaluate(fx.build(tools), select=[check_id]), check_id)


@pytest.mark.parametrize("check_id, fx", _params(Status.PASS))
def test_check_passes_on_its_passing_fixture(tools, check_id, fx):
    r = judge(tools, check_id, fx)
    assert r.status == Status.PASS, f"{check_id} on {fx.name}: {r.status} {r.message}"


@pytest.mark.parametrize("check_id, fx", _params(Status.FAIL))
def test_check_fails_on_its_failing_fixture(tools, check_id, fx):
    r = judge(tools, check_id, fx)
    assert r.status == Status.FAIL, f"{check_id} on {fx.name}: {r.status} {r.message}"
    assert r.observed not in (None, {}, []), f"{check_id} failed without observed values"
    assert r.expected not in (None, {}, []), f"{check_id} failed without expected values"
    assert r.evidence, f"{check_id} failed without evidence"
