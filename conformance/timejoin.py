"""Join spans to kernel requests by time when no identifier links them: an optimal
assignment per group of mutually compatible requests and spans, each pair kept only when no
other assignment within the timing noise would fit as well.

The precise part of a span is its end: SDKs that quantize start times (to 1 ms, 10 ms) still
end spans to the microsecond, next to the response's first or last write. So the cost of
(request, span) is how far the span's end lies from the response's writes, corrected by the
offset the run's identified joins show (``Timing.calibrate``); the start only bounds what is
feasible (never earlier than the read of the request line by more than its quantum).
When no identifier joined enough pairs to calibrate on, the offset is learnt from the
components of one request and one span (certain without any model). A request is declared
without span only when every span that could be its own is clearly another's, by more than
the latest span end the certain pairs showed (a preempted thread ends its span late, and
the taker may be the request whose span was dropped); otherwise it is ``unjoinable`` and
never counted as lost.
"""

from __future__ import annotations

import bisect
import statistics
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from agent.evidence import KernelRequest, Span

# A span may end after the last write by this much (work after the response, a thread
# preempted between the write and the span's end on a loaded host) and still be a candidate.
END_AFTER_NS = 5_000_000
# Without joins to calibrate on: pairs whose costs differ by less than this are ambiguous.
DEFAULT_TOLERANCE_NS = 300_000
MIN_TOLERANCE_NS = 50_000
CALIBRATION_MIN = 10  # identified pairs needed to trust the measured end offset
# Certain pairs needed before their latest span end is taken as the run's tail: fewer would
# miss a late end that one span in a hundred shows (a preempted thread).
TAIL_MIN_PAIRS = 200
# Added to the cost of giving a span to a request sent unsampled (flags 00): such a request
# rightly has none, so it takes a span only when that span clearly fits no other request.
UNSAMPLED_PENALTY_TOLERANCES = 4
# Components this large are solved greedily in time order (the optimal assignment is cubic);
# the confidence test still guards every pair.
MAX_OPTIMAL = 300
_INFEASIBLE = 1e15

QUANTA_NS = (10_000_000, 1_000_000)  # start/end quanta looked for, coarsest first
# A span may start this long before the kernel saw the request even when too few spans show
# a grid: 1 ms is the commonest SDK quantum, and the start only bounds what is feasible.
MIN_START_SLACK_NS = 1_000_000
QUANTUM_SHARE = 0.9  # share of spans on the grid for a quantum to be taken as the SDK's


def quantum(times: Sequence[int]) -> int:
    """The coarsest grid (10 ms, 1 ms) nearly all ``times`` lie on, else 0."""
    if len(times) < 20:
        return 0
    for q in QUANTA_NS:
        if sum(1 for t in times if t % q == 0) >= QUANTUM_SHARE * len(times):
            return q
    return 0


