"""The compatibility matrix through the real CLI with real eBPF: every run of every stack
(tests/realworld/matrix.py) gets the exact statuses its record names (everything not
listed passes) and the exact counts, some of them the ones the service itself wrote."""

from __future__ import annotations

from typing import Any

import pytest

from tests.realworld.matrix import SERVICE_COUNT, MatrixRun, Stack, all_stacks

pytestmark = pytest.mark.kernel

CASES = [pytest.param(s, r, id=f"{s.name}-{r.name}") for s in all_stacks() for r in s.runs]


def expected_statuses(run: MatrixRun, check_ids: list[str]) -> dict[str, str]:
    out = dict.fromkeys(check_ids, "pass")
    for np in run.not_pass:
        out.update(dict.fromkeys(np.checks, np.status))
    return out


def lookup(report: dict, path: str) -> Any:
    """ "KT-001.observed.missing" or "measurements.kernel.agent_drops" in a report."""
    head, *keys = path.split(".")
    if head == "measurements":
        node: Any = report["measurements"]
    else:
        node = next(c for c in report["checks"] if c["id"] == head)
        node = node[keys.pop(0)]
    for k in keys:
        node = node[k]
    return node


def explain(report: dict, ids) -> str:
    return "\n".join(f"{c['id']} {c['status']}: {c['message']}" for c in report["checks"]
                     if c["id"] in ids)


def test_lookup_reads_checks_and_measurements():
    rep = {"checks": [{"id": "KT-001", "observed": {"missing": 3, "by": {"x": 1}}}],
           "measurements": {"kernel": {"agent_drops": 0}}}
    assert lookup(rep, "KT-001.observed.missing") == 3
    assert lookup(rep, "KT-001.observed.by.x") == 1
    assert lookup(rep, "measurements.kernel.agent_drops") == 0
    with pytest.raises(KeyError):
        lookup(rep, "KT-001.observed.absent")
    with pytest.raises(StopIteration):
        lookup(rep, "XX-999.observed.missing")


@pytest.mark.parametrize("stack, run", CASES)
def test_stack_run_is_judged_as_its_record_says(run_stack, stack: Stack, run: MatrixRun):
    r = run_stack(stack, run.env)
    rep = r.report
    if run.exit_code is not None:
        assert r.code == run.exit_code, r.stdout + r.stderr
    got = {c["id"]: c["status"] for c in rep["checks"]}
    unknown = {i for np in run.not_pass for i in np.checks} - set(got)
    assert not unknown, f"the record names checks the report lacks: {sorted(unknown)}"
    want = expected_statuses(run, list(got))
    wrong = {i for i in got if got[i] != want[i] and i not in run.load_dependent}
    assert not wrong, "\n".join(f"{i}: expected {want[i]}" for i in sorted(wrong)) + "\n" + \
        explain(rep, wrong)
    assert all(got[i] in ("pass", "fail") for i in run.load_dependent), \
        explain(rep, run.load_dependent)
    for path, value in run.counts.items():
        if isinstance(value, str) and value.startswith(SERVICE_COUNT):
            name = value[len(SERVICE_COUNT):]
            assert r.service_counts.get(name, 0) > 0, \
                f"the service counted no {name} (counts: {r.service_counts}): the fault did not act"
            value = r.service_counts[name]
        assert lookup(rep, path) == value, f"{path}: {lookup(rep, path)!r} != {value!r}\n" + \
            explain(rep, [path.split(".")[0]])
