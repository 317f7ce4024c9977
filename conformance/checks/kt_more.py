"""Kernel-truth checks on values, not counts: KT-004 (histogram sum and bucket placement vs
kernel durations), KT-005 (status on the wire = span status = metric label), KT-006 (span
timestamps inside the kernel window, clock skew)."""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from typing import Any

from agent.evidence import KernelRequest
from agent.exposition import Exposition, histogram_series
from conformance.httpsem import span_status
from conformance.checks.kt_metrics import compare, to_server_of
from conformance.metricsource import (
    PROM_CANDIDATES, ROUTE_LABELS, find_prometheus_metric, holds_paths, prometheus_series,
)
from conformance.model import Finding
from conformance.registry import CheckContext, check
from conformance.scenario import base_path
from conformance.scrapes import last_good, metrics_path, parsed_scrape
from conformance.stats import describe, share_exceeded
from conformance.telemetry import metrics_absent, with_no_spans

SAMPLES = 10
_UNIT_SCALE = {"_seconds": 1.0, "_milliseconds": 1e-3, "_microseconds": 1e-6}


def _ref(k: KernelRequest, trace_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"request": k.id, "trace_id": trace_id, "method": k.method, "target": k.target,
            "wire_status": k.status, **extra}


# ------------------------------------------------------------------------------ KT-005
@check("KT-005")
def status_agrees(ctx: CheckContext) -> Finding:
    j, ev = ctx.joined, ctx.evidence
    answered = j.answered
    expected = {"span": "http.response.status_code = status on the wire",
                "metric": "status label = status on the wire, per method and route"}
    if not answered:
        return Finding.inconclusive("the kernel saw no answered request under test", None, expected)
    span_bad, span_checked = [], 0
    for r in answered:
        if len(r.spans) != 1:
            continue
        span_checked += 1
        got = span_status(r.spans[0])
        if got != r.kernel.status:
            span_bad.append(_ref(r.kernel, r.trace_id, span_status=got,
                                 span_id=r.spans[0].span_id))
    metric_bad, metric_note = _metric_status(ctx, [r.kernel for r in answered])
    observed = {"requests": len(answered), "spans_checked": span_checked,
                "span_mismatches": len(span_bad), "metric_status_mismatches": len(metric_bad),
                "metric": metric_note}
    evidence = {"span_mismatches": span_bad[:SAMPLES], "metric_mismatches": metric_bad[:SAMPLES]}
    if span_bad or metric_bad:
        parts = []
        if span_bad:
            b = span_bad[0]
            parts.append(f"{len(span_bad)} span(s) disagree with the wire, e.g. {b['method']} "
                         f"{b['target']} (trace {b['trace_id']}): wire {b['wire_status']}, span "
                         f"{b['span_status']}")
        if metric_bad:
            m = metric_bad[0]
            parts.append(f"{len(metric_bad)} metric series count a status more often than the "
                         f"wire had it for their method/route, e.g. {m}")
        return Finding.failed("; ".join(parts), observed, expected, **evidence)
    if not span_checked and not metric_note.startswith("compared"):
        return Finding.inconclusive(with_no_spans(ev, "no span joined and no request metric "
                                                  "with a status label: nothing to compare"),
                                    observed, expected, **evidence)
    return Finding.passed(f"status agrees for {span_checked} spans; {metric_note}", observed,
                          expected, **evidence)


