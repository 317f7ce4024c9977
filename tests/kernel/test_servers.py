"""Real servers at scale, real eBPF: the kernel's count equals the clients' count, exactly.

gunicorn (2 gthread workers, one SIGKILLed mid-run and respawned by the master) and an
asyncio server (aiohttp), each with more than 5,000 requests from 16 keep-alive clients.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.tracecontext import new_traceparent
from tests.kernel.conftest import Sent, kernel_requests, send_load, wait_for
from tests.ports import free_port

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]
AIO_SERVER = Path(__file__).with_name("aio_server.py")
CLIENTS = 16


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out |= {int(x) for x in open(f"/proc/{pid}/task/{tid}/children").read().split()}
        except OSError:
            continue
    return out


@pytest.fixture
def gunicorn():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "gthread", "--threads", "8",
         "--keep-alive", "30", "--no-control-socket", "--bind", f"127.0.0.1:{port}", "tests.kernel.wsgi_app:app"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: len(children(proc.pid)) == 2 and _answers(port), timeout=30,
                 what="gunicorn and its two workers to answer")
        yield proc, port
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


class TolerantLoad:
    """CLIENTS threads, each until it has ``per_thread`` answers; a connection is reopened
    every ``reconnect_every`` requests and after any failure (a killed worker resets its
    connections). Every attempt carries a fresh traceparent."""

    def __init__(self, port: int, per_thread: int, reconnect_every: int) -> None:
        self.port, self.per_thread, self.reconnect_every = port, per_thread, reconnect_every
        self.answered: list[Sent] = []
        self.failed: list[str] = []
        self.lock = threading.Lock()
        self.progress = 0
        self.milestone = threading.Event()
        self.milestone_at = CLIENTS * per_thread // 3

    def worker(self, _k: int) -> None:
        conn, used, mine = None, 0, 0
        while mine < self.per_thread:
            if conn is None or used >= self.reconnect_every:
                if conn is not None:
                    conn.close()
                conn, used = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10), 0
            tp = str(new_traceparent())
            sent = Sent("/", tp, time.time_ns())
            try:
                conn.request("GET", "/", headers={"traceparent": tp})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.failed.append(tp)
                conn.close()
                conn = None
                continue
            sent.t_recv_ns, sent.status = time.time_ns(), resp.status
            used += 1
            mine += 1
            with self.lock:
                self.answered.append(sent)
                self.progress += 1
                if self.progress >= self.milestone_at:
                    self.milestone.set()
        conn.close()

    def run(self) -> None:
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(self.worker, range(CLIENTS)))


def test_gunicorn_with_a_worker_killed_and_respawned_counts_exactly(collector, gunicorn):
    master, port = gunicorn
    collector.add_target(master.pid)
    before = collector.stats()
    workers = children(master.pid)
    assert workers <= collector.traced_pids(), "existing workers are targets with their master"
    load = TolerantLoad(port, per_thread=320, reconnect_every=40)
    runner = threading.Thread(target=load.run)
    runner.start()
    assert load.milestone.wait(60), "the load did not get going"
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)  # mid-run: the master must respawn it
    fresh = wait_for(lambda: children(master.pid) - workers, timeout=30, what="a respawned worker")
    assert fresh <= collector.traced_pids(), "the respawned worker is followed from its fork"
    runner.join(120)
    assert not runner.is_alive()

    answered = {s.traceparent for s in load.answered}
    assert len(answered) == CLIENTS * 320 >= 5000 and {s.status for s in load.answered} == {200}
    served = workers | fresh

    def kernel_view():
        collector.drain()
        got = [r for r in collector.requests if r.tgid in served and r.direction == "server"]
        return got if {r.header("traceparent") for r in got if r.status} >= answered else None

    got = wait_for(kernel_view, timeout=30, what="every answered request in the kernel view")
    kernel_answered = {r.header("traceparent") for r in got if r.status is not None}
    kernel_aborted = {r.header("traceparent") for r in got if r.aborted}
    # Exact: every answer a client got was seen answered, and the kernel saw no answer (and
    # no aborted request) that a client did not send and then lose to the killed worker.
    assert kernel_answered - answered <= set(load.failed)
    assert kernel_aborted <= set(load.failed)
    assert len([r for r in got if r.header("traceparent") in answered]) == len(answered), "no duplicates"
    assert any(r.tgid in fresh for r in got), "the respawned worker served requests and was seen"
    stats = collector.stats()
    assert stats["assembler"].get("process_exits", 0) - before["assembler"].get("process_exits", 0) >= 1
    assert stats["loss"] == before["loss"]
    collector.remove_target(master.pid)


def test_aiohttp_server_counts_exactly_at_concurrency_16(collector, start_server):
    server = start_server(script=AIO_SERVER)
    collector.add_target(server.pid)
    before = collector.stats()
    n = 5200
    sent = send_load(server.port, n, CLIENTS, True, path=lambda i: "/")
    assert len(sent) == n and {s.status for s in sent} == {200}

    def all_seen():
        got = kernel_requests(collector, server.pid)
        return got if len(got) >= n else None

    got = wait_for(all_seen, timeout=30, what=f"{n} kernel requests")
    assert len(got) == n, "the kernel count must equal the client count"
    assert {r.header("traceparent") for r in got} == {s.traceparent for s in sent}
    assert {(r.method, r.status, r.aborted) for r in got} == {("GET", 200, False)}
    assert len({r.conn for r in got}) == CLIENTS
    assert collector.stats()["loss"] == before["loss"]
    collector.remove_target(server.pid)
