"""W3C Trace Context (level 1): generate valid traceparent headers, parse received traceparent
and tracestate values the way a conforming receiver must."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

# version "00" layout; other versions may append fields after a "-" (future versions).
# fullmatch and DOTALL: "$" alone would accept a trailing newline, "." would stop at one.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>(-.*)?)",
    re.DOTALL,
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
    m = _TRACEPARENT.fullmatch(value)
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


# tracestate list members (level 1, 3.3.1): simple-key / tenant-id "@" system-id, "=" value.
_TS_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}"
    r"|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
_TS_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
TRACESTATE_MAX_MEMBERS = 32


def parse_tracestate(value: str | list[str] | None) -> list[tuple[str, str]] | None:
    """Parse a tracestate header (a list of field values is joined with "," as RFC 7230
    section 3.2.2 says) into its (key, value) members, in order.

    Empty and blank members are allowed and skipped. Returns None when the whole header must
    be discarded: a member that breaks the grammar, more than 32 members, or a key that occurs
    twice ("only one entry per key is allowed").
    """
    if value is None:
        return None
    text = ",".join(value) if isinstance(value, list) else value
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in text.split(","):
        member = raw.strip(" \t")
        if not member:
            continue
        key, eq, val = member.partition("=")
        if not eq or not _TS_KEY.fullmatch(key) or not _TS_VALUE.fullmatch(val) or key in seen:
            return None
        seen.add(key)
        members.append((key, val))
        if len(members) > TRACESTATE_MAX_MEMBERS:
            return None
    return members
