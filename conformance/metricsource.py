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


# Who emits each family. One name is often used by several libraries (and by hand-written
# code that follows the Prometheus naming convention), so a family names every one known:
# the report lists them all and never claims one. Label names checked in each library's
# source: prometheus-flask-exporter 0.23, prometheus-fastapi-instrumentator 8.1,
# starlette-exporter 0.24, starlette-prometheus 0.10, asgi-monitor 0.6, django-prometheus
# 2.5, express-prom-bundle 8.0 (on prom-client 15).
OTEL_SDK = "OpenTelemetry SDK Prometheus exporter"
OTEL_COLLECTOR = "OpenTelemetry Collector prometheus exporter"
FLASK = "prometheus-flask-exporter"
FASTAPI_INSTRUMENTATOR = "prometheus-fastapi-instrumentator"
STARLETTE_EXPORTER = "starlette-exporter"
STARLETTE_PROMETHEUS = "starlette-prometheus"
DJANGO = "django-prometheus"
EXPRESS_PROM_BUNDLE = "express-prom-bundle (prom-client)"
HAND_WRITTEN = "hand-written (prometheus_client, prom-client, client_golang ...)"


def asgi_monitor(framework: str) -> str:
    return f"asgi-monitor ({framework})"


@dataclass(frozen=True)
class Candidate:
    """A metric family that counts requests, and the exporters known to emit it."""

    sample: str  # the sample that counts requests: a counter's _total or a histogram's _count
    exporters: tuple[str, ...]  # every library known to emit it under this name
    found_by: str = "known family"  # or "named by the scenario"

    @property
    def family(self) -> str:
        """The family's name: the sample without its _total/_count suffix."""
        for suffix in ("_total", "_count"):
            if self.sample.endswith(suffix):
                return self.sample.removesuffix(suffix)
        return self.sample


# Searched in this order; where one library exposes two names, the one with more of
# (method, route, status) comes first. The comments give each exporter's label names.
PROM_CANDIDATES = (
    # OTel SDK (any language) or Collector: http_request_method, http_route,
    # http_response_status_code; code that writes the semconv name itself (the reference
    # service does, with prometheus_client)
    Candidate("http_server_request_duration_seconds_count", (OTEL_SDK, OTEL_COLLECTOR, HAND_WRITTEN)),
    # OTel instrumentations before semconv 1.21: http_method, http_route, http_status_code
    Candidate("http_server_duration_milliseconds_count",
              (f"{OTEL_SDK}, semconv < 1.21", f"{OTEL_COLLECTOR}, semconv < 1.21")),
    # prometheus-flask-exporter: method, path (or the group_by label), status
    Candidate("flask_http_request_duration_seconds_count", (FLASK,)),
    # prometheus-flask-exporter: method, status (no route)
    Candidate("flask_http_request_total", (FLASK,)),
    # fastapi-instrumentator: method, status ("2xx"), handler; by hand: anything (Go
    # promhttp users: code, method; aiohttp middlewares: method, path/route, status)
    Candidate("http_requests_total", (FASTAPI_INSTRUMENTATOR, HAND_WRITTEN)),
    # express-prom-bundle: status_code, with includeMethod method, with includePath path
    # (ids replaced by "#val"); fastapi-instrumentator: method, handler (no status);
    # prometheus-flask-exporter with defaults_prefix=NO_PREFIX: method, path, status
    Candidate("http_request_duration_seconds_count",
              (EXPRESS_PROM_BUNDLE, FASTAPI_INSTRUMENTATOR, f"{FLASK} (NO_PREFIX)", HAND_WRITTEN)),
    # starlette-prometheus: method, path_template, status_code; asgi-monitor: app_name,
    # method, path, status_code
    Candidate("starlette_responses_total", (STARLETTE_PROMETHEUS, asgi_monitor("Starlette"))),
    # starlette-exporter: method, path, status_code, app_name; starlette-prometheus:
    # method, path_template (no status); asgi-monitor: app_name, method, path (no status)
    Candidate("starlette_requests_total",
              (STARLETTE_EXPORTER, STARLETTE_PROMETHEUS, asgi_monitor("Starlette"))),
    # starlette-exporter: method, path, status_code, app_name; asgi-monitor: no status
    Candidate("starlette_request_duration_seconds_count",
              (STARLETTE_EXPORTER, asgi_monitor("Starlette"))),
    # asgi-monitor's other integrations: app_name, method, path, status_code (requests
    # and durations: no status)
    *(Candidate(f"{prefix}_{name}", (asgi_monitor(framework),))
      for prefix, framework in (("aiohttp", "aiohttp"), ("fastapi", "FastAPI"), ("litestar", "Litestar"))
      for name in ("responses_total", "requests_total")),
    # django-prometheus (PrometheusAfterMiddleware): view holds view names, not paths.
    # status, view, method: every response
    Candidate("django_http_responses_total_by_status_view_method_total", (DJANGO,)),
    # view, method: every response (the latency histogram)
    Candidate("django_http_requests_latency_seconds_by_view_method_count", (DJANGO,)),
    # view, transport, method: requests that resolved to a view (no 404 without a route)
    Candidate("django_http_requests_total_by_view_transport_method_total", (DJANGO,)),
    # method: every request
    Candidate("django_http_requests_total_by_method_total", (DJANGO,)),
)
_BY_SAMPLE = {c.sample: c for c in PROM_CANDIDATES}
METHOD_LABELS = ("http_request_method", "method", "http_method")
ROUTE_LABELS = ("http_route", "route", "handler", "path_template", "path", "endpoint",
                "url_rule", "view")
