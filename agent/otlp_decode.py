"""OTLP export requests (protobuf or OTLP/JSON bytes) flattened into Span, MetricPoint, LogRecord."""

from __future__ import annotations

import base64
import json
import math
from typing import Any, Callable

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from agent.evidence import LogRecord, MetricPoint, Span
from agent.logs import json_log_line  # re-exported: the other source of LogRecords

TRACES, METRICS, LOGS = "traces", "metrics", "logs"

REQUEST_TYPES: dict[str, type[Message]] = {
    TRACES: ExportTraceServiceRequest,
    METRICS: ExportMetricsServiceRequest,
    LOGS: ExportLogsServiceRequest,
}
RESPONSE_TYPES: dict[str, type[Message]] = {
    TRACES: ExportTraceServiceResponse,
    METRICS: ExportMetricsServiceResponse,
    LOGS: ExportLogsServiceResponse,
}

# OTLP/JSON writes these bytes fields as hex (not proto3-JSON base64): spans, links, log
# records and exemplars. Both JSON spellings of each name are accepted by json_format.
_HEX_ID_KEYS = frozenset(
    {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}
)

_SPAN_KINDS = {v: k.removeprefix("SPAN_KIND_") for k, v in trace_pb2.Span.SpanKind.items()}
_STATUS_CODES = {v: k.removeprefix("STATUS_CODE_") for k, v in trace_pb2.Status.StatusCode.items()}
_TEMPORALITIES = {
    v: ("" if v == 0 else k.removeprefix("AGGREGATION_TEMPORALITY_"))
    for k, v in metrics_pb2.AggregationTemporality.items()
}


class OtlpDecodeError(ValueError):
    """The body is not a valid OTLP export request of the expected signal."""


def parse_request(signal: str, body: bytes, is_json: bool) -> Message:
    """Bytes → the signal's Export*ServiceRequest message; raises OtlpDecodeError."""
    msg = REQUEST_TYPES[signal]()
    try:
        if is_json:
            data = json.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                raise OtlpDecodeError("OTLP/JSON body is not a JSON object")
            json_format.ParseDict(_hex_ids_to_base64(data), msg, ignore_unknown_fields=True)
        else:
            msg.ParseFromString(body)
    except OtlpDecodeError:
        raise
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as e:
        kind = "OTLP/JSON" if is_json else "OTLP protobuf"
        raise OtlpDecodeError(f"not a valid {kind} {signal} export: {e}") from e
    return msg


def response_body(signal: str, is_json: bool) -> bytes:
    """The empty Export*ServiceResponse (full success) in the request's encoding."""
    if is_json:
        return b"{}"
    return RESPONSE_TYPES[signal]().SerializeToString()


def _hex_ids_to_base64(node: Any) -> Any:
    """Rewrite OTLP/JSON hex ids into the base64 that proto3-JSON parsing expects, in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _HEX_ID_KEYS and isinstance(value, str):
                node[key] = _hex_to_b64(value)
            elif isinstance(value, (dict, list)):
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                _hex_ids_to_base64(item)
    return node


def _hex_to_b64(value: str) -> str:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        # Not hex: leave it for json_format (some senders wrongly use base64).
        return value
    return base64.b64encode(raw).decode("ascii")


def any_value(v: Any) -> Any:
    """An OTLP AnyValue as plain Python (bytes as base64 text, as OTLP/JSON does)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return getattr(v, which)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def decode(signal: str, body: bytes, is_json: bool, received_ns: int) -> list[Any]:
    """Decode one export request of ``signal`` into flattened evidence records."""
    return _DECODERS[signal](parse_request(signal, body, is_json), received_ns)


def spans_from_request(req: ExportTraceServiceRequest, received_ns: int = 0) -> list[Span]:
    out: list[Span] = []
    for rs in req.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = ss.scope.name
            for s in ss.spans:
                out.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=_SPAN_KINDS.get(s.kind, f"UNKNOWN_{s.kind}"),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        status_code=_STATUS_CODES.get(s.status.code, f"UNKNOWN_{s.status.code}"),
                        status_message=s.status.message,
                        attributes=attributes(s.attributes),
                        resource=resource,
                        scope=scope,
                        trace_state=s.trace_state,
                        events=[
                            {
                                "name": e.name,
                                "time_ns": e.time_unix_nano,
                                "attributes": attributes(e.attributes),
                            }
                            for e in s.events
                        ],
                        received_ns=received_ns,
                    )
                )
    return out


def metrics_from_request(req: ExportMetricsServiceRequest, received_ns: int = 0) -> list[MetricPoint]:
    out: list[MetricPoint] = []
    for rm in req.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            scope = sm.scope.name
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind is None:
                    continue
                data = getattr(m, kind)
                base = {"name": m.name, "unit": m.unit, "resource": resource, "scope": scope}
                for dp in data.data_points:
                    point = MetricPoint(
                        kind=kind,
                        attributes=attributes(dp.attributes),
                        start_ns=getattr(dp, "start_time_unix_nano", 0),
                        time_ns=dp.time_unix_nano,
                        received_ns=received_ns,
                        **base,
                    )
                    _FILLERS[kind](point, data, dp)
                    out.append(point)
    return out


