"""JSON log lines from a service's stdout → LogRecord (trace/span ids, time, level, message)."""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

from agent.evidence import LogRecord

# Spellings seen in the common JSON loggers (python-json-logger + OTel logging
# instrumentation, structlog, zap, logrus, pino, ECS); the first key present wins.
TRACE_ID_KEYS = ("trace_id", "traceId", "traceID", "otelTraceID", "trace.id")
SPAN_ID_KEYS = ("span_id", "spanId", "spanID", "otelSpanID", "span.id")
TIME_KEYS = ("time", "timestamp", "ts", "@timestamp", "asctime", "t")
LEVEL_KEYS = ("level", "severity", "levelname", "lvl", "log.level", "severity_text")
MESSAGE_KEYS = ("msg", "message", "body", "event")

# OTel SeverityNumber of each level name (the first of its range).
_SEVERITY = {
    "trace": 1, "debug": 5, "info": 9, "information": 9, "notice": 10,
    "warn": 13, "warning": 13, "error": 17, "err": 17,
    "critical": 21, "crit": 21, "fatal": 21, "panic": 21, "alert": 22, "emergency": 23,
}  # fmt: skip
# Numeric levels are pino/bunyan's (10 trace ... 60 fatal): by far the most common JSON
# loggers that write numbers.
_PINO = {10: "trace", 20: "debug", 30: "info", 40: "warn", 50: "error", 60: "fatal"}
_FRACTION = re.compile(r"[.,](\d+)")


def json_log_line(line: str, received_ns: int = 0) -> LogRecord | None:
    """A ``LogRecord(source="stdout")`` for a JSON object line; None for any other line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    used: set[str] = set()
    trace_id = _first(obj, TRACE_ID_KEYS, used)
    span_id = _first(obj, SPAN_ID_KEYS, used)
    level = _first(obj, LEVEL_KEYS, used)
    severity_text, severity_number = _severity(level)
    return LogRecord(
        source="stdout",
        time_ns=_time_ns(_first(obj, TIME_KEYS, used)),
        severity_text=severity_text,
        severity_number=severity_number,
        body=_first(obj, MESSAGE_KEYS, used),
        trace_id=_id(trace_id),
        span_id=_id(span_id),
        attributes={k: v for k, v in obj.items() if k not in used},
        received_ns=received_ns or time.time_ns(),
    )


def _first(obj: dict[str, Any], keys: tuple[str, ...], used: set[str]) -> Any:
    for key in keys:
        if key in obj:
            used.add(key)
            return obj[key]
        head, dot, rest = key.partition(".")
        if dot and isinstance(obj.get(head), dict) and rest in obj[head]:
            # ECS nests: {"trace": {"id": ...}}; the whole object is consumed.
            used.add(head)
            return obj[head][rest]
    return None


def _id(value: Any) -> str:
    return value.strip().lower() if isinstance(value, str) else ""


def _severity(level: Any) -> tuple[str, int]:
    if level is None or isinstance(level, bool):
        return "", 0
    if isinstance(level, (int, float)):
        name = _PINO.get(int(level))
        return (name.upper(), _SEVERITY[name]) if name else (str(level), 0)
    text = str(level).strip()
    return text, _SEVERITY.get(text.lower(), 0)


def _time_ns(value: Any) -> int:
    """Unix ns from epoch seconds/ms/µs/ns numbers or RFC 3339 text (naive text is local time)."""
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return 0
        v = abs(value)
        scale = 10**9 if v < 1e11 else 10**6 if v < 1e14 else 10**3 if v < 1e17 else 1
        # Decimal of the shortest repr: 1714564800.25 s is exactly ...250000000 ns.
        return int(Decimal(repr(value)) * scale)
    if not isinstance(value, str):
        return 0
    text = value.strip()
    frac_ns = 0
    m = _FRACTION.search(text, 19)  # after "YYYY-MM-DDTHH:MM:SS"
    if m:
        digits = m.group(1)[:9]
        frac_ns = int(digits.ljust(9, "0"))
        text = text[: m.start()] + text[m.end() :]
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return 0
    return int(dt.replace(microsecond=0).timestamp()) * 1_000_000_000 + frac_ns
