"""KT-002: the SUT's request metric counts what the kernel saw, per method, route, status."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agent.evidence import KernelRequest
from conformance.httpsem import RouteMatcher, route_matches
from conformance.metricsource import (
    Key, Series, find_prometheus_metric, otlp_series, prometheus_series, series_key,
)
from conformance.model import Finding
from conformance.registry import CheckContext, check
from conformance.scenario import base_path, local_path
from conformance.scrapes import last_good, metrics_path, parsed_scrape
from conformance.telemetry import metrics_absent

MISMATCH_LIMIT = 20
# How exporters label a request that matched no route template: fastapi-instrumentator
# "none"; an empty value (OTel semconv leaves http.route unset, hand-written code sets "").
UNTEMPLATED = ("none", "")


@dataclass
class Comparison:
    observed: dict[str, Any]
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kernel: Counter[Key] = field(default_factory=Counter)  # per key, agent routes excluded
    counts: dict[Key, float] = field(default_factory=dict)  # the metric's, same exclusions
    agent: Counter[Key] = field(default_factory=Counter)  # agent requests it may count (no route)


def compare(series: Series, under_test: list[KernelRequest], agent: list[KernelRequest],
            agent_paths: set[str], tolerance: float, base: str = "") -> Comparison:
    """Per-key comparison of ``series`` with kernel counts; agent requests excluded on
    both sides when the metric has a route label, else accepted either way. ``base``: the
    --url path prefix, which an app mounted under it leaves out of its route labels."""
    counts = dict(series.counts)
    notes = list(series.notes)
    has_route = bool(series.labels.get("route"))
    excluded: list[str] = []
    matcher = None
    if has_route:
        routes = {key[series.dims.index("route")] for key in counts}
        excluded = sorted(r for r in routes if any(route_matches(r, p) for p in agent_paths))
        matcher = RouteMatcher(routes)

    def route_of(k: KernelRequest) -> str:
        found = matcher.match(k.path) if matcher else k.path
        if found is None and matcher and base:  # a mounted app's route: without the prefix
            found = matcher.match(local_path(base, k.path))
        if found is None and matcher:
            # A request no template matched: the exporter's "no route" value when it has one.
            found = next((u for u in UNTEMPLATED if u in matcher.exact), None)
        return k.path if found is None else found

    keys: dict[tuple[str, str, int | None], Key] = {}  # requests repeat: one key per kind

    def key_of(k: KernelRequest) -> Key:
        kind = (k.method, k.target, k.status)  # the path is a function of the target
        if (key := keys.get(kind)) is None:
            key = keys[kind] = series_key(series, k.method, route_of(k) if has_route else None,
                                          k.status)
        return key

    late: list[KernelRequest] = []
    if series.last_export_ns is not None:  # OTLP: what was answered after its key's last
        def exported(k: KernelRequest) -> bool:  # export cannot be in the counts
            until = series.until_ns.get(key_of(k), series.last_export_ns)
            return (k.t_resp_last or k.t_req_first) <= until
        late = [k for k in under_test if not exported(k)]
        under_test = [k for k in under_test if exported(k)]
        agent = [k for k in agent if exported(k)]
    kernel = Counter(key_of(k) for k in under_test)
    agent_counts: Counter[Key] = Counter()
    if has_route:
        ri = series.dims.index("route")
        dropped = sum(n for key, n in kernel.items() if key[ri] in excluded)
        counts = {key: v for key, v in counts.items() if key[ri] not in excluded}
        kernel = Counter({key: n for key, n in kernel.items() if key[ri] not in excluded})
        if dropped:
            notes.append(f"{dropped} request(s) under test hit routes the agent also uses "
                         f"({', '.join(excluded)}): left out on both sides")
    else:
        agent_counts = Counter(key_of(k) for k in agent)
        if agent_counts:
            notes.append(f"{series.metric} has no route label, so the agent's own "
                         f"{sum(agent_counts.values())} request(s) may be counted: a series "
                         "matches with none, some or all of them")
    if has_route:
        moved = _reconcile_untemplated(series, counts, kernel)
        if moved:
            notes.append(f"{moved} request(s) the metric counts under an empty route (no "
                         "template matched, e.g. a 405) were matched to the same method and "
                         "status")
    mismatches = []
    for key in sorted(set(counts) | set(kernel)):
        m, k = counts.get(key, 0.0), kernel.get(key, 0)
        if abs(m - k) <= tolerance:
            continue
        # Some of the agent's requests may be counted and others not (e.g. the health probe
        # is, scrapes of a separate metrics server are not): any number in between matches.
        if agent_counts and k - tolerance <= m <= k + agent_counts.get(key, 0) + tolerance:
            continue
        mismatches.append({"source": series.source, **dict(zip(series.dims, key)),
                           "kernel": k, "metric": _num(m), "diff": _num(m - k)})
    mismatches.sort(key=lambda x: -abs(x["diff"]))
    observed = {
        # The family and every exporter known to emit it: one name is often used by
        # several libraries, so no single one is claimed. labels: dim -> the name read.
        "metric": series.metric, "family": series.family, "source": series.source,
        "found_by": series.found_by, "candidate_exporters": list(series.exporters),
        "labels": dict(series.labels), "label_names": list(series.label_names),
        "status_classes": series.status_classes,
        "kernel_count": sum(kernel.values()), "metric_count": _num(sum(counts.values())),
        "series": len(set(counts) | set(kernel)), "mismatched_series": len(mismatches),
        "excluded_routes": excluded,
    }
    if late:
        last = max(k.t_resp_last or k.t_req_first for k in late)
        observed["answered_after_last_export"] = len(late)
        notes.append(f"the last export of {series.metric} predates the last answered request "
                     f"by {(last - (series.last_export_ns or 0)) / 1e6:.1f} ms: {len(late)} "
                     "request(s) answered after their series' last export are not compared "
                     "(does the SUT flush its metrics at shutdown?)")
    return Comparison(observed, mismatches, notes, kernel, counts, agent_counts)


def _reconcile_untemplated(series: Series, counts: dict[Key, float], kernel: Counter[Key]) -> int:
    """Move kernel counts onto the metric's untemplated route (same method and status) where
    the metric has more there and less under the template the path matches: frameworks
    label requests that failed routing (404, 405) without a route even when a template fits
    the path. Returns how many requests were moved."""
    ri = series.dims.index("route")
    moved = 0
    for u in [k for k in counts if k[ri] in UNTEMPLATED]:
        surplus = counts[u] - kernel.get(u, 0)
        for k in sorted(kernel):
            if surplus <= 0:
                break
            same = k[:ri] + k[ri + 1:] == u[:ri] + u[ri + 1:]
            deficit = kernel[k] - counts.get(k, 0.0)
            if same and k[ri] not in UNTEMPLATED and deficit > 0:
                n = int(min(surplus, deficit))
                kernel[k] -= n
                kernel[u] += n
                surplus -= n
                moved += n
    for k in [k for k, n in kernel.items() if n == 0]:
        del kernel[k]
    return moved


def used_text(observed: dict[str, Any]) -> str:
    """Which metric was compared, where it was read and who is known to emit it."""
    text = f"{observed['metric']} from {observed['source']}"
    if observed.get("found_by") == "named by the scenario":
        text += ", named by the scenario"
    known = observed.get("candidate_exporters") or []
    if known:
        text += "; known from " + (known[0] if len(known) == 1
                                   else f"{', '.join(known[:-1])} or {known[-1]}")
    return text


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 6)


def to_server_of(url: str, reqs: list[KernelRequest]) -> list[KernelRequest]:
    """The requests addressed to the SUT at ``url`` (by Host): the agent's scrapes of a
    metrics server on another port (gunicorn's master, start_http_server) never reach the
    app's request metric. Requests without a Host header are kept."""
    authority = urlsplit(url).netloc.lower()
    if not authority:
        return reqs
    return [k for k in reqs if (k.header("host") or authority).lower() == authority]


def _answered(reqs: list[KernelRequest], lo: int, hi: int | None) -> list[KernelRequest]:
    return [k for k in reqs if k.status is not None and k.t_req_first >= lo
            and (hi is None or k.t_req_first < hi)]


@check("KT-002")
def metric_counts_match_kernel(ctx: CheckContext) -> Finding:
    ev, j = ctx.evidence, ctx.joined
    tolerance = ctx.threshold("count_tolerance")
    named = (ev.meta.scenario or {}).get("metric")
    under_test = [r.kernel for r in j.answered]
    agent = to_server_of(str(ev.meta.target.get("url") or ""), j.agent_requests)
    agent_paths = {k.path for k in agent} | {metrics_path(ev)}
    observed: dict[str, Any] = {"prometheus": None, "otlp": None}
    problems: list[str] = []
    comparisons: list[Comparison] = []
    tried: list[str] = []

    before, after = last_good(ev, "before"), last_good(ev, "after")
    if before is None or after is None:
        problems.append("no successful before and after /metrics scrapes")
    else:
        b, a = parsed_scrape(ctx, before), parsed_scrape(ctx, after)
        if b.error or a.error:
            problems.append(f"scrape does not parse: {b.error or a.error} (see SC-001)")
        else:
            candidate, overrides, tried = find_prometheus_metric(a, named)
            if candidate is None:
                problems.append(f"no request metric in /metrics (tried {', '.join(tried[:4])}"
                                f"{' ...' if len(tried) > 4 else ''}); name it in the "
                                "scenario as metric: NAME")
            else:
                inside = _answered(under_test, before.t_ns, after.t_ns)
                c = compare(prometheus_series(b, a, candidate, overrides), inside,
                            _answered(agent, before.t_ns, after.t_ns),
                            agent_paths, tolerance, base_path(ev.meta))
                c.observed["scrapes"] = {"before": before.seq, "after": after.seq}
                if len(inside) < len(under_test):
                    c.notes.append(f"{len(under_test) - len(inside)} request(s) under test "
                                   "fell outside the before/after scrapes: not compared")
                observed["prometheus"] = c.observed
                comparisons.append(c)

    start = before.t_ns if before else min((k.t_req_first for k in under_test), default=0)
    otlp = otlp_series(ev.metrics, start)
    if otlp is not None:
        since = start if otlp.counted_since_ns is None else otlp.counted_since_ns
        c = compare(otlp, _answered(under_test, since, None),
                    _answered(agent, since, None), agent_paths, tolerance, base_path(ev.meta))
        observed["otlp"] = c.observed
        comparisons.append(c)

    expected = {"per_series": "metric count delta == kernel count",
                "count_tolerance": tolerance}
    mismatches = [m for c in comparisons for m in c.mismatches]
    evidence = {"mismatches": mismatches[:MISMATCH_LIMIT],
                "notes": [n for c in comparisons for n in c.notes] + problems,
                "candidates_tried": tried}
    if not under_test:
        return Finding.inconclusive("the kernel saw no answered request under test",
                                    observed, expected, **evidence)
    if not comparisons and (absent := metrics_absent(ev)):
        # Nothing exposes a metric: a missing layer, like a missing catalogue (SC-001 and
        # SC-004 skip alike), not a comparison that could not be made.
        return Finding.skipped(f"{absent}: no request metric to compare with the kernel's "
                               "count (give --metrics-url if the SUT serves one)",
                               **evidence)
    if not comparisons or (named and observed["prometheus"] is None):
        return Finding.inconclusive("; ".join(problems) or "no request metric to compare",
                                    observed, expected, **evidence)
    used = " and ".join(used_text(c.observed) for c in comparisons)
    if mismatches:
        first = mismatches[0]
        where = " ".join(str(first[d]) for d in ("method", "route", "status") if d in first)
        return Finding.failed(
            f"{len(mismatches)} series differ from the kernel count, e.g. {where}: metric "
            f"{first['metric']}, kernel {first['kernel']} (in {used})", observed, expected,
            **evidence)
    first = comparisons[0].observed
    return Finding.passed(
        f"counts equal the kernel's: {first['kernel_count']} requests in {first['series']} "
        f"series (in {used})", observed, expected, **evidence)
