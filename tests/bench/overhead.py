"""Overhead on the target: the same server at saturation, without and with the agent, side by side.

wrk (2 threads, --latency) drives a server on loopback as fast as it answers, in rounds
that alternate the order (without→with, then with→without, ...) so that drift of the host
cancels out. "With" is a KernelCollector (default sizes, as in a run) targeting the server's
process tree: probes attached before wrk starts, records drained after it stops; compile
and attach are not in the window (see the startup benchmark for them). Figures per server:
throughput ratio and p99 latency ratio (with/without, median over rounds, and each round),
the agent's extra CPU seconds per 100k requests, and the kernel's count against wrk's.

Servers: nginx (Debian, 1 worker, `return 200`) and the reference service (gunicorn gthread,
1 worker, OpenTelemetry SDK exporting to an OTLP receiver in this process in both arms).
nginx is also driven below saturation (paced: 1 ms between a connection's requests), where
the p99 ratio says what a request's latency pays rather than how a full queue behaves.

Saturated nginx has a third arm, "empty hooks": a program that only returns, attached to
every tracepoint the probes use. Syscall tracepoints fire for every process (the filter runs
inside them), so this is the floor of any agent built on them (SPEC §3 allows no other
hooks); the agent's own share is its ratio to that arm.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from agent.kernel import KernelCollector
from agent.kernel.probes import hook_points
from agent.otlp import OtlpReceiver
from tests.bench.rate import NGINX_CONF, PACE_LUA, _children, _listening
from tests.ports import free_port

GOALS = {"nginx": 0.95, "refservice": 0.98}  # throughput ratio, from issue 6
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_P99 = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m)")


def wrk_latency(url: str, conns: int, seconds: int, script: Path | None = None) -> dict:
    """One wrk run: requests, rate and p99 latency (µs)."""
    extra = ["-s", str(script)] if script else []
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", *extra, url],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    total, p99 = _TOTAL.search(out), _P99.search(out)
    if not total or not p99:
        raise RuntimeError(f"cannot read wrk's output: {out!r}")
    took = float(total[2]) * _UNIT_S[total[3]]
    return {"requests": int(total[1]), "rate_per_s": int(total[1]) / took,
            "p99_us": float(p99[1]) * _UNIT_S[p99[2]] * 1e6}


_HZ = os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (a server's master and workers)."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _HZ  # utime, stime
    return total


def _loaded(url: str, pid: int, conns: int, seconds: int, script: Path | None) -> dict:
    """One wrk run, plus the CPU the server, wrk and this process spent during it."""
    server0, agent0, kids0 = _tree_cpu_s(pid), time.process_time(), os.times()
    fig = wrk_latency(url, conns, seconds, script)
    kids1 = os.times()
    fig["server_cpu_s"] = _tree_cpu_s(pid) - server0
    fig["agent_cpu_s_during"] = time.process_time() - agent0
    fig["wrk_cpu_s"] = (kids1.children_user + kids1.children_system) - (kids0.children_user + kids0.children_system)
    return fig


EMPTY_HOOK = b"int obsc_empty_hook(void *ctx) { return 0; }"


@contextmanager
def empty_hooks() -> Iterator[None]:
    """A program that does nothing, on every tracepoint the probes attach to."""
    from bcc import BPF

    bpf = BPF(text=EMPTY_HOOK)
    try:
        for point in hook_points():
            bpf.attach_tracepoint(tp=point.encode(), fn_name=b"obsc_empty_hook")
        yield
    finally:
        bpf.cleanup()


def _arm(url: str, pid: int, conns: int, seconds: int, traced: bool | str, script: Path | None) -> dict:
    """One arm: False (nothing attached), "empty" (empty_hooks) or True (a KernelCollector)."""
    cpu0 = time.process_time()
    if traced is not True:
        with empty_hooks() if traced == "empty" else nullcontext():
            fig = _loaded(url, pid, conns, seconds, script)
        fig["cpu_s"] = time.process_time() - cpu0
        return fig
    with KernelCollector() as kc:
        kc.add_target(pid)
        before = kc.stats()
        cpu0 = time.process_time()  # after compile and attach
        fig = _loaded(url, pid, conns, seconds, script)
        t0 = time.monotonic()
        kc.drain(timeout_s=300)
        fig["catch_up_s"] = round(time.monotonic() - t0, 3)
        fig["cpu_s"] = time.process_time() - cpu0
        after = kc.stats()
    fig["kernel_requests"] = after["assembler"].get("server_requests", 0) - before["assembler"].get("server_requests", 0)
    fig["agent_loss"] = after["loss"] - before["loss"]
    return fig


def compare(url: str, pid: int, conns: int, seconds: int, rounds: int, script: Path | None = None,
            empty: bool = False) -> dict:
    """Rounds that rotate the order of the arms; ratios with/without per round and their
    medians; with ``empty``, also the empty-hooks arm (see the module docstring)."""
    wrk_latency(url, conns, 2, script)  # warm-up: allocator, page cache, connection set-up
    rows = []
    names = {False: "without", True: "with", "empty": "empty hooks"}
    kinds = [False, "empty", True] if empty else [False, True]
    for i in range(rounds):
        order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]  # each arm first as often
        arms = {traced: _arm(url, pid, conns, seconds, traced, script) for traced in order}
        off, on = arms[False], arms[True]

        def added_us(key: str, on: dict = on) -> float:  # CPU µs per request an arm added to one party
            return round((on[key] / on["requests"] - off[key] / off["requests"]) * 1e6, 3)

        rows.append({
            "round": i + 1, "order": ",".join(names[k] for k in order),
            "rate_without": round(off["rate_per_s"]), "rate_with": round(on["rate_per_s"]),
            "throughput_ratio": round(on["rate_per_s"] / off["rate_per_s"], 4),
            "p99_without_us": round(off["p99_us"], 1), "p99_with_us": round(on["p99_us"], 1),
            "p99_ratio": round(on["p99_us"] / off["p99_us"], 3),
            "agent_cpu_s_per_100k": round((on["cpu_s"] - off["cpu_s"] * on["requests"] / off["requests"])
                                          / on["requests"] * 100_000, 3),
            "wrk_requests_with": on["requests"], "kernel_requests": on["kernel_requests"],
            "agent_loss": on["agent_loss"], "catch_up_s": on["catch_up_s"],
            # Where the lost throughput went, in CPU µs per request during the load: BPF in
            # the server's syscalls; the tracepoints the load generator's own syscalls hit
            # (they fire for every process and filter in the kernel); the agent's draining.
            "added_cpu_us_per_request": {"server": added_us("server_cpu_s"), "load_generator": added_us("wrk_cpu_s"),
                                         "agent": added_us("agent_cpu_s_during")},
            "cpu_us_per_request_without": round((off["server_cpu_s"] + off["wrk_cpu_s"]) / off["requests"] * 1e6, 3),
        })
        if empty:
            hooks = arms["empty"]
            rows[-1]["empty_hooks"] = {
                "throughput_ratio": round(hooks["rate_per_s"] / off["rate_per_s"], 4),
                "added_cpu_us_per_request": {"server": added_us("server_cpu_s", hooks),
                                             "load_generator": added_us("wrk_cpu_s", hooks)},
                "agent_vs_empty_hooks": round(on["rate_per_s"] / hooks["rate_per_s"], 4)}
    fig = {
        "rounds": rows, "seconds_per_arm": seconds, "connections": conns,
        "throughput_ratio": round(statistics.median(r["throughput_ratio"] for r in rows), 4),
        "p99_ratio": round(statistics.median(r["p99_ratio"] for r in rows), 3),
        "agent_cpu_s_per_100k": round(statistics.median(r["agent_cpu_s_per_100k"] for r in rows), 3),
        "agent_loss": sum(r["agent_loss"] for r in rows),
        "added_cpu_us_per_request": {
            party: round(statistics.median(r["added_cpu_us_per_request"][party] for r in rows), 3)
            for party in ("server", "load_generator", "agent")},
        "cpu_us_per_request_without": round(statistics.median(r["cpu_us_per_request_without"] for r in rows), 3),
    }
    if empty:
        fig["empty_hooks_throughput_ratio"] = round(statistics.median(r["empty_hooks"]["throughput_ratio"] for r in rows), 4)
        fig["agent_vs_empty_hooks"] = round(statistics.median(r["empty_hooks"]["agent_vs_empty_hooks"] for r in rows), 4)
    return fig


def _wait_up(port: int, proc: subprocess.Popen, what: str, children: int = 0) -> None:
    deadline = time.monotonic() + 30
    while not _listening(port) or len(_children(proc.pid)) < children:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


@contextmanager
def _serving(argv: list[str], port: int, what: str, url: str, **popen) -> Iterator[tuple[str, int]]:
    """(url, pid) of a server started from ``argv`` and up (its first child forked)."""
    proc = subprocess.Popen(argv, **popen)
    try:
        _wait_up(port, proc, what, children=1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def nginx_server() -> Iterator[tuple[str, int]]:
    if not shutil.which("nginx"):
        raise RuntimeError("nginx is not installed: run `scripts/setup-host.sh bench`")
    with tempfile.TemporaryDirectory(prefix="obsconform-bench-") as d:
        port = free_port()
        conf = Path(d) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=1, dir=d, port=port))
        with _serving(["nginx", "-c", str(conf), "-p", d], port, "nginx", f"http://127.0.0.1:{port}/",
                      stderr=subprocess.DEVNULL) as served:
            yield served


@contextmanager
def refservice() -> Iterator[tuple[str, int]]:
    with OtlpReceiver(None) as otlp:
        port = free_port()
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "refservice"}
        env = {k: v for k, v in env.items() if not k.startswith("FAULT_")}
        with _serving([sys.executable, "-m", "examples.refservice", "--port", str(port)], port,
                      "the reference service", f"http://127.0.0.1:{port}/items/1", env=env,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as served:
            yield served


def measure(seconds: int = 5, rounds: int = 4) -> dict:
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed: run `scripts/setup-host.sh bench`")
    out = {}
    for name, server, conns in (("nginx", nginx_server, 16), ("refservice", refservice, 8)):
        with server() as (url, pid):
            # Six rounds: three arms each go first twice (nginx); the reference service's
            # rounds scatter over x0.95-1.03 around a cost of ~2 %, its goal.
            fig = compare(url, pid, conns, seconds, rounds + 2, empty=name == "nginx")
            if name == "nginx":
                # Latency below saturation: each connection waits 1 ms between requests
                # (~25k requests/s), where a p99 is a property of the server, not of a queue.
                with tempfile.TemporaryDirectory() as d:
                    pace = Path(d) / "pace.lua"
                    pace.write_text(PACE_LUA)
                    paced = compare(url, pid, 32, seconds, rounds, pace)
        fig["goal_throughput_ratio"] = GOALS[name]
        fig["meets_goal"] = fig["throughput_ratio"] >= GOALS[name]
        out[name] = fig
        if name == "nginx":
            out["nginx_paced"] = paced
    return out
