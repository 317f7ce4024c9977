"""Prometheus text / OpenMetrics exposition parsed (by prometheus_client) into plain samples."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import parser as prom_parser
from prometheus_client.openmetrics import parser as om_parser

PROMETHEUS, OPENMETRICS = "prometheus", "openmetrics"
OPENMETRICS_TYPE = "application/openmetrics-text"

LabelsKey = tuple[tuple[str, str], ...]


@dataclass
class Exemplar:
    labels: dict[str, str]
    value: float
    timestamp: float | None = None  # Unix seconds


@dataclass
class Sample:
    name: str  # exactly as exposed, e.g. "http_requests_total", "x_bucket"
    labels: dict[str, str]
    value: float
    timestamp: float | None = None  # Unix seconds
    exemplar: Exemplar | None = None


@dataclass
class Family:
    name: str  # as the parser names it (the text parser drops a counter's "_total")
    type: str  # counter | gauge | histogram | gaugehistogram | summary | info | stateset | unknown
    unit: str = ""
    help: str = ""
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Exposition:
    format: str  # "prometheus" | "openmetrics"
    families: list[Family] = field(default_factory=list)
    error: str = ""  # first parse error; families parsed before it are kept

    @property
    def samples(self) -> Iterator[Sample]:
        for fam in self.families:
            yield from fam.samples

    def family(self, name: str) -> Family | None:
        for fam in self.families:
            if fam.name == name:
                return fam
        return None


def format_of(content_type: str) -> str:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return OPENMETRICS if media == OPENMETRICS_TYPE else PROMETHEUS


def parse_exposition(text: str, content_type: str) -> Exposition:
    """Parse a /metrics body by its Content-Type; never raises, parse errors land in ``error``."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    fmt = format_of(content_type)
    out = Exposition(format=fmt)
    if media not in ("", "text/plain", OPENMETRICS_TYPE):
        out.error = f"unsupported exposition Content-Type {media!r} (text/plain or {OPENMETRICS_TYPE})"
        return out
    parse = om_parser.text_string_to_metric_families if fmt == OPENMETRICS else prom_parser.text_string_to_metric_families
    try:
        for metric in parse(text):
            out.families.append(
                Family(
                    name=metric.name,
                    type=metric.type,
                    unit=metric.unit or "",
                    help=metric.documentation or "",
                    samples=[_sample(s) for s in metric.samples],
                )
            )
    except Exception as e:  # noqa: BLE001 - the parsers raise ValueError, but also others on odd input
        out.error = f"{fmt} parse error{_locate(text, fmt, parse)}: {e or type(e).__name__}"
    return out


def _locate(text: str, fmt: str, parse: Any) -> str:
    """' at line N (...)' for the first line that fails on its own; '' for structural errors."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line == "# EOF":
            continue
        try:
            for _ in parse(line + ("\n# EOF\n" if fmt == OPENMETRICS else "\n")):
                pass
        except Exception:  # noqa: BLE001
            shown = line if len(line) <= 80 else line[:77] + "..."
            return f" at line {n} ({shown!r})"
    return ""


def _seconds(ts: Any) -> float | None:
    # The text parser gives float seconds; the OpenMetrics parser a Timestamp(sec, nsec).
    return None if ts is None else float(ts)


def _sample(s: Any) -> Sample:
    ex = s.exemplar
    return Sample(
        name=s.name,
        labels=dict(s.labels),
        value=float(s.value),
        timestamp=_seconds(s.timestamp),
        exemplar=Exemplar(dict(ex.labels), float(ex.value), _seconds(ex.timestamp)) if ex is not None else None,
    )


def labels_key(labels: dict[str, str], drop: tuple[str, ...] = ()) -> LabelsKey:
    """A hashable, order-independent key for a label set."""
    return tuple(sorted((k, v) for k, v in labels.items() if k not in drop))


def parse_le(le: str) -> float:
    return math.inf if le.strip() in ("+Inf", "Inf", "inf", "+inf") else float(le)


def histogram_series(exposition: Exposition, base_name: str) -> dict[LabelsKey, dict[str, Any]]:
    """Per label set of histogram ``base_name``: ``{"count", "sum", "buckets": {le: cumulative}}``.

    ``le`` keys are floats (``math.inf`` for ``+Inf``); a missing _count/_sum is None.
    Gauge histograms' ``_gcount``/``_gsum`` count as well.
    """
    out: dict[LabelsKey, dict[str, Any]] = {}

    def series(labels: dict[str, str]) -> dict[str, Any]:
        return out.setdefault(labels_key(labels, ("le",)), {"count": None, "sum": None, "buckets": {}})

    for s in exposition.samples:
        if not s.name.startswith(base_name):
            continue
        suffix = s.name[len(base_name) :]
        if suffix == "_bucket" and "le" in s.labels:
            try:
                series(s.labels)["buckets"][parse_le(s.labels["le"])] = s.value
            except ValueError:
                continue  # a bad le is SC's business, not this helper's
        elif suffix in ("_count", "_gcount"):
            series(s.labels)["count"] = s.value
        elif suffix in ("_sum", "_gsum"):
            series(s.labels)["sum"] = s.value
    for ser in out.values():
        ser["buckets"] = dict(sorted(ser["buckets"].items()))
    return out


def series_values(exposition: Exposition, name: str) -> dict[LabelsKey, float]:
    """Value of every series of the sample named exactly ``name``."""
    return {labels_key(s.labels): s.value for s in exposition.samples if s.name == name}


def counter_value(exposition: Exposition, name: str, labels: dict[str, str] | None = None) -> float | None:
    """Sum of the counter ``name`` over the series whose labels include ``labels``.

    ``name`` may omit the ``_total`` suffix. None when no series matches (absent, not zero).
    """
    wanted = (labels or {}).items()
    names = [name] if name.endswith("_total") else [name, f"{name}_total"]
    for candidate in names:
        matched = [s.value for s in exposition.samples if s.name == candidate and wanted <= s.labels.items()]
        if matched:
            return math.fsum(matched)
    return None


def counter_samples(exposition: Exposition) -> dict[tuple[str, LabelsKey], float]:
    """Every counter sample (``_created`` excluded) by (name, labels): for never-decreasing checks."""
    return {
        (s.name, labels_key(s.labels)): s.value
        for fam in exposition.families
        if fam.type == "counter"
        for s in fam.samples
        if not s.name.endswith("_created")
    }
