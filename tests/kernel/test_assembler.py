"""The assembler on hand-built record sequences (pure Python; the kernel tests cover the
records the real probes write). Each case is a short script of syscalls on connections."""

from __future__ import annotations

import pytest

from agent.kernel.assembler import Assembler, ConnSnapshot, parse_requests, parse_statuses
from agent.kernel.clock import ClockMap, ClockSample
from agent.kernel.events import (
    EV_CLOSE, EV_REQ_CONT, EV_REQ_START, EV_RESP_START, F_BY_CONTENT, F_HDR_DONE, F_PEER_INET,
    F_PEER_INET6, F_TRUNCATED,
    ROLE_CLIENT, ROLE_SERVER, SC_READ, SC_SENDTO, SC_WRITE, Event,
)

CLOCK = ClockMap(ClockSample(offset_ns=1_000_000_000_000, uncertainty_ns=10, mono_ns=0))


class Wire:
    """Plays syscalls on one connection and turns them into records like the probes do."""

    def __init__(self, asm: Assembler, role: int = ROLE_SERVER, tgid: int = 10, fd: int = 5,
                 conn_ns: int = 1, flags: int = 0, peer: tuple[int, bytes] = (0, b"")) -> None:
        self.asm, self.role, self.tgid, self.fd, self.conn_ns, self.flags = asm, role, tgid, fd, conn_ns, flags
        self.peer = peer  # (port, 16 address bytes) every record carries, as the probes do
        self.t = 100
        self.rd = self.wr = self.last_rd = self.last_wr = 0
        self.capturing = False
        self.cap_used = 0

    def _event(self, kind: int, sc: int, ret: int, data: bytes = b"", flags: int = 0, tid: int = 0,
               cap_off: int = 0) -> Event:
        return Event(self.t, self.conn_ns, self.last_rd, self.last_wr, self.rd, self.wr, ret,
                     self.tgid, tid or self.tgid, self.fd, len(data), cap_off, kind, self.role,
                     self.flags | flags, sc, data, peer_port=self.peer[0], peer_addr=self.peer[1])

    def _io(self, read: bool, data: bytes, tid: int = 0, sc: int = 0) -> None:
        self.t += 1000
        request_side = read == (self.role == ROLE_SERVER)
        ev = None
        if request_side and (self.capturing or data.split(b" ")[0] in (b"GET", b"POST", b"PUT")):
            kind = EV_REQ_CONT if self.capturing else EV_REQ_START
            cap_off = self.cap_used if self.capturing else 0
            self.capturing = b"\r\n\r\n" not in data
            self.cap_used = cap_off + len(data)
            ev = self._event(kind, sc or (SC_READ if read else SC_WRITE), len(data), data,
                             0 if self.capturing else F_HDR_DONE, tid, cap_off)
        elif not request_side and data.startswith(b"HTTP/1."):
            ev = self._event(EV_RESP_START, sc or (SC_READ if read else SC_WRITE), len(data), data[:64],
                             tid=tid)
        if ev is not None:
            self.asm.feed(ev)
        if read:
            self.rd, self.last_rd = self.rd + len(data), self.t
        else:
            self.wr, self.last_wr = self.wr + len(data), self.t

    def read(self, data: bytes, **kw) -> None:
        self._io(True, data, **kw)

    def write(self, data: bytes, **kw) -> None:
        self._io(False, data, **kw)

    def close(self) -> None:
        self.t += 1000
        self.asm.feed(self._event(EV_CLOSE, 10, 0))

    def snapshot(self) -> ConnSnapshot:
        return ConnSnapshot(self.last_rd, self.last_wr, self.rd, self.wr, self.conn_ns)


def req(path: str, tp: str = "", extra: str = "") -> bytes:
    tp_line = f"traceparent: {tp}\r\n" if tp else ""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{tp_line}{extra}\r\n".encode()


def resp(status: int = 200, body: bytes = b"ok") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_keepalive_requests_end_at_the_last_write_before_the_next_request():
    asm = Assembler()
    w = Wire(asm)
    w.read(req("/a", "tp-a"))
    w.write(resp(200, b""))
    w.write(b"body-1")
    last_write_a = w.t
    w.read(req("/b", "tp-b"))
    w.write(resp(404))
    w.close()
    a, b = asm.requests(CLOCK)
    assert (a.target, a.status, a.header("traceparent"), b.target, b.status) == ("/a", 200, "tp-a", "/b", 404)
    assert a.t_resp_last == last_write_a + 1_000_000_000_000, "t_resp_last is the body write, in Unix ns"
    assert a.resp_bytes == len(resp(200, b"")) + 6 and a.req_bytes == len(req("/a", "tp-a"))
    assert (a.seq, b.seq, a.conn, b.conn) == (0, 1, "10:5:0", "10:5:0")


