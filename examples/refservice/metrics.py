"""Prometheus metrics of the reference service and their exposition (text or OpenMetrics)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
)
from prometheus_client.exposition import choose_encoder

# OTel HTTP semconv advice for http.server.request.duration (seconds).
SEMCONV_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
DURATION_METRIC = "http_server_request_duration_seconds"
DURATION_LABELS = ("http_request_method", "http_route", "http_response_status_code")
# Resource attributes copied into target_info (OTel → Prometheus compatibility).
TARGET_INFO_ATTRIBUTES = (
    "service.name", "service.namespace", "service.version", "service.instance.id",
    "deployment.environment.name",
)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """The service's metric objects, in a registry of their own (one instance per worker)."""

    def __init__(
        self,
        resource: Mapping[str, Any] | None = None,
        trace_id_label: bool = False,
        bad_metric_names: bool = False,
    ) -> None:
        self.multiprocess = multiprocess_enabled()
        self.registry = CollectorRegistry()
        if not self.multiprocess:
            # Per-process collectors and info metrics do not aggregate over workers.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
            info = {
                k.replace(".", "_"): str(resource[k])
                for k in TARGET_INFO_ATTRIBUTES
                if resource and k in resource
            }
            Info("target", "Target metadata (OTel resource attributes).", registry=self.registry).info(info)
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
        self.requests_by_trace = None
        if trace_id_label:  # FAULT_TRACE_ID_LABEL: one series per request
            self.requests_by_trace = Counter(
                "refservice_requests_by_trace",
                "Requests by trace id (debugging aid gone wrong).",
                ["trace_id"],
                registry=self.registry,
            )
        self.db_query_ms = None
        if bad_metric_names:  # FAULT_BAD_METRIC_NAMES: camelCase, milliseconds
            self.db_query_ms = Histogram(
                "refservice_dbQuery_duration_milliseconds",
                "Simulated database query time, in milliseconds.",
                buckets=(1, 5, 10, 50, 100, 500, 1000),
                registry=self.registry,
            )

    def observe_request(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        exemplar: dict[str, str] | None,
        trace_id: str = "",
    ) -> None:
        self.request_duration.labels(method, route, str(status)).observe(seconds, exemplar)
        if self.requests_by_trace is not None and trace_id:
            self.requests_by_trace.labels(trace_id).inc()
        if self.db_query_ms is not None:
            self.db_query_ms.observe(seconds * 1000.0 / 2)

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
