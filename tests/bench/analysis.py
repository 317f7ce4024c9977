"""Analysis scale: time and peak memory of `obsconform analyze` on 100k and 1M synthetic requests.

For each N, ``synth.write_run`` writes a run directory, then a child process runs
``agent.runner.judge`` on it (the code path of ``obsconform analyze RUN_DIR``). The child
times the steps judge() calls by wrapping them in place (load_evidence, the join, the
driver view, the checks, the report) and reads its peak RSS (VmHWM) after each; the parent
takes the child's ru_maxrss and CPU time from wait4. Each N runs ``repeats`` times on the
same directory and the fastest run is kept: other work on the 2 shared cores only slows a run.

Usage: python -m tests.bench.analysis [--sizes 100000,1000000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.bench.synth import write_run

REPO = Path(__file__).resolve().parents[2]
SIZES = (100_000, 1_000_000)
# A child that takes longer than this is hung, not slow (1M took 4 min before tuning).
CHILD_TIMEOUT_S = 1800


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _child(run_dir: Path, out_dir: Path) -> dict:
    """In the child: judge ``run_dir`` as `obsconform analyze` does, timing each step."""
    import conformance
    import conformance.registry
    import conformance.view
    from agent import runner

    steps: dict[str, float] = {}
    peaks: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                steps[name] = steps.get(name, 0.0) + time.perf_counter() - t0
                peaks[name] = _status_kb("VmHWM") / 1024
        return wrapper

    runner.load_evidence = timed("load", runner.load_evidence)
    conformance.registry.join = timed("join", conformance.registry.join)
    conformance.view.build_view = timed("view", conformance.view.build_view)
    conformance.evaluate = timed("evaluate", conformance.evaluate)
    conformance.build_report = timed("report", conformance.build_report)
    conformance.write_report = timed("report", conformance.write_report)
    start_mb = _status_kb("VmHWM") / 1024
    t0 = time.perf_counter()
    result = runner.judge(run_dir, out_dir)
    total = time.perf_counter() - t0
    checks = result.report["checks"]
    return {
        "total_s": total,
        "load_s": steps.get("load", 0.0),
        "join_s": steps.get("join", 0.0),
        "view_s": steps.get("view", 0.0),
        "checks_s": steps.get("evaluate", 0.0) - steps.get("join", 0.0) - steps.get("view", 0.0),
        "report_s": steps.get("report", 0.0),
        "start_mb": start_mb,
        "peak_after_mb": {"load": peaks.get("load"), "judge": peaks.get("evaluate"),
                          "report": peaks.get("report")},
        "verdict": result.report["summary"]["verdict"],
        "status": {c["id"]: c["status"] for c in checks},
    }


def run_child(run_dir: Path, out_dir: Path) -> dict:
    """One `analyze` of ``run_dir`` in a fresh process; its figures plus wait4's rusage."""
    with tempfile.TemporaryFile() as out:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "tests.bench.analysis", "--child",
                                 str(run_dir), str(out_dir)], cwd=REPO, stdout=out)
        timer = threading.Timer(CHILD_TIMEOUT_S, proc.kill)  # a hung child, not a slow one
        timer.start()
        try:  # wait4, not Popen.wait: this child's own peak RSS and CPU time
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"analyze child exited {proc.returncode} on {run_dir} after {wall:.0f} s")
    fig = json.loads(text.strip().splitlines()[-1])
    fig["wall_s"] = round(wall, 3)
    fig["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
    fig["peak_mb"] = round(usage.ru_maxrss / 1024, 1)
    return fig


def _one_size(n: int, repeats: int, tmp: Path, seed: int) -> dict:
    run_dir = tmp / f"run-{n}"
    t0 = time.monotonic()
    synth = write_run(run_dir, n, seed=seed)
    gen_s = time.monotonic() - t0
    size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    tries = [run_child(run_dir, tmp / f"out-{n}") for _ in range(max(1, repeats))]
    best = min(tries, key=lambda f: f["total_s"])
    shutil.rmtree(run_dir, ignore_errors=True)
    bad = [cid for cid in ("KT-001", "KT-002", "TC-001", "TC-005")
           if best["status"].get(cid) != "pass"]
    if bad:  # the figures would time a broken path, not the real one
        raise RuntimeError(f"{n} synthetic requests: {', '.join(bad)} did not pass")
    r = lambda v: round(v, 3)  # noqa: E731
    return {
        "n": n, "outbound": synth.outbound, "records": synth.records,
        "evidence_mb": round(size / 2**20, 1), "generate_s": r(gen_s),
        "total_s": r(best["total_s"]), "load_s": r(best["load_s"]), "join_s": r(best["join_s"]),
        "view_s": r(best["view_s"]), "checks_s": r(best["checks_s"]),
        "report_s": r(best["report_s"]), "cpu_s": best["cpu_s"], "peak_mb": best["peak_mb"],
        "start_mb": round(best["start_mb"], 1),
        "peak_after_mb": {k: v and round(v, 1) for k, v in best["peak_after_mb"].items()},
        "us_per_request": round(best["total_s"] / n * 1e6, 2),
        "bytes_per_request": round((best["peak_mb"] - best["start_mb"]) * 2**20 / n),
        "verdict": best["verdict"], "tries_total_s": [r(f["total_s"]) for f in tries],
    }


def measure(sizes: tuple[int, ...] = SIZES, repeats: int = 2, seed: int = 1) -> dict:
    """Figures per size and the growth from the smallest to the largest (linear = the ratio of N)."""
    with tempfile.TemporaryDirectory(prefix="obsconform-analysis-") as tmp:
        runs = [_one_size(n, repeats, Path(tmp), seed) for n in sizes]
    small, big = runs[0], runs[-1]
    flat = {}  # the headline per size, as plain numbers (make bench's summary keeps scalars)
    for r in runs:
        flat.update({f"s_at_{r['n']}": r["total_s"], f"peak_mb_at_{r['n']}": r["peak_mb"],
                     f"us_per_request_at_{r['n']}": r["us_per_request"],
                     f"bytes_per_request_at_{r['n']}": r["bytes_per_request"]})
    return {
        **flat,
        "runs": runs,
        "n_ratio": big["n"] / small["n"],
        "time_ratio": round(big["total_s"] / small["total_s"], 2),
        "mem_ratio": round(big["peak_mb"] / small["peak_mb"], 2),
        # Above the interpreter and imports, what the evidence itself costs.
        "mem_above_start_ratio": round((big["peak_mb"] - big["start_mb"])
                                       / max(1e-9, small["peak_mb"] - small["start_mb"]), 2),
        "repeats": repeats,
        "note": "best of `repeats` per size; other work on the shared cores only slows a run",
    }


def summary(fig: dict) -> str:
    big = fig["runs"][-1]
    return (f"analysis: {big['n']} requests analysed in {big['total_s']} s, {big['peak_mb']} MB peak "
            f"({big['us_per_request']} us, {big['bytes_per_request']} B per request); "
            f"x{fig['time_ratio']} time, x{fig['mem_ratio']} memory for x{fig['n_ratio']:g} requests")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=2, type=Path, metavar=("RUN_DIR", "OUT_DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    fig = measure(tuple(int(s) for s in args.sizes.split(",")), args.repeats)
    print(json.dumps(fig, indent=2))
    print(summary(fig), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
