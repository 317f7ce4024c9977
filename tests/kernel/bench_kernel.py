"""Kernel collector figures (run as root): `python -m tests.kernel.bench_kernel [--iterations N]`.

A target process exchanges HTTP/1.1 requests and responses over a socketpair as fast as it
can (each exchange: 4 syscalls that start a request or response, so 4 records: client
request, server request, server response, client response). Prints compile/attach/stop
times, records per exchange, the rate the collector drained without loss, and the cost
the probes add to a traced and to an untraced syscall, and each program's own run time
(kernel.bpf_stats is enabled only while the traced loop runs).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
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


def measure(n: int = 100_000) -> dict:
    """The figures of one bench run with ``n`` exchanges (see the module docstring)."""
    base = min(run_loop(n, None, False) for _ in range(3))
    t0 = time.monotonic()
    kc = KernelCollector(ringbuf_pages=4096)
    kc.start()
    start_s = time.monotonic() - t0
    try:
        untraced = min(run_loop(n, kc, False) for _ in range(3))
        stats_fd = enable_run_time_stats()
        t0 = time.monotonic()
        try:
            traced = run_loop(n, kc, True)
            kc.drain(timeout_s=30)
            drained_s = time.monotonic() - t0
        finally:
            os.close(stats_fd)
        stats = kc.stats()
        progs = prog_run_stats(kc)
    finally:
        t0 = time.monotonic()
        kc.stop()
        stop_s = time.monotonic() - t0
    syscalls = 4 * n
    return {
        "compile_attach_s": round(start_s, 3), "compile_s": stats["compile_s"], "stop_s": round(stop_s, 3),
        "exchanges": n, "records": stats["records"], "records_per_exchange": round(stats["records"] / n, 3),
        "received": stats["user_received"], "ring_drops": stats["ring_drops"],
        "records_per_s_drained": round(stats["user_received"] / drained_s),
        "ns_per_untraced_syscall_added": round((untraced - base) * 1e9 / syscalls),
        "ns_per_traced_syscall_with_record_added": round((traced - base) * 1e9 / syscalls),
        "programs": progs,
        "loop_s": {"no_probes": round(base, 3), "untraced": round(untraced, 3), "traced": round(traced, 3)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100_000)
    print(json.dumps(measure(ap.parse_args().iterations), indent=2))


if __name__ == "__main__":
    main()
