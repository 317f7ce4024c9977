"""SC-001, SC-002, SC-004: /metrics bodies from prometheus_client (and hand-made broken ones),
promtool and the built-in lint; SC-003 is in test_sc_spans."""

from __future__ import annotations

import shutil

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from conformance import evaluate
from conformance.checks import sc as sc_module
from conformance.model import Status
from conformance.promlint import builtin_lint, run_promtool
from agent.exposition import parse_exposition
from tests.conformance.builders import (
    OPENMETRICS, PROM_TEXT, FlaskExporter, Req, SemconvExporter, result,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed: "
                                    "scripts/setup-host.sh lint (make test installs it)")


def one(ev, check_id):
    return result(evaluate(ev, select=[check_id]), check_id)


def scrapes(run, *bodies, ctype=PROM_TEXT, **kw):
    b = run()
    for i, body in enumerate(bodies):
        b.raw_scrape("after" if i == len(bodies) - 1 else "during", body, ctype, **kw)
        b.request(Req())
    return b.build()


COUNTER = b"# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total %d\n"


@pytest.mark.parametrize("bodies, kw, status, fragment", [
    pytest.param([COUNTER % 1, COUNTER % 5], {}, Status.PASS, "no counter decreased",
                 id="SC-001-pass-growing-counter"),
    pytest.param([COUNTER % 5, COUNTER % 3], {}, Status.FAIL,
                 "jobs_total 5 -> 3 between scrapes", id="SC-001-fail-counter-decreased"),
    pytest.param([b"jobs_total{a=b} 1\n"], {}, Status.FAIL, "body does not parse",
                 id="SC-001-fail-unparsable"),
    pytest.param([COUNTER % 1], {"ctype": "application/json"}, Status.FAIL,
                 "neither Prometheus text nor OpenMetrics", id="SC-001-fail-content-type"),
    pytest.param([COUNTER % 1], {"ctype": OPENMETRICS}, Status.FAIL, "openmetrics parse error",
                 id="SC-001-fail-openmetrics-without-eof"),
    pytest.param([None], {"status": 500, "error": "HTTP 500"}, Status.FAIL, "no body (HTTP 500)",
                 id="SC-001-fail-scrape-failed"),
])
def test_sc001(run, bodies, kw, status, fragment):
    r = one(scrapes(run, *bodies, **kw), "SC-001")
    assert r.status == status, r.message
    assert fragment in r.message


def test_sc001_histogram_buckets_and_sum_must_not_decrease(run):
    h = b'# TYPE d histogram\nd_bucket{le="1.0"} %d\nd_bucket{le="+Inf"} %d\nd_sum %s\nd_count %d\n'
    r = one(scrapes(run, h % (3, 3, b"1.5", 3), h % (2, 3, b"1.5", 3)), "SC-001")
    assert r.status == Status.FAIL and "d_bucket" in r.message
    r = one(scrapes(run, h % (3, 3, b"1.5", 3), h % (3, 3, b"1.0", 3)), "SC-001")
    assert r.status == Status.FAIL and "d_sum" in r.message
    neg = b'# TYPE d histogram\nd_bucket{le="-1.0"} 1\nd_bucket{le="+Inf"} 3\nd_sum %s\nd_count 3\n'
    r = one(scrapes(run, neg % b"1.5", neg % b"-4"), "SC-001")
    assert r.status == Status.PASS, r.message  # negative buckets: the sum is no counter


def test_sc001_a_restart_with_new_created_is_a_reset_not_a_decrease(run):
    def body(value: int, created: float) -> bytes:
        return (b"# TYPE jobs counter\njobs_total %d\njobs_created %f\n# EOF\n" % (value, created))
    r = one(scrapes(run, body(5, 1.0e9), body(1, 1.7e9), ctype=OPENMETRICS), "SC-001")
    assert r.status == Status.PASS and r.observed["resets_with_new_created"] == 1


