"""`make bench`: run every benchmark once, side by side, and write one JSON of figures.

Usage (as root): python -m tests.bench [--out reports/bench.json] [--only startup,kernel,...]
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

# Run in this order: the cheap figures first, the long runs last.
BENCHES = {
    "startup": ("tests.bench.startup", {}),
    "kernel": ("tests.kernel.bench_kernel", {"n": 50_000}),
    "overhead": ("tests.bench.overhead", {}),
    "rate": ("tests.bench.rate", {}),
    "footprint": ("tests.bench.footprint", {}),
    "drift": ("tests.bench.drift", {}),
    "loss": ("tests.bench.loss", {}),
    "analysis": ("tests.bench.analysis", {}),
}


def _summary(name: str, fig: dict) -> str:
    if name == "startup":
        return (f"startup: {fig['median_to_attached_s']} s from `obsconform run` to probes attached "
                f"(BPF compile + attach {fig['median_bpf_compile_and_attach_s']} s)")
    if name == "kernel":
        return (f"kernel: {fig['records_per_s_drained']} records/s drained, +{fig['ns_per_untraced_syscall_added']} ns "
                f"per untraced syscall, +{fig['ns_per_traced_syscall_with_record_added']} ns per traced one")
    if name == "overhead":
        return "overhead: " + "; ".join(
            f"{srv} throughput x{f['throughput_ratio']}"
            + (f" (goal >= {f['goal_throughput_ratio']})" if "goal_throughput_ratio" in f else "")
            + f", p99 x{f['p99_ratio']}"
            + (f" (empty hooks alone x{f['empty_hooks_throughput_ratio']}; agent/empty hooks "
               f"x{f['agent_vs_empty_hooks']})" if "empty_hooks_throughput_ratio" in f else "")
            for srv, f in fig.items() if isinstance(f, dict) and "throughput_ratio" in f)
    if name == "rate":
        return (f"rate: {fig['max_zero_loss_rate_per_s']} requests/s with zero loss (assembled "
                f"{fig['catch_up_s_at_max']} s after the load, at {fig['assembly_rate_after_load_per_s']}/s); agent CPU "
                f"{fig['agent_cpu_s_per_1000_at_max']} s + BPF {fig['bpf_cpu_s_per_1000_at_max']} s per 1000 requests; "
                f"full speed {fig['full_speed']['rate_per_s']}/s traced vs {fig['full_speed']['untraced_rate_per_s']}/s")
    if name == "footprint":
        return "footprint: " + "; ".join(
            f"{load} {f['cpu_s_per_100k']} CPU s and +{f['peak_rss_growth_mb_per_100k']} MB peak RSS per 100k "
            f"requests (loss {f['agent_loss']})" for load, f in fig.items() if isinstance(f, dict) and "cpu_s_per_100k" in f)
    if name == "drift":
        errs = ", ".join(f"D={r['delay_ms']}ms {r['error_vs_D_us']}us" for r in fig["runs"][1:])
        return f"drift: |median(D)-median(0)-D| {errs} (goal {fig['goal_us']} us)"
    if name == "loss":
        return (f"loss: {fig['spans_missing_reported']} spans reported missing, the service dropped "
                f"{fig['spans_dropped_by_service']} (exact: {fig['span_loss_exact']}); kernel {fig['kernel_requests']} "
                f"requests, agent loss {fig['agent_loss']}")
    if name == "analysis":
        return __import__("tests.bench.analysis", fromlist=["summary"]).summary(fig)
    return name


def headline(results: dict) -> dict:
    """The figures issue 6 asks for, by its numbering, from whichever benchmarks ran."""
    out: dict = {}
    if "overhead" in results:
        out["1_overhead_on_target"] = {
            srv: {k: f[k] for k in ("throughput_ratio", "p99_ratio", "goal_throughput_ratio", "meets_goal",
                                    "agent_cpu_s_per_100k", "added_cpu_us_per_request",
                                    "cpu_us_per_request_without", "empty_hooks_throughput_ratio",
                                    "agent_vs_empty_hooks") if k in f}
            for srv, f in results["overhead"].items() if isinstance(f, dict) and "throughput_ratio" in f}
    if "kernel" in results:
        k = results["kernel"]
        out["2_per_event_cost_ns"] = {"untargeted_syscall_added": k["ns_per_untraced_syscall_added"],
                                      "targeted_syscall_with_record_added": k["ns_per_traced_syscall_with_record_added"]}
    cap = {}
    if "rate" in results:
        cap["max_zero_loss_rate_per_s"] = results["rate"]["max_zero_loss_rate_per_s"]
        cap["assembly_rate_after_load_per_s"] = results["rate"]["assembly_rate_after_load_per_s"]
    if "footprint" in results:
        cap.update({f"{load}_{k}": f[k] for load, f in results["footprint"].items() if isinstance(f, dict)
                    for k in ("rate_per_s", "cpu_s_per_100k", "peak_rss_growth_mb_per_100k", "agent_loss")})
    if cap:
        out["3_capacity"] = cap
    prec = {}
    if "drift" in results:
        prec["drift_max_error_us"] = results["drift"]["max_error_vs_D_us"]
        prec["drift_goal_us"] = results["drift"]["goal_us"]
    if "loss" in results:
        prec.update({k: results["loss"][k] for k in ("requests", "spans_missing_reported", "spans_dropped_by_service",
                                                     "span_loss_exact", "metric_count_exact", "agent_loss")})
    if prec:
        out["4_precision"] = prec
    if "analysis" in results:
        out["5_analysis_scale"] = {k: v for k, v in results["analysis"].items() if not isinstance(v, (dict, list))}
    if "startup" in results:
        out["6_startup_s"] = results["startup"]["median_to_attached_s"]
    return out


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
    out["headline"] = headline(out["results"])
    write_json_atomic(args.out, out)
    print(f"bench: wrote {args.out}", file=sys.stderr)
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
