"""AL-003: log records emitted while the SUT served a request carry that request's trace_id
and span_id (OTLP logs and JSON stdout lines alike)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from agent.evidence import LogRecord
from conformance.index import put_one_or_many
from conformance.model import Finding
from conformance.registry import CheckContext, check
from conformance.scenario import base_path, local_path
from conformance.view import RequestView, view_of

SAMPLES = 10
# Where JSON loggers and OTel log attributes put the request path: a line that names another
# path (a /metrics scrape, a health probe) is about another request, not this one.
PATH_KEYS = ("path", "url.path", "http.target", "http.path", "request_path", "url", "uri")


# A request's own line may be written just after its response went out (teardown, access
# log): its ids still count as its own this long after the driver read the response.
LATE_NS = 50_000_000
EARLY_NS = 1_000_000


@dataclass(slots=True)
class _Window:
    lo: int
    hi: int
    # The target as sent and, under a --url prefix, the app's own path without it (a mounted
    # app logs the path it routes on): a line naming either is about this request.
    paths: tuple[str, ...]
    # The trace-id sent and the server span's, distinct: the one string when they are the
    # same (a million requests, a million one-item tuples less), else a tuple of them.
    traces: str | tuple[str, ...]
    request: RequestView

    @property
    def trace_ids(self) -> tuple[str, ...]:
        return (self.traces,) if type(self.traces) is str else self.traces

    def knows_span(self, by_trace: dict[str, list[Any]], span_id: str) -> bool | None:
        """Whether ``span_id`` is an exported span of those traces; None when they have no
        exported span (asked of the window a log lands in, no set built per log)."""
        known = None
        for t in self.trace_ids:
            for s in by_trace.get(t, ()):
                if s.span_id == span_id:
                    return True
                known = False
        return known


def _windows(view: Any, base: str) -> list[_Window]:
    out = []
    for r in view.requests:
        d = r.driver
        spans = r.spans
        recv = d.t_recv_ns or d.t_send_ns
        if len(spans) == 1:  # the usual request: one server span, no sets or lists to build
            s = spans[0]
            traces: str | tuple[str, ...] = s.trace_id \
                if not d.trace_id or d.trace_id == s.trace_id else (s.trace_id, d.trace_id)
            lo, hi = min(d.t_send_ns, s.start_ns), max(recv, s.end_ns)
        else:
            traces = tuple({s.trace_id for s in spans} | ({d.trace_id} if d.trace_id else set()))
            lo = min([d.t_send_ns] + [s.start_ns for s in spans])
            hi = max([recv] + [s.end_ns for s in spans])
        sent = d.path.split("?", 1)[0]
        own = local_path(base, sent)
        out.append(_Window(lo, hi, (sent,) if own == sent else (sent, own), traces, r))
    out.sort(key=attrgetter("lo"))
    return out


def _owners(windows: list[_Window]) -> dict[str, Any]:
    """Trace-id → the window sending or serving it, or the list of them when several do."""
    owners: dict[str, Any] = {}
    for w in windows:
        for t in w.trace_ids:
            put_one_or_many(owners, t, w)
    return owners


def _near(windows: list[_Window], los: list[int], t: int, longest: int) -> list[_Window]:
    """Requests being served at ``t`` or answered up to LATE_NS before it (any path)."""
    lo = bisect.bisect_left(los, t - longest - LATE_NS)
    return [w for w in windows[lo:bisect.bisect_right(los, t + EARLY_NS)]
            if w.lo - EARLY_NS <= t <= w.hi + LATE_NS]


def _log_path(log: LogRecord) -> str | None:
    sources = [log.attributes] + ([log.body] if isinstance(log.body, dict) else [])
    for src in sources:
        for key in PATH_KEYS:
            value = src.get(key)
            if isinstance(value, str) and value:
                if "://" in value:
                    value = "/" + value.split("://", 1)[1].partition("/")[2]
                return value.split("?", 1)[0]
    return None


def _ref(log: LogRecord, w: _Window | None = None, **extra: Any) -> dict[str, Any]:
    out = {"source": log.source, "time_ns": log.time_ns, "body": str(log.body)[:120],
           "trace_id": log.trace_id or None, "span_id": log.span_id or None}
    if w is not None:
        out["while_serving"] = w.request.ref()
    out.update(extra)
    return out


@check("AL-003")
def logs_carry_request_context(ctx: CheckContext) -> Finding:
    logs = ctx.evidence.logs
    expected = {"log_records_while_serving": "trace_id and span_id of the request being served"}
    if not logs:
        return Finding.skipped("the SUT sent no OTLP log record and printed no JSON log line: "
                               "nothing to check")
    view = view_of(ctx)
    windows = _windows(view, base_path(ctx.evidence.meta))
    los = [w.lo for w in windows]
    longest = max((w.hi - w.lo for w in windows), default=0)
    owners = _owners(windows)
    missing, wrong, linked, ignored, unverifiable = [], [], 0, 0, 0
    for log in logs:
        if not log.time_ns:
            ignored += 1
            continue
        t, tid = log.time_ns, (log.trace_id or "").lower()
        found = owners.get(tid)
        own = [] if found is None else [
            w for w in (found if type(found) is list else (found,))
            if w.lo - EARLY_NS <= t <= w.hi + LATE_NS]
        if own:  # the ids of a request, written while (or just after) it was served
            w = own[0]
            if log.span_id and w.knows_span(view.spans_by_trace, log.span_id.lower()) is False:
                wrong.append(_ref(log, w, problem="span_id is no span of the request's trace"))
            else:
                linked += 1
            continue
        path = _log_path(log)
        lo = bisect.bisect_left(los, t - longest)
        hits = [w for w in windows[lo:bisect.bisect_right(los, t)]
                if w.lo <= t <= w.hi and (path is None or path in w.paths)]
        if not hits:
            ignored += 1  # not emitted while serving a request under test
        elif not tid:
            missing.append(_ref(log, hits[0]))
        elif tid not in owners and any(not w.request.spans for w in _near(windows, los, t, longest)):
            unverifiable += 1  # may be the ids of a request whose span was never exported
        else:
            why = ("trace_id of another request, served at another time" if tid in owners
                   else "trace_id of no request under test")
            wrong.append(_ref(log, hits[0], problem=why))
    judged = linked + len(missing) + len(wrong)
    observed = {"log_records": len(logs), "while_serving": judged, "linked": linked,
                "without_ids": len(missing), "wrong_ids": len(wrong),
                "not_while_serving": ignored, "ids_of_unexported_spans": unverifiable}
    evidence = {"without_ids": missing[:SAMPLES], "wrong_ids": wrong[:SAMPLES]}
    if missing or wrong:
        parts = []
        if missing:
            m = missing[0]
            parts.append(f"{len(missing)} of {judged} log records emitted while serving a request "
                         f"carry no trace_id, e.g. {m['body']!r} during "
                         f"{m['while_serving']['request']} ({m['while_serving']['case']})")
        if wrong:
            parts.append(f"{len(wrong)} carry ids of another request ({wrong[0]['problem']})")
        return Finding.failed("; ".join(parts), observed, expected, **evidence)
    if not judged:
        return Finding.skipped(f"none of {len(logs)} log records was emitted while a request was "
                               "served", observed=observed)
    return Finding.passed(f"{linked} log records emitted while serving requests carry their "
                          "trace_id/span_id", observed, expected, **evidence)
