"""Read histogram samples out of /metrics text (Prometheus text or OpenMetrics)."""

from __future__ import annotations

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

DURATION = "http_server_request_duration_seconds"


def samples(text: str, openmetrics: bool = False) -> list:
    parse = om_families if openmetrics else text_string_to_metric_families
    return [s for fam in parse(text) for s in fam.samples]


def histogram_counts(text: str) -> dict[tuple[str, str, str], float]:
    """(method, route, status) → _count of the duration histogram."""
    return {
        (s.labels["http_request_method"], s.labels["http_route"], s.labels["http_response_status_code"]): s.value
        for s in samples(text)
        if s.name == DURATION + "_count"
    }


def histogram_sum(text: str, method: str, route: str, status: str) -> float:
    for s in samples(text):
        if s.name == DURATION + "_sum" and (
            s.labels["http_request_method"], s.labels["http_route"], s.labels["http_response_status_code"]
        ) == (method, route, status):
            return s.value
    return 0.0


def counter_value(text: str, name: str) -> float:
    hits = [s.value for s in samples(text) if s.name == name]
    return sum(hits)


def delta(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}
