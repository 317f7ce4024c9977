"""AL-001..AL-004: target labels vs span resource, exemplars vs exported traces, log records
vs the request being served, trace ids in metric labels."""

from __future__ import annotations

import pytest

from agent.evidence import LogRecord, MetricPoint
from conformance import evaluate
from conformance.model import Status
from tests.conformance.builders import OPENMETRICS, PROM_TEXT, Req, result


def one(ev, check_id):
    return result(evaluate(ev, select=[check_id]), check_id)


CASES = [
    pytest.param("AL-001", {}, Status.PASS, "agree with the span resource", id="AL-001-pass"),
    pytest.param("AL-002", {}, Status.PASS, "exemplars all reference exported spans", id="AL-002-pass"),
    pytest.param("AL-002", {"drop_spans_every": 5}, Status.FAIL,
                 "point at spans that were never exported", id="AL-002-fail-lost-spans"),
    pytest.param("AL-003", {}, Status.PASS, "carry their trace_id/span_id", id="AL-003-pass"),
    pytest.param("AL-003", {"kernel": False}, Status.PASS, "trace_id/span_id", id="AL-003-pass-no-ebpf"),
    pytest.param("AL-003", {"logs_without_trace": True}, Status.FAIL,
                 "carry no trace_id, e.g. 'request served' during GET /items/1 (tc/valid)",
                 id="AL-003-fail-no-ids"),
    pytest.param("AL-004", {}, Status.PASS, "no trace or span id", id="AL-004-pass"),
    pytest.param("AL-004", {"trace_id_label": True}, Status.FAIL,
                 "label name 'trace_id' names a trace/span id", id="AL-004-fail-trace-id-label"),
]


@pytest.mark.parametrize("check_id, kw, status, fragment", CASES)
def test_al_checks_pass_and_fail(sim, check_id, kw, status, fragment):
    r = one(sim(**kw), check_id)
    assert r.status == status, r.message
    assert fragment in r.message


def test_al001_fails_when_target_info_names_another_environment(sim):
    ev = sim()
    for s in ev.spans:
        s.resource["deployment.environment.name"] = "staging"
    r = one(ev, "AL-001")
    assert r.status == Status.FAIL
    assert "deployment_environment_name='test' but spans say " \
           "deployment.environment.name=['staging']" in r.message


def test_al001_without_target_labels_skips(run):
    b = run()
    b.request(Req())
    b.raw_scrape("after", b"# HELP up x\n# TYPE up gauge\nup 1\n")
    r = one(b.build(), "AL-001")
    assert r.status == Status.SKIP and "nothing to compare" in r.message


def test_al002_without_exemplars_skips(run):
    b = run()
    b.request(Req())
    r = one(b.build(), "AL-002")
    assert r.status == Status.SKIP and "no exemplar" in r.message


def test_al003_flags_a_log_line_carrying_another_requests_ids(sim):
    ev = sim()
    first, second = ev.logs[0], ev.logs[1]
    first.trace_id = second.trace_id  # the line of request 1 names request 2's trace
    r = one(ev, "AL-003")
    assert r.status == Status.FAIL and "1 carry ids of another request" in r.message
    assert r.evidence["wrong_ids"][0]["while_serving"]["case"] == "tc/valid"


def test_al003_ignores_lines_about_other_requests_and_outside_requests(sim):
    ev = sim()
    during = ev.logs[0].time_ns
    ev.logs += [
        # the access line of a /metrics scrape that happened during a request: not its line
        LogRecord(source="stdout", time_ns=during, body="GET /metrics",
                  attributes={"path": "/metrics"}),
        # a background line between requests
        LogRecord(source="stdout", time_ns=ev.driver[0].t_send_ns - 10**9, body="heartbeat"),
    ]
    r = one(ev, "AL-003")
    assert r.status == Status.PASS, r.message
    assert r.observed["not_while_serving"] == 2


def test_al003_without_logs_skips(run):
    b = run()
    b.request(Req())
    r = one(b.build(), "AL-003")
    assert r.status == Status.SKIP and "no OTLP log record" in r.message


