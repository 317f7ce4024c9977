"""A service that exports no telemetry at all (nginx as people run it): every check says so
in words a user can act on, metric checks skip when there is no metric, a proxy passing an
invalid traceparent through unchanged fails TC-003 (not TC-004), and the summary says it."""

from __future__ import annotations

import pytest

from conformance import evaluate
from conformance.model import Status
from conformance.report import build_report, validate_report
from conformance.summary import render_summary
from conformance.telemetry import exported, no_spans
from agent.evidence import MetricPoint
from tests.conformance.builders import MS, Req, result

NO_SPAN = "the SUT exported no span at all: is it instrumented, with OTEL_EXPORTER_OTLP_ENDPOINT"


def one(ev, check_id):
    return result(evaluate(ev, select=[check_id]), check_id)


def _no_telemetry(b, n=5):
    """``n`` answered requests, no span, no metric; the OTLP receiver named in meta."""
    for i in range(n):
        b.request(Req(path=f"/items/{i}", spans=0))
    ev = b.build()
    ev.meta.target["otlp_endpoint"] = "http://127.0.0.1:4318"
    return ev


def _scrapes(b, status, error=""):
    def add():
        if status == 404:  # the run scrapes a missing endpoint once, then stops
            b.raw_scrape("before", b"not found\n", "text/plain", status=404,
                         error="HTTP 404 Not Found")
        else:
            for phase in ("before", "after"):
                b.raw_scrape(phase, b"oops", "text/plain", status=status, error=error)
    return add


@pytest.mark.parametrize("check_id, scrapes, status, fragment", [
    ("KT-002", None, Status.SKIP, "no metrics URL was given (--metrics-url or the scenario's "
                                  "metrics_path) and no OTLP metric arrived"),
    ("KT-002", 404, Status.SKIP, "no /metrics endpoint: GET http://127.0.0.1:8080/metrics "
                                 "answered 404 (a wrong --metrics-url or metrics_path?)"),
    ("KT-002", 500, Status.INCONCLUSIVE, "no successful before and after /metrics scrapes"),
    ("KT-004", None, Status.SKIP, "no metrics URL was given"),
    ("KT-004", 404, Status.SKIP, "no /metrics endpoint"),
    ("KT-004", 500, Status.INCONCLUSIVE, "no before and after /metrics scrapes"),
    ("SC-001", None, Status.SKIP, "no metrics URL"),
    ("SC-001", 404, Status.SKIP, "no /metrics endpoint: GET http://127.0.0.1:8080/metrics "
                                 "answered HTTP 404 Not Found"),
    ("SC-001", 500, Status.FAIL, "no body (HTTP 500"),
    ("SC-002", 404, Status.SKIP, "no /metrics endpoint"),
], ids=lambda v: str(v) if v is not None else "no-url")
def test_metric_checks_skip_only_when_there_is_no_metric_at_all(run, check_id, scrapes, status,
                                                                fragment):
    b = run()
    if scrapes:
        _scrapes(b, scrapes, "HTTP 500 Internal Server Error")()
    ev = _no_telemetry(b)
    r = one(ev, check_id)
    assert r.status == status, r.message
    assert fragment in r.message


def test_otlp_metrics_keep_kt002_judging_when_metrics_answers_404(run):
    """/metrics missing but OTLP metrics sent: KT-002 compares those, it does not skip."""
    b = run()
    b.raw_scrape("before", b"", "text/plain", status=404, error="HTTP 404 Not Found")
    start, t_before = b.t - 1000 * MS, b.t
    for i in range(3):
        b.request(Req(path=f"/items/{i}"))
    attrs = {"http.request.method": "GET", "http.route": "/items/{id}",
             "http.response.status_code": 200, "url.scheme": "http"}
    b.points += [MetricPoint(name="http.server.request.duration", kind="histogram", unit="s",
                             attributes=attrs, resource={"service.name": "svc"},
                             start_ns=start, time_ns=t, count=n, sum=0.01 * n,
                             temporality="CUMULATIVE")
                 for t, n in ((t_before, 0), (b.t + MS, 3))]
    r = one(b.build(), "KT-002")
    assert r.status == Status.PASS, r.message
    assert r.observed["otlp"]["kernel_count"] == 3 and r.observed["prometheus"] is None


