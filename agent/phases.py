"""Phase planner: the requests of each test phase (tc, bc, ec, load) from a resolved scenario.

Pure functions, no I/O: the runner sends the phases in order (tc, bc, ec, then load) and the
checks find each request again by its DriverRecord ``phase`` and ``case`` (docs/SCENARIO.md).
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.driver import PlannedRequest
from agent.errcodes import entry_wire_code
from agent.scenario import harness_path, is_fanout
from agent.tracecontext import INVALID_PARENT_ID, INVALID_TRACE_ID, new_span_id, new_trace_id, new_traceparent

PHASES = ("tc", "bc", "ec", "load")
FANOUT_SUFFIX = "@fanout"
# W3C spec example; keys must be lower-case or a conforming propagator drops the whole header.
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
BIZ_CODE = "ORDER"
BIZ_CODE_PADDED = "   ORDER  "
BIZ_DEFAULT = "default"
# bc/concurrent: enough interleaved requests that a leaking thread-local in any of a
# typical pool of worker threads carries one request's bizCode into another's call.
BC_CONCURRENT_REQUESTS = 64
BC_MIN_CONCURRENCY = 8
BC_NO_CODE_EVERY = 3  # every third concurrent request has no bizCode (expects "default")


def _ids_with_letters() -> tuple[str, str]:
    """A fresh trace-id and parent-id that each hold a-f, so upper-casing changes them."""
    while True:
        tid, pid = new_trace_id(), new_span_id()
        if not tid.isdigit() and not pid.isdigit():
            return tid, pid


# W3C Trace Context level 1 invalid traceparent forms: variant → value(s) from fresh ids.
# A list means the header is sent once per value.
INVALID_TRACEPARENTS: dict[str, Callable[[str, str], str | list[str]]] = {
    "version-ff": lambda t, p: f"ff-{t}-{p}-01",
    "zero-trace-id": lambda t, p: f"00-{INVALID_TRACE_ID}-{p}-01",
    "zero-parent-id": lambda t, p: f"00-{t}-{INVALID_PARENT_ID}-01",
    "short-trace-id": lambda t, p: f"00-{t[:31]}-{p}-01",
    "long-trace-id": lambda t, p: f"00-{t}0-{p}-01",
    "short-parent-id": lambda t, p: f"00-{t}-{p[:15]}-01",
    "uppercase-hex": lambda t, p: f"00-{t.upper()}-{p.upper()}-01",
    "illegal-char": lambda t, p: f"00-{t[:-1]}g-{p}-01",
    "bad-flags-length": lambda t, p: f"00-{t}-{p}-1",
    "version-00-trailing-data": lambda t, p: f"00-{t}-{p}-01-deadbeef",
    "duplicate-header": lambda t, p: [f"00-{t}-{p}-01", str(new_traceparent())],
}


# W3C trace-context test-harness mode (SPEC §5): the SUT's harness endpoint is told to call the
# downstream sink back at <sink>/w3c/<case>?call=<i>&of=<n>; conformance/checks/tc_harness.py
# reads the case and the number of callbacks back from that path.
HARNESS_SUFFIX = "@harness"
HARNESS_CALLBACK_PREFIX = "/w3c/"
HARNESS_CALLBACKS = 3  # tc/multiple-callbacks: each outbound call must carry the trace
# The W3C harness's own level-1 cases beyond the invalid variants above:
# a higher version with more fields: a level-1 receiver parses the first four and continues;
FUTURE_VERSION = "cc-{t}-{p}-01-what-the-future-will-be-like"
# the same with a "." after the flags is no version-cc value at all: a new trace.
HARNESS_INVALID_TRACEPARENTS: dict[str, Callable[[str, str], str | list[str]]] = {
    **INVALID_TRACEPARENTS,
    "future-version-bad-delimiter": lambda t, p: f"cc-{t}-{p}-01.what-the-future-will-be-like",
}
# 32 members, the most a tracestate may hold, over 4 header fields (as the W3C harness sends
# them): 287 characters, under the 512 a receiver must forward, so all must arrive in order.
TRACESTATE_32 = [",".join(f"bar{i:02d}={i:02d}" for i in range(first, min(first + 10, 33)))
                 for first in range(1, 33, 10)]


@dataclass
class Phase:
    """One batch of requests sent with the same concurrency."""

    name: str  # tc | bc | ec | load
    title: str  # for progress lines
    requests: list[PlannedRequest]
    concurrency: int = 1


@dataclass
class Plan:
    phases: list[Phase]
    notes: list[str] = field(default_factory=list)  # what could not be planned, and why

    def total(self) -> int:
        return sum(len(p.requests) for p in self.phases)


def encode_body(body: Any, headers: dict[str, str]) -> tuple[bytes | None, dict[str, str]]:
    """Scenario body → bytes: None stays None, text is UTF-8, anything else JSON."""
    if body is None:
        return None, headers
    if isinstance(body, str):
        return body.encode(), headers
    if not any(k.lower() == "content-type" for k in headers):
        headers = {**headers, "Content-Type": "application/json"}
    return json.dumps(body, separators=(",", ":")).encode(), headers


# The phases own the trace context: a load request's own values are not sent along.
TRACE_HEADERS = ("traceparent", "tracestate")


def _request(entry: dict, phase: str, case: str, extra: dict[str, str | list[str]],
             strip: tuple[str, ...] = TRACE_HEADERS) -> PlannedRequest:
    """``entry`` (a load request) without its ``strip`` headers, plus ``extra`` (replacing
    any header of the same name)."""
    drop = {k.lower() for k in (*extra, *strip)}
    headers = {k: str(v) for k, v in (entry.get("headers") or {}).items() if k.lower() not in drop}
    body, headers = encode_body(entry.get("body"), headers)
    return PlannedRequest(entry.get("method") or "GET", entry["path"], {**headers, **extra}, body,
                          phase=phase, case=case)


def _targets(scenario: dict) -> tuple[dict, dict | None]:
    """(plain request, fan-out request or None) among the load mix."""
    load = scenario["load"]
    fan = [r for r in load if is_fanout(scenario, r["path"])]
    plain = [r for r in load if not is_fanout(scenario, r["path"])]
    return (plain or load)[0], (fan[0] if fan else None)


def plan_tc(scenario: dict) -> list[PlannedRequest]:
    """Valid, unsampled, missing and every invalid traceparent, to a plain route and (with
    ``@fanout``) to a fan-out route; plus tracestate forwarding on the fan-out route."""
    plain, fan = _targets(scenario)
    out: list[PlannedRequest] = []
    for target, suffix in ((plain, ""), (fan, FANOUT_SUFFIX)):
        if target is None:
            continue
        out.append(_request(target, "tc", f"tc/valid{suffix}", {"traceparent": str(new_traceparent())}))
        out.append(_request(target, "tc", f"tc/valid-unsampled{suffix}",
                            {"traceparent": str(new_traceparent(sampled=False))}))
        out.append(_request(target, "tc", f"tc/missing{suffix}", {}))
        for variant, build in INVALID_TRACEPARENTS.items():
            out.append(_request(target, "tc", f"tc/invalid/{variant}{suffix}",
                                {"traceparent": build(*_ids_with_letters())}))
    if fan is not None:
        out.append(_request(fan, "tc", f"tc/tracestate{FANOUT_SUFFIX}",
                            {"traceparent": str(new_traceparent()), "tracestate": TRACESTATE}))
    return out


def harness_callback_url(sink_url: str, case: str, call: int = 0, of: int = 1) -> str:
    """Where the SUT's harness endpoint calls back for ``case`` (without ``@harness``)."""
    return f"{sink_url.rstrip('/')}{HARNESS_CALLBACK_PREFIX}{case}?call={call}&of={of}"


