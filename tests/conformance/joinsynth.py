"""Synthetic evidence with known ground truth for measuring the join: keep-alive client
connections to a server with a worker pool, SDK start-time quanta, both semconv styles,
dropped, unsampled and duplicated spans. The truth (``Truth``) is kept apart from the
``Evidence``, where the join cannot read it.

``.venv/bin/python -m tests.conformance.joinsynth --table [--join FILE]`` prints the scores
of every condition (``--join`` measures another join.py, e.g. an older revision's).
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from agent import __version__
from agent.evidence import (
    AGENT_USER_AGENT, DRIVER_MARKER, DRIVER_USER_AGENT, DriverRecord, Evidence, KernelRequest,
    RunMeta, Span,
)

US = 1_000
MS = 1_000_000
T0 = 1_800_000_000_000_000_000  # a fixed start: output identical for a seed
TGID = 4242
HOST = "127.0.0.1:8000"
NO_LOSS = {"ring_drops": 0, "truncated_captures": 0, "map_full": 0}


@dataclass(frozen=True)
class Route:
    method: str
    template: str | None  # http.route; None: the path is the route
    path: str  # "{}" replaced by an id
    weight: int
    statuses: tuple[tuple[int, int], ...]  # (status, weight)
    service_us: tuple[int, int] | None = None  # fixed range, else the log-normal default

    def draw(self, rng: random.Random) -> tuple[str, str, int]:
        """(path, target, status) of one request."""
        path = self.path.replace("{}", str(rng.randint(1, 60)))
        target = path + ("?verbose=1" if rng.random() < 0.1 else "")
        status = rng.choices([s for s, _ in self.statuses], [w for _, w in self.statuses])[0]
        return path, target, status


ROUTES = (
    Route("GET", "/items/{id}", "/items/{}", 6, ((200, 9), (404, 1))),
    Route("GET", "/users/{uid}/orders", "/users/{}/orders", 2, ((200, 1),)),
    Route("POST", "/orders", "/orders", 2, ((201, 19), (500, 1))),
    Route("GET", None, "/health", 1, ((200, 1),), (60, 200)),
    Route("GET", None, "/slow", 1, ((200, 1),), (5_000, 15_000)),
)


@dataclass(frozen=True)
class Condition:
    """One measured situation: how the SUT, its SDK and the load behave."""

    name: str
    key: str  # the join key this condition exercises ("traceparent", "marker", "peer", "time")
    n: int = 2000  # requests under test
    concurrency: int = 8  # keep-alive client connections
    quantum_ns: int = 0  # SDK floors span start times to this grid (0: none)
    jitter_ns: int = 20 * US  # sigma of the timestamps' lateness (half-normal)
    uncertainty_ns: int = 30 * US  # meta.clock.uncertainty_ns; the clock error lies within
    propagation: bool = True  # False: OTEL_PROPAGATORS=b3, fresh traces, unrelated parents
    marker: bool = False  # spans record the User-Agent (the driver's marker)
    peer: bool = False  # kernel saw the client port at accept and spans record it
    drop_share: float = 0.03  # sampled requests whose span is never exported
    unsampled_share: float = 0.01  # sent with trace-flags 00
    no_traceparent_share: float = 0.0  # sent without traceparent (tc/missing)
    duplicate_share: float = 0.0  # requests with a second, nested SERVER span
    attrs: str = "mixed"  # "stable" | "old" | "mixed" (per span) | "route-only"
    end: str = "draw"  # "before-write" | "after-write" | "draw" (by seed)
    unsampled_then_missing: bool = False  # the reported bug: needs concurrency 1
    workers: int = 4  # server worker pool: queueing under concurrency
    reconnect_every: int = 150  # requests per connection before the client reconnects
    seed: int = 1


@dataclass
class Truth:
    """What really happened; nothing here is in the evidence."""

    span_owner: dict[str, str] = field(default_factory=dict)  # span_id → kernel id
    driver_owner: dict[int, str] = field(default_factory=dict)  # driver seq → kernel id
    dropped: set[str] = field(default_factory=set)  # had a span the SUT never exported
    unsampled: set[str] = field(default_factory=set)  # sent with trace-flags 00
    spanless: set[str] = field(default_factory=set)  # no span exists (dropped, unsampled)
    duplicated: set[str] = field(default_factory=set)  # two SERVER spans exported
    agent: set[str] = field(default_factory=set)  # the agent's own scrapes
    after_unsampled: set[str] = field(default_factory=set)  # tc/missing right after one
    early_starts: int = 0  # spans that start before their request's kernel read
    end_anchor: str = ""  # "before-write" | "after-write"


def _hex(rng: random.Random, bits: int) -> str:
    return format(rng.getrandbits(bits) | 1, f"0{bits // 4}x")


def _service_ns(rng: random.Random, route: Route) -> int:
    if route.service_us is not None:
        return rng.randint(*route.service_us) * US
    if rng.random() < 0.01:  # a few long ones (a slow query, a GC)
        return rng.randint(8_000, 40_000) * US
    return int(min(5 * MS, max(200 * US, rng.lognormvariate(math.log(800 * US), 0.7))))


@dataclass
class _Conn:
    n: int  # connection number, unique in the run
    port: int
    seq: int = 0
    forced_turn: int | None = None  # think time before the next request (bug condition)
    # The next request goes without traceparent to this (route, path, target, status): the
    # tc phase sends its cases to one path.
    next_missing: tuple[Route, str, str, int] | None = None


class _Gen:
    """One condition's run, generated request by request in arrival order."""

    def __init__(self, c: Condition) -> None:
        if c.unsampled_then_missing and c.concurrency != 1:
            raise ValueError("unsampled_then_missing needs concurrency 1")
        self.c = c
        self.rng = random.Random(f"{c.name}/{c.seed}")
        self.truth = Truth()
        self.truth.end_anchor = c.end if c.end != "draw" else \
            self.rng.choice(("before-write", "after-write"))
        self.clock_err = self.rng.randint(-c.uncertainty_ns, c.uncertainty_ns)
        self.kernel: list[KernelRequest] = []
        self.spans: list[Span] = []
        self.driver: list[DriverRecord] = []
        self.workers = [T0] * c.workers
        self.conns = 0
        self.port = 40_000
        self.ua = f"{DRIVER_USER_AGENT}/{__version__}{DRIVER_MARKER}synth{c.seed}-"

    def new_conn(self) -> _Conn:
        self.conns += 1
        self.port += self.rng.randint(1, 7)
        return _Conn(self.conns, self.port)

    def run(self) -> tuple[Evidence, Truth]:
        c, rng = self.c, self.rng
        heap = []
        for i in range(c.concurrency):
            heapq.heappush(heap, (T0 + rng.randint(0, 300) * US, i, self.new_conn()))
        for n in range(c.n):
            t, i, conn = heapq.heappop(heap)
            if n and n % 600 == 0:
                self.agent_scrape(t - 50 * US)
            t_last = self.request(t, conn)
            if conn.seq >= c.reconnect_every:
                conn, t_last = self.new_conn(), t_last + 150 * US
            turn = conn.forced_turn if conn.forced_turn is not None else \
                rng.randint(40, 250) * US
            conn.forced_turn = None
            heapq.heappush(heap, (t_last + turn, i, conn))
        return self.evidence(), self.truth

    def handler(self, t_read: int, delay: int, busy: int) -> int:
        """When a worker starts the handler (FIFO queue on the earliest free worker)."""
        free = heapq.heappop(self.workers)
        start = max(t_read + delay, free)
        heapq.heappush(self.workers, start + busy)
        return start

    def request(self, t: int, conn: _Conn) -> int:
        """One request under test arriving at ``t``; returns its last response write."""
        c, rng, truth = self.c, self.rng, self.truth
        route = rng.choices(ROUTES, [r.weight for r in ROUTES])[0]
        path, target, status = route.draw(rng)
        missing = conn.next_missing is not None
        if conn.next_missing is not None:
            route, path, target, status = conn.next_missing
            conn.next_missing = None
        # The handler (and the span's start with it) runs late by the noise: a start taken
        # late delays the response too, so the span still starts before the response.
        service = _service_ns(rng, route)
        delay = rng.randint(20, 80) * US + abs(int(rng.gauss(0, c.jitter_ns)))
        write = 0 if rng.random() < 0.5 else rng.randint(10, 200) * US
        unsampled = not missing and rng.random() < c.unsampled_share
        missing = missing or rng.random() < c.no_traceparent_share
        if unsampled and c.unsampled_then_missing:
            # The reported bug's shape, one request at a time: the next request (without
            # traceparent) arrives 0.8 ms past a millisecond boundary B that lies inside
            # this one's window, so its span floored to 1 ms starts at B, "before" it.
            service = rng.randint(900, 1200) * US
            turn = rng.randint(60, 150) * US
            d = delay + service + write
            b = -(-(t + d + turn - 800 * US - T0) // MS) * MS + T0
            t = b + 800 * US - turn - d
            conn.forced_turn, conn.next_missing = turn, (route, path, target, status)
        kid = f"k{len(self.kernel)}"
        seq = len(self.driver)
        headers = {"host": [HOST], "user-agent": [f"{self.ua}{seq}"], "accept": ["*/*"]}
        tp = None
        if not missing:
            tp = (_hex(rng, 128), _hex(rng, 64), "00" if unsampled else "01")
            headers["traceparent"] = ["-".join(("00", *tp))]
        start = self.handler(t, delay, service + write)
        resp_first = start + service
        resp_last = resp_first + write
        self.kernel.append(KernelRequest(
            id=kid, conn=f"{TGID}:{conn.n + 6}:{conn.n}", seq=conn.seq, direction="server",
            tgid=TGID, tid=TGID, fd=conn.n + 6, method=route.method, target=target,
            version="1.1", headers=headers, headers_complete=True, t_req_first=t,
            status=status, t_resp_first=resp_first, t_resp_last=resp_last,
            req_bytes=120, resp_bytes=300, peer_addr="127.0.0.1" if c.peer else "",
            peer_port=conn.port if c.peer else 0))
        conn.seq += 1
        self.driver.append(DriverRecord(
            seq=seq, phase="tc" if (missing or unsampled) else "load", method=route.method,
            path=target, request_headers={k: v[0] for k, v in headers.items()},
            trace_id=tp[0] if tp else "", parent_id=tp[1] if tp else "",
            t_send_ns=t - rng.randint(15, 60) * US,
            t_recv_ns=resp_last + rng.randint(20, 80) * US, status=status,
            case="tc/valid-unsampled" if unsampled else "tc/missing" if missing else ""))
        truth.driver_owner[seq] = kid
        if missing and self.kernel[-2:-1] and self.kernel[-2].id in truth.unsampled:
            truth.after_unsampled.add(kid)
        if unsampled:
            truth.unsampled.add(kid)
        # A SUT that ignores the traceparent (b3) samples the unsampled request anyway.
        if unsampled and c.propagation:
            truth.spanless.add(kid)
            return resp_last
        if rng.random() < c.drop_share:
            truth.dropped.add(kid)
            truth.spanless.add(kid)
            return resp_last
        self.spans_of(self.kernel[-1], route, start, conn.port, tp)
        return resp_last

    def spans_of(self, k: KernelRequest, route: Route | None, start: int, port: int,
                 tp: tuple[str, str, str] | None) -> None:
        c, rng = self.c, self.rng
        if c.propagation and tp:
            trace, parent = tp[0], tp[1]
        else:  # a new trace; some proxies or propagators leave an unrelated parent
            trace, parent = _hex(rng, 128), _hex(rng, 64) if rng.random() < 0.5 else ""
        # Timestamps keep their causal order with the syscalls (noise only widens the gap
        # between them); only the clock conversion error may break it.
        noise = abs(int(rng.gauss(0, c.jitter_ns)))
        if self.truth.end_anchor == "before-write":
            end = k.t_resp_first - rng.randint(5, 40) * US - noise
        else:  # a thread preempted between the last write and the span's end, now and then
            end = k.t_resp_last + rng.randint(3, 30) * US + noise + \
                (rng.randint(200, 2000) * US if rng.random() < 0.01 else 0)
        s0 = self.stamp(start)
        e0 = max(s0 + US, end + self.clock_err)
        outer = self.span(k, route, trace, parent, s0, e0, port)
        if rng.random() < c.duplicate_share:  # double instrumentation: nested in the outer
            self.truth.duplicated.add(k.id)
            inner_start = self.stamp(start + rng.randint(10, 30) * US)
            self.span(k, route, trace, outer.span_id, max(s0, inner_start),
                      max(s0 + US, e0 - rng.randint(5, 20) * US), port)

    def stamp(self, t: int) -> int:
        """A start time as the SDK records it: off by the clock error, floored to its
        quantum."""
        q = self.c.quantum_ns
        t += self.clock_err
        return t - t % q if q else t

    def span(self, k: KernelRequest, route: Route | None, trace: str, parent: str, start: int,
             end: int, port: int) -> Span:
        c, rng = self.c, self.rng
        style = c.attrs if c.attrs != "mixed" else rng.choice(("stable", "old"))
        template = route.template if route else None
        if style == "old":
            attrs = {"http.method": k.method, "http.target": k.target,
                     "http.status_code": k.status, "http.scheme": "http"}
        else:
            attrs = {"http.request.method": k.method, "url.scheme": "http",
                     "http.response.status_code": k.status}
            if style != "route-only" or template is None:
                attrs["url.path"] = k.path
        if template:
            attrs["http.route"] = template
        if c.marker:
            attrs["http.user_agent" if style == "old" else "user_agent.original"] = \
                k.headers["user-agent"][0]
        if c.peer:
            name = "net.peer.port" if style == "old" else rng.choice(
                ("client.port", "client.port", "network.peer.port"))
            attrs[name] = port
        s = Span(trace_id=trace, span_id=_hex(rng, 64), parent_span_id=parent,
                 name=f"{k.method} {template or k.path}", kind="SERVER", start_ns=start,
                 end_ns=end, status_code="ERROR" if (k.status or 0) >= 500 else "UNSET",
                 attributes=attrs, resource={"service.name": "sut"}, scope="synth")
        self.truth.span_owner[s.span_id] = k.id
        self.truth.early_starts += start < k.t_req_first
        self.spans.append(s)
        return s

    def agent_scrape(self, t: int) -> None:
        """The agent's own GET /metrics, on a connection of its own; the SUT traces it."""
        conn = self.new_conn()
        headers = {"host": [HOST], "user-agent": [f"{AGENT_USER_AGENT}/{__version__}"]}
        start = self.handler(t, 30 * US, 400 * US)
        k = KernelRequest(
            id=f"k{len(self.kernel)}", conn=f"{TGID}:{conn.n + 6}:{conn.n}", seq=0,
            direction="server", tgid=TGID, tid=TGID, fd=conn.n + 6, method="GET",
            target="/metrics", version="1.1", headers=headers, headers_complete=True,
            t_req_first=t, status=200, t_resp_first=start + 380 * US,
            t_resp_last=start + 400 * US, peer_addr="127.0.0.1" if self.c.peer else "",
            peer_port=conn.port if self.c.peer else 0)
        self.kernel.append(k)
        self.truth.agent.add(k.id)
        self.spans_of(k, None, start, conn.port, None)

    def evidence(self) -> Evidence:
        c = self.c
        # Export order: batches by end time, a little shuffled within.
        self.spans.sort(key=lambda s: s.end_ns + self.rng.randint(0, 2 * MS))
        meta = RunMeta(run_id=f"synth-{c.name}", started_at="2027-01-15T08:00:00Z",
                       tool_version=__version__, requests_sent=len(self.driver),
                       concurrency=c.concurrency, capture_bytes=1024,
                       kernel_stats=dict(NO_LOSS),
                       clock={"offset_ns": 0, "uncertainty_ns": c.uncertainty_ns})
        return Evidence(run_dir=Path("/nonexistent/synth"), meta=meta, kernel=self.kernel,
                        spans=self.spans, driver=self.driver)


def generate(c: Condition) -> tuple[Evidence, Truth]:
    """The evidence of one condition's run and its ground truth (deterministic)."""
    return _Gen(c).run()


def main(argv: list[str] | None = None) -> int:
    from tests.conformance import joinscore

    return joinscore.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
