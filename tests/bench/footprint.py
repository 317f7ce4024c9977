"""The agent's CPU seconds and peak memory per 100k requests, measured in a process of its own.

A child process runs the kernel collector the way a run does (probes on nginx's process tree,
records drained and assembled, every request written to kernel.jsonl at the end); nginx
answers wrk on loopback meanwhile. The child's CPU (user + system, from attach to the
written file) and its peak RSS (VmHWM, reset after compile and attach through clear_refs,
so LLVM's compile peak is not counted) are divided by the requests the kernel saw.

Two loads: paced (each wrk connection waits 1 ms between requests: the host keeps idle
CPU, records are assembled as they come) and full speed (no idle CPU: records wait in
memory until the load ends, which is where the memory goes).

Child mode: python -m tests.bench.footprint --child PID OUT_DIR
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.overhead import nginx_server
from tests.bench.rate import PACE_LUA, wrk


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def child(pid: int, out_dir: Path) -> None:
    from agent.evidence import EvidenceWriter
    from agent.kernel import KernelCollector
    from agent.kernel.stats import LOSS_KEYS

    out_dir.mkdir(parents=True, exist_ok=True)
    kc = KernelCollector(EvidenceWriter(out_dir)).start()
    try:
        kc.add_target(pid)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
        rss0, cpu0 = _status_kb("VmRSS"), _cpu_s()
        print("ready", flush=True)
        sys.stdin.readline()  # the load is over
        t0 = time.monotonic()
        requests = [r for r in kc.finish() if r.direction == "server"]
        finish_s = time.monotonic() - t0
        stats = kc.stats()
    finally:
        kc.stop()
    print(json.dumps({
        "requests": len(requests), "cpu_s": _cpu_s() - cpu0, "rss_at_attach_mb": rss0 / 1024,
        "peak_rss_mb": _status_kb("VmHWM") / 1024, "finish_s": finish_s, "loss": stats["loss"],
        "loss_by_kind": {k: stats.get(k, 0) for k in LOSS_KEYS if stats.get(k, 0)},
        "backlog_peak_mb": stats.get("user_backlog_bytes_peak", 0) / 2**20,
        "drain_gap_max_ms": stats.get("user_drain_gap_max_ms"),
        "ring_fill_peak_mb": stats.get("user_ring_fill_peak_bytes", 0) / 2**20,
        "kernel_jsonl_mb": (out_dir / "kernel.jsonl").stat().st_size / 2**20,
    }), flush=True)


def _one(pid: int, port_url: str, conns: int, seconds: int, script: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="obsconform-footprint-") as d:
        p = subprocess.Popen([sys.executable, "-m", "tests.bench.footprint", "--child", str(pid), d],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("the footprint child did not start")
            port = int(port_url.rsplit(":", 1)[1].strip("/"))
            sent, took = wrk(port, conns, seconds, script)
            p.stdin.write("stop\n")
            p.stdin.flush()
            fig = json.loads(p.stdout.readline())
        except BaseException:
            p.kill()
            raise
        finally:
            p.wait(timeout=300)
    n = fig["requests"]
    per = 100_000 / n if n else 0.0
    return {
        "wrk_requests": sent, "rate_per_s": round(sent / took), "kernel_requests": n, "agent_loss": fig["loss"], "loss_by_kind": fig["loss_by_kind"],
        "cpu_s_per_100k": round(fig["cpu_s"] * per, 3),
        "rss_at_attach_mb": round(fig["rss_at_attach_mb"], 1), "peak_rss_mb": round(fig["peak_rss_mb"], 1),
        "peak_rss_growth_mb_per_100k": round((fig["peak_rss_mb"] - fig["rss_at_attach_mb"]) * per, 1),
        "backlog_peak_mb": round(fig["backlog_peak_mb"], 1), "finish_s": round(fig["finish_s"], 2), "drain_gap_max_ms": fig["drain_gap_max_ms"],
        "ring_fill_peak_mb": round(fig["ring_fill_peak_mb"], 2),
        "kernel_jsonl_mb_per_100k": round(fig["kernel_jsonl_mb"] * per, 1),
    }


def measure(seconds: int = 5) -> dict:
    out = {}
    with nginx_server() as (url, pid), tempfile.TemporaryDirectory() as d:
        pace = Path(d) / "pace.lua"
        pace.write_text(PACE_LUA)
        out["paced"] = _one(pid, url, 32, seconds, pace)
        out["full_speed"] = _one(pid, url, 16, seconds, None)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        print(json.dumps(measure(), indent=1))
