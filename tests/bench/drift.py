"""Drift resolution: hidden latency D the reference service adds outside its span, found again.

For D in {0, 1, 5, 20} ms a real run (agent.runner.run, eBPF, the reference service with
FAULT_HIDDEN_LATENCY_MS=D) gives kernel duration - span duration per request; its median
over the load phase (requests joined by traceparent) and the report's KT-003 p50 (all
phases) are kept. The figure of merit is |median(D) - median(0) - D|.

The load runs at concurrency 1: with several request threads in one CPython worker, a
thread that wrote its response waits for the GIL before its span ends, which moves span
ends by hundreds of µs: noise of the service, not of the agent. The service hides D by
sleeping to 0.3 ms before its deadline and spinning the rest (time.sleep alone overshoots
by ~0.1 ms), so D is what it says and the error is the agent's.

The sweep runs ``rounds`` times, interleaved (0, 1, 5, 20, 0, 1, ...), and each D's median
is taken over the samples of all its rounds: one run's median moves by tens of µs with the
state of the host (which core the threads land on, what else woke), and interleaving spreads
that over every D instead of charging it to one. Each round's own error is kept beside.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.evidence import load_evidence
from agent.runner import RunConfig, run
from tests.ports import free_port

DELAYS_MS = [0, 1, 5, 20]
GOAL_US = 50.0


def load_phase_drifts_us(run_dir: Path) -> list[float]:
    """Kernel - span duration (µs) of each load-phase request joined by its traceparent."""
    ev = load_evidence(run_dir)
    spans = {s.trace_id: s for s in ev.spans if s.kind == "SERVER"}
    load = {d.trace_id for d in ev.driver if d.phase == "load" and d.trace_id}
    drifts = []
    for k in ev.kernel:
        tp = k.header("traceparent") or ""
        trace_id = tp.split("-")[1] if tp.count("-") == 3 else ""
        span = spans.get(trace_id) if trace_id in load else None
        if span is not None and k.duration_ns is not None:
            drifts.append((k.duration_ns - (span.end_ns - span.start_ns)) / 1000)
    return drifts


def drift_run(delay_ms: int, requests: int, out_dir: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = RunConfig(url=url, exec_cmd=f"{sys.executable} -m examples.refservice --port {port}",
                    metrics_url=f"{url}/metrics", paths=["/items/1"], requests=requests, concurrency=1,
                    out_dir=out_dir, checks=["KT-001", "KT-003", "KT-007"], settle_quiet_s=0.5)
    old = os.environ.get("FAULT_HIDDEN_LATENCY_MS")
    os.environ["FAULT_HIDDEN_LATENCY_MS"] = str(delay_ms)
    try:
        t0 = time.monotonic()
        result = run(cfg)
    finally:
        if old is None:
            del os.environ["FAULT_HIDDEN_LATENCY_MS"]
        else:
            os.environ["FAULT_HIDDEN_LATENCY_MS"] = old
    m = result.report["measurements"]
    drifts = load_phase_drifts_us(result.run_dir)
    return {"delay_ms": delay_ms, "median_us": round(statistics.median(drifts), 1), "samples": len(drifts),
            "drifts_us": drifts,
            "report_p50_us": m["latency_drift_us"]["p50"], "agent_loss": m["kernel"]["loss"],
            "clock_uncertainty_ns": (m.get("clock") or {}).get("uncertainty_ns"),
            "run_s": round(time.monotonic() - t0, 1)}


def measure(requests: int = 300, rounds: int = 3) -> dict:
    with tempfile.TemporaryDirectory(prefix="obsconform-drift-") as d:
        sweeps = [[drift_run(ms, requests, Path(d)) for ms in DELAYS_MS] for _ in range(rounds)]
    pooled = {ms: statistics.median([x for sweep in sweeps for x in sweep[i].pop("drifts_us")])
              for i, ms in enumerate(DELAYS_MS)}
    base = pooled[0]
    rows = []
    for i, ms in enumerate(DELAYS_MS):
        found = pooled[ms] - base
        per_round = [round(abs(sweep[i]["median_us"] - sweep[0]["median_us"] - ms * 1000), 1)
                     for sweep in sweeps]
        rows.append({"delay_ms": ms, "median_us": round(pooled[ms], 1),
                     "samples": sum(sweep[i]["samples"] for sweep in sweeps),
                     "found_us": round(found, 1), "error_vs_D_us": round(abs(found - ms * 1000), 1),
                     "error_per_round_us": per_round,
                     "agent_loss": sum(sweep[i]["agent_loss"] for sweep in sweeps),
                     "report_p50_us": [sweep[i]["report_p50_us"] for sweep in sweeps]})
    worst = max(x["error_vs_D_us"] for x in rows[1:])
    return {"goal_us": GOAL_US, "runs": rows, "rounds": rounds, "max_error_vs_D_us": worst,
            "meets_goal": worst <= GOAL_US, "load_concurrency": 1}
