"""Prometheus metrics of the reference service and their exposition (text or OpenMetrics)."""

from __future__ import annotations

import os

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)
from prometheus_client.exposition import choose_encoder

# OTel HTTP semconv advice for http.server.request.duration (seconds).
SEMCONV_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
DURATION_METRIC = "http_server_request_duration_seconds"
DURATION_LABELS = ("http_request_method", "http_route", "http_response_status_code")


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """The service's metric objects, in a registry of their own (one instance per worker)."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_enabled()
        self.registry = CollectorRegistry()
        if not self.multiprocess:
            # Per-process collectors make no sense summed over workers: single process only.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        self.request_duration = Histogram(
            DURATION_METRIC,
            "Duration of HTTP server requests.",
            DURATION_LABELS,
            buckets=SEMCONV_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.dropped_spans = Counter(
            "refservice_fault_dropped_spans",
            "Server spans deliberately not exported by the FAULT_DROP_SPANS switch.",
            registry=self.registry,
        )

    def observe_request(
        self, method: str, route: str, status: int, seconds: float, exemplar: dict[str, str] | None
    ) -> None:
        self.request_duration.labels(method, route, str(status)).observe(seconds, exemplar)

    def exposition(self, accept_header: str | None) -> tuple[bytes, str]:
        """Body and content type for GET /metrics; OpenMetrics (with exemplars) when asked."""
        encoder, content_type = choose_encoder(accept_header or "")
        if self.multiprocess:
            from prometheus_client import multiprocess

            # Each scrape aggregates the per-worker files afresh; exemplars are not supported
            # by prometheus_client in this mode (a documented limitation of the library).
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return encoder(registry), content_type
        return encoder(self.registry), content_type
