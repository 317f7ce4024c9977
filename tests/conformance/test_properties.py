"""Property-based tests (hypothesis) of the parsers the checks stand on: traceparent and
tracestate against the W3C Trace Context level 1 grammar (an independent, character-by-
character reading of the ABNF as the oracle), and the kernel's HTTP request-header parser on
arbitrary captured bytes."""

from __future__ import annotations

import re
import string

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from agent.kernel.assembler import parse_requests
from agent.tracecontext import (
    TRACESTATE_MAX_MEMBERS, new_traceparent, parse_traceparent, parse_tracestate,
)

HEXLC = "0123456789abcdef"
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ traceparent
def _hexlc(s: str, n: int) -> bool:
    return len(s) == n and all(c in HEXLC for c in s)


def w3c_traceparent(value: str) -> tuple[str, str, str, str] | None:
    """Level 1, 3.2.2 and 3.2.4, read literally: what a receiver may use, else None."""
    v = value.strip(" \t")  # OWS around the field value is not part of it (RFC 7230 3.2)
    if len(v) < 55 or v[2] != "-" or v[35] != "-" or v[52] != "-":
        return None
    version, trace, parent, flags, rest = v[:2], v[3:35], v[36:52], v[53:55], v[55:]
    if not (_hexlc(version, 2) and _hexlc(trace, 32) and _hexlc(parent, 16) and _hexlc(flags, 2)):
        return None
    if version == "ff" or trace == "0" * 32 or parent == "0" * 16:
        return None
    if version == "00" and rest:  # version 00 has exactly four fields
        return None
    if rest and not rest.startswith("-"):  # a higher version: flags end or are followed by "-"
        return None
    return version, trace, parent, flags


hex_str = lambda n: st.text(HEXLC, min_size=n, max_size=n)  # noqa: E731
versions = st.one_of(st.just("00"), hex_str(2))
well_formed = st.builds(
    lambda v, t, p, f, rest, pad: f"{pad}{v}-{t}-{p}-{f}{rest}{pad}",
    versions, st.one_of(hex_str(32), st.just("0" * 32)), st.one_of(hex_str(16), st.just("0" * 16)),
    hex_str(2), st.one_of(st.just(""), st.text(string.printable, max_size=12).map(lambda s: "-" + s),
                          st.text(string.printable, min_size=1, max_size=4)),
    st.sampled_from(["", " ", "\t", " \t "]),
)


@st.composite
def mutated(draw) -> str:
    """A well-formed value with one character replaced, inserted or deleted."""
    value = draw(well_formed)
    i = draw(st.integers(0, len(value) - 1))
    c = draw(st.characters(codec="utf-8", exclude_categories=["Cs"]))
    op = draw(st.sampled_from(["replace", "insert", "delete", "upper"]))
    if op == "replace":
        return value[:i] + c + value[i + 1:]
    if op == "insert":
        return value[:i] + c + value[i:]
    if op == "delete":
        return value[:i] + value[i + 1:]
    return value.upper()


@SETTINGS
@given(st.one_of(well_formed, mutated(), st.text(max_size=80)))
@example("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n")  # a trailing newline
@example("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like")
@example("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what-the-future-will-be-like")
@example("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01, "
         "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01")  # two fields combined
def test_parse_traceparent_follows_the_w3c_grammar(value):
    got = parse_traceparent(value)
    want = w3c_traceparent(value)
    assert (None if got is None else (got.version, got.trace_id, got.parent_id, got.flags)) == want


@given(st.booleans())
def test_generated_traceparents_parse_to_themselves(sampled):
    tp = new_traceparent(sampled)
    assert parse_traceparent(str(tp)) == tp and tp.sampled is sampled


# ------------------------------------------------------------------- tracestate
LC = string.ascii_lowercase
KEYCHARS = LC + string.digits + "_-*/"
VALUE_NBLK = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ",=")
simple_key = st.builds(lambda a, b: a + b, st.sampled_from(LC), st.text(KEYCHARS, max_size=20))
tenant_key = st.builds(lambda a, b, c, d: f"{a}{b}@{c}{d}", st.sampled_from(LC + string.digits),
                       st.text(KEYCHARS, max_size=10), st.sampled_from(LC),
                       st.text(KEYCHARS, max_size=13))
keys = st.one_of(simple_key, tenant_key)
values = st.builds(lambda a, b: a + b, st.text(VALUE_NBLK + " ", max_size=20),
                   st.sampled_from(VALUE_NBLK))
members = st.lists(st.tuples(keys, values), max_size=40, unique_by=lambda kv: kv[0])
ows = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def tracestate_text(draw, pairs):
    """The members joined by OWS "," OWS, with empty and blank members sprinkled in."""
    parts = []
    for k, v in pairs:
        parts += [draw(ows)] * draw(st.integers(0, 1))  # empty members are allowed
        parts.append(f"{draw(ows)}{k}={v}{draw(ows)}")
    return ",".join(parts)