@dataclass
class Timing:
    """How span ends relate to the response's writes in this run, and the noise."""

    uncertainty_ns: int  # clock conversion uncertainty
    start_quantum_ns: int = MIN_START_SLACK_NS  # how early a span may start (SDK grid)
    end_quantum_ns: int = 0
    anchor: str = "interval"  # "first" | "last" | "interval" (no calibration)
    offset_ns: int = 0  # median (span end - anchor write) of identified joins
    tolerance_ns: int = DEFAULT_TOLERANCE_NS
    # The farthest a certain pair's span end strayed from the anchor (a thread preempted
    # before ending its span): a request is declared without span only when the span it
    # could own fits its taker better than this. Unmeasured: all the lateness allowed.
    tail_ns: int = END_AFTER_NS

    @property
    def calibrated(self) -> bool:
        return self.anchor != "interval"

    @classmethod
    def calibrate(cls, uncertainty_ns: int, pairs: list[tuple[KernelRequest, Span]],
                  spans: Sequence[Span]) -> "Timing":
        """Timing measured on the run's identified (request, span) pairs and its spans."""
        t = cls(uncertainty_ns, max(MIN_START_SLACK_NS, quantum([s.start_ns for s in spans])),
                quantum([s.end_ns for s in spans]))
        base = max(MIN_TOLERANCE_NS, 2 * uncertainty_ns) + t.end_quantum_ns
        t.tolerance_ns = DEFAULT_TOLERANCE_NS + base
        pairs = [(k, s) for k, s in pairs if k.t_resp_first is not None and k.t_resp_last is not None]
        if len(pairs) < CALIBRATION_MIN:
            return t
        best = None
        for anchor in ("first", "last"):
            devs = [s.end_ns - (k.t_resp_first if anchor == "first" else k.t_resp_last)
                    for k, s in pairs]
            med = int(statistics.median(devs))
            spread = sorted(abs(d - med) for d in devs)
            p95 = spread[min(len(spread) - 1, int(0.95 * len(spread)))]
            if best is None or p95 < best[2]:
                best = (anchor, med, p95, spread[-1])
        t.anchor, t.offset_ns = best[0], best[1]
        t.tolerance_ns = min(DEFAULT_TOLERANCE_NS, 2 * best[2]) + base
        if len(pairs) >= TAIL_MIN_PAIRS:  # best[3]: the farthest end from the anchor
            t.tail_ns = min(END_AFTER_NS, best[3]) + base
        return t

    def feasible(self, k: KernelRequest, s: Span) -> bool:
        end = k.t_resp_last if k.t_resp_last is not None else k.t_req_first
        u = self.uncertainty_ns
        return (s.start_ns >= k.t_req_first - u - self.start_quantum_ns
                and s.start_ns <= end + u
                and s.end_ns >= k.t_req_first - u
                and s.end_ns <= end + u + END_AFTER_NS + self.end_quantum_ns)

    def cost(self, k: KernelRequest, s: Span) -> float:
        first = k.t_resp_first if k.t_resp_first is not None else k.t_req_first
        last = k.t_resp_last if k.t_resp_last is not None else first
        e = s.end_ns
        if self.anchor == "first":
            return abs(e - self.offset_ns - first)
        if self.anchor == "last":
            return abs(e - self.offset_ns - last)
        return first - e if e < first else (e - last if e > last else 0)


@dataclass
class TimeJoin:
    """The outcome: pairs joined, requests without span, and the undecidable rest."""

    pairs: list[tuple[int, Span]]  # (request index, span)
    missing: list[int]  # request indexes no span can belong to
    unjoinable: list[int]  # request indexes whose span the join cannot decide
    unjoinable_spans: list[Span]


