"""Turns decoded ring-buffer records into KernelRequest: per-connection FIFO, parsing, timing.

Pure Python (no BPF): tests can feed it synthetic records. Times stay monotonic until
``requests(clock)`` converts them, so the end-of-run clock sample can still be used.

Per connection (tgid, fd, conn_ns) requests wait in a FIFO for their response; a final
response start pops the oldest. A request's response ends (``t_resp_last``) at the last
response-side syscall before the next request or response start, the close, or the end
of collection; the kernel records carry those times so body syscalls need no record.

``parent_request`` (client direction) is best effort: the one inbound server request that
the writing thread (tid) read and has not answered yet. Servers that hand requests to
other threads, or serve several requests per thread (event loops), leave it None when
there is not exactly one such request.

Blind spots: connections whose first bytes are not HTTP/1.x (TLS, HTTP/2, other protocols)
and connections upgraded away from HTTP/1.x (101) are counted per connection, with samples.
When a target process exits its connections end there (the kernel closes its fds without
close() syscalls): ``on_exit(tgid, fds)`` may return their final kernel totals.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

from agent.evidence import KernelRequest
from agent.kernel.clock import ClockMap
from agent.kernel.events import (
    BLIND_KINDS, EV_BLIND, EV_CLOSE, EV_EXIT, EV_REQ_CONT, EV_REQ_START, EV_RESP_START, F_BY_CONTENT,
    F_HDR_DONE, F_TRUNCATED, ROLE_SERVER, SC_WRITE, SOCKET_ONLY_SYSCALLS, Event, peer_of,
)
from agent.kernel.wire import message_starts, parse_requests, parse_statuses  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

@dataclass(slots=True)
class ConnSnapshot:
    """A connection's totals as the kernel map holds them (for still-open connections)."""

    last_read_ns: int
    last_write_ns: int
    rd_bytes: int
    wr_bytes: int
    conn_ns: int = 0  # which connection of the fd; 0 when unknown


@dataclass(slots=True, eq=False)  # compared by identity
class _Req:
    id: str
    conn: str
    seq: int
    direction: str
    tgid: int
    tid: int
    fd: int
    method: str
    target: str
    version: str
    headers: dict[str, list[str]]
    headers_complete: bool
    t_req_first: int
    status: int | None = None
    t_resp_first: int | None = None
    t_resp_last: int | None = None
    req_bytes: int = 0
    resp_bytes: int = 0
    interim_statuses: list[int] = field(default_factory=list)
    parent_request: str | None = None
    aborted: bool = False
    resp_base: int = 0  # response-side byte total when the request was queued / answered
    peer_addr: str = ""
    peer_port: int = 0

    def to_record(self, clock: ClockMap) -> KernelRequest:
        return KernelRequest(
            id=self.id, conn=self.conn, seq=self.seq, direction=self.direction, tgid=self.tgid,
            tid=self.tid, fd=self.fd, method=self.method, target=self.target, version=self.version,
            headers=self.headers, headers_complete=self.headers_complete,
            t_req_first=clock.to_unix(self.t_req_first), status=self.status,
            t_resp_first=clock.to_unix(self.t_resp_first), t_resp_last=clock.to_unix(self.t_resp_last),
            req_bytes=self.req_bytes, resp_bytes=self.resp_bytes,
            interim_statuses=list(self.interim_statuses), parent_request=self.parent_request,
            aborted=self.aborted, peer_addr=self.peer_addr, peer_port=self.peer_port,
        )