def plan_tc_harness(scenario: dict, sink_url: str) -> list[PlannedRequest]:
    """The tc cases through the SUT's W3C test-harness endpoint: ``POST <path>`` with
    ``[{"url": <sink callback>, "arguments": []}, ...]`` and the case's trace headers; case
    names are the contract's with ``@harness``."""
    path = harness_path(scenario)
    if path is None:
        return []

    def case(name: str, trace: dict[str, str | list[str]], callbacks: int = 1) -> PlannedRequest:
        body = [{"url": harness_callback_url(sink_url, name, i, callbacks), "arguments": []}
                for i in range(callbacks)]
        entry = {"method": "POST", "path": path, "headers": {"Content-Type": "application/json"},
                 "body": body}
        return _request(entry, "tc", f"{name}{HARNESS_SUFFIX}", trace)

    def tp(sampled: bool = True) -> dict[str, str | list[str]]:
        return {"traceparent": str(new_traceparent(sampled))}

    out = [case("tc/valid", tp()), case("tc/valid-unsampled", tp(False)), case("tc/missing", {})]
    for variant, build in HARNESS_INVALID_TRACEPARENTS.items():
        out.append(case(f"tc/invalid/{variant}", {"traceparent": build(*_ids_with_letters())}))
    out.append(case("tc/future-version",
                    {"traceparent": FUTURE_VERSION.format(t=new_trace_id(), p=new_span_id())}))
    out.append(case("tc/tracestate", {**tp(), "tracestate": TRACESTATE}))
    out.append(case("tc/tracestate-32-members", {**tp(), "tracestate": list(TRACESTATE_32)}))
    out.append(case("tc/multiple-callbacks", tp(), HARNESS_CALLBACKS))
    return out


def _bc_targets(scenario: dict) -> list[dict]:
    """Every fan-out request of the load mix; the plain one when nothing fans out (then only
    span-side bizCode checks have material)."""
    fan = [r for r in scenario["load"] if is_fanout(scenario, r["path"])]
    return fan or [_targets(scenario)[0]]


