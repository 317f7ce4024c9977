"""Kernel collector figures (run as root): `python -m tests.kernel.bench_kernel [--iterations N]`.

A target process exchanges HTTP/1.1 requests and responses over a socketpair as fast as it
can (each exchange: 4 syscalls that start a request or response, so 4 records: client
request, server request, server response, client response). Prints compile/attach/stop
times, records per exchange, the rate the collector drained without loss, and the cost
the probes add to a traced and to an untraced syscall, and each program's own run time.

The loops with probes attached (the loop untargeted, and targeted) alternate over rounds,
between no-probe loops run before the attach and after the detach; each figure is the
median over its loops, each loop kept in ``loop_s_each_round``: on this host single loops
scatter by a third, bimodally, so one run of each decides nothing. kernel.bpf_stats (two
clock reads per program run) is enabled only for one extra targeted loop, whose program
run times are reported and whose loop time is not (before 2026-12-08 the one traced loop
ran with it: those figures include its cost and took the fastest loop, not the median).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from agent.kernel import KernelCollector

LOOP = r"""
import socket, sys, time
n = int(sys.argv[1])
a, b = socket.socketpair()
req = b"GET /bench HTTP/1.1\r\nHost: x\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
sys.stdin.readline()
t = time.perf_counter()
for _ in range(n):
    a.send(req); b.recv(4096); b.send(resp); a.recv(4096)
print(time.perf_counter() - t, flush=True)
a.close(); b.close()
"""


def run_loop(n: int, kc: KernelCollector | None, target: bool) -> float:
    p = subprocess.Popen([sys.executable, "-c", LOOP, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    if kc is not None and target:
        kc.add_target(p.pid)
    p.stdin.write("go\n")
    p.stdin.flush()
    elapsed = float(p.stdout.readline())
    p.wait()
    return elapsed


def enable_run_time_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): per-program run time while the fd is open."""
    nr = {"x86_64": 321, "aarch64": 280}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 16)(0)  # enable_stats.type = BPF_STATS_RUN_TIME (0)
    fd = libc.syscall(nr, 32, ctypes.byref(attr), ctypes.sizeof(attr))  # cmd 32 = BPF_ENABLE_STATS
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS failed")
    return fd


def prog_run_stats(kc: KernelCollector) -> dict[str, dict[str, int]]:
    return {name: {"runs": v["runs"], "ns_per_run": round(v["run_time_ns"] / v["runs"]) if v["runs"] else 0}
            for name, v in kc.program_run_stats().items()}


def measure(n: int = 100_000, rounds: int = 5) -> dict:
    """The figures of one bench run with ``n`` exchanges per loop (see the module docstring)."""
    loops: dict[str, list[float]] = {"no_probes": [], "untraced": [], "traced": []}
    half = rounds // 2 + 1  # no-probe loops before the attach and as many after the detach
    loops["no_probes"] += [run_loop(n, None, False) for _ in range(half)]
    t0 = time.monotonic()
    kc = KernelCollector(ringbuf_pages=4096)
    kc.start()
    start_s = time.monotonic() - t0
    drained: list[tuple[int, float]] = []  # (records, loop + drain seconds) per traced loop
    try:
        for r in range(rounds):
            for arm in (("untraced", "traced") if r % 2 == 0 else ("traced", "untraced")):
                if arm == "untraced":
                    loops[arm].append(run_loop(n, kc, False))
                    continue
                before, t0 = kc.stats().get("user_received", 0), time.monotonic()
                loops[arm].append(run_loop(n, kc, True))
                kc.drain(timeout_s=60)  # assembled now, not beside the next loop
                took = time.monotonic() - t0
                drained.append((kc.stats().get("user_received", 0) - before, took))
        stats_fd = enable_run_time_stats()
        try:
            run_loop(n, kc, True)
            kc.drain(timeout_s=60)
        finally:
            os.close(stats_fd)
        stats = kc.stats()
        progs = prog_run_stats(kc)
    finally:
        t0 = time.monotonic()
        kc.stop()
        stop_s = time.monotonic() - t0
    loops["no_probes"] += [run_loop(n, None, False) for _ in range(half)]
    syscalls = 4 * n
    med = {arm: statistics.median(v) for arm, v in loops.items()}
    return {
        "compile_attach_s": round(start_s, 3), "compile_s": stats["compile_s"], "stop_s": round(stop_s, 3),
        "exchanges": n, "rounds": rounds, "records": stats["records"],
        "records_per_exchange": round(drained[0][0] / n, 3),
        "received": stats["user_received"], "ring_drops": stats["ring_drops"],
        # the first traced loop's: later ones assemble beside the requests kept so far
        "records_per_s_drained": round(drained[0][0] / drained[0][1]),
        "ns_per_untraced_syscall_added": round((med["untraced"] - med["no_probes"]) * 1e9 / syscalls),
        "ns_per_traced_syscall_with_record_added": round((med["traced"] - med["no_probes"]) * 1e9 / syscalls),
        "programs": progs,
        "loop_s": {arm: round(v, 3) for arm, v in med.items()},
        "loop_s_each_round": {arm: [round(x, 3) for x in v] for arm, v in loops.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(json.dumps(measure(args.iterations, args.rounds), indent=2))


if __name__ == "__main__":
    main()