class _Conn:
    __slots__ = ("tgid", "fd", "conn_ns", "name", "server", "seq", "capture", "cap_ts", "cap_tid",
                 "cap_resp_base", "chunk", "chunk_base", "fifo", "responding", "last", "ignored",
                 "peer_addr", "peer_port")

    def __init__(self, ev: Event, name: str) -> None:
        self.tgid, self.fd, self.conn_ns = ev.tgid, ev.fd, ev.conn_ns
        self.name = name
        self.server = ev.role == ROLE_SERVER
        # Every record of a connection carries its peer (kept at accept/connect): once here.
        self.peer_addr, self.peer_port = peer_of(ev)
        self.seq = 0
        self.capture: bytearray | None = None  # header bytes of the request being captured
        self.cap_ts = self.cap_tid = 0
        self.cap_resp_base = 0  # response-side byte total when the capture started
        self.chunk: list[_Req] = []  # requests parsed from the last capture
        self.chunk_base = 0  # request-side byte total before that capture's first syscall
        self.fifo: deque[_Req] = deque()  # waiting for a final response
        self.responding: _Req | None = None  # final response started, end not known yet
        self.last: Event | None = None  # the connection's last record
        self.ignored = False

    # Totals are read from a ConnSnapshot or straight from an Event: a record carries the
    # connection's totals from before its syscall under the same four names.
    def req_total(self, s: ConnSnapshot | Event) -> int:
        return s.rd_bytes if self.server else s.wr_bytes

    def resp_side(self, s: ConnSnapshot | Event) -> tuple[int, int]:
        return (s.last_write_ns, s.wr_bytes) if self.server else (s.last_read_ns, s.rd_bytes)

    @property
    def after(self) -> ConnSnapshot:
        """Totals after the last record's syscall (built when asked: rarely needed)."""
        ev = self.last
        if ev is None:
            return ConnSnapshot(0, 0, 0, 0)
        s = ConnSnapshot(ev.last_read_ns, ev.last_write_ns, ev.rd_bytes, ev.wr_bytes)
        if ev.kind == EV_CLOSE:
            return s
        if ev.syscall >= SC_WRITE:
            s.last_write_ns, s.wr_bytes = ev.ts_ns, s.wr_bytes + ev.ret
        else:
            s.last_read_ns, s.rd_bytes = ev.ts_ns, s.rd_bytes + ev.ret
        return s


