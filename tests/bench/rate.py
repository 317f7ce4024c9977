"""Sustained request rate with zero agent loss, and the agent's CPU per 1,000 requests.

nginx (one master, worker_processes workers) answers `return 200`; wrk drives it from
loopback. First at full speed, once without probes and once under a KernelCollector
(default sizes) targeting nginx, side by side: the ratio is the rate the probes leave.
Then paced (each connection waits 1 ms between requests, so the rate rises with the
connection count) on a ladder. The highest rate of any step with nothing dropped in the
kernel is the zero-loss rate; records wait in memory while requests flow and are assembled
after (catch_up_s; the assembly rate is taken at full speed). Per traced step:
wrk's count, the kernel's, the agent's loss, the polling thread's CPU seconds and the BPF
programs' run time (kernel.bpf_stats) per 1,000 requests.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from agent.kernel import KernelCollector
from tests.kernel.bench_kernel import enable_run_time_stats
from tests.ports import free_port

NGINX_CONF = """
daemon off; master_process on; worker_processes {workers};
pid {dir}/nginx.pid; error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 60s;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }}
}}
"""
FULL_SPEED_CONNS = 16
PACED_CONNS = [8, 16, 32, 40, 48, 64, 96]  # ~1 request per ms per connection
PACE_LUA = "function delay()\n  return 1\nend\n"
_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(ms|s|m)")


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def wrk(port: int, conns: int, seconds: int, script: Path | None = None) -> tuple[int, float]:
    """(requests completed, seconds) from one wrk run (2 threads)."""
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{int(seconds)}s"] + (["-s", str(script)] if script else [])
    out = subprocess.run(argv + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 30, check=True).stdout
    m = _WRK_TOTAL.search(out)
    if not m:
        raise RuntimeError(f"cannot read wrk's output: {out!r}")
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0}[m[3]]
    return int(m[1]), float(m[2]) * scale


def _traced_step(port: int, master: int, conns: int, seconds: int, script: Path | None) -> dict:
    """One wrk run under a fresh collector. The agent's CPU is this process's (the polling
    thread and the final drain: nothing else runs here meanwhile); the BPF programs' run
    time comes from kernel.bpf_stats. catch_up_s is how long assembly needed after the
    load ended: near zero when the agent kept up, long when a backlog had built."""
    with KernelCollector() as kc:
        kc.add_target(master)
        before = kc.stats()
        stats_fd = enable_run_time_stats()
        try:
            progs0 = kc.program_run_stats()
            cpu0 = time.process_time()
            done, took = wrk(port, conns, seconds, script)
            t0 = time.monotonic()
            kc.drain(timeout_s=120)
            catch_up = time.monotonic() - t0
            cpu = time.process_time() - cpu0
            progs1 = kc.program_run_stats()
        finally:
            os.close(stats_fd)
        after = kc.stats()
    seen = after["assembler"].get("server_requests", 0) - before["assembler"].get("server_requests", 0)
    bpf_ns = sum(v["run_time_ns"] for v in progs1.values()) - sum(v["run_time_ns"] for v in progs0.values())
    return {
        "connections": conns, "requests": done, "rate_per_s": round(done / took), "kernel_requests": seen,
        "loss": after["loss"] - before["loss"], "ring_drops": after["ring_drops"] - before["ring_drops"],
        "backlog_peak_mb": round(after.get("user_backlog_bytes_peak", 0) / 2**20, 1), "catch_up_s": round(catch_up, 3),
        "agent_cpu_s_per_1000": round(cpu / done * 1000, 5) if done else None,
        "bpf_cpu_s_per_1000": round(bpf_ns / 1e9 / done * 1000, 5) if done else None,
    }


def measure(seconds: int = 3, workers: int = 1) -> dict:
    """Rising load against nginx with and without probes; the best zero-loss rate."""
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} is not installed: run `scripts/setup-host.sh bench`")
    with tempfile.TemporaryDirectory(prefix="obsconform-bench-") as d:
        port = free_port()
        conf = Path(d) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=workers, dir=d, port=port))
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", d], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while len(_children(nginx.pid)) < workers or not _listening(port):
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start")
                time.sleep(0.05)
            base, took = wrk(port, FULL_SPEED_CONNS, seconds)
            full = _traced_step(port, nginx.pid, FULL_SPEED_CONNS, seconds, None)
            full["untraced_rate_per_s"] = round(base / took)
            full["rate_ratio"] = round(full["rate_per_s"] / full["untraced_rate_per_s"], 3)
            pace = Path(d) / "pace.lua"
            pace.write_text(PACE_LUA)
            steps = [_traced_step(port, nginx.pid, conns, seconds, pace) for conns in PACED_CONNS]
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)
    # Zero loss: nothing dropped in the kernel. While requests flow their records wait in
    # memory (agent/kernel/pacing.py) and are assembled when the load stops: catch_up_s says
    # how long that took, and the assembly rate how fast it went.
    every = steps + [full]
    clean = [s for s in every if s["loss"] == 0]
    best = max(clean, key=lambda s: s["rate_per_s"], default=None)
    return {
        "server": f"nginx, {workers} worker(s), `return 200`; wrk (2 threads) on the same 2 cores",
        "step_seconds": seconds, "full_speed": full, "paced_steps": steps,
        "max_zero_loss_rate_per_s": best["rate_per_s"] if best else 0,
        "catch_up_s_at_max": best["catch_up_s"] if best else None,
        "assembly_rate_after_load_per_s": round(full["kernel_requests"] / full["catch_up_s"])
        if full["catch_up_s"] else None,
        "agent_cpu_s_per_1000_at_max": best["agent_cpu_s_per_1000"] if best else None,
        "bpf_cpu_s_per_1000_at_max": best["bpf_cpu_s_per_1000"] if best else None,
    }


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
