"""A real run against the reference service: KT checks pass when it is honest, fail on faults."""

from __future__ import annotations

import pytest

from agent.exposition import parse_exposition
from tests.e2e.conftest import free_port, refservice_cmd

pytestmark = pytest.mark.kernel

KT = ["KT-001", "KT-002", "KT-003", "KT-007"]


def run_refservice(obsconform, requests=400, concurrency=8, env=None):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["run", "--exec", refservice_cmd(port), "--url", url, "--metrics-url", f"{url}/metrics",
            "--path", "/items/1", "--path", "/items/2", "--path", "/slow?ms=2",
            "-n", str(requests), "-c", str(concurrency)]
    for c in KT:
        args += ["--check", c]
    return obsconform(*args, env=env)


def failing(result) -> set[str]:
    return {c["id"] for c in result.report["checks"] if c["status"] == "fail"}


def test_honest_reference_service_passes_kernel_truth(obsconform):
    r = run_refservice(obsconform)
    # Only the KT checks were selected: the other MUSTs are unverified, so the verdict can
    # be at best inconclusive (SPEC §6), whatever the KT checks say.
    assert r.code == 3, r.stderr + r.stdout
    statuses = {c["id"]: c["status"] for c in r.report["checks"]}
    assert statuses == {c: "pass" for c in KT}, r.stdout
    kernel = r.report["measurements"]["kernel"]
    # Every request the driver sent in every phase (tc, bc, ec, load) was seen by the kernel.
    assert kernel["requests"] == r.report["run"]["requests_sent"]
    assert r.report["run"]["requests_sent"] > 400
    assert kernel["agent_drops"] == 0
    assert r.report["summary"]["verdict"] == "inconclusive"
    assert "MUST not selected" in r.report["summary"]["verdict_reason"]


def dropped_by_service(run_dir) -> int:
    """The service's own count of spans it withheld, from the last /metrics scrape."""
    scrapes = sorted((run_dir / "scrapes").glob("*-after.txt"))
    expo = parse_exposition(scrapes[0].read_text(), "text/plain; version=0.0.4")
    return int(sum(s.value for s in expo.samples if s.name == "refservice_fault_dropped_spans_total"))


def test_dropped_spans_fail_kt001_with_the_exact_missing_count(obsconform):
    r = run_refservice(obsconform, env={"FAULT_DROP_SPANS": "every:10"})
    assert r.code == 2, r.stderr + r.stdout
    assert failing(r) == {"KT-001"}
    kt1 = r.check("KT-001")
    dropped = dropped_by_service(r.run_dir)
    # every:10 over all the server spans the service made, in every phase: at least the
    # load phase's 40; the exact figure is the service's own count.
    assert dropped >= 40
    assert kt1["observed"]["missing"] == dropped
    assert kt1["evidence"]["missing_trace_ids"], "a failure must name sample trace IDs"


def test_hidden_latency_fails_kt003_and_the_drift_recovers_it(obsconform):
    r = run_refservice(obsconform, env={"FAULT_HIDDEN_LATENCY_MS": "15"}, requests=200)
    assert r.code == 2, r.stderr + r.stdout
    assert failing(r) == {"KT-003"}
    p50_us = r.report["measurements"]["latency_drift_us"]["p50"]
    assert 14_000 <= p50_us <= 16_000, p50_us