class Assembler:
    """Feed it decoded records in ring-buffer order; ask for requests at the end."""

    MAX_BLIND_SAMPLES = 20

    def __init__(self, is_socket: Callable[[int, int], bool | None] | None = None,
                 on_exit: Callable[[int, list[int]], dict[int, ConnSnapshot]] | None = None) -> None:
        self._is_socket = is_socket
        self._on_exit = on_exit
        self.blind_samples: list[dict] = []  # the first blind connections, for the report
        self._conns: dict[tuple[int, int], _Conn] = {}
        self._generations: Counter[tuple[int, int]] = Counter()
        self._done: list[_Req] = []
        self._serving: dict[int, list[_Req]] = {}  # tid -> server requests it read, unanswered
        self._next_id = 0
        self.stats: Counter[str] = Counter()

    # --- records -------------------------------------------------------------------------

    def feed(self, ev: Event) -> None:
        self.stats["records"] += 1
        if ev.kind == EV_EXIT:
            self._process_exit(ev.tgid)
            return
        conn = self._conn_for(ev)
        if conn is None:
            return
        if conn.ignored:
            if ev.kind == EV_CLOSE:
                del self._conns[(ev.tgid, ev.fd)]
            return
        if ev.kind == EV_REQ_START:
            self._request_start(conn, ev)
        elif ev.kind == EV_REQ_CONT:
            self._request_more(conn, ev)
        elif ev.kind == EV_RESP_START:
            self._response_start(conn, ev)
        elif ev.kind == EV_CLOSE:
            self._close(conn, ev)
            del self._conns[(ev.tgid, ev.fd)]
            self.stats["closes"] += 1
            return
        elif ev.kind == EV_BLIND:
            self._blind(conn, ev)
        else:
            self.stats["unknown_kind"] += 1
        conn.last = ev

    def _conn_for(self, ev: Event) -> _Conn | None:
        key = (ev.tgid, ev.fd)
        conn = self._conns.get(key)
        if conn is not None and conn.conn_ns == ev.conn_ns:
            return conn
        if conn is not None:  # fd reused without a close record: the old connection ended
            self._close(conn, conn.after)
        if ev.kind == EV_CLOSE and conn is None:
            return None
        n = self._generations[key]
        self._generations[key] += 1
        conn = self._conns[key] = _Conn(ev, f"{ev.tgid}:{ev.fd}:{n}")
        if ev.flags & F_BY_CONTENT and ev.syscall not in SOCKET_ONLY_SYSCALLS and self._is_socket:
            # read()/write() also move files and pipes: a log line may begin with "GET ".
            if self._is_socket(ev.tgid, ev.fd) is False:
                conn.ignored = True
                self.stats["ignored_not_socket"] += 1
        return conn

    def _request_start(self, conn: _Conn, ev: Event) -> None:
        self._flush_capture(conn)
        before = ev  # the connection's totals before this syscall
        self._close_chunk(conn, conn.req_total(before))
        if conn.responding is not None:  # a new request: the previous response is over
            self._finish_response(conn, *conn.resp_side(before))
        conn.capture = bytearray(ev.data)
        conn.cap_ts, conn.cap_tid = ev.ts_ns, ev.tid
        conn.cap_resp_base = conn.resp_side(before)[1]
        conn.chunk_base = conn.req_total(before)
        if ev.carried:
            # The request line began in an earlier syscall ("GE" + "T / ..."): the request
            # started when that one returned, and its bytes are part of the request.
            conn.cap_ts = before.last_read_ns if conn.server else before.last_write_ns
            conn.chunk_base -= ev.carried
            self.stats["split_request_lines"] += 1
        self.stats["request_starts"] += 1
        if ev.flags & (F_HDR_DONE | F_TRUNCATED):
            self._flush_capture(conn)

    def _request_more(self, conn: _Conn, ev: Event) -> None:
        self.stats["continuations"] += 1
        if conn.capture is None or ev.cap_off != len(conn.capture):
            self.stats["continuation_gaps"] += 1  # its request start was lost or not seen
            return
        conn.capture += ev.data
        if ev.flags & (F_HDR_DONE | F_TRUNCATED):
            self._flush_capture(conn)

    def _flush_capture(self, conn: _Conn) -> None:
        """Parse the captured request bytes into queued requests."""
        data = conn.capture
        if data is None:
            return
        conn.capture = None
        data = bytes(data)
        msgs, failed = parse_requests(data)
        if failed:
            self.stats["parse_errors"] += 1
        if not msgs:
            return
        new: list[_Req] = []
        for m in msgs:
            req = _Req(
                id=f"k{self._next_id}", conn=conn.name, seq=conn.seq,
                direction="server" if conn.server else "client", tgid=conn.tgid, tid=conn.cap_tid,
                fd=conn.fd, method=m["method"], target=m["url"].decode("latin-1"),
                version=m["version"], headers=m["headers"], headers_complete=m["complete"],
                t_req_first=conn.cap_ts, resp_base=conn.cap_resp_base,
                peer_addr=conn.peer_addr, peer_port=conn.peer_port,
            )
            new.append(req)
            self._next_id += 1
            conn.seq += 1
            conn.fifo.append(req)
            if conn.server:
                serving = self._serving.get(req.tid)
                if serving is None:
                    self._serving[req.tid] = [req]
                else:
                    serving.append(req)
                self.stats["server_requests"] += 1
            else:
                serving = self._serving.get(req.tid, ())
                req.parent_request = serving[0].id if len(serving) == 1 else None
                self.stats["client_requests"] += 1
        conn.chunk = new
        starts = message_starts(data, msgs)
        for req, a, b in zip(new, starts, starts[1:]):
            req.req_bytes = b - a

    def _close_chunk(self, conn: _Conn, req_total: int) -> None:
        """The request side moved on: the last request of the previous capture gets the rest."""
        if conn.chunk:
            last = conn.chunk[-1]
            last.req_bytes = max(0, req_total - conn.chunk_base - sum(r.req_bytes for r in conn.chunk[:-1]))
            conn.chunk = []

    def _response_start(self, conn: _Conn, ev: Event) -> None:
        self._flush_capture(conn)
        before = ev  # the connection's totals before this syscall
        if conn.responding is not None:
            self._finish_response(conn, *conn.resp_side(before))
        statuses = parse_statuses(ev.data)
        self.stats["response_starts"] += 1
        if not conn.fifo:
            self.stats["orphan_responses"] += 1  # its request was not seen
            return
        head = conn.fifo[0]
        interim = [c for c in statuses if 100 <= c < 200 and c != 101]  # 101 ends HTTP/1.x
        head.interim_statuses.extend(interim)
        self.stats["interim_responses"] += len(interim)
        if interim and len(interim) == len(statuses):
            return  # interim only: the final response starts in a later syscall
        final = statuses[-1] if statuses else None
        if final is None:
            self.stats["unparsed_status"] += 1
        elif final == 101:  # the connection leaves HTTP/1.x (WebSocket, h2c): a blind spot
            self.stats["upgraded"] += 1
        conn.fifo.popleft()
        self._unserve(head)
        head.status = final
        head.t_resp_first = ev.ts_ns
        head.resp_base = conn.resp_side(before)[1]
        conn.responding = head

    def _finish_response(self, conn: _Conn, last_ns: int, resp_total: int) -> None:
        req = conn.responding
        conn.responding = None
        if req is None:
            return
        req.t_resp_last = max(last_ns, req.t_resp_first or 0)
        req.resp_bytes = max(0, resp_total - req.resp_base)
        self._done.append(req)

    def _close(self, conn: _Conn, state: ConnSnapshot | Event) -> None:
        """End of a connection: answered requests end, unanswered ones were aborted."""
        self._flush_capture(conn)
        self._close_chunk(conn, conn.req_total(state))
        self._finish_response(conn, *conn.resp_side(state))
        resp_total = conn.resp_side(state)[1]
        while conn.fifo:
            req = conn.fifo.popleft()
            self._unserve(req)
            if resp_total > req.resp_base:
                # response bytes went out but no status line was recognised
                self.stats["unrecognised_responses"] += 1
            else:
                req.aborted = True
                self.stats["aborted"] += 1
            self._done.append(req)

    def _blind(self, conn: _Conn, ev: Event) -> None:
        kind = BLIND_KINDS.get(ev.detail, "other_protocol")
        role = "server" if conn.server else "client"
        self.stats[f"blind_{role}_{kind}"] += 1
        if len(self.blind_samples) < self.MAX_BLIND_SAMPLES:
            self.blind_samples.append({"tgid": ev.tgid, "fd": ev.fd, "role": role, "kind": kind,
                                       "first_bytes": ev.data.hex()})

    def _process_exit(self, tgid: int) -> None:
        """The process is gone: each of its connections ends at its final kernel totals."""
        self.stats["process_exits"] += 1
        fds = [fd for (t, fd) in self._conns if t == tgid]
        try:
            final = self._on_exit(tgid, fds) if self._on_exit else {}
        except Exception:  # the totals are a refinement: end at the last record instead
            log.debug("reading final totals of pid %d failed", tgid, exc_info=True)
            final = {}
        for fd in fds:
            conn = self._conns.pop((tgid, fd))
            state = final.get(fd)
            if state is None or state.conn_ns not in (0, conn.conn_ns):
                state = conn.after
            if not conn.ignored:
                self._close(conn, state)
            self.stats["ended_by_exit"] += 1

    def _unserve(self, req: _Req) -> None:
        if req.direction != "server":
            return
        serving = self._serving.get(req.tid)
        if serving and req in serving:
            serving.remove(req)
            if not serving:
                del self._serving[req.tid]

    # --- end of collection -----------------------------------------------------------------

    def finish_open(self, snapshots: dict[tuple[int, int], ConnSnapshot]) -> None:
        """End collection: still-open connections end at the totals in ``snapshots`` (the
        kernel map) or, if absent, at the last record; unanswered requests stay open."""
        for key, conn in list(self._conns.items()):
            state = snapshots.get(key)
            if state is None or state.conn_ns not in (0, conn.conn_ns):  # gone, or fd reused
                state = conn.after
            self._flush_capture(conn)
            self._close_chunk(conn, conn.req_total(state))
            self._finish_response(conn, *conn.resp_side(state))
            while conn.fifo:
                req = conn.fifo.popleft()
                self._unserve(req)
                self.stats["unanswered_open"] += 1
                self._done.append(req)
            del self._conns[key]

    def requests(self, clock: ClockMap, release: bool = False) -> list[KernelRequest]:
        """Finished requests (all requests after ``finish_open``), in request-start order.
        With ``release`` the assembler lets go of them as they are converted (the last call):
        a run's requests are then never held twice."""
        done = sorted(self._done, key=lambda r: int(r.id[1:]))
        if not release:
            return [r.to_record(clock) for r in done]
        self._done = []
        for i, r in enumerate(done):
            done[i] = r.to_record(clock)
        return done  # type: ignore[return-value]  (now KernelRequest, in place)

    def open_connections(self) -> int:
        return len(self._conns)
