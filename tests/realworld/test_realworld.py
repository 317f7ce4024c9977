"""A real latency fault on the real Flask stack (gunicorn gthread, stable semconv), and its
control, through the real CLI with real eBPF. What every check says on every stack, clean
and under the shared faults, is the compatibility matrix's (test_matrix.py)."""

from __future__ import annotations

import pytest

from tests.realworld.stacks.python import STACKS

pytestmark = pytest.mark.kernel

FLASK = next(s for s in STACKS if s.name == "flask-gthread")
STABLE_RUN = next(r for r in FLASK.runs if r.name == "clean-stable-semconv")


def statuses(report: dict) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["checks"]}


def explain(report: dict, ids) -> str:
    return "\n".join(f"{c['id']} {c['status']}: {c['message']}" for c in report["checks"]
                     if c["id"] in ids)


FAULT_MS = 15


@pytest.mark.parametrize("fault, kt003", [
    ("outer-middleware-ms", "fail"),
    ("before-request-ms", "pass"),
], ids=["wsgi-middleware-outside-the-instrumentor-hides-latency",
        "before-request-hook-is-inside-the-span-control"])
def test_latency_hidden_outside_the_flask_instrumentation(run_stack, fault, kt003):
    """A 15 ms WSGI middleware wrapped around the instrumented app (a rate limiter added after
    FlaskInstrumentor) is time the client waits and the span misses: KT-003 fails with a
    median drift of ~15 ms, nothing else changes. A before_request hook registered ahead of
    the instrumentor's is no fault for the span: the instrumentation starts it at WSGI entry
    (KT-003 passes), but the exporter's histogram misses it (KT-004)."""
    r = run_stack(FLASK, {**STABLE_RUN.env, "REALWORLD_FAULT": f"{fault}:{FAULT_MS}"})
    rep = r.report
    got = statuses(rep)
    want = dict.fromkeys(got, "pass")
    for np in STABLE_RUN.not_pass:
        want.update(dict.fromkeys(np.checks, np.status))
    want["KT-003"] = kt003
    # KT-004 (SHOULD) fails in both: prometheus-flask-exporter times a request from its own
    # before_request hook, registered after the slow one, so its histogram misses the 15 ms
    # either way (a true finding on the exporter; the OTel span covers the hook).
    want["KT-004"] = "fail"
    wrong = {i for i in got if got[i] != want[i]}
    assert not wrong, explain(rep, wrong)
    drift = rep["measurements"]["latency_drift_us"]
    if kt003 == "fail":
        assert abs(drift["p50"] - FAULT_MS * 1000) < 2000, drift
    else:
        assert abs(drift["p50"]) < 2000, drift