def _series(a: int, b: int | None = None, created_a: float = 1.7e9, created_b: float = 1.7e9,
            start: float | None = None) -> bytes:
    """Text format as prometheus_client writes it: _created as its own gauge family."""
    out = (b"# TYPE req_total counter\n" b'req_total{path="/a"} %d\n' % a)
    if b is not None:
        out += b'req_total{path="/b"} %d\n' % b
    out += b"# TYPE req_created gauge\n" b'req_created{path="/a"} %f\n' % created_a
    if b is not None:
        out += b'req_created{path="/b"} %f\n' % created_b
    if start is not None:
        out += b"# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %f\n" % start
    return out


NO_CREATED = b"# TYPE jobs_total counter\njobs_total %d\n# TYPE process_start_time_seconds gauge\n" \
    b"process_start_time_seconds %f\n"


@pytest.mark.parametrize("before, after, status", [
    pytest.param(_series(10), _series(5, 1), Status.FAIL, id="new-unrelated-series-excuses-nothing"),
    pytest.param(_series(10, 3), _series(5, 0, created_b=1.8e9), Status.FAIL,
                 id="another-series-reset-excuses-nothing"),
    pytest.param(_series(10, start=1.6e9), _series(5, start=1.9e9), Status.FAIL,
                 id="own-created-unchanged-despite-new-start-time"),
    pytest.param(_series(10), _series(5, created_a=1.8e9), Status.PASS, id="own-created-changed"),
    pytest.param(NO_CREATED % (10, 1.6e9), NO_CREATED % (5, 1.9e9), Status.PASS,
                 id="no-created-process-restarted"),
    pytest.param(NO_CREATED % (10, 1.6e9), NO_CREATED % (5, 1.6e9), Status.FAIL,
                 id="no-created-same-process"),
])
def test_sc001_only_the_series_own_reset_excuses_a_decrease(run, before, after, status):
    r = one(scrapes(run, before, after), "SC-001")
    assert r.status == status, r.message
    if status == Status.FAIL:
        assert "10 -> 5" in r.message and r.observed["decreases"] == 1
    else:
        assert r.observed["resets_with_new_created"] == 1


def test_sc001_real_exporter_scrapes_in_both_formats_pass(sim):
    r = one(sim(), "SC-001")
    assert r.status == Status.PASS
    assert r.observed["formats"] == ["application/openmetrics-text", "text/plain"]


def test_sc001_without_scrapes_skips(run):
    b = run()
    b.request(Req())
    assert one(b.build(), "SC-001").status == Status.SKIP


@needs_promtool
@pytest.mark.parametrize("kw, status, fragment", [
    pytest.param({}, Status.PASS, "no lint problem (promtool check metrics (promtool, version",
                 id="SC-002-pass-promtool"),
    pytest.param({"bad_metric_names": True}, Status.FAIL,
                 "refservice_dbQuery_duration_milliseconds metric names should be written in "
                 "'snake_case' not 'camelCase'", id="SC-002-fail-promtool"),
])
def test_sc002_with_promtool(sim, kw, status, fragment):
    r = one(sim(**kw), "SC-002")
    assert r.status == status, r.message
    assert fragment in r.message and r.evidence["tool"] == "promtool"


@pytest.mark.parametrize("kw, status", [
    pytest.param({}, Status.PASS, id="SC-002-pass-builtin"),
    pytest.param({"bad_metric_names": True}, Status.FAIL, id="SC-002-fail-builtin"),
])
def test_sc002_without_promtool_uses_the_builtin_subset_and_says_so(sim, monkeypatch, kw, status):
    monkeypatch.setattr(sc_module, "promtool_path", lambda: None)
    r = one(sim(**kw), "SC-002")
    assert r.status == status, r.message
    assert r.evidence["tool"] == "builtin"
    assert "built-in subset of promtool check metrics: promtool is not installed" in r.observed["tool"]
    if status == Status.FAIL:
        assert ('refservice_dbQuery_duration_milliseconds use base unit "seconds" instead of '
                '"milliseconds"') in r.evidence["problems"]