def assign(requests: list[KernelRequest], spans: list[Span],
           group_of_request: Callable[[KernelRequest], Hashable | None],
           compatible: Callable[[KernelRequest, Span], bool],
           groups_of_span: Callable[[Span], list[Hashable]],
           timing: Timing, unsampled: set[int]) -> TimeJoin:
    """Join ``spans`` to ``requests`` within groups (a request's one group key; a span's
    candidate group keys), by time. ``unsampled`` holds indexes of requests sent with
    trace-flags 00. Spans no request can own are simply left out of the result."""
    by_group: dict[Hashable, list[int]] = {}
    for i, k in enumerate(requests):
        g = group_of_request(k)
        if g is not None:
            by_group.setdefault(g, []).append(i)
    starts: dict[Hashable, list[int]] = {}
    longest: dict[Hashable, int] = {}
    for g, idx in by_group.items():
        idx.sort(key=lambda i: requests[i].t_req_first)
        starts[g] = [requests[i].t_req_first for i in idx]
        longest[g] = max((requests[i].t_resp_last or requests[i].t_req_first)
                         - requests[i].t_req_first for i in idx)

    # Edges span → feasible requests; components by union-find over them.
    edges: list[list[int]] = []
    slack = timing.uncertainty_ns + timing.start_quantum_ns
    for s in spans:
        cands: list[int] = []
        for g in groups_of_span(s):
            idx = by_group.get(g)
            if not idx:
                continue
            st = starts[g]
            lo = bisect.bisect_left(st, s.start_ns - longest[g] - slack - END_AFTER_NS)
            hi = bisect.bisect_right(st, s.start_ns + slack)
            cands += [i for i in idx[lo:hi]
                      if compatible(requests[i], s) and timing.feasible(requests[i], s)]
        edges.append(cands)
    parent = list(range(len(requests)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for cands in edges:
        for i in cands[1:]:
            a, b = find(cands[0]), find(i)
            if a != b:
                parent[a] = b
    comp_spans: dict[int, list[int]] = {}
    for j, cands in enumerate(edges):
        if cands:
            comp_spans.setdefault(find(cands[0]), []).append(j)
    comp_reqs: dict[int, list[int]] = {}
    for i in range(len(requests)):
        if group_of_request(requests[i]) is not None:
            comp_reqs.setdefault(find(i), []).append(i)

    if not timing.calibrated:
        # No identified join to learn the end anchor from: learn it from the certain time
        # joins, the components of one request and one span.
        alone = [(requests[reqs[0]], spans[sp[0]]) for root, reqs in comp_reqs.items()
                 if len(reqs) == 1 and len(sp := comp_spans.get(root, [])) == 1]
        if len(alone) >= CALIBRATION_MIN:
            timing = Timing.calibrate(timing.uncertainty_ns, alone, spans)
    penalty = UNSAMPLED_PENALTY_TOLERANCES * timing.tolerance_ns
    out = TimeJoin([], [], [], [])
    for root, reqs in comp_reqs.items():
        sp = comp_spans.get(root, [])
        if not sp:
            out.missing += reqs
            continue
        _solve(requests, spans, edges, reqs, sp, timing, unsampled, penalty, out)
    return out


def _solve(requests: list[KernelRequest], spans: list[Span], edges: list[list[int]],
           reqs: list[int], sp: list[int], timing: Timing, unsampled: set[int],
           penalty: float, out: TimeJoin) -> None:
    """One component: optimal (or, when large, greedy) assignment, then the confidence
    test of every pair and of every request left without a span."""
    row = {i: r for r, i in enumerate(reqs)}
    cost = np.full((len(reqs), len(sp)), _INFEASIBLE)
    for c, j in enumerate(sp):
        s = spans[j]
        for i in edges[j]:
            cost[row[i], c] = timing.cost(requests[i], s) + (penalty if i in unsampled else 0)
    if len(reqs) == 1 and len(sp) == 1:
        out.pairs.append((reqs[0], spans[sp[0]]))
        return
    if len(reqs) <= MAX_OPTIMAL and len(sp) <= MAX_OPTIMAL:
        rows, cols = linear_sum_assignment(cost)
        chosen = [(r, c) for r, c in zip(rows, cols) if cost[r, c] < _INFEASIBLE]
    else:
        chosen = _greedy(cost)
    tol = timing.tolerance_ns
    taken_r = {r for r, _ in chosen}
    owner = {c: r for r, c in chosen}  # span column → the request it was given to
    # The spans each request left without one could own.
    feasible = {r: np.flatnonzero(cost[r, :] < _INFEASIBLE) for r in range(len(reqs))
                if r not in taken_r}
    unsure_r: set[int] = set()
    unsure_c: set[int] = set()
    for r, c in chosen:
        here = cost[r, c]
        col = np.delete(cost[:, c], r)  # the span given to another request
        rw = np.delete(cost[r, :], c)  # another span for this request
        if (col.size and col.min() - here < tol) or (rw.size and rw.min() - here < tol):
            unsure_r.add(r)
            unsure_c.add(c)
    for r, cols in feasible.items():
        # Without span only if every span that could be its own is surely another's: for a
        # request sent sampled, surely even had its own span ended as late as the run's
        # latest (the taker may be the one whose span was dropped).
        if reqs[r] in unsampled:
            continue
        for c in cols:
            if c in owner and cost[r, c] - cost[owner[c], c] < timing.tail_ns:
                unsure_r.add(owner[c])
                unsure_c.add(c)
    for r, c in chosen:
        if r not in unsure_r:
            out.pairs.append((reqs[r], spans[sp[c]]))
    for r in range(len(reqs)):
        if r in taken_r and r not in unsure_r:
            continue
        if r not in taken_r:
            if all(c in owner and c not in unsure_c for c in feasible[r]):
                out.missing.append(reqs[r])
                continue
        out.unjoinable.append(reqs[r])
    out.unjoinable_spans += [spans[sp[c]] for c in unsure_c]
    # Spans feasible here but given to nobody (more spans than requests) stay in the pool.


def _greedy(cost: np.ndarray) -> list[tuple[int, int]]:
    """Cheapest feasible pairs first, each row and column once."""
    flat = np.argsort(cost, axis=None)
    used_r: set[int] = set()
    used_c: set[int] = set()
    out = []
    n_cols = cost.shape[1]
    for f in flat:
        r, c = divmod(int(f), n_cols)
        if cost[r, c] >= _INFEASIBLE:
            break
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        out.append((r, c))
    return out
