"""The analysis benchmark at a small N: the synthetic run is whole and joins without loss,
the generator is deterministic, and measure() times the real analyze path in a child."""

from __future__ import annotations

import filecmp
from collections import Counter

import pytest

from agent.evidence import load_evidence
from agent.runner import judge
from tests.bench import analysis
from tests.bench.synth import write_run

N = 2000
# Checks that need only the kernel, the spans, the driver and the scrapes: on an honest
# synthetic service they must pass (the ec/tc/bc phases were not sent: those are not judged).
MUST_PASS = ["KT-001", "KT-002", "KT-003", "KT-004", "KT-005", "KT-006", "KT-007",
             "TC-001", "TC-002", "TC-005", "BC-001", "BC-003", "AL-002", "AL-003", "SC-001",
             "SC-003"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("synth") / "run"
    return write_run(run_dir, N, seed=7)


def test_the_run_directory_holds_every_record(synthetic):
    ev = load_evidence(synthetic.run_dir)
    out = synthetic.outbound
    assert 0 < out < N and 0 < synthetic.failures < N // 20
    assert Counter(k.direction for k in ev.kernel) == {"server": N, "client": out}
    assert Counter(s.kind for s in ev.spans) == {"SERVER": N, "CLIENT": out}
    assert len(ev.driver) == N and len(ev.downstream) == out and len(ev.logs) == N + 1
    assert [s.phase for s in ev.scrapes] == ["before", "before", "after", "after"]
    assert ev.meta.requests_sent == N and ev.meta.kernel_stats["records"] == 2 * (N + out)
    assert synthetic.records == sum(len(x) for x in (ev.kernel, ev.spans, ev.driver, ev.logs,
                                                     ev.downstream))
    statuses = Counter(k.status for k in ev.kernel if k.direction == "server")
    assert statuses[503] + statuses[402] == synthetic.failures


def test_analyze_joins_everything_and_the_checks_pass(synthetic, tmp_path):
    report = judge(synthetic.run_dir, tmp_path).report
    status = {c["id"]: c["status"] for c in report["checks"]}
    assert {cid: status[cid] for cid in MUST_PASS} == {cid: "pass" for cid in MUST_PASS}
    kt001 = next(c for c in report["checks"] if c["id"] == "KT-001")["observed"]
    assert kt001["kernel_requests"] == N and kt001["missing"] == 0
    assert kt001["joined_by_traceparent"] == N and kt001["server_spans_without_request"] == 0
    kt002 = next(c for c in report["checks"] if c["id"] == "KT-002")["observed"]["prometheus"]
    assert kt002["kernel_count"] == N and kt002["metric_count"] == N


@pytest.mark.parametrize("seed,same", [(7, True), (8, False)], ids=["same-seed", "other-seed"])
def test_the_generator_is_deterministic(synthetic, tmp_path, seed, same):
    other = write_run(tmp_path / "again", N, seed=seed)
    names = ["kernel.jsonl", "spans.jsonl", "driver.jsonl", "meta.json"]
    match, mismatch, errors = filecmp.cmpfiles(synthetic.run_dir, other.run_dir, names, shallow=False)
    assert not errors and (match == names if same else mismatch == names)


def test_measure_times_analyze_in_a_child_per_size():
    fig = analysis.measure(sizes=(300, 1500), repeats=1)
    small, big = fig["runs"]
    assert (small["n"], big["n"]) == (300, 1500) and fig["n_ratio"] == 5
    for run in (small, big):
        steps = run["load_s"] + run["join_s"] + run["view_s"] + run["checks_s"] + run["report_s"]
        assert 0 < steps <= run["total_s"] * 1.01 and run["load_s"] > 0 and run["join_s"] > 0
        assert run["start_mb"] < run["peak_after_mb"]["load"] <= run["peak_mb"] + 1
        assert run["verdict"] == "inconclusive"  # the tc/bc/ec phases were not sent
    assert fig["time_ratio"] == round(big["total_s"] / small["total_s"], 2)
    assert (fig["s_at_1500"], fig["peak_mb_at_300"]) == (big["total_s"], small["peak_mb"])
    assert "1500 requests analysed" in analysis.summary(fig)