def _metric_status(ctx: CheckContext, under_test: list[KernelRequest]) -> tuple[list[str], str]:
    """Per method/route, statuses the metric counts more often than the wire carried them:
    a mislabelled status hides among correct ones only when counted per status."""
    ev = ctx.evidence
    before, after = last_good(ev, "before"), last_good(ev, "after")
    if before is None or after is None:
        return [], "no before/after scrapes"
    b, a = parsed_scrape(ctx, before), parsed_scrape(ctx, after)
    if b.error or a.error:
        return [], "scrape does not parse (see SC-001)"
    candidate, overrides, _ = find_prometheus_metric(a, (ev.meta.scenario or {}).get("metric"))
    if candidate is None:
        return [], "no request metric found"
    series = prometheus_series(b, a, candidate, overrides)
    if not series.labels.get("status"):
        return [], f"{candidate.sample} has no status label"

    def window(reqs: list[KernelRequest]) -> list[KernelRequest]:
        return [k for k in reqs if before.t_ns <= k.t_req_first < after.t_ns]

    agent = window(to_server_of(str(ev.meta.target.get("url") or ""), ctx.joined.agent_requests))
    agent_paths = {k.path for k in ctx.joined.agent_requests} | {metrics_path(ev)}
    c = compare(series, window(under_test), agent, agent_paths, 0, base_path(ev.meta))
    si = series.dims.index("status")
    groups: dict[tuple, dict[str, Counter]] = defaultdict(
        lambda: {"k": Counter(), "m": Counter(), "a": Counter()})
    for side, counts in (("k", c.kernel), ("m", c.counts), ("a", c.agent)):
        for key, n in counts.items():
            if n > 0:
                groups[key[:si] + key[si + 1:]][side][key[si]] += n
    bad = []
    dims = [d for d in series.dims if d != "status"]
    for group, sides in sorted(groups.items()):
        if not sides["k"] or not sides["m"]:
            continue  # one side has no request of this method/route at all: KT-002's business
        where = " ".join(f"{d}={v}" for d, v in zip(dims, group))
        for status, n in sorted(sides["m"].items()):
            # without a route label the agent's own probes may be counted too
            if n > sides["k"][status] + sides["a"][status]:
                bad.append(f"{where}: metric status {status} x{n:g}, wire {dict(sides['k'])}")
    return bad, f"compared status labels of {candidate.sample}"


