"""The kernel's target filter with real eBPF: a pid bitmap in front of the target set, and
syscall arguments a thread keeps in io_args from one syscall to the next."""

from __future__ import annotations

import http.client
import os

import pytest

from agent.tracecontext import new_traceparent
from tests.kernel.conftest import wait_for, wait_requests
from tests.kernel.test_kernel_truth import blocked_in_recvfrom

pytestmark = pytest.mark.kernel


def get(conn: http.client.HTTPConnection, path: str, traceparent: str) -> None:
    conn.request("GET", path, headers={"traceparent": traceparent})
    assert conn.getresponse().read() == b"ok"


def io_args_threads(collector, tgid: int) -> set[int]:
    """Threads of ``tgid`` with saved syscall arguments in the kernel's io_args map."""
    return {k.value & 0xFFFFFFFF for k in collector._probes.bpf[b"io_args"].keys() if k.value >> 32 == tgid}


def test_a_removed_target_is_not_recorded_until_added_again_and_leaves_no_arguments(collector, start_server):
    server = start_server()
    neighbour = server.pid ^ 1  # shares the server's word of the pid bitmap (64 pids a word)
    collector.add_target(server.pid)
    collector.add_target(neighbour, children=False)
    collector.remove_target(neighbour)  # must clear its own bit only
    tps = [str(new_traceparent()) for _ in range(12)]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for i, tp in enumerate(tps[:10]):
        get(conn, f"/kept/{i}", tp)
    wait_for(lambda: blocked_in_recvfrom(server.pid), what="the server thread to wait for the next request")
    tasks = {int(t) for t in os.listdir(f"/proc/{server.pid}/task")}
    assert 1 <= len(io_args_threads(collector, server.pid)) <= len(tasks), "one entry per thread, however many calls"
    assert io_args_threads(collector, server.pid) <= tasks

    collector.remove_target(server.pid)
    assert io_args_threads(collector, server.pid) == set(), "a removed target's arguments are dropped"
    get(conn, "/unseen", tps[10])
    wait_for(lambda: blocked_in_recvfrom(server.pid), what="the server thread to wait again")
    collector.add_target(server.pid)
    get(conn, "/again", tps[11])
    conn.close()
    got = sorted(wait_requests(collector, server.pid, 11), key=lambda r: r.seq)
    assert [(r.target, r.header("traceparent"), r.status) for r in got] == \
        [(f"/kept/{i}", tp, 200) for i, tp in enumerate(tps[:10])] + [("/again", tps[11], 200)]
    assert server.pid in collector.traced_pids() and neighbour not in collector.traced_pids()
    collector.remove_target(server.pid)
