"""BPF run time per HTTP request, per program, against a saturated nginx (run as root):
`python -m tests.kernel.bench_bpf_cost [--rounds N] [--seconds S] [--browser-headers]`.

nginx (1 worker, `return 200`) is driven by wrk (2 threads, 16 connections) on the same
host; each round attaches a KernelCollector (default sizes), reads every program's run
count and run time (BPF_ENABLE_STATS, only while a round runs) around one wrk run, and
divides by wrk's request count. wrk's own reads and writes are counted too: they are the
untargeted path every other process pays. With --browser-headers each request carries
~470 bytes of headers (user agent, accept lists, a cookie, a traceparent) instead of ~40.
Prints the median of the rounds; run time, unlike throughput, hardly depends on what else
the host runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from agent.kernel import KernelCollector
from tests.bench.overhead import nginx_server, wrk_latency
from tests.kernel.bench_kernel import enable_run_time_stats

BROWSER_LUA = """
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
wrk.headers["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
wrk.headers["Accept-Language"] = "en-US,en;q=0.9"
wrk.headers["Accept-Encoding"] = "gzip, deflate, br"
wrk.headers["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
wrk.headers["Cookie"] = "session=3f9a0c6e2b7d4e1f8a5c9b0d2e4f6a8c; theme=dark; lang=en"
"""


def one_round(url: str, pid: int, seconds: int, script: Path | None) -> dict[str, dict[str, float]]:
    """Per program: runs and ns per request, ns per run, for one wrk run."""
    with KernelCollector() as kc:
        kc.add_target(pid)
        stats_fd = enable_run_time_stats()
        try:
            before = kc.program_run_stats()
            fig = wrk_latency(url, 16, seconds, script)
            after = kc.program_run_stats()
        finally:
            os.close(stats_fd)
        kc.drain(timeout_s=300)
    n = fig["requests"]
    out = {}
    for name, v in after.items():
        runs = v["runs"] - before.get(name, {}).get("runs", 0)
        ns = v["run_time_ns"] - before.get(name, {}).get("run_time_ns", 0)
        if runs >= n / 100:  # programs of connection set-up and process life run far less
            out[name] = {"runs_per_request": runs / n, "ns_per_run": ns / runs, "ns_per_request": ns / n}
    out["total"] = {"ns_per_request": sum(p["ns_per_request"] for p in out.values())}
    return out


def measure(rounds: int = 3, seconds: int = 5, browser_headers: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="obsconform-bpfcost-") as d, nginx_server() as (url, pid):
        script = None
        if browser_headers:
            script = Path(d) / "browser.lua"
            script.write_text(BROWSER_LUA)
        wrk_latency(url, 16, 2, script)  # warm-up
        per_round = [one_round(url, pid, seconds, script) for _ in range(rounds)]
    names = sorted({k for r in per_round for k in r})
    return {name: {key: round(statistics.median(r[name][key] for r in per_round if name in r), 2)
                   for key in per_round[0].get(name, {"ns_per_request": 0})}
            for name in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--browser-headers", action="store_true")
    args = ap.parse_args()
    print(json.dumps(measure(args.rounds, args.seconds, args.browser_headers), indent=2))


if __name__ == "__main__":
    main()
