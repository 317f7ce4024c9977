"""W3C trace-context test-harness mode for the TC checks: the callbacks the SUT's harness
endpoint made to the downstream sink for each ``@harness`` case (found by callback path), and
the level 1 tracestate forwarding rule every outbound call is judged by."""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.evidence import DownstreamRecord
from agent.tracecontext import TRACESTATE_MAX_MEMBERS, parse_tracestate
from conformance.view import SOURCE_DOWNSTREAM, Outbound, RequestView

HARNESS_SUFFIX = "@harness"
# agent/phases.py asks for callbacks at <sink>/w3c/<case>?call=<i>&of=<n> (conformance does
# not import the planner: the two constants are kept equal by tests/conformance).
CALLBACK_PREFIX = "/w3c/"
HOW_CALLBACK = "callback path"
# W3C Trace Context level 1, 3.3.1.5: a receiver SHOULD forward at least 512 characters;
# when it must cut, members longer than 128 characters go first, then from the right.
TRACESTATE_KEEP_CHARS = 512
TRACESTATE_LONG_MEMBER = 128
LIST_AT_MOST = 3  # members named in one problem line


def is_harness(r: RequestView) -> bool:
    """Whether the request went through the SUT's W3C test-harness endpoint."""
    return r.driver.case.endswith(HARNESS_SUFFIX)


def callback_of(path: str) -> tuple[str, int] | None:
    """``/w3c/tc/valid?call=0&of=3`` → (``tc/valid``, 3 callbacks asked for); None for any
    other sink path."""
    parts = urlsplit(path)
    if not parts.path.startswith(CALLBACK_PREFIX):
        return None
    try:
        of = int(parse_qs(parts.query).get("of", ["1"])[0])
    except ValueError:
        of = 1
    return parts.path[len(CALLBACK_PREFIX):], max(of, 1)


def _by_case(records: list[DownstreamRecord]) -> dict[str, tuple[int, list[Outbound]]]:
    out: dict[str, list[Outbound]] = defaultdict(list)
    asked: dict[str, int] = {}
    for rec in sorted(records, key=lambda x: x.t_ns):
        cb = callback_of(rec.path)
        if cb is None:
            continue
        asked[cb[0]] = max(asked.get(cb[0], 1), cb[1])
        out[cb[0]].append(Outbound(SOURCE_DOWNSTREAM, HOW_CALLBACK, rec.method, rec.path,
                                   rec.headers, rec.t_ns))
    return {case: (asked[case], calls) for case, calls in out.items()}


def _callbacks(ctx: Any, r: RequestView) -> tuple[int, list[Outbound]]:
    table = ctx.shared("w3c_callbacks", lambda: _by_case(ctx.evidence.downstream))
    return table.get(r.driver.case.removesuffix(HARNESS_SUFFIX), (1, []))


def harness_callbacks(ctx: Any, r: RequestView) -> list[Outbound]:
    """The callbacks the SUT made for one ``@harness`` case, in arrival order."""
    return _callbacks(ctx, r)[1]


def callback_gap(ctx: Any, r: RequestView) -> str:
    """Why an ``@harness`` case has fewer callbacks than it asked for; "" when none is missing."""
    asked, got = _callbacks(ctx, r)
    if len(got) >= asked:
        return ""
    d = r.driver
    answer = f"answered {d.status}" if d.status is not None else f"did not answer ({d.error})"
    return (f"{d.method} {d.path} {answer} and made {len(got)} of {asked} callback(s) to the "
            f"sink: does the SUT implement the W3C test-harness contract at {d.path}?")


def is_callback(rec: DownstreamRecord) -> bool:
    return callback_of(rec.path) is not None


def _names(members: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in members[:LIST_AT_MOST])
    more = len(members) - LIST_AT_MOST
    return f"{shown} and {more} more" if more > 0 else shown


def tracestate_problems(sent: str | None, got: list[str]) -> list[str]:
    """What breaks level 1 forwarding of the ``sent`` tracestate in an outbound call whose
    tracestate fields are ``got``.

    A receiver MUST forward tracestate (3.5): unmodified members keep their order, a member
    whose value it updates MUST move to the front, it SHOULD add its own at the front; it may
    cut members only beyond 32 members or 512 characters, longer than 128 characters first,
    then from the right (3.3.1.5). An invalid inbound tracestate may be dropped: not judged.
    """
    inbound = parse_tracestate(sent) if sent else None
    if not inbound:
        return []
    if not got:
        return [f"tracestate not forwarded: {_names(inbound)} missing"]
    outbound = parse_tracestate(got)
    if outbound is None:
        return [f"forwarded tracestate {', '.join(got)!r} is not valid (level 1 grammar)"]
    pos = {m: i for i, m in enumerate(inbound)}
    keys = {k for k, _ in inbound}
    problems = []
    unmodified = [i for i, m in enumerate(outbound) if m in pos]
    order = [pos[outbound[i]] for i in unmodified]
    if order != sorted(order):
        problems.append("tracestate members forwarded out of order: "
                        f"{_names([outbound[i] for i in unmodified])}")
    first = unmodified[0] if unmodified else len(outbound)
    late = [m for m in outbound[first:] if m[0] in keys and m not in pos]
    if late:
        problems.append(f"updated tracestate member(s) {_names(late)} not moved to the front")
    out_keys = {k for k, _ in outbound}
    missing = [m for m in inbound if m[0] not in out_keys]
    missing = _beyond_allowed_cut(inbound, outbound, missing)
    if missing:
        problems.append(f"tracestate not forwarded: {_names(missing)} missing")
    return problems


def _member_chars(members: list[tuple[str, str]]) -> int:
    return len(",".join(f"{k}={v}" for k, v in members))


def _beyond_allowed_cut(inbound: list[tuple[str, str]], outbound: list[tuple[str, str]],
                        missing: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The missing members a permitted truncation does not explain."""
    uncut = outbound + missing  # what the SUT would have sent without cutting
    if not missing or (len(uncut) <= TRACESTATE_MAX_MEMBERS
                       and _member_chars(uncut) <= TRACESTATE_KEEP_CHARS):
        return missing
    long = {m for m in missing if _member_chars([m]) > TRACESTATE_LONG_MEMBER}
    short = [m for m in missing if m not in long]
    # Short members may only go from the right end of the inbound list (members the SUT
    # updated and long ones aside).
    updated = {k for k, v in outbound} - {k for k, v in outbound if (k, v) in inbound}
    rest = [m for m in inbound if m not in long and m[0] not in updated]
    return [] if short == rest[len(rest) - len(short):] else short
