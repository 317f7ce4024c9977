"""EC-001..EC-005 on the simulated reference service with the reference errcode catalogue,
and EC-005 on broken catalogues."""

from __future__ import annotations

import copy

import pytest

from conformance import evaluate
from conformance.checks.ec_catalogue import entry_problems
from conformance.model import Status
from conformance.scenario import catalogue_by_code
from tests.conformance.builders import result
from tests.conformance.simsut import refservice_scenario


def one(ev, check_id):
    return result(evaluate(ev, select=[check_id]), check_id)


CASES = [
    pytest.param("EC-001", {}, Status.PASS, "8 errcode triggers", id="EC-001-pass"),
    pytest.param("EC-001", {"wrong_status": {"PAYMENT_105": 400}}, Status.FAIL,
                 "PAYMENT_105 (POST /payments): answered 400, catalogue says 402",
                 id="EC-001-fail-wrong-status"),
    pytest.param("EC-002", {}, Status.PASS, "8 errcode triggers", id="EC-002-pass"),
    pytest.param("EC-002", {"no_error_code_header": True}, Status.FAIL, "no X-Error-Code header",
                 id="EC-002-fail-missing-header"),
    pytest.param("EC-003", {}, Status.PASS, "8 errcode triggers", id="EC-003-pass"),
    pytest.param("EC-003", {"wrong_error_trace_id": True}, Status.FAIL,
                 "X-Error-Trace-ID is '00000000000000000000000000000001', not the request's",
                 id="EC-003-fail-wrong-trace-id"),
    pytest.param("EC-003", {"restart_traces": True}, Status.FAIL, "not the request's trace-id",
                 id="EC-003-fail-restarted-trace"),
    pytest.param("EC-004", {}, Status.PASS, "8 errcode triggers", id="EC-004-pass"),
    pytest.param("EC-004", {"error_on_4xx": True}, Status.FAIL,
                 "span status ERROR on a 401: must be left unset", id="EC-004-fail-4xx-error"),
    pytest.param("EC-004", {"retryable_as_string": True}, Status.FAIL,
                 "retryable is 'true' (str), not the boolean", id="EC-004-fail-retryable-string"),
    pytest.param("EC-005", {}, Status.PASS, "8 catalogue entries", id="EC-005-pass"),
]


@pytest.mark.parametrize("check_id, kw, status, fragment", CASES)
def test_ec_checks_pass_and_fail(sim, check_id, kw, status, fragment):
    r = one(sim(**kw), check_id)
    assert r.status == status, r.message
    assert fragment in r.message


def test_ec_failure_carries_the_response_transcript(sim):
    r = one(sim(no_error_code_header=True), "EC-002")
    f = r.evidence["failures"][0]
    assert f["response_headers"]["x-error-trace-id"] == f["span"]["trace_id"]
    assert '"code": "AUTH_001"' in f["response_body"] and f["case"] == "ec/AUTH_001"


def _entry(**changes):
    base = copy.deepcopy(refservice_scenario()["errcodes"][0])
    base.update(changes)
    return base


BROKEN = [
    pytest.param(_entry(http_status=200), "http_status: 200 must be an error status", id="status-200"),
    pytest.param(_entry(http_status="401"), "http_status: '401'", id="status-string"),
    pytest.param(_entry(grpc_code="UNAUTHORISED"), "grpc_code: 'UNAUTHORISED' is not a gRPC",
                 id="grpc-misspelt"),
    pytest.param(_entry(grpc_code="OK"), "(OK is not an error)", id="grpc-ok"),
    pytest.param(_entry(reason=0x1000), "reason: 4096 must be an integer 0..0xFFF", id="reason-4-hex"),
    pytest.param(_entry(reason=True), "reason: True", id="reason-bool"),
    pytest.param(_entry(severity="ERROR"), "severity: 'ERROR' is not one of INFO, WARN, FATAL",
                 id="severity"),
    pytest.param(_entry(domain="auth"), "domain: 'auth' must be upper-case", id="domain-lower"),
    pytest.param(_entry(retryable="no"), "retryable: 'no' must be true or false", id="retryable"),
    pytest.param(_entry(trigger={"method": "GET", "path": "items/1"}), "trigger.path",
                 id="trigger-relative-path"),
    pytest.param(_entry(name=""), "name: must be a non-empty string", id="name-empty"),
]


@pytest.mark.parametrize("entry, fragment", BROKEN)
def test_ec005_fails_on_each_broken_field(sim, entry, fragment):
    scenario = refservice_scenario()
    scenario["errcodes"] = scenario["errcodes"][1:] + [entry]
    r = one(sim(scenario=scenario), "EC-005")
    assert r.status == Status.FAIL
    assert any(fragment in p for p in r.evidence["problems"]), r.evidence["problems"]


def test_ec005_fails_on_duplicate_codes_and_names(sim):
    scenario = refservice_scenario()
    scenario["errcodes"].append(_entry())  # AUTH_001 again, same name
    r = one(sim(scenario=scenario), "EC-005")
    assert r.status == Status.FAIL
    assert "name 'AUTH_TOKEN_EXPIRED' is used by 2 entries" in r.evidence["problems"]
    assert any("wire code AUTH_001 is derived by 2 entries" in p for p in r.evidence["problems"])


def test_a_catalogue_that_does_not_parse_fails_ec005_and_skips_the_rest(sim):
    scenario = refservice_scenario(errcodes=[], errcodes_error="not valid JSON (line 3 column 1: x)")
    ev = sim(scenario=scenario)
    r = one(ev, "EC-005")
    assert r.status == Status.FAIL and "does not parse: not valid JSON (line 3" in r.message
    for cid in ("EC-001", "EC-002", "EC-003", "EC-004"):
        r = one(ev, cid)
        assert r.status == Status.SKIP and "see EC-005" in r.message


def test_without_a_catalogue_every_ec_check_skips(sim):
    ev = sim(scenario=refservice_scenario(errcodes=[], errcodes_source=""))
    for cid in ("EC-001", "EC-002", "EC-003", "EC-004", "EC-005"):
        r = one(ev, cid)
        assert r.status == Status.SKIP and "no errcode catalogue" in r.message, cid


def test_entry_problems_of_a_valid_entry_is_empty():
    assert entry_problems(_entry()) == []
    assert entry_problems("AUTH_001") == ["is a str, not a mapping of fields"]


def test_conformance_and_the_driver_share_one_wire_code_rule(monkeypatch, sim):
    """SPEC §4's wire code lives in agent.errcodes alone: changing it there changes what
    EC checks expect (a second copy in conformance would not follow)."""
    import agent.errcodes

    scenario = refservice_scenario()
    monkeypatch.setattr(agent.errcodes, "wire_code", lambda domain, reason: f"{domain}-{reason}")
    assert set(catalogue_by_code(scenario)) == {f"{e['domain']}-{e['reason']}"
                                                for e in scenario["errcodes"]}
    r = one(sim(), "EC-005")
    assert sorted(r.observed["wire_codes"]) == sorted(
        f"{e['domain']}-{e['reason']}" for e in scenario["errcodes"])