@pytest.mark.parametrize("body, status, fragment", [
    pytest.param(b'# TYPE jobs_total counter\njobs_total{request="4bf92f3577b34da6a3ce929d0e0e4736"} 1\n',
                 Status.FAIL, "value looks like a trace id", id="32-hex-value"),
    pytest.param(b'# TYPE jobs_total counter\njobs_total{parent="00f067aa0ba902b7"} 1\n',
                 Status.FAIL, "value looks like a span id", id="16-hex-value"),
    pytest.param(b'# TYPE jobs_total counter\njobs_total{spanId="x"} 1\n',
                 Status.FAIL, "label name 'spanId'", id="spanId-name"),
    pytest.param(b'# TYPE build_info gauge\nbuild_info{commit="4bf92f3577b34da6a3ce929d0e0e4736"} 1\n',
                 Status.PASS, "no trace or span id", id="info-metric-exempt"),
    pytest.param(b'# TYPE jobs_total counter\njobs_total{queue="default"} 1\n',
                 Status.PASS, "no trace or span id", id="ordinary-labels"),
])
def test_al004_label_rules(run, body, status, fragment):
    b = run()
    b.request(Req())
    b.raw_scrape("after", body, PROM_TEXT)
    r = one(b.build(), "AL-004")
    assert r.status == status, r.message
    assert fragment in r.message


def test_al004_catches_an_id_of_the_run_in_otlp_attributes(run):
    b = run()
    b.request(Req())
    b.points.append(MetricPoint(name="jobs", kind="sum", value=1.0,
                                attributes={"req": b.driver[-1].trace_id}))
    r = one(b.build(), "AL-004")
    assert r.status == Status.FAIL and "value is a trace/span id of this run" in r.message
    assert r.evidence["offenders"][0]["where"] == "OTLP metrics"


STALE = "a" * 32


def _om(exemplar_ts: str = "") -> bytes:
    ts = f" {exemplar_ts}" if exemplar_ts else ""
    return (f'# TYPE d histogram\nd_bucket{{le="1.0"}} 1 # {{trace_id="{STALE}"}} 0.5{ts}\n'
            'd_bucket{le="+Inf"} 1\nd_count 1\nd_sum 0.5\n# EOF\n').encode()


@pytest.mark.parametrize("before, after_ts, status", [
    pytest.param(False, "", Status.FAIL, id="new-exemplar-of-an-unknown-trace-fails"),
    pytest.param(True, "", Status.SKIP, id="exposed-before-the-run-is-stale"),
    pytest.param(False, "1699999999.5", Status.SKIP, id="timestamp-before-the-run-is-stale"),
])
def test_al002_ignores_exemplars_that_predate_the_run(run, before, after_ts, status):
    b = run()
    if before:
        b.raw_scrape("before", _om(), OPENMETRICS, OPENMETRICS)
    b.request(Req())
    b.raw_scrape("after", _om(after_ts), OPENMETRICS, OPENMETRICS)
    r = one(b.build(), "AL-002")
    assert r.status == status, r.message
    if status == Status.FAIL:
        assert f"trace_id {STALE} (no exported span has this trace_id)" in r.message


def test_al003_a_line_written_just_after_the_response_is_still_its_own(sim):
    ev = sim()
    by_trace = {d.trace_id: d for d in ev.driver if d.trace_id}
    log = next(x for x in ev.logs if x.trace_id in by_trace)
    # written 3 ms after the client read the response: the next request is already in flight
    log.time_ns = by_trace[log.trace_id].t_recv_ns + 3_000_000
    r = one(ev, "AL-003")
    assert r.status == Status.PASS, r.message


@pytest.mark.parametrize("logged", [
    pytest.param("/items/7", id="mounted-app-logs-its-own-path"),
    pytest.param("/api/items/7", id="app-logs-the-target-as-sent"),
])
def test_al003_judges_lines_of_a_prefixed_run_by_either_path(run, logged):
    # --url http://h/api: the driver sent /api/items/7; an app mounted under /api logs
    # /items/7. Either line is the request's own, so a line without ids fails AL-003
    # (it was ignored as "another path" and AL-003 skipped the run).
    b = run()
    for _ in range(3):
        b.request(Req(path="/api/items/7"))
    ev = b.build()
    ev.meta.target["base_path"] = "/api"
    d = ev.driver[1]
    ev.logs.append(LogRecord(source="stdout", time_ns=(d.t_send_ns + d.t_recv_ns) // 2,
                             body="handled item", attributes={"path": logged}))
    r = one(ev, "AL-003")
    assert r.status == Status.FAIL, r.message
    assert r.observed["without_ids"] == 1 and r.observed["not_while_serving"] == 0
