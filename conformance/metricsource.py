"""Where a service counts its HTTP requests: find the request metric (the scenario's name,
else the OTel semconv name, else the common exporters' names), read its labels, and compute
per-series count deltas from /metrics scrapes and from OTLP metric points."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from agent.evidence import MetricPoint
from agent.exposition import Exposition, LabelsKey, labels_key, series_values


@dataclass(frozen=True)
class Candidate:
    sample: str  # the sample that counts requests: a counter's _total or a histogram's _count
    source: str  # who exposes it under that name


# Searched in this order; where one library exposes two names, the one with more of
# (method, route, status) comes first. Label names verified against each library's source.
PROM_CANDIDATES = (
    # OTel SDK Prometheus exporter: http_request_method, http_route, http_response_status_code
    Candidate("http_server_request_duration_seconds_count", "OpenTelemetry HTTP semconv"),
    # OTel instrumentations before semconv 1.21: http_method, http_route, http_status_code
    Candidate("http_server_duration_milliseconds_count", "OpenTelemetry HTTP semconv < 1.21"),
    # prometheus-flask-exporter: method, path (or the group_by label), status
    Candidate("flask_http_request_duration_seconds_count", "prometheus-flask-exporter"),
    # prometheus-flask-exporter: method, status (no route)
    Candidate("flask_http_request_total", "prometheus-flask-exporter"),
    # prometheus-fastapi-instrumentator: method, status ("2xx"), handler; Go promhttp: code
    Candidate("http_requests_total", "prometheus-fastapi-instrumentator / Prometheus convention"),
    # prometheus-fastapi-instrumentator: method, handler (no status)
    Candidate("http_request_duration_seconds_count", "prometheus-fastapi-instrumentator"),
    # starlette-prometheus: method, path_template, status_code
    Candidate("starlette_responses_total", "starlette-prometheus"),
    # starlette-exporter: method, path, status_code, app_name
    Candidate("starlette_requests_total", "starlette-exporter"),
    Candidate("starlette_request_duration_seconds_count", "starlette-exporter"),
    # asgi-monitor for aiohttp: app_name, method, path, status_code (requests: no status)
    Candidate("aiohttp_responses_total", "asgi-monitor (aiohttp)"),
    Candidate("aiohttp_requests_total", "asgi-monitor (aiohttp)"),
    # django-prometheus: method, status, view (a view name, not a path)
    Candidate("django_http_responses_total_by_status_view_method_total", "django-prometheus"),
)
METHOD_LABELS = ("http_request_method", "method", "http_method")
ROUTE_LABELS = ("http_route", "route", "handler", "path_template", "path", "endpoint",
                "url_rule", "view")
STATUS_LABELS = ("http_response_status_code", "status", "status_code", "code",
                 "http_status_code")
OTLP_NAMES = ("http.server.request.duration", "http.server.duration")
OTLP_METHOD = ("http.request.method", "http.method")
# Pre-1.21 Flask/WSGI instrumentations put the route template (or the path) of their
# http.server.duration points in http.target, not http.route.
OTLP_ROUTE = ("http.route", "http.target")
OTLP_STATUS = ("http.response.status_code", "http.status_code")
DIMS = ("method", "route", "status")
_STATUS_CLASS = re.compile(r"^[1-5]xx$", re.IGNORECASE)

Key = tuple[str, ...]


@dataclass
class Series:
    """A metric's count per (method, route, status) projection, with what was used."""

    metric: str
    source: str
    labels: dict[str, str | None]  # dim → label/attribute name, None when absent
    counts: dict[Key, float] = field(default_factory=dict)
    status_classes: bool = False  # status values are "2xx"-style classes
    notes: list[str] = field(default_factory=list)
    # OTLP: the earliest time the counts may include; None = the window start given. A
    # cumulative stream without an export before the window counts everything its process
    # recorded (0): its start_ns is its first recording, after that request had started.
    counted_since_ns: int | None = None
    # OTLP: per key, the last time its streams were exported; a request answered later
    # cannot be in the counts. ``last_export_ns`` is the latest of all (keys with no stream).
    until_ns: dict[Key, int] = field(default_factory=dict)
    last_export_ns: int | None = None

    @property
    def dims(self) -> list[str]:
        return [d for d in DIMS if self.labels.get(d)]


