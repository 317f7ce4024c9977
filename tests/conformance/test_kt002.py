"""KT-002: metric count deltas vs kernel counts, over real prometheus_client expositions in
the shapes of the OTel semconv exporter and the common Python exporters, and OTLP metrics.
Every known family, its candidate exporters and labels: test_kt002_families."""

from __future__ import annotations

import pytest
from prometheus_client import Counter

from agent.evidence import MetricPoint
from conformance import evaluate
from conformance.model import Status
from tests.conformance.builders import (
    EXPORTERS, MS, Exporter, FastAPIInstrumentator, Req, SemconvExporter, result,
)

ROUTES = [  # (method, path, route template, status)
    ("GET", "/items/{n}", "/items/{id}", 200),
    ("POST", "/orders", "/orders", 201),
    ("GET", "/items/{n}", "/items/{id}", 404),
]


def load(b, n=12, uncounted=(), openmetrics=False):
    """before scrape, n requests over ROUTES with agent probes in between, after scrape."""
    b.scrape("before", openmetrics)
    for i in range(n):
        method, path, route, status = ROUTES[i % len(ROUTES)]
        b.request(Req(method=method, path=path.format(n=i), route=route, status=status,
                      counted=i not in uncounted))
        if i % 4 == 0:
            b.agent_request("/healthz")
    b.scrape("after", openmetrics)
    return b.build()


def kt002(ev):
    return result(evaluate(ev, select=["KT-002"]), "KT-002")


@pytest.mark.parametrize("exporter", EXPORTERS, ids=[e.name for e in EXPORTERS])
def test_the_exporters_metric_is_found_and_matches_the_kernel(run, exporter):
    r = kt002(load(run(exporter=exporter())))
    assert r.status == Status.PASS, (r.message, r.evidence)
    prom = r.observed["prometheus"]
    assert prom["metric"] == exporter.sample
    assert prom["kernel_count"] == 12 and prom["mismatched_series"] == 0


@pytest.mark.parametrize("exporter", EXPORTERS, ids=[e.name for e in EXPORTERS])
def test_a_request_the_metric_missed_fails_with_the_series(run, exporter):
    r = kt002(load(run(exporter=exporter()), uncounted={4}))  # i=4: POST /orders 201
    assert r.status == Status.FAIL, r.message
    (m,) = r.evidence["mismatches"]
    assert (m["method"], m["kernel"], m["metric"]) == ("POST", 4, 3)
    assert m["status"] in ("201", "2xx")
    assert "1 series differ" in r.message


@pytest.mark.parametrize("exporter, labels", [
    (SemconvExporter, {"method": "http_request_method", "route": "http_route",
                       "status": "http_response_status_code"}),
    (FastAPIInstrumentator, {"method": "method", "route": "handler", "status": "status"}),
], ids=["semconv", "fastapi-instrumentator"])
def test_the_report_names_the_labels_used(run, exporter, labels):
    prom = kt002(load(run(exporter=exporter()))).observed["prometheus"]
    assert prom["labels"] == labels
    assert prom["status_classes"] == (exporter is FastAPIInstrumentator)


def test_openmetrics_scrapes_work_the_same(run):
    r = kt002(load(run(exporter=SemconvExporter()), openmetrics=True))
    assert r.status == Status.PASS, r.message


def test_a_service_that_counts_its_own_metrics_endpoint_is_not_blamed(run):
    from tests.conformance.builders import StarletteExporter

    r = kt002(load(run(exporter=StarletteExporter())))
    assert r.status == Status.PASS
    assert r.observed["prometheus"]["excluded_routes"] == ["/metrics"]


class CustomExporter(Exporter):
    """A hand-rolled counter with unusual label names and Flask-style route templates."""

    sample = "myapp_hits_total"

    def __init__(self):
        super().__init__()
        self.c = Counter("myapp_hits", "hits", ("verb", "uri", "code"), registry=self.registry)

    def observe(self, method, route, path, status, seconds):
        self.c.labels(method, route.replace("{id}", "<int:id>"), status).inc()


def test_an_unknown_metric_is_inconclusive_and_says_how_to_name_it(run):
    r = kt002(load(run(exporter=CustomExporter())))
    assert r.status == Status.INCONCLUSIVE
    assert "metric: NAME" in r.message


def test_the_scenario_can_name_the_metric_and_its_labels(run):
    scenario = {"metric": {"name": "myapp_hits",
                           "labels": {"method": "verb", "route": "uri", "status": "code"}}}
    r = kt002(load(run(exporter=CustomExporter(), scenario=scenario), uncounted={0}))
    assert r.status == Status.FAIL  # found, and the flask-style template maps /items/0
    (m,) = r.evidence["mismatches"]
    assert (m["route"], m["kernel"], m["metric"]) == ("/items/<int:id>", 4, 3)


