"""Fixtures for the kernel tests: a running collector, target servers in child processes,
an HTTP load client that sends a unique traceparent per request, and deadline polling."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from agent.evidence import KernelRequest
from agent.tracecontext import new_traceparent

SERVER_SCRIPT = Path(__file__).with_name("target_server.py")
T = TypeVar("T")


def kernel_unavailable() -> str | None:
    """Why real eBPF cannot run here, or None. (Never true on the project's CI hosts.)"""
    if os.geteuid() != 0:
        return "needs root to load eBPF programs (run the suite with sudo)"
    try:
        import bcc  # noqa: F401  (Debian python3-bpfcc)
    except ImportError:
        return "bcc is not importable: run `make setup`"
    if not Path("/sys/kernel/tracing/events/syscalls").is_dir():
        return "tracefs with syscall tracepoints is not mounted at /sys/kernel/tracing"
    return None


@pytest.fixture(scope="session")
def kernel_ok() -> None:
    reason = kernel_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def collector(kernel_ok: None) -> Iterator:
    """One collector per test module (compiling takes ~0.5 s); tests tell their requests
    apart by the tgid of their own server process."""
    from agent.kernel import KernelCollector

    with KernelCollector(poll_ms=10) as kc:
        yield kc


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
        time.sleep(interval)


def kernel_requests(kc, tgid: int, direction: str = "server") -> list[KernelRequest]:
    kc.drain()
    return [r for r in kc.requests if r.tgid == tgid and r.direction == direction]


def wait_requests(kc, tgid: int, n: int, direction: str = "server", timeout: float = 10.0) -> list[KernelRequest]:
    """Wait until the kernel has finished ``n`` requests of ``tgid``; return them."""
    got: list[KernelRequest] = []

    def enough() -> bool:
        nonlocal got
        got = kernel_requests(kc, tgid, direction)
        return len(got) >= n

    try:
        wait_for(enough, timeout, f"{n} {direction} requests of pid {tgid}")
    except AssertionError:
        raise AssertionError(f"kernel saw {len(got)} of {n} {direction} requests of pid {tgid}; "
                             f"stats: {kc.stats()}") from None
    return got


@dataclass
class TargetServer:
    proc: subprocess.Popen
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float = 10.0) -> str:
        line: list[str] = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not line or not line[0]:
            raise AssertionError(f"server pid {self.pid} printed nothing within {timeout}s")
        return line[0].strip()


@pytest.fixture
def start_server() -> Iterator[Callable[..., TargetServer]]:
    """Start target_server.py (or ``script=``) in its own process group; everything is
    killed afterwards."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, script: Path = SERVER_SCRIPT) -> TargetServer:
        proc = subprocess.Popen([sys.executable, "-W", "ignore", str(script), *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
        procs.append(proc)
        server = TargetServer(proc, 0)
        first = server.readline()
        assert first.startswith("port "), first
        server.port = int(first.split()[1])
        return server

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        for f in (proc.stdin, proc.stdout):
            f.close()


@dataclass
class Sent:
    """One request as the client saw it."""

    path: str
    traceparent: str
    t_send_ns: int
    t_recv_ns: int = 0
    status: int | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent.split("-")[1]


def send_load(port: int, n: int, concurrency: int = 1, keep_alive: bool = True,
              path: Callable[[int], str] = lambda i: f"/items/{i}") -> list[Sent]:
    """Send ``n`` GETs over ``concurrency`` client threads, each with a fresh traceparent.
    With keep_alive each thread reuses one connection; without, every request opens a new
    connection and asks the server to close it."""
    def worker(indices: range) -> list[Sent]:
        out, conn = [], None
        try:
            for i in indices:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                headers = {"traceparent": str(new_traceparent())}
                if not keep_alive:
                    headers["connection"] = "close"
                sent = Sent(path(i), headers["traceparent"], time.time_ns())
                conn.request("GET", sent.path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                sent.t_recv_ns, sent.status = time.time_ns(), resp.status
                out.append(sent)
                if not keep_alive:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
        return out

    slices = [range(k, n, concurrency) for k in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        return [s for part in pool.map(worker, slices) for s in part]
