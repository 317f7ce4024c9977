"""Kernel truth with real eBPF: real servers (child processes) and real clients on loopback."""

from __future__ import annotations

import http.client
import os
import platform
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.tracecontext import new_traceparent
from tests.kernel.conftest import kernel_requests, send_load, wait_for, wait_requests

pytestmark = pytest.mark.kernel
IO_SCRIPT = Path(__file__).with_name("io_exchange.py")


def counter_delta(kc, before: dict, key: str) -> int:
    now = kc.stats()
    if key in now:
        return now[key] - before.get(key, 0)
    return now["assembler"].get(key, 0) - before["assembler"].get(key, 0)


def read_until(sock: socket.socket, done, timeout: float = 10.0) -> bytes:
    """Read from ``sock`` until ``done(data)`` holds."""
    sock.settimeout(timeout)
    data = b""
    while not done(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


RECVFROM_NR = {"x86_64": 45, "aarch64": 207}[platform.machine()]


def blocked_in_recvfrom(pid: int) -> bool:
    """Some thread of ``pid`` is inside recvfrom() now (from /proc/PID/task/TID/syscall)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            nr = open(f"/proc/{pid}/task/{tid}/syscall").read().split()[0]
        except (OSError, IndexError):
            continue
        if nr == str(RECVFROM_NR):
            return True
    return False


LOADS = [
    pytest.param(50, 1, True, id="50-requests-1-client-keepalive"),
    pytest.param(200, 8, True, id="200-requests-8-clients-keepalive"),
    pytest.param(200, 8, False, id="200-requests-8-clients-new-connection-each"),
    pytest.param(1000, 16, True, id="1000-requests-16-clients-keepalive"),
]


@pytest.mark.parametrize("n,concurrency,keep_alive", LOADS)
def test_kernel_sees_every_request_once_with_its_traceparent(collector, start_server, n, concurrency,
                                                              keep_alive):
    server = start_server()
    collector.add_target(server.pid)
    before = collector.stats()
    sent = send_load(server.port, n, concurrency, keep_alive)
    assert [s.status for s in sent] == [200] * n

    got = wait_requests(collector, server.pid, n)
    collector.drain()
    got = kernel_requests(collector, server.pid)
    assert len(got) == n, "the kernel count must equal what the client sent and got answered"
    by_tp = {r.header("traceparent"): r for r in got}
    assert by_tp.keys() == {s.traceparent for s in sent}, "each request carries its own traceparent"
    for s in sent:
        k = by_tp[s.traceparent]
        assert (k.method, k.target, k.version, k.status) == ("GET", s.path, "1.1", 200), k
        assert k.headers_complete and not k.aborted
        assert k.t_req_first <= k.t_resp_first <= k.t_resp_last
        assert k.resp_bytes > 0 and k.req_bytes > 0
    connections = concurrency if keep_alive else n
    assert len({r.conn for r in got}) == connections
    # One record per request start, one per response start, one per close: body writes
    # (http.server writes headers and body separately) never produce a record.
    assert counter_delta(collector, before, "records") == 2 * n + connections
    assert counter_delta(collector, before, "loss") == 0
    collector.remove_target(server.pid)


def test_kernel_durations_and_unix_times_agree_with_the_client(collector, start_server):
    server = start_server()
    collector.add_target(server.pid)
    sent = send_load(server.port, 20, 2, True, path=lambda i: "/sleep?ms=20")
    got = {r.header("traceparent"): r for r in wait_requests(collector, server.pid, 20)}
    tol = 2_000_000 + collector.clock_info()["uncertainty_ns"]
    for s in sent:
        k = got[s.traceparent]
        assert k.duration_ns >= 20_000_000, f"handler sleeps 20 ms, kernel says {k.duration_ns} ns"
        # the kernel's read happens after the client's send, its last write before the client's read
        assert s.t_send_ns - tol <= k.t_req_first, (s, k)
        assert k.t_resp_last <= s.t_recv_ns + tol, (s, k)
        assert k.duration_ns <= s.t_recv_ns - s.t_send_ns + tol
    collector.remove_target(server.pid)


def test_requests_of_untargeted_processes_are_not_recorded(collector, start_server):
    target, other = start_server(), start_server()
    collector.add_target(target.pid)
    send_load(other.port, 30, 3)
    send_load(target.port, 10, 1)
    assert len(wait_requests(collector, target.pid, 10)) == 10
    seen = {r.tgid for r in collector.requests}
    assert other.pid not in seen and os.getpid() not in seen
    collector.remove_target(target.pid)


def test_headers_split_over_two_writes_are_joined(collector, start_server):
    server = start_server()
    collector.add_target(server.pid)
    before = collector.stats()
    tp = str(new_traceparent())
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /split?x=1 HTTP/1.1\r\n")
        # the server must have read the request line alone before the headers are sent
        wait_for(lambda: collector.drain() >= 0 and counter_delta(collector, before, "request_starts") == 1,
                 what="the request line to be read on its own")
        s.sendall(f"Host: x\r\ntraceparent: {tp}\r\nX-Biz-Code: B7\r\n\r\n".encode())
        read_until(s, lambda d: d.endswith(b"ok"))
    [k] = wait_requests(collector, server.pid, 1)
    assert counter_delta(collector, before, "continuations") == 1
    assert (k.target, k.status, k.headers_complete) == ("/split?x=1", 200, True)
    assert k.headers == {"host": ["x"], "traceparent": [tp], "x-biz-code": ["B7"]}
    collector.remove_target(server.pid)


def test_headers_longer_than_the_capture_budget_are_counted_truncated(collector, start_server):
    server = start_server()
    collector.add_target(server.pid)
    before = collector.stats()
    tp = str(new_traceparent())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/big", headers={"traceparent": tp, "x-big": "a" * 3000, "x-after": "1"})
    assert conn.getresponse().read() == b"ok"
    conn.close()
    [k] = wait_requests(collector, server.pid, 1)
    assert counter_delta(collector, before, "truncated_captures") == 1
    assert k.headers_complete is False and k.status == 200
    assert k.header("traceparent") == tp, "headers inside the budget are kept"
    assert "x-big" not in k.headers and "x-after" not in k.headers, "a cut header is never guessed"
    collector.remove_target(server.pid)


def test_pipelined_requests_in_one_write_are_each_recorded(collector, start_server):
    server = start_server()
    collector.add_target(server.pid)
    tps = [str(new_traceparent()) for _ in range(3)]
    wire = "".join(f"GET /p/{i} HTTP/1.1\r\nHost: x\r\ntraceparent: {tp}\r\n\r\n" for i, tp in enumerate(tps))
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(wire.encode())
        read_until(s, lambda d: d.count(b"\r\n\r\nok") == 3)
    got = sorted(wait_requests(collector, server.pid, 3), key=lambda r: r.seq)
    assert [(r.seq, r.target, r.status, r.header("traceparent")) for r in got] == \
        [(i, f"/p/{i}", 200, tp) for i, tp in enumerate(tps)]
    assert len({r.conn for r in got}) == 1
    for a, b in zip(got, got[1:]):
        assert a.t_resp_last <= b.t_resp_first, "each response ends before the next starts"
    collector.remove_target(server.pid)


def test_interim_100_continue_is_skipped_for_the_final_status(collector, start_server):
    server = start_server()
    collector.add_target(server.pid)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert b"100 Continue" in read_until(s, lambda d: b"\r\n\r\n" in d)
        s.sendall(b"hello")
        read_until(s, lambda d: d.endswith(b"hello"))
    [k] = wait_requests(collector, server.pid, 1)
    assert (k.method, k.status, k.interim_statuses) == ("POST", 200, [100])
    collector.remove_target(server.pid)


def test_a_connection_closed_without_response_is_aborted(collector, start_server):
    server = start_server()
    collector.add_target(server.pid)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/abort")
    with pytest.raises(http.client.RemoteDisconnected):
        conn.getresponse()
    conn.close()
    [k] = wait_requests(collector, server.pid, 1)
    assert (k.target, k.status, k.aborted, k.t_resp_last) == ("/abort", None, True, None)
    collector.remove_target(server.pid)


def test_outbound_call_carries_context_and_names_its_parent_request(collector, start_server):
    sut, downstream = start_server(), start_server()
    collector.add_target(sut.pid)
    tp = str(new_traceparent())
    conn = http.client.HTTPConnection("127.0.0.1", sut.port, timeout=10)
    conn.request("GET", f"/proxy?port={downstream.port}", headers={"traceparent": tp, "x-biz-code": "PAY"})
    assert conn.getresponse().status == 200
    conn.close()
    [inbound] = wait_requests(collector, sut.pid, 1)
    [outbound] = wait_requests(collector, sut.pid, 1, direction="client")
    assert (outbound.method, outbound.target, outbound.status) == ("GET", "/downstream", 200)
    assert outbound.header("traceparent") == tp and outbound.header("x-biz-code") == "PAY"
    assert outbound.parent_request == inbound.id and outbound.tid == inbound.tid
    assert inbound.t_req_first <= outbound.t_req_first <= outbound.t_resp_last <= inbound.t_resp_first
    assert not [r for r in collector.requests if r.tgid == downstream.pid]
    collector.remove_target(sut.pid)


def test_a_read_in_progress_at_attach_is_primed_and_its_request_seen(collector, start_server):
    server = start_server()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    tps = [str(new_traceparent()) for _ in range(3)]
    conn.request("GET", "/before", headers={"traceparent": tps[0]})
    conn.getresponse().read()
    wait_for(lambda: blocked_in_recvfrom(server.pid), what="the server thread to wait in recvfrom()")
    # The server thread entered recv() before it became a target: add_target reads that
    # syscall's arguments from /proc and primes them, so the next request is not lost.
    collector.add_target(server.pid)
    before = collector.stats()
    for path, tp in (("/first", tps[1]), ("/second", tps[2])):
        conn.request("GET", path, headers={"traceparent": tp})
        conn.getresponse().read()
    conn.close()
    got = wait_requests(collector, server.pid, 2)
    assert [(r.target, r.status, r.header("traceparent")) for r in got] == \
        [("/first", 200, tps[1]), ("/second", 200, tps[2])]
    assert got[0].t_req_first <= got[0].t_resp_first <= got[0].t_resp_last <= got[1].t_req_first
    assert counter_delta(collector, before, "primed_syscalls") == 1
    assert counter_delta(collector, before, "classified_by_content") == 1, "accepted before attach"
    assert counter_delta(collector, before, "orphan_responses") == 0
    assert counter_delta(collector, before, "syscalls_unseen_at_entry") == 0
    collector.remove_target(server.pid)


def test_a_child_forked_after_attach_is_followed_until_it_exits(collector, start_server):
    parent = start_server("--fork-on-stdin")
    collector.add_target(parent.pid)
    parent.proc.stdin.write("fork\n")
    parent.proc.stdin.flush()
    tag, pid, port = parent.readline().split()
    child, port = int(pid), int(port)
    assert tag == "child" and child in collector.traced_pids()
    sent = send_load(port, 10, 2)
    got = wait_requests(collector, child, 10)
    assert {r.header("traceparent") for r in got} == {s.traceparent for s in sent}
    assert not kernel_requests(collector, parent.pid)
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: child not in collector.traced_pids(), what="the exited child to leave the target set")
    assert parent.pid in collector.traced_pids()
    collector.remove_target(parent.pid)


FAMILIES = [
    pytest.param("rw", id="read-write"),
    pytest.param("vec", id="readv-writev"),
    pytest.param("msg", id="recvmsg-sendmsg"),
    pytest.param("sock", id="recv-send"),
    pytest.param("sendfile", id="sendfile"),
    pytest.param("iovs", id="request-and-status-line-across-iovecs"),
    pytest.param("msgiovs", id="headers-across-msghdr-iovecs"),
    pytest.param("split", id="request-line-split-over-two-reads"),
    pytest.param("pieces", id="line-headers-body-in-separate-writes"),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_syscall_family_yields_both_sides_with_exact_byte_counts(collector, family):
    tp = str(new_traceparent())
    proc = subprocess.Popen([sys.executable, str(IO_SCRIPT), family, tp], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    collector.add_target(proc.pid)
    before = collector.stats()
    out, _ = proc.communicate("go\n", timeout=20)
    assert proc.returncode == 0, out
    req_len, resp_len = map(int, out.split())
    [server] = wait_requests(collector, proc.pid, 1)
    [client] = wait_requests(collector, proc.pid, 1, direction="client")
    for k in (server, client):
        assert (k.method, k.target, k.status, k.header("traceparent")) == ("POST", f"/io/{family}", 200, tp)
        assert (k.req_bytes, k.resp_bytes, k.headers_complete) == (req_len, resp_len, True), k
        assert k.headers["content-length"] == ["4"] and not k.aborted
        assert k.t_req_first <= k.t_resp_first <= k.t_resp_last
    # the client wrote before the server read; the server answered before the client read
    assert client.t_req_first <= server.t_req_first and server.t_resp_first <= client.t_resp_first
    assert counter_delta(collector, before, "classified_by_content") == 0, "seen at accept/connect"
    assert counter_delta(collector, before, "sendfile_calls") == (1 if family == "sendfile" else 0)
    # split: both the client's write and the server's read of "PO" carried into the next
    assert counter_delta(collector, before, "split_request_lines") == (2 if family == "split" else 0)
    assert counter_delta(collector, before, "loss") == 0
