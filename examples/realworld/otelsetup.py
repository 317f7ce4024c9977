"""The OpenTelemetry SDK set-up every real-world service does: from the standard OTEL_*
environment, a BatchSpanProcessor with the OTLP/HTTP span exporter and, when
OTEL_METRICS_EXPORTER names otlp, a periodic OTLP/HTTP metric reader."""

from __future__ import annotations

import os

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def configure() -> TracerProvider:
    """Install the global tracer (and meter) provider; call once per process, after fork.

    Everything comes from the environment, as in the OTel Python docs: the resource from
    OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, the endpoint from
    OTEL_EXPORTER_OTLP_ENDPOINT, batching from OTEL_BSP_*, the interval from
    OTEL_METRIC_EXPORT_INTERVAL. The SDK flushes both providers at interpreter exit.
    """
    resource = Resource.create()
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp") != "none":
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    if "otlp" in os.environ.get("OTEL_METRICS_EXPORTER", "").split(","):
        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    return provider


def downstream_url(path: str) -> str:
    """The downstream a fan-out route calls: OBSCONFORM_DOWNSTREAM_URL + path."""
    base = os.environ.get("OBSCONFORM_DOWNSTREAM_URL", "http://127.0.0.1:9")
    return base.rstrip("/") + path