def test_pipelined_requests_in_one_read_are_answered_in_order():
    asm = Assembler()
    w = Wire(asm)
    post = b"POST /3 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    w.read(req("/1") + req("/2") + post)
    for status in (200, 201, 202):
        w.write(resp(status))
    w.close()
    got = asm.requests(CLOCK)
    assert [(r.method, r.target, r.status) for r in got] == [("GET", "/1", 200), ("GET", "/2", 201),
                                                             ("POST", "/3", 202)]
    assert [r.req_bytes for r in got] == [len(req("/1")), len(req("/2")), len(post)]
    assert got[0].t_req_first == got[2].t_req_first


@pytest.mark.parametrize("writes,final,interim", [
    ([resp(100, b""), resp(200)], 200, [100]),
    ([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"], 200, [100]),
    ([resp(103, b""), resp(100, b""), resp(500)], 500, [103, 100]),
    ([resp(101, b"")], 101, []),
], ids=["100-then-200", "interim-and-final-in-one-write", "two-interims", "101-is-final"])
def test_interim_responses_are_recorded_and_skipped(writes, final, interim):
    asm = Assembler()
    w = Wire(asm)
    w.read(req("/x"))
    for data in writes:
        w.write(data)
    w.close()
    [r] = asm.requests(CLOCK)
    assert (r.status, r.interim_statuses, r.aborted) == (final, interim, False)


@pytest.mark.parametrize("after_request,aborted,stat", [
    ([], True, "aborted"),
    ([b"garbled response"], False, "unrecognised_responses"),
], ids=["nothing-written", "bytes-without-status-line"])
def test_closed_without_a_recognised_response(after_request, aborted, stat):
    asm = Assembler()
    w = Wire(asm)
    w.read(req("/x"))
    for data in after_request:
        w.write(data)
    w.close()
    [r] = asm.requests(CLOCK)
    assert (r.status, r.aborted, r.t_resp_last) == (None, aborted, None)
    assert asm.stats[stat] == 1


def test_headers_in_several_reads_are_joined_and_truncation_is_not_guessed():
    asm = Assembler()
    w = Wire(asm)
    w.read(b"GET /s HTTP/1.1\r\n")
    w.read(b"traceparent: tp\r\n")
    w.read(b"x-biz-code: B\r\n\r\n")
    w.write(resp())
    t = Wire(asm, fd=6)
    asm.feed(t._event(EV_REQ_START, SC_READ, 60, b"GET /t HTTP/1.1\r\nx-a: 1\r\nx-cut: abc", F_TRUNCATED))
    t.close()
    w.close()
    s, t_req = asm.requests(CLOCK)
    assert (s.headers, s.headers_complete) == ({"traceparent": ["tp"], "x-biz-code": ["B"]}, True)
    assert (t_req.headers, t_req.headers_complete, t_req.target) == ({"x-a": ["1"]}, False, "/t")


def test_a_continuation_without_its_start_is_counted_not_guessed():
    asm = Assembler()
    w = Wire(asm)
    asm.feed(w._event(EV_REQ_CONT, SC_READ, 10, b"x-a: 1\r\n\r\n", F_HDR_DONE, cap_off=40))
    w.close()
    assert asm.requests(CLOCK) == [] and asm.stats["continuation_gaps"] == 1


def test_client_requests_name_the_one_server_request_their_thread_serves():
    asm = Assembler()
    inbound = Wire(asm, fd=5)
    inbound.read(req("/in", "tp"), tid=77)
    out = Wire(asm, role=ROLE_CLIENT, fd=9)
    out.write(req("/down", "tp"), tid=77)
    out.read(resp(204), tid=77)
    out.close()
    other = Wire(asm, role=ROLE_CLIENT, fd=8)
    other.write(req("/elsewhere"), tid=78)  # a thread that serves nothing
    other.close()
    inbound.write(resp(200))
    inbound.close()
    by_target = {r.target: r for r in asm.requests(CLOCK)}
    assert by_target["/down"].parent_request == by_target["/in"].id
    assert by_target["/down"].direction == "client" and by_target["/down"].status == 204
    assert by_target["/elsewhere"].parent_request is None


def test_parent_request_stays_unknown_when_a_thread_serves_several():
    asm = Assembler()
    for fd in (5, 6):  # an event loop: one thread, two requests in flight
        Wire(asm, fd=fd).read(req(f"/in{fd}"), tid=77)
    out = Wire(asm, role=ROLE_CLIENT, fd=9)
    out.write(req("/down"), tid=77)
    out.close()
    asm.finish_open({})
    assert {r.target: r.parent_request for r in asm.requests(CLOCK)}["/down"] is None


def test_open_connections_end_from_the_kernel_map_at_finish():
    asm = Assembler()
    w = Wire(asm)
    w.read(req("/a"))
    w.write(resp(200, b""))
    w.write(b"late body")  # no record: only the map knows about it
    w.read(req("/b"))  # unanswered at the end
    asm.finish_open({(10, 5): w.snapshot()})
    a, b = asm.requests(CLOCK)
    assert a.t_resp_last is not None and a.status == 200
    assert (b.status, b.aborted, b.t_resp_last) == (None, False, None)


def test_fd_reuse_without_close_ends_the_old_connection():
    asm = Assembler()
    old = Wire(asm, conn_ns=1)
    old.read(req("/old"))
    old.write(resp())
    new = Wire(asm, conn_ns=2)
    new.read(req("/new"))
    new.write(resp())
    new.close()
    got = asm.requests(CLOCK)
    assert [(r.target, r.conn, r.status) for r in got] == [("/old", "10:5:0", 200), ("/new", "10:5:1", 200)]


def test_every_request_of_a_connection_has_its_peer_and_a_reused_fd_its_own():
    v4 = bytes([10, 1, 2, 3]) + bytes(12)
    v6 = bytes(15) + b"\x01"
    asm = Assembler()
    first = Wire(asm, conn_ns=1, flags=F_PEER_INET, peer=(40001, v4))
    for path in ("/a", "/b"):  # keep-alive
        first.read(req(path))
        first.write(resp())
    first.close()
    second = Wire(asm, conn_ns=2, flags=F_PEER_INET6, peer=(40002, v6))  # the same fd, accepted again
    second.read(req("/c"))
    second.write(resp())
    unknown = Wire(asm, fd=6, peer=(0, bytes(16)))  # accept4(fd, NULL, NULL) or classified by content
    unknown.read(req("/d"))
    unknown.write(resp())
    asm.finish_open({})
    got = [(r.target, r.peer_addr, r.peer_port) for r in asm.requests(CLOCK)]
    assert got == [("/a", "10.1.2.3", 40001), ("/b", "10.1.2.3", 40001), ("/c", "::1", 40002), ("/d", "", 0)]


@pytest.mark.parametrize("is_socket,sc,kept", [
    (False, SC_WRITE, False),
    (None, SC_WRITE, True),
    (False, SC_SENDTO, True),
], ids=["file-is-ignored", "unknown-is-kept", "socket-only-syscall-is-kept"])
def test_content_classified_fds_that_are_not_sockets_are_ignored(is_socket, sc, kept):
    asm = Assembler(is_socket=lambda tgid, fd: is_socket)
    w = Wire(asm, role=ROLE_CLIENT, flags=F_BY_CONTENT)
    w.write(b"GET /looks-like-a-request in a log line\r\n\r\n", sc=sc)
    w.close()
    asm.finish_open({})
    assert len(asm.requests(CLOCK)) == int(kept)


@pytest.mark.parametrize("data,expected", [
    (b"HTTP/1.1 200 OK\r\n", [200]),
    (b"HTTP/1.0 503 Busy", [503]),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\n", [100, 302]),
    (b"HTTP/1.1 100 Continue\r\n\r\n", [100]),
    (b"HTTP/2 200", []),
    (b"HTTP/1.1 2", []),
], ids=["ok", "http10", "interim+final", "interim-only", "not-http1", "cut"])
def test_parse_statuses(data, expected):
    assert parse_statuses(data) == expected


def test_parse_requests_keeps_header_order_and_repeats():
    msgs, failed = parse_requests(b"GET /a HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nHost: h\r\n\r\n")
    assert not failed
    assert msgs[0]["headers"] == {"x-a": ["1", "2"], "host": ["h"]}


def test_parse_requests_reports_garbage_without_raising():
    msgs, failed = parse_requests(b"GET /a HTTP/1.1\r\nBad Header: x\r\n\r\n")
    assert failed and msgs[0]["method"] == "GET" and not msgs[0]["complete"]

