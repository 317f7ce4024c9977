"""W3C trace-context extraction from a WSGI environ, and the propagators the faults swap in."""

from __future__ import annotations

import re

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import CarrierT, Getter, TextMapPropagator, default_getter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .faults import ActiveFaults


class EnvironGetter(Getter[dict]):
    """Reads request headers from a WSGI environ (duplicates arrive joined with a comma)."""

    def get(self, carrier: dict, key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return None if value is None else [value]

    def keys(self, carrier: dict) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


ENVIRON_GETTER = EnvironGetter()


class IgnoreInboundPropagator(TraceContextTextMapPropagator):
    """FAULT_RESTART_TRACES: never continues an inbound trace (injection is unchanged)."""

    def extract(self, carrier: CarrierT, context: Context | None = None, getter: Getter = default_getter) -> Context:
        return context if context is not None else Context()


# Any 2-hex version, either case, anything after the flags: what a sloppy parser accepts.
_LENIENT = re.compile(
    r"^[ \t]*([0-9a-fA-F]{2})-([0-9a-fA-F]{32})-([0-9a-fA-F]{16})-([0-9a-fA-F]{2})"
)


class LenientTraceContextPropagator(TraceContextTextMapPropagator):
    """FAULT_INVALID_TRACEPARENT_ACCEPTED: continues traceparents a W3C parser must reject.

    Version ff, upper-case hex and trailing data after a version-00 value are taken at face
    value. All-zero ids still start a new trace (the SDK cannot build a valid context from them).
    """

    def extract(self, carrier: CarrierT, context: Context | None = None, getter: Getter = default_getter) -> Context:
        ctx = super().extract(carrier, context, getter)
        if trace.get_current_span(ctx).get_span_context().is_valid:
            return ctx
        values = getter.get(carrier, self._TRACEPARENT_HEADER_NAME)
        match = _LENIENT.match(values[0]) if values else None
        if not match:
            return ctx
        span_context = SpanContext(
            trace_id=int(match[2], 16),
            span_id=int(match[3], 16),
            is_remote=True,
            trace_flags=TraceFlags(int(match[4], 16) & TraceFlags.SAMPLED),
            trace_state=TraceState(),
        )
        if not span_context.is_valid:
            return ctx
        return trace.set_span_in_context(NonRecordingSpan(span_context), context)


def inbound_propagator(faults: ActiveFaults) -> TextMapPropagator:
    """The propagator the server side extracts with: W3C, unless a fault replaces it."""
    if faults.restart_traces:
        return IgnoreInboundPropagator()
    if faults.invalid_traceparent_accepted:
        return LenientTraceContextPropagator()
    return TraceContextTextMapPropagator()