def find_prometheus_metric(expo: Exposition, named: Any = None
                           ) -> tuple[Candidate | None, dict[str, str | None], list[str]]:
    """(candidate, label overrides, names tried). ``named`` is the scenario's ``metric``:
    a name, or ``{"name": ..., "labels": {"method": ..., "route": ..., "status": ...}}``."""
    present = {s.name for s in expo.samples}
    overrides: dict[str, str | None] = {}
    if named:
        name = named.get("name") if isinstance(named, dict) else str(named)
        if isinstance(named, dict):
            overrides = {d: v for d, v in (named.get("labels") or {}).items() if d in DIMS}
        tried = [str(name), f"{name}_total", f"{name}_count"]
        for sample in tried:
            if sample in present:
                return Candidate(sample, "named by the scenario"), overrides, tried
        return None, overrides, tried
    for c in PROM_CANDIDATES:
        if c.sample in present:
            return c, overrides, [x.sample for x in PROM_CANDIDATES]
    return None, overrides, [x.sample for x in PROM_CANDIDATES]


def _pick(names: Iterable[str], aliases: tuple[str, ...]) -> str | None:
    names = set(names)
    return next((a for a in aliases if a in names), None)


def _status_value(raw: Any, classes: bool) -> str:
    text = str(raw).strip()
    if classes and text[:1].isdigit():
        return f"{text[0]}xx"
    try:
        return str(int(float(text)))
    except ValueError:
        return text.lower()


def prometheus_series(before: Exposition | None, after: Exposition, candidate: Candidate,
                      overrides: dict[str, str | None]) -> Series:
    """Delta (after − before) of ``candidate`` per (method, route, status) label values."""
    a = series_values(after, candidate.sample)
    b = series_values(before, candidate.sample) if before is not None else {}
    names = {k for key in a for k, _ in key}
    labels = {
        "method": overrides.get("method") or _pick(names, METHOD_LABELS),
        "route": overrides.get("route") or _pick(names, ROUTE_LABELS),
        "status": overrides.get("status") or _pick(names, STATUS_LABELS),
    }
    out = Series(candidate.sample, candidate.source, labels)
    deltas: dict[LabelsKey, float] = {k: v - b.get(k, 0.0) for k, v in a.items()}
    gone = [k for k in b if k not in a]
    if gone:
        out.notes.append(f"{len(gone)} series present before the load vanished after it")
        deltas.update({k: -b[k] for k in gone})
    rows = []
    for key, value in deltas.items():
        attrs = dict(key)
        rows.append(({d: attrs.get(n) for d, n in labels.items() if n}, value))
    _project(out, rows)
    return out


def _project(out: Series, rows: list[tuple[dict[str, Any], float]]) -> None:
    """Sum rows ({dim: value}, count) onto (method, route, status) keys; drop a route
    label that holds no path (view or function names cannot be mapped to requests)."""
    route = out.labels.get("route")
    if route and rows and not any(str(r.get("route") or "").startswith("/") for r, _ in rows):
        out.notes.append(f"label {route!r} holds no path (view or function names): compared "
                         "per method and status only")
        out.labels["route"] = None
    out.status_classes = bool(out.labels.get("status")) and any(
        _STATUS_CLASS.match(str(r.get("status") or "")) for r, _ in rows)
    counts: dict[Key, float] = defaultdict(float)
    for attrs, value in rows:
        counts[series_key(out, attrs.get("method"), attrs.get("route"),
                          attrs.get("status"))] += value
    out.counts = dict(counts)