def _bodies() -> dict[str, bytes]:
    reg = CollectorRegistry()
    Counter("requests", "Requests.", ["method"], registry=reg).labels("GET").inc()
    Histogram("latency_ms", "Latency.", registry=reg).observe(3)
    Histogram("dbQuery_duration_milliseconds", "DB.", registry=reg).observe(3)
    Counter("bytes_sent_bytes", "x", registry=reg).inc()
    return {
        "prometheus_client": generate_latest(reg),
        "hand-written": (b"# TYPE jobs counter\njobs 1\n# HELP up_total x\n# TYPE up_total gauge\n"
                         b"up_total 1\n# HELP a_sum x\n# TYPE a_sum gauge\na_sum 1\n"
                         b"# HELP total_size_megabytes x\n# TYPE total_size_megabytes gauge\n"
                         b'total_size_megabytes{userId="1"} 3\n# HELP x_counter x\n'
                         b"# TYPE x_counter gauge\nx_counter 1\n"),
    }


@needs_promtool
@pytest.mark.parametrize("name", ["prometheus_client", "hand-written"])
def test_builtin_lint_agrees_with_promtool(name):
    body = _bodies()[name]
    text = body.decode()
    theirs = run_promtool(text, PROMTOOL)
    ours = builtin_lint(text, parse_exposition(text, PROM_TEXT))
    assert not theirs.error and theirs.problems
    assert sorted(ours) == sorted(theirs.problems)


def test_sc002_on_openmetrics_only_says_why_promtool_was_not_used(run):
    b = run(exporter=SemconvExporter())
    b.request(Req())
    b.scrape("after", openmetrics=True)
    r = one(b.build(), "SC-002")
    assert r.status == Status.PASS, r.message
    assert "promtool lints only the text format" in r.observed["tool"] or PROMTOOL is None


def _semconv_run(run, exporter, openmetrics=False):
    b = run(exporter=exporter)
    b.scrape("before", openmetrics)
    b.request(Req())
    b.scrape("after", openmetrics)
    return b.build()


class MillisExporter(SemconvExporter):
    name = "ms"

    def __init__(self) -> None:
        super(SemconvExporter, self).__init__()
        self.h = Histogram("http_server_request_duration_milliseconds", "d",
                           ("http_request_method", "http_route", "http_response_status_code"),
                           buckets=(5, 10, 25), registry=self.registry)


class FewBucketsExporter(SemconvExporter):
    """The semconv name with prometheus-fastapi-instrumentator's few latency buckets."""

    def __init__(self) -> None:
        super(SemconvExporter, self).__init__()
        self.h = Histogram("http_server_request_duration_seconds", "d",
                           ("http_request_method", "http_route", "http_response_status_code"),
                           buckets=(0.1, 0.5, 1), registry=self.registry)


class OldSemconvExporter(SemconvExporter):
    def __init__(self) -> None:
        super(SemconvExporter, self).__init__()
        self.h = Histogram("http_server_duration_milliseconds", "d",
                           ("http_method", "http_route", "http_status_code"),
                           buckets=(0, 5, 10, 25, 50, 75, 100, 250, 500, 1000),
                           registry=self.registry)


@pytest.mark.parametrize("exporter, status, fragment", [
    pytest.param(SemconvExporter, Status.PASS, "seconds, advised buckets", id="SC-004-pass"),
    pytest.param(FewBucketsExporter, Status.FAIL, "series use buckets [0.1, 0.5, 1.0], not the advice",
                 id="SC-004-fail-few-buckets"),
    pytest.param(MillisExporter, Status.FAIL, "is in seconds", id="SC-004-fail-milliseconds"),
    pytest.param(OldSemconvExporter, Status.FAIL, "pre-1.21 duration metric",
                 id="SC-004-fail-old-semconv-only"),
    pytest.param(FlaskExporter, Status.SKIP, "exposes no http.server.request.duration",
                 id="SC-004-skip-other-exporter"),
])
def test_sc004(run, exporter, status, fragment):
    r = one(_semconv_run(run, exporter()), "SC-004")
    assert r.status == status, r.message
    assert fragment in r.message