# ------------------------------------------------------------------------------ KT-006
@check("KT-006")
def span_inside_kernel_window(ctx: CheckContext) -> Finding:
    """Skew is systematic, scheduling is not: no span may start before the kernel saw its
    request (beyond the slack, on more than the allowed share), and the typical (median) span
    end may not lie beyond the response's last byte. A few spans that end late because the
    SUT finished its bookkeeping after writing are reported, not failed."""
    clock = ctx.evidence.meta.clock or {}
    slack_ns = int(ctx.threshold("skew_ms") * 1e6) + int(clock.get("uncertainty_ns") or 0)
    limit_pct = ctx.threshold("violations_pct")
    rows = []
    for r in ctx.joined.answered:
        if len(r.spans) != 1 or r.kernel.t_resp_last is None:
            continue
        s, k = r.spans[0], r.kernel
        rows.append((r, k.t_req_first - s.start_ns, s.end_ns - k.t_resp_last))
    expected = {"span_start": "≥ kernel first request byte − slack",
                "median_span_end": "≤ kernel last response byte + slack",
                "slack_us": slack_ns // 1000, "early_start_pct_max": limit_pct}
    if not rows:
        return Finding.inconclusive(with_no_spans(ctx.evidence, "no answered request is "
                                                  "joined to exactly one server span (see "
                                                  "KT-001)"), None, expected)
    early = sorted((x for x in rows if x[1] > slack_ns), key=lambda x: -x[1])
    late = sorted((x for x in rows if x[2] > slack_ns), key=lambda x: -x[2])
    pct = 100.0 * len(early) / len(rows)
    end_late = describe([x / 1000 for _, _, x in rows])
    observed = {"requests": len(rows), "early_starts": len(early), "early_start_pct": round(pct, 3),
                "late_ends": len(late),
                "start_early_us": describe([e / 1000 for _, e, _ in rows]), "end_late_us": end_late,
                "clock_uncertainty_us": int(clock.get("uncertainty_ns") or 0) // 1000}

    def refs(items: list) -> list[dict[str, Any]]:
        return [_ref(r.kernel, r.trace_id, span_started_early_us=round(e / 1000, 1),
                     span_ended_late_us=round(x / 1000, 1)) for r, e, x in items[:SAMPLES]]

    evidence = {"early_starts": refs(early), "late_ends (reported only)": refs(late)}
    problems = []
    if pct > limit_pct:
        r, e, _ = early[0]
        problems.append(f"{len(early)} of {len(rows)} spans ({pct:.3g}%) start more than "
                        f"{slack_ns / 1000:.0f} us before the kernel saw their request, e.g. "
                        f"{r.kernel.method} {r.kernel.target} (trace {r.trace_id}) by {e / 1000:.0f} us")
    if (end_late["p50"] or 0) * 1000 > slack_ns:
        problems.append(f"spans end a median {end_late['p50']:.0f} us after the response's last "
                        f"byte, beyond {slack_ns / 1000:.0f} us: the SUT's clock runs ahead")
    if problems:
        return Finding.failed("; ".join(problems), observed, expected, **evidence)
    note = f"; {len(late)} ended late (scheduling, reported only)" if late else ""
    return Finding.passed(f"{len(rows) - len(early)} of {len(rows)} spans start inside the kernel "
                          f"window, median end {end_late['p50']:.0f} us after the last byte (slack "
                          f"{slack_ns / 1000:.0f} us){note}", observed, expected, **evidence)


# ------------------------------------------------------------------------------ KT-004
def _histogram_base(expo: Exposition, named: Any) -> str | None:
    """The duration histogram: the scenario's metric or KT-002's candidate when it is one,
    else the first histogram among the known exporters' names."""
    types = {f.name: f.type for f in expo.families}
    candidate, _, _ = find_prometheus_metric(expo, named)
    names = [candidate.sample] if candidate else []
    names += [c.sample for c in PROM_CANDIDATES]
    for sample in names:
        base = sample.removesuffix("_count")
        if sample.endswith("_count") and types.get(base) == "histogram":
            return base
    return None


def _scale(base: str) -> float:
    return next((v for suffix, v in _UNIT_SCALE.items() if base.endswith(suffix)), 1.0)


@check("KT-004")
def histogram_agrees_with_kernel(ctx: CheckContext) -> Finding:
    ev, j = ctx.evidence, ctx.joined
    rel, slack_s = ctx.threshold("sum_rel_tolerance"), ctx.threshold("slack_ms") / 1000.0
    limit_pct = ctx.threshold("misplaced_pct")
    expected = {"sum": f"within max({rel:g} x kernel sum, {slack_s * 1000:g} ms x requests)",
                "misplaced_pct_max": limit_pct,
                "misplaced_beyond_budget": "one-sided binomial test, 95%"}
    before, after = last_good(ev, "before"), last_good(ev, "after")
    if before is None or after is None:
        if absent := metrics_absent(ev):
            return Finding.skipped(f"{absent}: no duration histogram to compare")
        return Finding.inconclusive("no before and after /metrics scrapes", None, expected)
    b, a = parsed_scrape(ctx, before), parsed_scrape(ctx, after)
    if b.error or a.error:
        return Finding.inconclusive(f"scrape does not parse: {b.error or a.error} (see SC-001)",
                                    None, expected)
    base = _histogram_base(a, (ev.meta.scenario or {}).get("metric"))
    if base is None:
        return Finding.inconclusive("no request duration histogram in /metrics", None, expected)
    hb, ha = histogram_series(b, base), histogram_series(a, base)
    agent_paths = {k.path for k in j.agent_requests} | {metrics_path(ev)}
    # A label that holds no path (django-prometheus's view names) cannot set the agent's own
    # scrapes apart: the histogram is then read as one without a route label.
    route_label = next((n for n in ROUTE_LABELS if holds_paths(dict(k).get(n) for k in ha)), None)
    keep = [k for k in ha if not (route_label and any(
        dict(k).get(route_label) == p for p in agent_paths))]
    count = sum((ha[k]["count"] or 0) - ((hb.get(k) or {}).get("count") or 0) for k in keep)
    msum = sum((ha[k]["sum"] or 0) - ((hb.get(k) or {}).get("sum") or 0) for k in keep) * _scale(base)
    reqs = [r.kernel for r in j.answered if before.t_ns <= r.kernel.t_req_first < after.t_ns
            and r.kernel.duration_ns is not None and not (route_label and r.kernel.path in agent_paths)]
    agent = [k for k in j.agent_requests if before.t_ns <= k.t_req_first < after.t_ns
             and k.duration_ns is not None]
    if route_label is None and count == len(reqs) + len(agent) and agent:
        reqs = reqs + agent  # no route label: the histogram counts the agent's scrapes too
    observed: dict[str, Any] = {"metric": base, "metric_count": count, "kernel_count": len(reqs)}
    if count != len(reqs) or not reqs:
        kernel = f"the kernel {len(reqs)}"
        if route_label is None and agent and count != len(reqs) + len(agent):
            observed["agent_requests"] = len(agent)
            kernel += (f" under test and {len(agent)} of the agent's own (no route label sets "
                       "them apart: either count would do)")
        return Finding.inconclusive(f"{base} counts {count:g} requests, {kernel}: sum and "
                                    "buckets are not comparable (see KT-002)", observed, expected)
    durs = sorted(k.duration_ns / 1e9 for k in reqs)
    ksum = math.fsum(durs)
    allowed = max(rel * ksum, slack_s * len(durs))
    bounds = sorted(set.intersection(*(set(ha[k]["buckets"]) for k in keep)) - {math.inf})
    cum = {le: sum(ha[k]["buckets"].get(le, 0) - ((hb.get(k) or {}).get("buckets") or {}).get(le, 0)
                   for k in keep) for le in bounds}
    rows, misplaced = [], 0.0
    for le in bounds:
        bound_s = le * _scale(base)
        lo = bisect.bisect_right(durs, bound_s - slack_s)  # surely at or below the bound
        hi = bisect.bisect_right(durs, bound_s + slack_s)  # possibly at or below
        m = cum[le]
        off = max(0.0, lo - m, m - hi)
        misplaced = max(misplaced, off)
        rows.append({"le": le, "metric_cumulative": m, "kernel_between": [lo, hi],
                     "misplaced": off})
    misplaced_pct = 100.0 * misplaced / len(durs)
    observed.update({"metric_sum_s": round(msum, 6), "kernel_sum_s": round(ksum, 6),
                     "sum_diff_s": round(msum - ksum, 6), "sum_allowed_s": round(allowed, 6),
                     "misplaced": misplaced, "misplaced_pct": round(misplaced_pct, 3)})
    evidence = {"buckets": rows, "unit_scale": _scale(base)}
    problems = []
    if abs(msum - ksum) > allowed:
        problems.append(f"{base} sum grew by {msum:.4f} s, the kernel saw {ksum:.4f} s over "
                        f"{len(durs)} requests ({(msum - ksum) / len(durs) * 1000:+.2f} ms each)")
    # The same rule as KT-003's budget: a share judged at 95 % confidence, so that one or
    # two scheduling outliers in a few hundred requests do not decide it.
    if share_exceeded(round(misplaced), len(durs), limit_pct / 100.0):
        worst = max(rows, key=lambda r: r["misplaced"])
        problems.append(f"{misplaced:g} observation(s) ({misplaced_pct:.3g}%) in another bucket "
                        f"than the kernel duration, e.g. le={worst['le']:g}: metric "
                        f"{worst['metric_cumulative']:g}, kernel {worst['kernel_between']}")
    if problems:
        return Finding.failed("; ".join(problems), observed, expected, **evidence)
    return Finding.passed(f"{base}: sum within {allowed * 1000:.1f} ms of the kernel's "
                          f"{ksum:.4f} s, {misplaced_pct:.3g}% misplaced", observed, expected,
                          **evidence)
