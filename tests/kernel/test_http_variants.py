"""HTTP/1.1 variants on real servers, real eBPF: large and chunked bodies, pipelined chunked
requests, clients that leave early, a WebSocket upgrade, a server killed mid-request.
Each checks status, method, target, byte counts and timings as the kernel saw them."""

from __future__ import annotations

import base64
import os
import signal
import socket
from pathlib import Path

import pytest

from agent.tracecontext import new_traceparent
from tests.kernel.conftest import kernel_requests, wait_for, wait_requests
from tests.kernel.test_kernel_truth import counter_delta, read_until

pytestmark = pytest.mark.kernel
AIO_SERVER = Path(__file__).with_name("aio_server.py")
MIB = 1 << 20


def exchange(port: int, wire: list[bytes], done) -> bytes:
    """Send ``wire`` piece by piece (one send() each) and read until ``done(data)``."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in wire:
            s.sendall(piece)
        return read_until(s, done, timeout=20)


def complete(data: bytes) -> bool:
    """A whole response with Content-Length has arrived."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return len(body) >= length


@pytest.mark.parametrize("script", [None, AIO_SERVER], ids=["threaded-http.server", "aiohttp"])
def test_one_mebibyte_each_way_is_counted_byte_for_byte(collector, start_server, script):
    server = start_server(script=script) if script else start_server()
    collector.add_target(server.pid)
    before = collector.stats()
    tp = str(new_traceparent())
    head = (f"POST /echo HTTP/1.1\r\nHost: x\r\ntraceparent: {tp}\r\nContent-Length: {MIB}\r\n\r\n").encode()
    body = bytes(range(256)) * (MIB // 256)
    got = exchange(server.port, [head, body], complete)
    assert got.endswith(body)
    [k] = wait_requests(collector, server.pid, 1)
    assert (k.method, k.target, k.status, k.header("traceparent")) == ("POST", "/echo", 200, tp)
    assert (k.req_bytes, k.resp_bytes) == (len(head) + MIB, len(got))
    assert k.t_req_first <= k.t_resp_first <= k.t_resp_last
    assert counter_delta(collector, before, "records") <= 6, "body bytes never produce records"
    collector.remove_target(server.pid)


def test_a_chunked_response_written_chunk_by_chunk_ends_at_its_last_chunk(collector, start_server):
    server = start_server(script=AIO_SERVER)
    collector.add_target(server.pid)
    tp = str(new_traceparent())
    got = exchange(server.port, [f"GET /chunked?n=6&size=5000 HTTP/1.1\r\nHost: x\r\ntraceparent: {tp}\r\n\r\n"
                                 .encode()], lambda d: d.endswith(b"0\r\n\r\n"))
    assert b"transfer-encoding: chunked" in got.lower()
    [k] = wait_requests(collector, server.pid, 1)
    assert (k.method, k.target, k.status, k.resp_bytes) == ("GET", "/chunked?n=6&size=5000", 200, len(got))
    assert k.t_resp_last > k.t_resp_first, "six drained writes: the response ends after it starts"
    collector.remove_target(server.pid)


def chunked_post(path: str, tp: str, chunks: list[bytes]) -> list[bytes]:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\ntraceparent: {tp}\r\nTransfer-Encoding: chunked\r\n\r\n"
    return [head.encode()] + [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks] + [b"0\r\n\r\n"]


def test_a_chunked_request_body_in_several_writes_is_one_request(collector, start_server):
    server = start_server(script=AIO_SERVER)
    collector.add_target(server.pid)
    tp = str(new_traceparent())
    wire = chunked_post("/echo", tp, [b"a" * 100, b"b" * 3000, b"c" * 7])
    got = exchange(server.port, wire, complete)
    assert got.endswith(b"a" * 100 + b"b" * 3000 + b"c" * 7)
    [k] = wait_requests(collector, server.pid, 1)
    assert (k.method, k.target, k.status, k.header("transfer-encoding")) == ("POST", "/echo", 200, "chunked")
    assert (k.req_bytes, k.resp_bytes) == (sum(map(len, wire)), len(got))
    collector.remove_target(server.pid)


def test_pipelined_chunked_requests_in_one_write_each_get_their_own_bytes(collector, start_server):
    server = start_server(script=AIO_SERVER)
    collector.add_target(server.pid)
    tps = [str(new_traceparent()) for _ in range(3)]
    wires = [b"".join(chunked_post("/echo", tp, [b"x" * (10 + i), b"y;" * (i + 1)])) for i, tp in enumerate(tps)]
    got = exchange(server.port, [b"".join(wires)], lambda d: d.count(b"HTTP/1.1 200") == 3 and complete(
        d[d.rfind(b"HTTP/1.1 200"):]))
    assert got.count(b"HTTP/1.1 200") == 3
    reqs = sorted(wait_requests(collector, server.pid, 3), key=lambda r: r.seq)
    assert [(r.target, r.status, r.header("traceparent"), r.req_bytes) for r in reqs] == \
        [("/echo", 200, tp, len(w)) for tp, w in zip(tps, wires)]
    collector.remove_target(server.pid)


def test_a_client_gone_before_the_response_still_has_its_request_and_late_answer(collector, start_server):
    server = start_server()
    collector.add_target(server.pid)
    tp = str(new_traceparent())
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(f"GET /sleep?ms=300 HTTP/1.1\r\nHost: x\r\ntraceparent: {tp}\r\n\r\n".encode())
    # the client closed at once; the threaded server still answers after 300 ms, and the
    # write succeeds (the peer's RST comes after it): the kernel saw both
    [k] = wait_requests(collector, server.pid, 1)
    assert (k.method, k.target, k.status, k.header("traceparent")) == ("GET", "/sleep?ms=300", 200, tp)
    assert k.t_resp_first - k.t_req_first >= 300_000_000
    collector.remove_target(server.pid)


def test_a_websocket_upgrade_is_one_101_request_then_a_counted_blind_spot(collector, start_server):
    server = start_server(script=AIO_SERVER)
    collector.add_target(server.pid)
    before = collector.stats()
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        assert b" 101 " in read_until(s, lambda d: b"\r\n\r\n" in d)
        mask, text = os.urandom(4), b"GET / HTTP/1.1 in a frame"
        s.sendall(bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text)))
        assert text in read_until(s, lambda d: text in d)
    [k] = wait_requests(collector, server.pid, 1)
    assert (k.method, k.target, k.status, k.header("upgrade")) == ("GET", "/ws", 101, "websocket")
    wait_for(lambda: collector.drain() >= 0 and counter_delta(collector, before, "closes") >= 1,
             what="the WebSocket connection to close")
    assert len(kernel_requests(collector, server.pid)) == 1, "frames after the upgrade are not requests"
    assert counter_delta(collector, before, "upgraded") == 1
    collector.remove_target(server.pid)


def test_a_server_killed_mid_request_ends_it_aborted_at_once(collector, start_server):
    server = start_server()
    collector.add_target(server.pid)
    before = collector.stats()
    tp = str(new_traceparent())
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(f"GET /sleep?ms=20000 HTTP/1.1\r\nHost: x\r\ntraceparent: {tp}\r\n\r\n".encode())
        wait_for(lambda: collector.drain() >= 0 and counter_delta(collector, before, "request_starts") == 1,
                 what="the server to read the request")
        os.kill(server.pid, signal.SIGKILL)
        # no close() syscall ever comes: the process-exit record ends the connection
        [k] = wait_requests(collector, server.pid, 1)
    assert (k.target, k.header("traceparent"), k.status, k.aborted) == ("/sleep?ms=20000", tp, None, True)
    assert counter_delta(collector, before, "process_exits") == 1
    assert counter_delta(collector, before, "ended_by_exit") == 1
    assert server.pid not in collector.traced_pids()