def _fill_number(point: MetricPoint, data: Any, dp: Any) -> None:
    which = dp.WhichOneof("value")
    point.value = float(getattr(dp, which)) if which else None
    point.exemplars = _exemplars(dp.exemplars)
    if point.kind == "sum":
        point.monotonic = data.is_monotonic
        point.temporality = _TEMPORALITIES.get(data.aggregation_temporality, "")


def _fill_histogram(point: MetricPoint, data: Any, dp: Any) -> None:
    point.count = dp.count
    point.sum = dp.sum if dp.HasField("sum") else None
    point.bucket_bounds = list(dp.explicit_bounds)
    point.bucket_counts = list(dp.bucket_counts)
    point.exemplars = _exemplars(dp.exemplars)
    point.temporality = _TEMPORALITIES.get(data.aggregation_temporality, "")


def _fill_exponential(point: MetricPoint, data: Any, dp: Any) -> None:
    point.count = dp.count
    point.sum = dp.sum if dp.HasField("sum") else None
    point.bucket_bounds, point.bucket_counts = exponential_to_explicit(dp)
    point.exemplars = _exemplars(dp.exemplars)
    point.temporality = _TEMPORALITIES.get(data.aggregation_temporality, "")


def _fill_summary(point: MetricPoint, data: Any, dp: Any) -> None:
    # MetricPoint has no quantile field: count and sum are what the checks use.
    point.count = dp.count
    point.sum = dp.sum


_FILLERS: dict[str, Callable[[MetricPoint, Any, Any], None]] = {
    "sum": _fill_number,
    "gauge": _fill_number,
    "histogram": _fill_histogram,
    "exponential_histogram": _fill_exponential,
    "summary": _fill_summary,
}


def exponential_to_explicit(dp: metrics_pb2.ExponentialHistogramDataPoint) -> tuple[list[float], list[int]]:
    """Rewrite base-2 exponential buckets as explicit ``le`` bounds, ascending.

    Every bucket keeps its own upper bound, so the final (+Inf) bucket is always 0:
    ``len(counts) == len(bounds) + 1`` exactly as for explicit histograms.
    """

    def bound(index: int) -> float:
        try:
            return 2.0 ** (index * 2.0 ** -dp.scale)
        except OverflowError:
            return math.inf

    bounds: list[float] = []
    counts: list[int] = []
    neg = dp.negative
    for i in reversed(range(len(neg.bucket_counts))):
        # negative bucket j holds (-base**(j+1), -base**j]
        bounds.append(-bound(neg.offset + i))
        counts.append(neg.bucket_counts[i])
    if dp.zero_count or neg.bucket_counts or dp.positive.bucket_counts:
        bounds.append(dp.zero_threshold)
        counts.append(dp.zero_count)
    pos = dp.positive
    for i, c in enumerate(pos.bucket_counts):
        bounds.append(bound(pos.offset + i + 1))
        counts.append(c)
    counts.append(0)
    return bounds, counts


def _exemplars(exemplars: Any) -> list[dict[str, Any]]:
    out = []
    for e in exemplars:
        which = e.WhichOneof("value")
        out.append(
            {
                "value": float(getattr(e, which)) if which else None,
                "time_ns": e.time_unix_nano,
                "trace_id": e.trace_id.hex(),
                "span_id": e.span_id.hex(),
                "attributes": attributes(e.filtered_attributes),
            }
        )
    return out


def logs_from_request(req: ExportLogsServiceRequest, received_ns: int = 0) -> list[LogRecord]:
    out: list[LogRecord] = []
    for rl in req.resource_logs:
        resource = attributes(rl.resource.attributes)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                out.append(
                    LogRecord(
                        source="otlp",
                        time_ns=r.time_unix_nano or r.observed_time_unix_nano,
                        severity_text=r.severity_text,
                        severity_number=int(r.severity_number),
                        body=any_value(r.body),
                        trace_id=r.trace_id.hex(),
                        span_id=r.span_id.hex(),
                        attributes=attributes(r.attributes),
                        resource=resource,
                        received_ns=received_ns,
                    )
                )
    return out


_DECODERS: dict[str, Callable[[Any, int], list[Any]]] = {
    TRACES: spans_from_request,
    METRICS: metrics_from_request,
    LOGS: logs_from_request,
}

__all__ = [
    "LOGS",
    "METRICS",
    "TRACES",
    "OtlpDecodeError",
    "any_value",
    "attributes",
    "decode",
    "exponential_to_explicit",
    "json_log_line",
    "logs_from_request",
    "metrics_from_request",
    "parse_request",
    "response_body",
    "spans_from_request",
]