def test_a_named_metric_that_is_absent_is_inconclusive(run):
    r = kt002(load(run(exporter=SemconvExporter(), scenario={"metric": "nope_total"})))
    assert r.status == Status.INCONCLUSIVE


class DjangoExporter(Exporter):
    """django-prometheus: the view label holds view names, which cannot map to paths."""

    sample = "django_http_responses_total_by_status_view_method_total"

    def __init__(self):
        super().__init__()
        self.c = Counter("django_http_responses_total_by_status_view_method", "responses",
                         ("status", "view", "method"), registry=self.registry)

    def observe(self, method, route, path, status, seconds):
        self.c.labels(str(status), "shop.views." + route.strip("/").split("/")[0], method).inc()


def test_view_name_labels_fall_back_to_method_and_status(run):
    r = kt002(load(run(exporter=DjangoExporter())))
    assert r.status == Status.PASS, r.evidence
    assert r.observed["prometheus"]["labels"]["route"] is None
    assert any("holds no path" in n for n in r.evidence["notes"])


def test_no_scrape_and_no_otlp_is_a_skip_that_names_the_missing_layer(run):
    # No metric source at all (no metrics URL, no OTLP metric): like a missing catalogue,
    # nothing to compare; tests/conformance/test_no_telemetry.py has the other cases.
    b = run()
    b.request()
    r = kt002(b.build())
    assert r.status == Status.SKIP
    assert "no metrics URL was given" in r.message and "no OTLP metric arrived" in r.message


def _otlp_points(b, counts, start_ns, t_before, t_after, temporality="CUMULATIVE"):
    """One cumulative stream per (method, route, status): a point before the load and one
    after it, as a periodic OTel SDK reader exports them."""
    for (method, route, status), (before, after) in counts.items():
        attrs = {"http.request.method": method, "http.route": route,
                 "http.response.status_code": status, "url.scheme": "http"}
        for t, n in ((t_before, before), (t_after, after)):
            b.points.append(MetricPoint(
                name="http.server.request.duration", kind="histogram", unit="s",
                attributes=attrs, resource={"service.name": "svc"}, start_ns=start_ns,
                time_ns=t, count=n, sum=0.01 * n, temporality=temporality))


@pytest.mark.parametrize("missed, status", [(0, Status.PASS), (1, Status.FAIL)],
                         ids=["otlp-counts-match", "otlp-misses-one"])
def test_otlp_cumulative_histogram_counts_are_compared(run, missed, status):
    b = run()
    start, t_before = b.t - 1000 * MS, b.t
    for i in range(6):
        b.request(Req(path=f"/items/{i}"))
    # 2 warm-up requests were exported before the load: only the delta counts
    _otlp_points(b, {("GET", "/items/{id}", 200): (2, 8 - missed)}, start, t_before, b.t + MS)
    r = kt002(b.build())
    assert r.status == status, (r.message, r.evidence)
    otlp = r.observed["otlp"]
    assert (otlp["metric"], otlp["family"], otlp["source"]) == (
        "http.server.request.duration", "http.server.request.duration", "OTLP metrics")
    assert otlp["candidate_exporters"] == ["OpenTelemetry HTTP server instrumentation"]
    assert otlp["kernel_count"] == 6


def _old_semconv_flask_points(b, counts, start_ns, t):
    """http.server.duration as FlaskInstrumentor exports it without the semconv opt-in: the
    route template in http.target, no http.route, the pre-1.21 names, one stream per
    worker, no export before the load (the SDK's first export comes at exit)."""
    for worker, ((method, target, status), n) in enumerate(counts.items()):
        b.points.append(MetricPoint(
            name="http.server.duration", kind="histogram", unit="ms",
            attributes={"http.method": method, "http.target": target, "http.status_code": status,
                        "http.scheme": "http", "net.host.port": 8080},
            resource={"service.name": "svc"}, start_ns=start_ns + worker, time_ns=t, count=n,
            sum=5.0 * n, temporality="CUMULATIVE"))


@pytest.mark.parametrize("counted, status", [(4, Status.PASS), (3, Status.FAIL)],
                         ids=["flask-old-semconv-matches", "flask-old-semconv-misses-one"])
