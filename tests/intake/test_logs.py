"""JSON log lines of a service's stdout → LogRecord, for the log shapes of the common loggers."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from agent.logs import json_log_line

TID, SID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
UTC_NOON_NS = int(datetime(2024, 5, 1, 12, tzinfo=timezone.utc).timestamp()) * 10**9
LOCAL_NOON_NS = int(datetime(2024, 5, 1, 12).timestamp()) * 10**9  # naive text is local time

CASES = [
    # id, line, (trace_id, span_id, time_ns, severity_text, severity_number, body, attributes)
    ("python-json-logger+otel", {"asctime": "2024-05-01 12:00:00,250", "levelname": "WARNING", "message": "hi",
     "otelTraceID": TID, "otelSpanID": SID, "otelServiceName": "svc"},
     (TID, SID, LOCAL_NOON_NS + 250_000_000, "WARNING", 13, "hi", {"otelServiceName": "svc"})),
    ("zap", {"level": "info", "ts": 1714564800.25, "msg": "served", "trace_id": TID, "span_id": SID, "status": 200},
     (TID, SID, UTC_NOON_NS + 250_000_000, "info", 9, "served", {"status": 200})),
    ("pino-ms-numeric-level", {"level": 50, "time": 1714564800250, "msg": "boom", "traceId": TID, "spanId": SID},
     (TID, SID, UTC_NOON_NS + 250_000_000, "ERROR", 17, "boom", {})),
    ("ecs-nested-upper-hex-ns", {"@timestamp": "2024-05-01T12:00:00.123456789Z", "log.level": "error", "message": "x",
     "trace": {"id": TID.upper()}, "span": {"id": SID}},
     (TID, SID, UTC_NOON_NS + 123_456_789, "error", 17, "x", {})),
    ("structlog-no-ids", {"event": "login", "level": "debug", "timestamp": "2024-05-01T14:00:00+02:00", "user": "u1"},
     ("", "", UTC_NOON_NS, "debug", 5, "login", {"user": "u1"})),
    ("epoch-ns", {"time": UTC_NOON_NS + 7, "msg": "n"}, ("", "", UTC_NOON_NS + 7, "", 0, "n", {})),
    ("unknown-level-bad-time", {"severity": "LOUD", "time": "yesterday", "msg": 3}, ("", "", 0, "LOUD", 0, 3, {})),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_json_lines_of_common_loggers(obj, want):
    rec = json_log_line(json.dumps(obj) + "\n")
    assert rec is not None
    got = (rec.trace_id, rec.span_id, rec.time_ns, rec.severity_text, rec.severity_number, rec.body, rec.attributes)
    assert got == want
    assert rec.source == "stdout" and rec.received_ns > 0


@pytest.mark.parametrize(
    "line",
    ["", "plain text line", "[1, 2]", '"a string"', "{broken json", "  INFO {not: json}"],
    ids=["empty", "text", "array", "string", "broken", "text-with-braces"],
)
def test_non_json_object_lines_are_not_log_records(line):
    assert json_log_line(line) is None
