"""`make bench`: run every benchmark once, side by side, and write one JSON of figures.

Usage (as root): python -m tests.bench [--out reports/bench.json] [--only kernel,rate,drift]
Each benchmark module has measure() -> dict; one that fails is recorded with its error and
the exit code is 1, the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from agent import __version__
from agent.evidence import write_json_atomic

BENCHES = {
    "kernel": ("tests.kernel.bench_kernel", {"n": 50_000}),
    "rate": ("tests.bench.rate", {}),
    "drift": ("tests.bench.drift", {}),
    "analysis": ("tests.bench.analysis", {}),
}


def _summary(name: str, fig: dict) -> str:
    if name == "kernel":
        return (f"kernel: {fig['records_per_s_drained']} records/s drained, +{fig['ns_per_untraced_syscall_added']} ns "
                f"per untraced syscall, +{fig['ns_per_traced_syscall_with_record_added']} ns per traced one")
    if name == "rate":
        return (f"rate: {fig['max_zero_loss_rate_per_s']} requests/s sustained with zero loss; agent CPU "
                f"{fig['agent_cpu_s_per_1000_at_max']} s + BPF {fig['bpf_cpu_s_per_1000_at_max']} s per 1000 requests; "
                f"full speed {fig['full_speed']['rate_per_s']}/s traced vs {fig['full_speed']['untraced_rate_per_s']}/s")
    if name == "drift":
        errs = ", ".join(f"D={r['delay_ms']}ms {r['error_vs_D_us']}us" for r in fig["runs"][1:])
        return f"drift: |median(D)-median(0)-D| {errs} (goal {fig['goal_us']} us)"
    if name == "analysis":
        return __import__("tests.bench.analysis", fromlist=["summary"]).summary(fig)
    return name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root for eBPF (run `sudo make bench`)", file=sys.stderr)
        return 1
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"bench: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 1
    out: dict = {"tool_version": __version__, "host": {"kernel": platform.release(), "arch": platform.machine(),
                                                       "cpus": os.cpu_count()},
                 "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": {}, "errors": {}}
    for name in names:
        module, kwargs = BENCHES[name]
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            fig = __import__(module, fromlist=["measure"]).measure(**kwargs)
        except Exception as e:  # noqa: BLE001  (one benchmark failing must not lose the others)
            out["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            continue
        fig["bench_s"] = round(time.monotonic() - t0, 1)
        out["results"][name] = fig
        print(f"bench: {_summary(name, fig)}", file=sys.stderr, flush=True)
    write_json_atomic(args.out, out)
    print(f"bench: wrote {args.out}", file=sys.stderr)
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
