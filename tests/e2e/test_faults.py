"""The whole catalogue against the real reference service through the CLI: honest it is
compliant; each fault switch fails exactly the MUST checks its table row names (plus only
the ones it lets fail as a consequence); without eBPF every non-KT check still passes."""

from __future__ import annotations

import pytest

from examples.refservice.faults import FAULTS, Fault
from tests.e2e.conftest import ROOT, free_port, refservice_cmd

pytestmark = pytest.mark.kernel

SCENARIO = ROOT / "examples" / "refservice" / "scenario.json"
REQUESTS = 60  # load phase; the tc, bc and ec phases add ~110 requests of their own


def run_refservice(obsconform, env: dict | None = None, no_ebpf: bool = False):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["run", "--exec", refservice_cmd(port), "--url", url, "--scenario", str(SCENARIO),
            "-n", str(REQUESTS), "-c", "4"]
    if no_ebpf:
        args.append("--no-ebpf")
    return obsconform(*args, env=env, timeout=120)


def by_status(report: dict, status: str, level: str | None = None) -> set[str]:
    return {c["id"] for c in report["checks"]
            if c["status"] == status and (level is None or c["level"] == level)}


def explain(report: dict, ids: set[str]) -> str:
    return "\n".join(f"{c['id']} {c['status']}: {c['message']}" for c in report["checks"]
                     if c["id"] in ids)


def test_honest_reference_service_is_compliant(obsconform):
    r = run_refservice(obsconform)
    rep = r.report
    assert r.code == 0, r.stdout + r.stderr
    assert rep["summary"]["verdict"] == "compliant"
    for c in rep["checks"]:
        assert c["status"] in ("pass", "skip"), f"{c['id']} {c['status']}: {c['message']}"
        if c["status"] == "skip":
            assert c["message"] and "not implemented" not in c["message"], c
    assert by_status(rep, "pass") >= {"KT-001", "KT-002", "TC-002", "BC-002", "EC-005", "SC-003"}


@pytest.mark.parametrize("fault", FAULTS, ids=[f.env for f in FAULTS])
def test_each_fault_fails_exactly_its_checks(obsconform, fault: Fault):
    r = run_refservice(obsconform, env={fault.env: fault.example})
    rep = r.report
    levels = {c["id"]: c["level"] for c in rep["checks"]}
    must = {c for c in fault.fails if levels[c] == "MUST"}
    may = {c for c in fault.may_fail if levels[c] == "MUST"}
    failing = by_status(rep, "fail")
    failing_must = by_status(rep, "fail", "MUST")
    assert r.code == (2 if must else 0), r.stdout + r.stderr
    assert set(fault.fails) <= failing, explain(rep, set(fault.fails))
    assert failing_must - must <= may, "unrelated MUST failures:\n" + explain(rep, failing_must - must)
    assert not by_status(rep, "inconclusive", "MUST") - may, explain(rep, by_status(rep, "inconclusive"))
    for cid in fault.fails:  # every failure says what went wrong and names samples
        check = next(c for c in rep["checks"] if c["id"] == cid)
        assert check["observed"] is not None and check["evidence"], check


def test_without_ebpf_every_non_kernel_check_passes_and_kt_is_inconclusive(obsconform):
    r = run_refservice(obsconform, no_ebpf=True)
    rep = r.report
    assert r.code == 3, r.stdout + r.stderr
    assert rep["summary"]["verdict"] == "inconclusive"
    for c in rep["checks"]:
        if c["id"].startswith("KT-"):
            assert c["status"] == "inconclusive" and "--no-ebpf" in c["message"], c
        else:
            assert c["status"] in ("pass", "skip"), f"{c['id']} {c['status']}: {c['message']}"
    assert r.stdout.splitlines()[0].startswith("DEGRADED MODE, no kernel truth")
