"""W3C Trace Context (level 1) traceparent: generate valid headers and parse received ones."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

# version "00" layout; other versions may append fields after a "-" (future versions).
_TRACEPARENT = re.compile(
    r"^(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>(-.*)?)$"
)
INVALID_TRACE_ID = "0" * 32
INVALID_PARENT_ID = "0" * 16


@dataclass(frozen=True)
class TraceParent:
    version: str
    trace_id: str
    parent_id: str
    flags: str

    def __str__(self) -> str:
        return f"{self.version}-{self.trace_id}-{self.parent_id}-{self.flags}"

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)


def new_trace_id() -> str:
    while True:
        tid = secrets.token_hex(16)
        if tid != INVALID_TRACE_ID:
            return tid


def new_span_id() -> str:
    while True:
        sid = secrets.token_hex(8)
        if sid != INVALID_PARENT_ID:
            return sid


def new_traceparent(sampled: bool = True) -> TraceParent:
    return TraceParent("00", new_trace_id(), new_span_id(), "01" if sampled else "00")


def parse_traceparent(value: str | None) -> TraceParent | None:
    """Parse a traceparent header value the way a conforming receiver must.

    Returns None for anything a receiver must treat as invalid (and so restart the trace):
    version ff, all-zero ids, wrong lengths, upper-case or illegal characters, version 00
    with trailing data.
    """
    if value is None:
        return None
    value = value.strip(" \t")
    m = _TRACEPARENT.match(value)
    if not m:
        return None
    version = m["version"]
    if version == "ff":
        return None
    if version == "00" and m["rest"]:
        return None
    if m["trace_id"] == INVALID_TRACE_ID or m["parent_id"] == INVALID_PARENT_ID:
        return None
    return TraceParent(version, m["trace_id"], m["parent_id"], m["flags"])


def is_valid_trace_id(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{32}", value or "")) and value != INVALID_TRACE_ID


def is_valid_span_id(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{16}", value or "")) and value != INVALID_PARENT_ID