def test_old_semconv_points_carry_the_route_in_http_target(run, counted, status):
    b = run()
    start = b.t - 1000 * MS
    for i in range(4):
        b.request(Req(path=f"/items/{i}", route="/items/<int:item_id>"))
    b.request(Req(method="POST", path="/orders", route="/orders", status=201))
    _old_semconv_flask_points(b, {("GET", "/items/<int:item_id>", 200): counted,
                                  ("POST", "/orders?x=1", 201): 1}, start, b.t + MS)
    r = kt002(b.build())
    assert r.status == status, (r.message, r.evidence)
    otlp = r.observed["otlp"]
    # the attributes really read: the pre-1.21 names, not the stable ones
    assert otlp["labels"] == {"method": "http.method", "route": "http.target", "status": "http.status_code"}
    assert otlp["candidate_exporters"] == ["OpenTelemetry HTTP server instrumentation, semconv < 1.21"]
    assert otlp["kernel_count"] == 5
    if status == Status.FAIL:
        (m,) = r.evidence["mismatches"]
        assert (m["route"], m["kernel"], m["metric"]) == ("/items/<int:item_id>", 4, 3)


def _agent_at(b, host, path):
    """An agent request to ``host`` (the SUT's port, or a separate metrics server)."""
    k = b._kernel("GET", path, {"host": [host], "user-agent": ["obsconform-agent/0.1"]}, 200, MS)
    b.t += 3 * MS
    return k


# Without a route label, 1 lost request and 1 counted health probe are indistinguishable:
# the count may lie anywhere between the kernel's with none and all same-port agent requests.
@pytest.mark.parametrize("lost, status", [(0, Status.PASS), (2, Status.FAIL)],
                         ids=["health-counted-scrapes-elsewhere", "two-requests-lost"])
def test_agent_requests_to_a_separate_metrics_server_are_not_expected_in_the_count(
        run, lost, status):
    """gunicorn + prometheus-flask-exporter: the health probe reaches a worker (counted by the
    OTLP metric, which has no route label), the scrapes reach the master's metrics port."""
    b = run()
    health = _agent_at(b, "127.0.0.1:8080", "/healthz")  # before the load, before any export
    start = health.t_resp_last  # the SDK starts a stream at its first recording: after it
    for _ in range(3):
        _agent_at(b, "127.0.0.1:9200", "/metrics")
    for i in range(4):
        b.request(Req(path=f"/items/{i}"))
    for _ in range(3):
        _agent_at(b, "127.0.0.1:9200", "/metrics")
    b.points.append(MetricPoint(
        name="http.server.duration", kind="histogram", unit="ms",
        attributes={"http.method": "GET", "http.status_code": 200},
        resource={"service.name": "svc"}, start_ns=start, time_ns=b.t, count=4 + 1 - lost,
        sum=20.0, temporality="CUMULATIVE"))
    r = kt002(b.build())
    assert r.status == status, (r.message, r.evidence)
    assert r.observed["otlp"]["kernel_count"] == 4


def _point(b, t, n, status=200, temporality="CUMULATIVE", start_ns=None):
    attrs = {"http.request.method": "GET", "http.route": "/items/{id}",
             "http.response.status_code": status}
    b.points.append(MetricPoint(
        name="http.server.request.duration", kind="histogram", unit="s", attributes=attrs,
        resource={"service.name": "svc"}, start_ns=start_ns if start_ns is not None else t,
        time_ns=t, count=n, sum=0.01 * n, temporality=temporality))


# A periodic reader exported once mid-load and the SUT did not flush at exit: the requests
# answered after that export cannot be in it. Those before it still must be.
@pytest.mark.parametrize("counted, status", [(6, Status.PASS), (5, Status.FAIL)],
                         ids=["counted-up-to-the-last-export", "missed-one-before-the-export"])
def test_otlp_requests_answered_after_the_last_export_are_not_compared(run, counted, status):
    b = run()
    start = b.t - 1000 * MS
    for i in range(6):
        b.request(Req(path=f"/items/{i}"))
    _point(b, b.t, counted, start_ns=start)
    for i in range(6):
        b.request(Req(path=f"/items/{i}"))
    r = kt002(b.build())
    assert r.status == status, (r.message, r.evidence)
    otlp = r.observed["otlp"]
    assert otlp["kernel_count"] == 6 and otlp["answered_after_last_export"] == 6
    assert any("predates the last answered request" in n and "6 request(s)" in n
               for n in r.evidence["notes"]), r.evidence["notes"]


def test_a_delta_stream_silent_while_its_sdk_exported_later_still_fails(run):
    """Delta streams export only with new data: the SDK's later export of another status
    bounds what the 200 stream should hold, so its 2 unexported requests are a loss."""
    b = run()
    for i in range(3):
        b.request(Req(path=f"/items/{i}"))
    _point(b, b.t, 3, temporality="DELTA")
    for i in range(2):
        b.request(Req(path=f"/items/{i}"))
    b.request(Req(path="/items/9", status=404))
    _point(b, b.t, 1, status=404, temporality="DELTA")
    r = kt002(b.build())
    assert r.status == Status.FAIL, (r.message, r.evidence)
    (m,) = r.evidence["mismatches"]
    assert (m["status"], m["kernel"], m["metric"]) == ("200", 5, 3)