@SETTINGS
@given(st.data(), members)
def test_parse_tracestate_reads_every_valid_list(data, pairs):
    text = data.draw(tracestate_text(pairs))
    got = parse_tracestate(text)
    if len(pairs) > TRACESTATE_MAX_MEMBERS:
        assert got is None
    else:
        assert got == [(k, v) for k, v in pairs]


@SETTINGS
@given(members.filter(lambda p: 0 < len(p) <= 10), st.data())
def test_parse_tracestate_rejects_broken_members_and_duplicate_keys(pairs, data):
    i = data.draw(st.integers(0, len(pairs) - 1))
    k, v = pairs[i]
    broken = data.draw(st.sampled_from([
        (k.upper() if k.upper() != k else "A" + k, v),  # upper-case key
        (k, v + "=x"),  # "=" in a value
        (k, v + "\x7f"),  # a control character
        ("", v),  # no key
        (k, ""),  # no value
    ]))
    bad = pairs[:i] + [broken] + pairs[i + 1:]
    assert parse_tracestate(",".join(f"{a}={b}" for a, b in bad)) is None
    dup = pairs + [(k, "again")]
    assert parse_tracestate(",".join(f"{a}={b}" for a, b in dup)) is None


@SETTINGS
@given(st.one_of(st.text(max_size=200), st.lists(st.text(max_size=40), max_size=4)))
def test_parse_tracestate_never_crashes_and_returns_only_grammar(value):
    got = parse_tracestate(value)
    key = re.compile(r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}")
    if got is not None:
        assert len(got) <= TRACESTATE_MAX_MEMBERS
        assert len({k for k, _ in got}) == len(got)
        for k, v in got:
            assert key.fullmatch(k) and v and v[-1] != " " and not set(v) & set(",=\t")


def test_tracestate_of_multiple_fields_is_combined_in_order():
    assert parse_tracestate(["rojo=00f067aa0ba902b7", " congo=t61rcWkgMzE"]) == [
        ("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")]
    assert parse_tracestate("") == [] and parse_tracestate(" , ,") == []


# ------------------------------------------------------------ kernel header parser
TOKEN = string.ascii_letters + string.digits + "-"
FIELD_VALUE = string.ascii_letters + string.digits + " -_./:;=,()"
# Framing headers are left out: a drawn "Content-Length: :" is a malformed request (the
# parser rightly fails it) and a valid one turns the next pipelined request into a body.
# Bodies and their boundaries have their own tests (message_starts).
FRAMING = {"content-length", "transfer-encoding"}
header = st.tuples(st.text(TOKEN, min_size=1, max_size=16).filter(lambda n: n.lower() not in FRAMING),
                   st.text(FIELD_VALUE, min_size=1, max_size=40).map(str.strip).filter(bool))


@st.composite
def request_bytes(draw) -> tuple[bytes, list[tuple[str, str]], int]:
    """A request and its headers; the offset where its header block ends."""
    method = draw(st.sampled_from(["GET", "POST", "DELETE", "PUT"]))
    target = "/" + draw(st.text(string.ascii_lowercase + string.digits + "/?=&", max_size=30))
    headers = draw(st.lists(header, max_size=8))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    return head.encode(), headers, len(head)


@SETTINGS
@given(st.binary(max_size=600))
def test_header_parser_never_crashes_on_arbitrary_bytes(data):
    msgs, _failed = parse_requests(data)
    for m in msgs:
        assert isinstance(m["headers"], dict)
        if m["complete"]:
            assert b"\r\n\r\n" in data or b"\n\n" in data


@SETTINGS
@given(request_bytes(), st.data())
def test_a_truncated_header_block_is_never_complete(req, data):
    raw, headers, end = req
    cut = data.draw(st.integers(0, end))
    msgs, failed = parse_requests(raw[:cut])
    assert not failed
    sent = {(n.lower(), v) for n, v in headers}
    for m in msgs:
        assert m["complete"] is (cut == end)
        # a header value is reported only once it is whole: never a cut-off value
        assert {(n, v) for n, vs in m["headers"].items() for v in vs} <= sent
    if cut == end:
        (m,) = msgs
        assert sorted((n, v) for n, vs in m["headers"].items() for v in vs) == \
            sorted((n.lower(), v) for n, v in headers)


@SETTINGS
@given(request_bytes(), request_bytes(), st.data())
def test_pipelined_requests_keep_the_second_one_incomplete_until_its_end(first, second, data):
    raw = first[0] + second[0]
    cut = data.draw(st.integers(first[2] + 1, len(raw) - 1))
    msgs, _ = parse_requests(raw[:cut])
    assert msgs[0]["complete"]
    assume(len(msgs) > 1)  # the second request line may not have started yet
    assert not msgs[1]["complete"]
