"""The run's /metrics scrapes for checks: parsed once per evaluation, picked by phase and format."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from agent.evidence import Evidence, Scrape
from agent.exposition import OPENMETRICS, Exposition, format_of, parse_exposition


def parsed_scrape(ctx: Any, scrape: Scrape) -> Exposition:
    """A scrape's parsed body, shared between the checks of one evaluation."""
    return ctx.shared(f"scrape:{scrape.seq}", lambda: parse_exposition(
        ctx.evidence.scrape_text(scrape), scrape.content_type))


def answered(evidence: Evidence) -> list[Scrape]:
    """Scrapes that returned a body with status 200, in the order they were taken."""
    good = [s for s in evidence.scrapes
            if s.file and not s.error and s.status in (None, 200)]
    return sorted(good, key=lambda s: (s.t_ns, s.seq))


def last_good(evidence: Evidence, phase: str, fmt: str | None = None) -> Scrape | None:
    """The last answered scrape of ``phase`` (optionally only Prometheus text or OpenMetrics)."""
    good = [s for s in answered(evidence) if s.phase == phase
            and (fmt is None or format_of(s.content_type) == fmt)]
    return good[-1] if good else None


def is_openmetrics(scrape: Scrape) -> bool:
    return format_of(scrape.content_type) == OPENMETRICS


def metrics_path(evidence: Evidence) -> str:
    url = str(evidence.meta.target.get("metrics_url") or "")
    return urlsplit(url).path or "/metrics"
