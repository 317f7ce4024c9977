"""JSON-lines logging to stdout, stamped with the current span's trace_id/span_id."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from opentelemetry import trace

LOGGER_NAME = "refservice"


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time, level, msg, trace context, then the record's `fields`."""

    def __init__(self, with_trace_context: bool = True) -> None:
        super().__init__()
        self._with_trace = with_trace_context

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "msg": record.getMessage(),
        }
        if self._with_trace:
            # Like opentelemetry-instrumentation-logging: whatever is logged while a span is
            # current carries its ids, so logs join traces without each call passing them.
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                doc["trace_id"] = format(ctx.trace_id, "032x")
                doc["span_id"] = format(ctx.span_id, "016x")
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"), default=str)


def setup_logging(with_trace_context: bool = True) -> logging.Logger:
    """Route the service logger to stdout as JSON lines (idempotent)."""
    log = logging.getLogger(LOGGER_NAME)
    for handler in list(log.handlers):
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLineFormatter(with_trace_context))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log
