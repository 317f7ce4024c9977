"""The daemon's own Prometheus metrics: runs by state, API requests, kernel events and agent drops."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from agent import __version__

if TYPE_CHECKING:
    from agent.daemon.store import RunStore

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _RunStates:
    """Runs by state, read from the index at scrape time (so it is right after a restart too)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self):
        g = GaugeMetricFamily("obsconform_runs", "Runs in the index, by state.", labels=["state"])
        for state, n in self._counts().items():
            g.add_metric([state], n)
        yield g


class DaemonMetrics:
    """One registry per daemon (not the global one), so tests can run several daemons."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        Gauge("obsconform_build_info", "The agent's version.", ["version"], registry=r).labels(__version__).set(1)
        self.api_requests = Counter("obsconform_api_requests", "API requests, by route and status.",
                                    ["route", "code"], registry=r)
        self.runs_finished = Counter("obsconform_runs_finished", "Runs that ended, by final state.",
                                     ["state"], registry=r)
        self.run_duration = Histogram("obsconform_run_duration_seconds", "Wall time of runs that ran.",
                                      buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=r)
        self.running = Gauge("obsconform_run_running", "1 while a run executes.", registry=r)
        self.kernel_requests = Counter("obsconform_kernel_requests", "HTTP requests the kernel probes saw, "
                                       "summed over finished runs.", registry=r)
        self.agent_drops = Counter("obsconform_agent_drops", "Kernel events the agent lost (ring buffer "
                                   "full), summed over finished runs.", registry=r)
        self.truncated = Counter("obsconform_truncated_captures", "Captures cut at capture_bytes, summed "
                                 "over finished runs.", registry=r)
        # Only exported once a run's kernel collector reported a fill figure: no fake zero.
        self.ringbuf_fill: Gauge | None = None
        self.worker_errors = Counter("obsconform_worker_errors", "Unexpected errors in the run worker.",
                                     registry=r)
        self.bad_child_lines = Counter("obsconform_bad_child_lines", "Unreadable lines from run processes.",
                                       registry=r)

    def watch_store(self, store: "RunStore") -> None:
        self.registry.register(_RunStates(store.counts))

    def run_started(self) -> None:
        self.running.set(1)

    def run_finished(self, state: str, duration_s: float, report_path: str | None) -> None:
        self.running.set(0)
        self.runs_finished.labels(state).inc()
        self.run_duration.observe(duration_s)
        if report_path:
            self._add_kernel_figures(Path(report_path))

    def _add_kernel_figures(self, report_path: Path) -> None:
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
            kernel = report.get("measurements", {}).get("kernel", {}) or {}
            self.kernel_requests.inc(max(0, int(kernel.get("requests") or 0)))
            self.agent_drops.inc(max(0, int(kernel.get("agent_drops") or 0)))
            self.truncated.inc(max(0, int(kernel.get("truncated_captures") or 0)))
            meta = json.loads((report_path.parent / "meta.json").read_text(encoding="utf-8"))
            fill = _ringbuf_fill(meta.get("kernel_stats") or {})
            if fill is not None:
                if self.ringbuf_fill is None:
                    self.ringbuf_fill = Gauge("obsconform_ringbuf_fill_ratio", "Peak ring-buffer fill of the "
                                              "last run that measured it (0..1).", registry=self.registry)
                self.ringbuf_fill.set(fill)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warning("cannot read kernel figures from %s: %s", report_path, e)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _ringbuf_fill(stats: dict) -> float | None:
    """The run's peak ring-buffer fill as a 0..1 ratio: the most bytes the collector found
    waiting (``user_ring_fill_peak_bytes``) over the ring's size; None if not recorded."""
    peak = stats.get("user_ring_fill_peak_bytes")
    sizes = stats.get("sizes") if isinstance(stats.get("sizes"), dict) else {}
    size = sizes.get("ringbuf_bytes")
    if isinstance(peak, int) and isinstance(size, int) and size > 0:
        return min(1.0, peak / size)
    return None