SPAN_CHECKS = ["KT-003", "KT-005", "KT-006", "TC-001", "TC-005", "BC-003", "SC-003"]


@pytest.mark.parametrize("check_id", SPAN_CHECKS)
def test_span_checks_say_the_sut_exported_no_span(run, check_id):
    r = one(_no_telemetry(run()), check_id)
    assert r.status == Status.INCONCLUSIVE, r.message
    assert NO_SPAN in r.message and "http://127.0.0.1:4318" in r.message


def test_an_exec_run_says_obsconform_set_the_endpoint(run):
    ev = _no_telemetry(run())
    ev.meta.target["exec"] = "nginx -g 'daemon off;'"
    assert no_spans(ev) == ("the SUT exported no span at all: is it instrumented? obsconform "
                            "launched it with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318")


def test_one_span_is_enough_to_drop_the_hint(run):
    b = run()
    b.request(Req(path="/items/1", spans=0))
    b.request(Req(path="/items/2"))
    assert no_spans(b.build()) == ""


def _proxied_invalid(b, traceparent, case="tc/invalid/version-ff"):
    """A request with an invalid traceparent that the SUT forwards byte for byte."""
    k = b.request(Req(path="/orders", spans=0, traceparent=False))
    k.headers["traceparent"] = [v.strip() for v in traceparent.split(",")]
    d = b.driver[-1]
    d.phase, d.case, d.request_headers["traceparent"] = "tc", case, traceparent
    b.outbound(k)
    return b


@pytest.mark.parametrize("case, traceparent", [
    ("tc/invalid/version-ff", "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("tc/invalid/zero-trace-id", "00-00000000000000000000000000000000-b7ad6b7169203331-01"),
    ("tc/invalid/duplicate-header", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01, "
                                    "00-1e973c552c7d1d74c13db9d01db4d31f-725ec07e8c528be0-01"),
], ids=["version-ff", "zero-trace-id", "duplicate-header"])
def test_a_proxy_forwarding_an_invalid_traceparent_fails_tc003_not_tc004(run, case, traceparent):
    ev = _proxied_invalid(run(), traceparent, case).build()
    tc3, tc4 = one(ev, "TC-003"), one(ev, "TC-004")
    assert tc3.status == Status.FAIL, tc3.message
    assert "forwards the invalid traceparent unchanged: no new trace was started" in tc3.message
    # The forwarded value is the driver's, not an id the SUT generated.
    assert tc4.status == Status.INCONCLUSIVE, tc4.message
    assert tc4.observed["outbound_forwarding_inbound_verbatim"] == 1
    assert "1 outbound call(s) only forwarded the inbound traceparent unchanged" in tc4.message


def test_summary_says_plainly_that_the_sut_exports_no_telemetry(run, tmp_path):
    b = run()
    b.raw_scrape("before", b"", "text/plain", status=404, error="HTTP 404 Not Found")
    ev = _no_telemetry(b)
    report = build_report(ev, evaluate(ev), tool_version="0.1.0")
    assert validate_report(report) == []
    assert report["measurements"]["telemetry"] == {
        "spans": 0, "metric_points": 0, "log_records": 0, "scrapes_answered": 0,
        "scrapes_failed": 1, "metrics_url": "http://127.0.0.1:8080/metrics",
        "metrics_endpoint_missing": 404, "otlp_endpoint": "http://127.0.0.1:4318"}
    text = " ".join(render_summary(report).split())
    assert ("the SUT exports no telemetry at all: no span, metric or log record reached the "
            "OTLP receiver, and its metrics URL answered 404") in text
    assert report["summary"]["verdict"] == "non_compliant"  # KT-001: every request lost


def test_summary_counts_what_an_instrumented_sut_exported(sim):
    ev = sim()
    report = build_report(ev, evaluate(ev), tool_version="0.1.0")
    t = exported(ev)
    assert t["spans"] > 0 and t["scrapes_answered"] > 0
    lines = render_summary(report).splitlines()
    assert f"telemetry: {t['spans']} spans, {t['metric_points']} OTLP metric points, " \
           f"{t['log_records']} log records, {t['scrapes_answered']} /metrics scrapes" in lines
    assert not any("no telemetry" in line for line in lines)
