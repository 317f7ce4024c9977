"""Every fault switch breaks the checks its table entry names, and nothing else.

One service per case (the fault-free baseline and each FAULTS entry) gets the same probe
traffic; the client-side probes (tests/refservice/probes.py, one per SPEC §5 check ID) then
say which checks fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from examples.refservice.faults import FAULTS, ActiveFaults, Fault, markdown_table

from .probes import PROBES, drive, judge
from .service import REPO_ROOT, RefService, service_env
from .stubs import DownstreamStub, OtlpTraceStub

README = Path(REPO_ROOT, "examples/refservice/README.md")
BASELINE = Fault("(none)", "", "", "fault-free baseline", fails=())


def _run(fault: Fault, tmp_path) -> dict[str, list[str]]:
    env = {} if fault is BASELINE else {fault.env: fault.example}
    with OtlpTraceStub() as otlp, DownstreamStub() as downstream:
        svc = RefService(service_env(otlp.url, downstream.url, **env), log_dir=tmp_path)
        try:
            return judge(drive(svc, otlp, downstream))
        finally:
            svc.stop()


@pytest.mark.parametrize("fault", (BASELINE, *FAULTS), ids=lambda f: f.env)
def test_fault_breaks_exactly_its_checks(fault, tmp_path):
    results = _run(fault, tmp_path)
    failing = {check for check, problems in results.items() if problems}
    details = {check: results[check][:3] for check in sorted(failing)}
    missed = set(fault.fails) - failing
    assert not missed, f"{fault.env} should break {sorted(missed)}; failing: {details}"
    collateral = failing - set(fault.fails) - set(fault.may_fail)
    assert not collateral, f"{fault.env} also broke {sorted(collateral)}: {details}"


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.env)
def test_fault_table_entry_is_complete(fault):
    catalogue = yaml.safe_load(Path(REPO_ROOT, "conformance/catalogue.yaml").read_text())
    check_ids = {c["id"] for c in catalogue["checks"]}
    assert fault.fails, "a fault must break at least one check"
    assert set(fault.fails) | set(fault.may_fail) <= check_ids
    assert set(fault.fails) <= PROBES.keys(), "every claimed failure needs a probe that can see it"
    assert not set(fault.fails) & set(fault.may_fail)
    assert ActiveFaults.from_env({fault.env: fault.example}).describe(), "the example must switch it on"


def test_readme_carries_the_current_fault_table():
    assert markdown_table() in README.read_text(), "regenerate: python -m examples.refservice.faults"


@pytest.mark.parametrize("value", ["2", "maybe", "enabled"])
def test_bad_boolean_switch_names_the_variable(value):
    with pytest.raises(ValueError, match=r"^FAULT_LEAK_BIZCODE: expected 1/true"):
        ActiveFaults.from_env({"FAULT_LEAK_BIZCODE": value})
