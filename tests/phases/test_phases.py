"""The phase planner emits every case of the contract (docs/SCENARIO.md) with the right
headers: invalid traceparents really are invalid, valid ones valid, bizCodes as specified."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from agent import phases as P
from agent import scenario as S
from agent.errcodes import entry_wire_code
from agent.tracecontext import parse_traceparent
from examples.refservice import CATALOGUE_PATH, SCENARIO_PATH

INVALID_VARIANTS = ["version-ff", "zero-trace-id", "zero-parent-id", "short-trace-id", "long-trace-id",
                    "short-parent-id", "uppercase-hex", "illegal-char", "bad-flags-length",
                    "version-00-trailing-data", "duplicate-header"]


@pytest.fixture(scope="module")
def ref():
    return S.from_file(SCENARIO_PATH)


SINK = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def plan(ref):
    return P.plan(ref, requests=30, concurrency=4, sink_url=SINK)


def by_case(requests):
    out = {}
    for r in requests:
        out.setdefault(r.case, []).append(r)
    return out


def header(req, name):
    return next((v for k, v in req.headers.items() if k.lower() == name.lower()), None)


def test_the_contract_lists_every_invalid_variant():
    assert list(P.INVALID_TRACEPARENTS) == INVALID_VARIANTS


def test_phases_come_in_contract_order(plan):
    assert [(p.name, p.concurrency) for p in plan.phases] == [
        ("tc", 1), ("bc", 1), ("bc", 8), ("ec", 1), ("load", 4)]
    assert all(r.phase == p.name for p in plan.phases for r in p.requests)
    assert plan.notes == []


def test_tc_sends_every_case_to_a_plain_and_a_fanout_route(ref):
    cases = by_case(P.plan_tc(ref))
    names = ["tc/valid", "tc/valid-unsampled", "tc/missing"] + [f"tc/invalid/{v}" for v in INVALID_VARIANTS]
    assert set(cases) == set(names) | {n + "@fanout" for n in names} | {"tc/tracestate@fanout"}
    assert all(len(reqs) == 1 for reqs in cases.values())
    for name, (req,) in cases.items():
        if name.endswith("@fanout"):
            assert S.is_fanout(ref, req.path), name
            assert (req.method, req.path) == ("GET", "/fanout")
        else:
            assert not S.is_fanout(ref, req.path), name
            assert (req.method, req.path) == ("GET", "/items/1")


@pytest.mark.parametrize("suffix", ["", "@fanout"], ids=["plain", "fanout"])
@pytest.mark.parametrize("variant", INVALID_VARIANTS)
def test_invalid_traceparents_are_invalid(ref, variant, suffix):
    (req,) = by_case(P.plan_tc(ref))[f"tc/invalid/{variant}{suffix}"]
    value = req.headers["traceparent"]
    values = value if isinstance(value, list) else [value]
    if variant == "duplicate-header":
        # Two different values, each valid alone: invalid together (sent as two headers).
        assert len(values) == 2 and values[0] != values[1]
        assert all(parse_traceparent(v) for v in values)
        assert parse_traceparent(", ".join(values)) is None
    else:
        assert len(values) == 1 and parse_traceparent(values[0]) is None, values


@pytest.mark.parametrize(("variant", "check"), [
    ("short-trace-id", lambda v: len(v.split("-")[1]) == 31),
    ("long-trace-id", lambda v: len(v.split("-")[1]) == 33),
    ("short-parent-id", lambda v: len(v.split("-")[2]) == 15),
    ("uppercase-hex", lambda v: parse_traceparent(v.lower()) is not None and v != v.lower()),
    ("version-ff", lambda v: v.startswith("ff-") and parse_traceparent("00" + v[2:]) is not None),
    ("zero-trace-id", lambda v: v.split("-")[1] == "0" * 32),
    ("zero-parent-id", lambda v: v.split("-")[2] == "0" * 16),
    ("bad-flags-length", lambda v: v.split("-")[3] == "1"),
    ("version-00-trailing-data", lambda v: parse_traceparent(v.rsplit("-", 1)[0]) is not None),
    ("illegal-char", lambda v: "g" in v.split("-")[1]),
])
def test_each_invalid_variant_breaks_exactly_its_rule(ref, variant, check):
    (req,) = by_case(P.plan_tc(ref))[f"tc/invalid/{variant}"]
    assert check(req.headers["traceparent"]), req.headers["traceparent"]


def test_invalid_values_are_fresh_per_request(ref):
    a, b = by_case(P.plan_tc(ref)), by_case(P.plan_tc(ref))
    assert a["tc/invalid/version-ff"][0].headers != b["tc/invalid/version-ff"][0].headers


@pytest.mark.parametrize(("case", "sampled"), [("tc/valid", True), ("tc/valid-unsampled", False),
                                               ("tc/valid@fanout", True), ("tc/tracestate@fanout", True)])
def test_valid_cases_carry_one_valid_traceparent(ref, case, sampled):
    (req,) = by_case(P.plan_tc(ref))[case]
    tp = parse_traceparent(req.headers["traceparent"])
    assert tp is not None and tp.sampled is sampled


def test_missing_means_no_traceparent_and_tracestate_is_valid_w3c(ref):
    cases = by_case(P.plan_tc(ref))
    assert "traceparent" not in cases["tc/missing"][0].headers
    (ts,) = cases["tc/tracestate@fanout"]
    assert ts.headers["tracestate"] == P.TRACESTATE
    # Lower-case keys: a conforming propagator keeps it (an invalid key drops the whole header).
    from opentelemetry.trace.span import TraceState

    assert len(TraceState.from_header([P.TRACESTATE])) == 2


def test_fanout_cases_keep_the_requests_headers_and_body(ref):
    s = {**ref, "load": [r for r in ref["load"] if r["path"] in ("/items/1", "/orders")]}
    (req,) = by_case(P.plan_tc(s))["tc/valid@fanout"]
    assert (req.method, req.path, req.body) == ("POST", "/orders", b'{"item_id":3,"quantity":1}')
    assert req.headers["Content-Type"] == "application/json"


def test_bc_sends_present_padded_and_missing_to_each_fanout_request(ref):
    reqs = P.plan_bc(ref)
    assert Counter((r.case, r.path) for r in reqs) == Counter(
        {(c, p): 1 for c in ("bc/present", "bc/padded", "bc/missing") for p in ("/fanout", "/orders")})
    for r in reqs:
        assert parse_traceparent(r.headers["traceparent"]) is not None
        expected = {"bc/present": "ORDER", "bc/padded": "   ORDER  ", "bc/missing": None}[r.case]
        assert header(r, "X-Biz-Code") == expected


def test_bc_concurrent_codes_are_distinct_and_a_third_are_missing(ref, plan):
    (phase,) = [p for p in plan.phases if p.name == "bc" and p.concurrency > 1]
    reqs = phase.requests
    assert len(reqs) == P.BC_CONCURRENT_REQUESTS and phase.concurrency >= 8
    assert {r.case for r in reqs} == {"bc/concurrent"}
    codes = [header(r, "X-Biz-Code") for r in reqs]
    present = [c for c in codes if c is not None]
    assert len(set(present)) == len(present) and all(c.startswith("BIZ-") for c in present)
    # Every third has none, interleaved with the others (not bunched at one end).
    assert [i for i, c in enumerate(codes) if c is None] == list(range(2, len(reqs), 3))
    assert {r.path for r in reqs} == {"/fanout", "/orders"}
    assert len({r.headers["traceparent"] for r in reqs}) == len(reqs)


def test_bc_concurrency_follows_the_option_within_8_and_64(ref):
    conc = {c: [p for p in P.plan(ref, requests=1, concurrency=c).phases if p.name == "bc"][1].concurrency
            for c in (1, 16, 500)}
    assert conc == {1: 8, 16: 16, 500: 64}


def test_a_custom_biz_code_header_is_used(ref):
    s = {**ref, "biz_code_header": "X-Tenant"}
    present = [r for r in P.plan_bc(s) if r.case == "bc/present"]
    assert present and all(r.headers.get("X-Tenant") == "ORDER" for r in present)


def test_ec_sends_each_catalogue_trigger_with_a_fresh_traceparent(ref):
    reqs, notes = P.plan_ec(ref)
    entries = json.loads(CATALOGUE_PATH.read_text())["errcodes"]
    assert notes == []
    assert [r.case for r in reqs] == [f"ec/{entry_wire_code(e)}" for e in entries]
    for r, e in zip(reqs, entries):
        t = e["trigger"]
        assert (r.method, r.path) == (t["method"], t["path"])
        assert all(r.headers[k] == v for k, v in t["headers"].items())
        assert r.body == (None if t["body"] is None else json.dumps(t["body"], separators=(",", ":")).encode())
        assert parse_traceparent(r.headers["traceparent"]) is not None
    assert len({r.headers["traceparent"] for r in reqs}) == len(reqs)


def test_ec_skips_unusable_triggers_and_says_why(ref):
    s = {**ref, "errcodes": [{"domain": "A", "reason": 1},
                             {"domain": "B", "reason": 2, "trigger": {"path": "no-slash"}},
                             {"reason": "x", "trigger": {"path": "/p", "body": "raw"}},
                             {"domain": "C", "reason": 3, "trigger": {"path": "/q", "headers": {"traceparent": "mine"}}}]}
    reqs, notes = P.plan_ec(s)
    assert [(r.case, r.method, r.path, r.body) for r in reqs] == [("ec/entry-2", "GET", "/p", b"raw"),
                                                                ("ec/C_003", "GET", "/q", None)]
    assert reqs[1].headers == {"traceparent": "mine"}  # a trigger's own traceparent is kept
    assert len(notes) == 2 and "A_001" in notes[0] and "B_002" in notes[1]


def test_load_follows_the_mix_and_weights(ref):
    s = {**ref, "load": [{**ref["load"][0], "weight": 3}, {**ref["load"][2], "weight": 1}]}
    reqs = P.plan_load(s, 40)
    assert Counter(r.path for r in reqs) == {"/items/1": 30, "/slow?ms=5": 10}
    assert {(r.phase, r.case) for r in reqs} == {("load", "load")}
    assert all(parse_traceparent(r.headers["traceparent"]).sampled for r in reqs)
    assert len({r.headers["traceparent"] for r in reqs}) == 40


def test_the_default_scenario_plans_no_fanout_cases_and_says_so():
    s = S.from_paths(["/a", "/b"])
    plan = P.plan(s, requests=10, concurrency=2)
    names = {r.case for p in plan.phases for r in p.requests}
    assert not any(n.endswith("@fanout") for n in names) and "tc/invalid/version-ff" in names
    assert {r.path for p in plan.phases if p.name == "bc" for r in p.requests} == {"/a"}
    assert [p.name for p in plan.phases] == ["tc", "bc", "bc", "load"]
    assert any("no errcode catalogue" in n for n in plan.notes)
    assert any("no fan-out route" in n for n in plan.notes)


@pytest.mark.parametrize(("body", "headers", "sent", "ctype"), [
    (None, {}, None, None),
    ("raw text", {}, b"raw text", None),
    ({"a": 1}, {}, b'{"a":1}', "application/json"),
    ([1, 2], {"content-type": "application/x-custom"}, b"[1,2]", "application/x-custom"),
], ids=["none", "text", "json", "json-own-type"])
def test_bodies_are_encoded(body, headers, sent, ctype):
    data, hdrs = P.encode_body(body, headers)
    assert data == sent
    assert next((v for k, v in hdrs.items() if k.lower() == "content-type"), None) == ctype


def test_a_load_requests_own_trace_context_and_bizcode_never_leak_into_the_cases():
    s = S.resolve({"load": [{"path": "/f", "headers": {"Traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
                                                      "tracestate": "a=b", "X-Biz-Code": "FIXED"}}],
                   "fanout": ["/f"]}, source="t", base_dir=None)
    cases = by_case(P.plan_tc(s) + P.plan_bc(s) + P.plan_bc_concurrent(s, 6) + P.plan_load(s, 2))
    assert header(cases["tc/missing"][0], "traceparent") is None
    assert header(cases["tc/valid"][0], "tracestate") is None
    assert header(cases["bc/missing"][0], "X-Biz-Code") is None
    assert [header(r, "X-Biz-Code") for r in cases["bc/concurrent"]][2::3] == [None, None]
    assert all("1" * 32 not in str(r.headers) for reqs in cases.values() for r in reqs)
