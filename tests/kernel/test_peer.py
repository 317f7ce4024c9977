"""The client's address and port from accept (and the server's from connect), real eBPF on
loopback: the propagation-free key that joins kernel requests to server spans."""

from __future__ import annotations

import http.client
import platform
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agent.downstream import DownstreamSink
from agent.kernel.inflight import SYSCALL_NUMBERS, read_syscall
from agent.kernel.probes import hook_points
from agent.tracecontext import new_traceparent
from tests.kernel.conftest import wait_for, wait_requests

pytestmark = pytest.mark.kernel
PEER_SERVER = Path(__file__).with_name("peer_server.py")
CONNS, PER_CONN = 3, 4

# (listener family, how peer_server.py accepts, the peer_addr the kernel must report; ""
# means unknown, and then the port must be 0 too)
CASES = [
    pytest.param("4", "python", "127.0.0.1", id="ipv4-socket-accept"),
    pytest.param("6", "python", "::1", id="ipv6-socket-accept"),
    pytest.param("4", "accept", "127.0.0.1", id="ipv4-libc-accept"),
    pytest.param("4", "accept-short", "127.0.0.1", id="ipv4-16-byte-buffer-holds-sockaddr_in"),
    pytest.param("6", "accept-short", "", id="ipv6-truncated-is-unknown-not-half-an-address"),
    pytest.param("4", "accept4-null", "", id="ipv4-null-buffer-like-libuv"),
    pytest.param("6", "accept4-null", "", id="ipv6-null-buffer-like-libuv"),
]


def keep_alive_load(host: str, port: int) -> dict[str, int]:
    """CONNS keep-alive connections, PER_CONN GETs each: traceparent -> the client port
    (getsockname) of the connection that sent it."""
    sent: dict[str, int] = {}
    for _ in range(CONNS):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.connect()
            client_port = conn.sock.getsockname()[1]
            for _ in range(PER_CONN):
                tp = str(new_traceparent())
                conn.request("GET", "/", headers={"traceparent": tp})
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200
                sent[tp] = client_port
        finally:
            conn.close()
    return sent


@pytest.mark.parametrize("family, accept, addr", CASES)
def test_every_request_carries_the_client_address_accept_wrote(collector, start_server, family, accept, addr):
    sut = start_server("--family", family, "--accept", accept, script=PEER_SERVER)
    collector.add_target(sut.pid)
    sent = keep_alive_load("::1" if family == "6" else "127.0.0.1", sut.port)
    got = wait_requests(collector, sut.pid, len(sent))
    collector.remove_target(sut.pid)
    assert len(got) == len(sent) == CONNS * PER_CONN
    seen = {r.header("traceparent"): (r.peer_addr, r.peer_port) for r in got}
    assert seen == {tp: (addr, port if addr else 0) for tp, port in sent.items()}
    per_conn: dict[str, set[int]] = {}
    for r in got:
        per_conn.setdefault(r.conn, set()).add(r.peer_port)
    assert len(per_conn) == CONNS and all(len(ports) == 1 for ports in per_conn.values()), per_conn


@pytest.mark.parametrize("accept, name", [("python", "accept4"), ("accept", "accept")], ids=["accept4", "accept"])
def test_an_accept_already_blocked_at_attach_still_gives_the_peer(collector, start_server, accept, name):
    numbers = SYSCALL_NUMBERS.get(platform.machine())
    if numbers is None:
        pytest.fail(f"no syscall table for {platform.machine()} in agent/kernel/inflight.py")
    sut = start_server("--accept", accept, "--blocking", script=PEER_SERVER)
    wait_for(lambda: (call := read_syscall(sut.pid, sut.pid)) is not None and call.nr == numbers[name],
             what=f"the server's main thread to block in {name}")
    collector.add_target(sut.pid)  # primes the blocked accept from /proc
    sent = keep_alive_load("127.0.0.1", sut.port)
    got = wait_requests(collector, sut.pid, len(sent))
    collector.remove_target(sut.pid)
    assert {r.header("traceparent"): (r.peer_addr, r.peer_port) for r in got} == \
        {tp: ("127.0.0.1", port) for tp, port in sent.items()}


def proxy(port: int, downstream_port: int) -> tuple[int, int]:
    """One GET /proxy (the SUT calls the downstream); (status, the client port it came from)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.connect()
        client_port = conn.sock.getsockname()[1]
        conn.request("GET", f"/proxy?port={downstream_port}", headers={"traceparent": str(new_traceparent())})
        resp = conn.getresponse()
        resp.read()
        return resp.status, client_port
    finally:
        conn.close()


def test_an_outbound_request_carries_the_server_address_it_connected_to(collector, start_server):
    sut = start_server()
    collector.add_target(sut.pid)
    with DownstreamSink(None) as sink:
        down_port = urlsplit(sink.url).port
        calls = [proxy(sut.port, down_port) for _ in range(3)]
        assert [status for status, _ in calls] == [200] * 3
        assert sink.wait_for(3, 10)
    outbound = wait_requests(collector, sut.pid, 3, direction="client")
    inbound = wait_requests(collector, sut.pid, 3)
    collector.remove_target(sut.pid)
    assert [(r.peer_addr, r.peer_port) for r in outbound] == [("127.0.0.1", down_port)] * 3
    assert sorted((r.peer_addr, r.peer_port) for r in inbound) == sorted(("127.0.0.1", p) for _, p in calls)


def test_the_accept_enters_are_hook_points_the_bench_measures_too(kernel_ok):
    points = hook_points()
    assert {"syscalls:sys_enter_accept", "syscalls:sys_enter_accept4", "syscalls:sys_exit_accept",
            "syscalls:sys_exit_accept4"} <= set(points)