def plan_bc(scenario: dict) -> list[PlannedRequest]:
    """bizCode present, padded with spaces and missing, to each fan-out request, one at a time."""
    header = scenario["biz_code_header"]
    out = []
    for target in _bc_targets(scenario):
        for case, value in (("bc/present", BIZ_CODE), ("bc/padded", BIZ_CODE_PADDED), ("bc/missing", None)):
            extra: dict[str, str | list[str]] = {"traceparent": str(new_traceparent())}
            if value is not None:
                extra[header] = value
            out.append(_request(target, "bc", case, extra, (*TRACE_HEADERS, header)))
    return out


def plan_bc_concurrent(scenario: dict, n: int = BC_CONCURRENT_REQUESTS) -> list[PlannedRequest]:
    """Interleaved requests, each with its own bizCode ``BIZ-<i>`` or (every third) none."""
    header = scenario["biz_code_header"]
    run_tag = secrets.token_hex(2)  # codes stay distinct across runs sharing a service
    targets = itertools.cycle(_bc_targets(scenario))
    out = []
    for i, target in zip(range(n), targets):
        extra: dict[str, str | list[str]] = {"traceparent": str(new_traceparent())}
        if i % BC_NO_CODE_EVERY != BC_NO_CODE_EVERY - 1:
            extra[header] = f"BIZ-{run_tag}-{i:04d}"
        out.append(_request(target, "bc", "bc/concurrent", extra, (*TRACE_HEADERS, header)))
    return out


def plan_ec(scenario: dict) -> tuple[list[PlannedRequest], list[str]]:
    """One request per catalogue entry's trigger (case ``ec/<WIRE_CODE>``); notes for the
    entries that cannot be sent."""
    out, notes = [], []
    for i, entry in enumerate(scenario.get("errcodes") or []):
        code = entry_wire_code(entry) or f"entry-{i}"
        trigger = entry.get("trigger") if isinstance(entry, dict) else None
        if not isinstance(trigger, dict) or not isinstance(trigger.get("path"), str) \
                or not trigger["path"].startswith("/"):
            notes.append(f"errcode {code}: no trigger with a path starting with /; not sent")
            continue
        method = trigger.get("method") or "GET"
        headers = trigger.get("headers") if isinstance(trigger.get("headers"), dict) else {}
        entry_req = {"method": str(method).upper(), "path": trigger["path"],
                     "headers": {str(k): str(v) for k, v in headers.items()}, "body": trigger.get("body")}
        extra: dict[str, str | list[str]] = {}
        if not any(k.lower() == "traceparent" for k in entry_req["headers"]):
            extra["traceparent"] = str(new_traceparent())
        out.append(_request(entry_req, "ec", f"ec/{code}", extra, strip=()))
    return out, notes


def plan_load(scenario: dict, n: int) -> list[PlannedRequest]:
    """``n`` requests over the load mix (each entry ``weight`` times per round), fresh
    traceparent each."""
    mix = [r for r in scenario["load"] for _ in range(int(r.get("weight") or 1))]
    return [_request(r, "load", "load", {"traceparent": str(new_traceparent())})
            for r, _ in zip(itertools.cycle(mix), range(n))]


def plan(scenario: dict, *, requests: int, concurrency: int, sink_url: str | None = None) -> Plan:
    """Every phase in sending order: tc (with the W3C harness cases when the scenario names
    the endpoint and ``sink_url`` is the downstream sink's), bc (one at a time, then
    concurrent), ec, load."""
    ec, notes = plan_ec(scenario)
    harness: list[PlannedRequest] = []
    if harness_path(scenario) is not None:
        if sink_url:
            harness = plan_tc_harness(scenario, sink_url)
        else:
            notes.append("w3c_harness: no downstream sink to call back; no @harness cases sent")
    if not scenario.get("errcodes"):
        notes.append("no errcode catalogue: the ec phase sends nothing")
    if not any(is_fanout(scenario, r["path"]) for r in scenario["load"]):
        notes.append("no fan-out route in the scenario: no @fanout cases; bizCode cases go to "
                     f"{_targets(scenario)[0]['path']}")
    bc_c = max(BC_MIN_CONCURRENCY, min(concurrency, BC_CONCURRENT_REQUESTS))
    tc, bc, bc_concurrent = plan_tc(scenario), plan_bc(scenario), plan_bc_concurrent(scenario)
    load = plan_load(scenario, requests)
    through = f" ({len(harness)} through {harness_path(scenario)})" if harness else ""
    phases = [
        Phase("tc", f"sending {len(tc) + len(harness)} trace-context cases one at a time{through}",
              tc + harness),
        Phase("bc", f"sending {len(bc)} bizCode cases one at a time", bc),
        Phase("bc", f"sending {len(bc_concurrent)} interleaved bizCodes at concurrency {bc_c}",
              bc_concurrent, bc_c),
        Phase("ec", f"sending {len(ec)} errcode triggers one at a time", ec),
        Phase("load", f"sending {len(load)} requests at concurrency {concurrency}", load, concurrency),
    ]
    return Plan([p for p in phases if p.requests], notes)
