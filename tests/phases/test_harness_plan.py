"""Harness mode in the planner: with ``w3c_harness`` the tc phase also sends the W3C level 1
cases through the SUT's test-harness endpoint, each asking for callbacks to the sink at a
path that names the case (the path conformance reads back)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from opentelemetry.trace.span import TraceState

from agent import phases as P
from agent import scenario as S
from agent.errors import InputError
from agent.tracecontext import parse_traceparent, parse_tracestate
from conformance.checks.tc_harness import CALLBACK_PREFIX, HARNESS_SUFFIX, callback_of
from examples.refservice import SCENARIO_PATH

SINK = "http://127.0.0.1:4444"
VALID = ["tc/valid", "tc/future-version", "tc/tracestate", "tc/tracestate-32-members",
         "tc/multiple-callbacks"]
INVALID = [f"tc/invalid/{v}" for v in P.INVALID_TRACEPARENTS] + [
    "tc/invalid/future-version-bad-delimiter"]
HARNESS_CASES = {c + HARNESS_SUFFIX for c in [*VALID, "tc/valid-unsampled", "tc/missing", *INVALID]}


@pytest.fixture(scope="module")
def ref():
    return S.from_file(SCENARIO_PATH)


@pytest.fixture(scope="module")
def harness(ref):
    return {r.case: r for r in P.plan_tc_harness(ref, SINK)}


def callbacks(req) -> list[dict]:
    return json.loads(req.body)


def values(req, name) -> list[str]:
    v = req.headers.get(name)
    return [] if v is None else v if isinstance(v, list) else [v]


def test_the_reference_scenario_names_its_harness_endpoint(ref):
    assert ref["w3c_harness"] == {"path": "/test"} and S.harness_path(ref) == "/test"


def test_every_level1_case_goes_through_the_harness_once(harness):
    assert set(harness) == HARNESS_CASES
    assert P.INVALID_TRACEPARENTS.keys() < P.HARNESS_INVALID_TRACEPARENTS.keys()


def test_the_tc_phase_sends_the_harness_cases_after_the_direct_ones(ref):
    plan = P.plan(ref, requests=4, concurrency=2, sink_url=SINK)
    tc = plan.phases[0]
    assert tc.name == "tc" and tc.concurrency == 1
    cases = [r.case for r in tc.requests]
    n = len(HARNESS_CASES)
    assert set(cases[-n:]) == HARNESS_CASES and not HARNESS_CASES & set(cases[:-n])
    assert tc.title == f"sending {len(cases)} trace-context cases one at a time ({n} through /test)"
    assert not plan.notes


@pytest.mark.parametrize("case", sorted(HARNESS_CASES))
def test_each_case_posts_the_w3c_action_list_naming_its_callback(harness, case):
    req = harness[case]
    assert (req.method, req.path, req.phase) == ("POST", "/test", "tc")
    assert req.headers["Content-Type"] == "application/json"
    actions = callbacks(req)
    want = P.HARNESS_CALLBACKS if case.startswith("tc/multiple-callbacks") else 1
    assert [a["arguments"] for a in actions] == [[]] * want
    for i, a in enumerate(actions):
        url = urlsplit(a["url"])
        assert f"{url.scheme}://{url.netloc}" == SINK
        assert url.path == CALLBACK_PREFIX + case.removesuffix(HARNESS_SUFFIX)
        assert parse_qs(url.query) == {"call": [str(i)], "of": [str(want)]}
        # conformance reads the same case and count back from the sink's record
        assert callback_of(f"{url.path}?{url.query}") == (case.removesuffix(HARNESS_SUFFIX), want)


@pytest.mark.parametrize("case", VALID)
def test_valid_cases_carry_one_traceparent_a_level1_receiver_continues(harness, case):
    (value,) = values(harness[case + HARNESS_SUFFIX], "traceparent")
    tp = parse_traceparent(value)
    assert tp is not None and tp.sampled
    assert tp.version == ("cc" if case == "tc/future-version" else "00")


def test_the_future_version_has_more_fields_and_the_bad_delimiter_one_is_invalid(harness):
    (future,) = values(harness["tc/future-version@harness"], "traceparent")
    (bad,) = values(harness["tc/invalid/future-version-bad-delimiter@harness"], "traceparent")
    assert future.startswith("cc-") and len(future.split("-")) > 4
    assert bad.startswith("cc-") and parse_traceparent(bad) is None
    assert parse_traceparent(bad.replace("01.", "01-", 1)) is not None  # only the "." is wrong


@pytest.mark.parametrize("case", INVALID)
def test_invalid_cases_are_invalid_together(harness, case):
    sent = values(harness[case + HARNESS_SUFFIX], "traceparent")
    assert sent and parse_traceparent(", ".join(sent)) is None


def test_unsampled_and_missing(harness):
    (value,) = values(harness["tc/valid-unsampled@harness"], "traceparent")
    assert not parse_traceparent(value).sampled
    assert values(harness["tc/missing@harness"], "traceparent") == []


def test_32_tracestate_members_over_four_fields_all_within_what_must_be_forwarded(harness):
    fields = values(harness["tc/tracestate-32-members@harness"], "tracestate")
    members = parse_tracestate(fields)
    assert len(fields) == 4 and len(members) == 32
    assert len(", ".join(fields)) <= 512
    assert len(TraceState.from_header(fields)) == 32  # OTel's propagator keeps all of them
    assert values(harness["tc/tracestate@harness"], "tracestate") == [P.TRACESTATE]


def test_ids_are_fresh_per_case_and_per_plan(ref, harness):
    again = {r.case: r for r in P.plan_tc_harness(ref, SINK)}
    sent = [values(r, "traceparent") for r in harness.values()]
    assert len({v[0] for v in sent if v}) == len([v for v in sent if v])
    assert harness["tc/valid@harness"].headers != again["tc/valid@harness"].headers


@pytest.mark.parametrize(("scenario_extra", "sink", "note"), [
    ({"w3c_harness": {"path": "/test"}}, None, "w3c_harness: no downstream sink to call back"),
    ({}, SINK, None),
    ({"w3c_harness": None}, SINK, None),
], ids=["no-sink", "no-harness", "harness-null"])
def test_no_harness_cases_without_an_endpoint_or_a_sink(scenario_extra, sink, note):
    s = S.from_inline({"load": [{"path": "/a"}], **scenario_extra})
    plan = P.plan(s, requests=2, concurrency=1, sink_url=sink)
    assert not any(r.case.endswith(HARNESS_SUFFIX) for p in plan.phases for r in p.requests)
    assert any(note in n for n in plan.notes) if note else not any("w3c_harness" in n for n in plan.notes)


@pytest.mark.parametrize(("value", "fragment"), [
    ({"path": "test"}, "w3c_harness.path: must be a path starting with / (no spaces), e.g. /test"),
    ({"path": "/te st"}, "w3c_harness.path: must be a path starting with /"),
    ({}, "w3c_harness: must be {path: /test}"),
    ({"path": "/test", "method": "GET"}, "w3c_harness: must be {path: /test}"),
    ("/test", "w3c_harness: must be {path: /test}"),
], ids=["relative", "space", "no-path", "unknown-field", "bare-string"])
def test_a_bad_harness_entry_is_a_one_line_error_naming_it(value, fragment):
    with pytest.raises(InputError) as e:
        S.from_inline({"load": [{"path": "/a"}], "w3c_harness": value})
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_resolved_harness_scenario_resolves_to_itself(ref):
    assert S.from_inline(json.loads(json.dumps(ref))) == ref
    assert S.from_inline({"load": [{"path": "/a"}]})["w3c_harness"] is None