STATUS_LABELS = ("http_response_status_code", "status", "status_code", "code",
                 "http_status_code")
OTLP_NAMES = ("http.server.request.duration", "http.server.duration")
OTLP_EXPORTERS = {"http.server.request.duration": ("OpenTelemetry HTTP server instrumentation",),
                  "http.server.duration": ("OpenTelemetry HTTP server instrumentation, semconv < 1.21",)}
SOURCE_PROMETHEUS, SOURCE_OTLP = "/metrics", "OTLP metrics"
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

    metric: str  # the sample (Prometheus) or metric name (OTLP) counted
    source: str  # where it was read: SOURCE_PROMETHEUS | SOURCE_OTLP
    labels: dict[str, str | None]  # dim → label/attribute name read, None when absent
    family: str = ""
    exporters: tuple[str, ...] = ()  # every exporter known to emit the family, () = none known
    found_by: str = ""
    label_names: list[str] = field(default_factory=list)  # every label/attribute name seen
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
                known = _BY_SAMPLE.get(sample)
                return (Candidate(sample, known.exporters if known else (), "named by the scenario"),
                        overrides, tried)
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
    out = Series(candidate.sample, SOURCE_PROMETHEUS, labels, family=candidate.family,
                 exporters=candidate.exporters, found_by=candidate.found_by,
                 label_names=sorted(names))
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


def holds_paths(values: Iterable[Any]) -> bool:
    """Whether a route label's values are paths or templates (some start with ``/``), not
    view or function names, which cannot be mapped to requests."""
    return any(str(v or "").startswith("/") for v in values)


def _project(out: Series, rows: list[tuple[dict[str, Any], float]]) -> None:
    """Sum rows ({dim: value}, count) onto (method, route, status) keys; drop a route
    label that holds no path (view or function names cannot be mapped to requests)."""
    route = out.labels.get("route")
    if route and rows and not holds_paths(r.get("route") for r, _ in rows):
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
    labels = {"method": _read_from(chosen, OTLP_METHOD), "route": _read_from(chosen, OTLP_ROUTE),
              "status": _read_from(chosen, OTLP_STATUS)}
    out = Series(name, SOURCE_OTLP, labels, family=name, exporters=OTLP_EXPORTERS[name],
                 found_by="known family",
                 label_names=sorted({k for p in chosen for k in p.attributes}))
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


def _read_from(points: list[MetricPoint], names: tuple[str, ...]) -> str | None:
    """The attribute a dimension was read from, as the report names it: None unless every
    point has one of ``names``; the one they all carry, else those used, joined by " or "."""
    used = [_first_name(p.attributes, names) for p in points]
    if any(u is None for u in used):
        return None
    shared = next((n for n in names if all(p.attributes.get(n) not in (None, "") for p in points)), None)
    return shared or " or ".join(n for n in names if n in used)


def _first_name(attrs: dict[str, Any], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if attrs.get(n) not in (None, "")), None)


def _str(attrs: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in attrs.items()}