def series_key(series: Series, method: Any, route: Any, status: Any) -> Key:
    parts = []
    if series.labels.get("method"):
        parts.append(str(method or "").upper())
    if series.labels.get("route"):
        parts.append(str(route or ""))
    if series.labels.get("status"):
        parts.append(_status_value(status if status is not None else "", series.status_classes))
    return tuple(parts)


def _attr(attrs: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((attrs[n] for n in names if attrs.get(n) not in (None, "")), None)


def otlp_series(points: list[MetricPoint], window_start_ns: int) -> Series | None:
    """Request count per (method, route, status) from OTLP duration histogram points.

    Cumulative streams: last count minus the last count exported at or before the window
    start (0 when the stream started later). Delta points: summed when they end after it.
    ``until_ns`` says, per key, when the counts were last exported.
    """
    for name in OTLP_NAMES:
        chosen = [p for p in points if p.name == name and p.count is not None]
        if chosen:
            break
    else:
        return None
    route = None  # the attribute named in the report: http.route unless some need the fallback
    if all(_attr(p.attributes, OTLP_ROUTE) is not None for p in chosen):
        route = next((n for n in OTLP_ROUTE
                      if all(p.attributes.get(n) not in (None, "") for p in chosen)), OTLP_ROUTE[-1])
    labels = {
        "method": "http.request.method" if all(_attr(p.attributes, OTLP_METHOD) is not None
                                               for p in chosen) else None,
        "route": route,
        "status": "http.response.status_code" if all(
            _attr(p.attributes, OTLP_STATUS) is not None for p in chosen) else None,
    }
    out = Series(name, "OTLP metrics", labels)
    streams: dict[tuple, list[MetricPoint]] = defaultdict(list)
    for p in chosen:
        cumulative = p.temporality != "DELTA"
        streams[(cumulative, p.start_ns if cumulative else 0, labels_key(_str(p.attributes)),
                 labels_key(_str(p.resource)), p.scope)].append(p)
    rows: list[tuple[dict[str, Any], float]] = []
    until: list[int] = []
    # A delta stream is exported only when it has new data: its SDK's last export of the
    # metric (same resource and scope) bounds what it could have counted, not its own.
    exported: dict[tuple, int] = defaultdict(int)
    for p in chosen:
        sdk = (labels_key(_str(p.resource)), p.scope)
        exported[sdk] = max(exported[sdk], p.time_ns)
    unknown_baseline = 0
    for (cumulative, start_ns, _attrs, resource, scope), group in streams.items():
        group.sort(key=lambda p: p.time_ns)
        until.append(group[-1].time_ns if cumulative else exported[(resource, scope)])
        if cumulative:
            base = [p for p in group if p.time_ns <= window_start_ns]
            baseline = float(base[-1].count or 0) if base else 0.0
            if not base and start_ns and start_ns < window_start_ns:
                unknown_baseline += 1
            value = float(group[-1].count or 0) - baseline
        else:
            value = float(sum(p.count or 0 for p in group if p.time_ns > window_start_ns))
        a = group[-1].attributes
        route_value = _attr(a, OTLP_ROUTE)
        rows.append(({"method": _attr(a, OTLP_METHOD),
                      "route": str(route_value).split("?", 1)[0] if route_value else None,
                      "status": _attr(a, OTLP_STATUS)}, value))
    if unknown_baseline:
        out.notes.append(f"{unknown_baseline} cumulative stream(s) had no export before the "
                         "load: counted from the stream start")
        out.counted_since_ns = 0
    _project(out, rows)
    for (attrs, _), t in zip(rows, until):
        key = series_key(out, attrs.get("method"), attrs.get("route"), attrs.get("status"))
        out.until_ns[key] = max(out.until_ns.get(key, 0), t)
    out.last_export_ns = max(until, default=None)
    return out


def _str(attrs: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in attrs.items()}
