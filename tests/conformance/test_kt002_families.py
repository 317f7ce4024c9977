"""KT-002 finds each known request metric family (OTel, Python and Node.js exporters) and
reports it honestly: the family, every exporter known to emit it, the labels it read."""

from __future__ import annotations

import pytest
from prometheus_client import Counter, Histogram

from conformance.metricsource import HAND_WRITTEN
from conformance.model import Status
from tests.conformance.builders import Exporter
from tests.conformance.test_kt002 import CustomExporter, kt002, load


class Shape(Exporter):
    """A library's request metrics as it declares them (name, type, label names, values),
    rebuilt with prometheus_client; prom-client writes the same exposition text."""

    def __init__(self, metrics):
        super().__init__()
        self.metrics = [((Histogram if kind == "histogram" else Counter)(
            name, "requests", tuple(values), registry=self.registry), values)
            for kind, name, values in metrics]

    def observe(self, method, route, path, status, seconds):
        ctx = {"method": method, "route": route, "path": path, "status": status,
               "status_class": f"{str(status)[0]}xx", "view": "shop.views." + route.split("/")[1],
               "express_path": route.replace("{id}", "#val")}
        for metric, values in self.metrics:
            child = metric.labels(*(v.format(**ctx) for v in values.values()))
            child.observe(seconds) if isinstance(metric, Histogram) else child.inc()


OTEL = ["OpenTelemetry SDK Prometheus exporter", "OpenTelemetry Collector prometheus exporter"]
SEMCONV_LABELS = {"http_request_method": "{method}", "http_route": "{route}",
                  "http_response_status_code": "{status}"}
STARLETTE_EXPORTER = {"method": "{method}", "path": "{route}", "status_code": "{status}",
                      "app_name": "starlette"}  # group_paths=True: the template
ASGI_MONITOR = {"app_name": "app", "method": "{method}", "path": "{route}", "status_code": "{status}"}
DJANGO_RESPONSES = ("counter", "django_http_responses_total_by_status_view_method",
                    {"status": "{status}", "view": "{view}", "method": "{method}"})
M, R, S = "method", "route", "status"

# (id, metrics as the library declares them, sample KT-002 picks, candidate exporters,
#  label read per dim). Names and labels from each library's source (see metricsource).
FAMILIES = [
    ("otel-sdk", [("histogram", "http_server_request_duration_seconds", SEMCONV_LABELS)],
     "http_server_request_duration_seconds_count", [*OTEL, HAND_WRITTEN],
     {M: "http_request_method", R: "http_route", S: "http_response_status_code"}),
    ("otel-sdk-semconv-before-1.21", [("histogram", "http_server_duration_milliseconds",
                                       {"http_method": "{method}", "http_route": "{route}",
                                        "http_status_code": "{status}"})],
     "http_server_duration_milliseconds_count", [f"{o}, semconv < 1.21" for o in OTEL],
     {M: "http_method", R: "http_route", S: "http_status_code"}),
    ("prometheus-flask-exporter", [
        ("histogram", "flask_http_request_duration_seconds",
         {"method": "{method}", "path": "{path}", "status": "{status}"}),
        ("counter", "flask_http_request_total", {"method": "{method}", "status": "{status}"})],
     "flask_http_request_duration_seconds_count", ["prometheus-flask-exporter"],
     {M: "method", R: "path", S: "status"}),
    ("prometheus-flask-exporter-counter", [
        ("counter", "flask_http_request_total", {"method": "{method}", "status": "{status}"})],
     "flask_http_request_total", ["prometheus-flask-exporter"], {M: "method", R: None, S: "status"}),
    ("prometheus-fastapi-instrumentator", [
        ("counter", "http_requests_total",
         {"method": "{method}", "status": "{status_class}", "handler": "{route}"}),
        ("histogram", "http_request_duration_seconds", {"method": "{method}", "handler": "{route}"})],
     "http_requests_total", ["prometheus-fastapi-instrumentator", HAND_WRITTEN],
     {M: "method", R: "handler", S: "status"}),
    ("fastapi-instrumentator-histogram-only", [
        ("histogram", "http_request_duration_seconds", {"method": "{method}", "handler": "{route}"})],
     "http_request_duration_seconds_count",
     ["express-prom-bundle (prom-client)", "prometheus-fastapi-instrumentator",
      "prometheus-flask-exporter (NO_PREFIX)", HAND_WRITTEN], {M: "method", R: "handler", S: None}),
    ("express-prom-bundle", [  # includeMethod, includePath: ids in the path become "#val"
        ("histogram", "http_request_duration_seconds",
         {"status_code": "{status}", "method": "{method}", "path": "{express_path}"})],
     "http_request_duration_seconds_count",
     ["express-prom-bundle (prom-client)", "prometheus-fastapi-instrumentator",
      "prometheus-flask-exporter (NO_PREFIX)", HAND_WRITTEN], {M: "method", R: "path", S: "status_code"}),
    ("express-prom-bundle-defaults", [
        ("histogram", "http_request_duration_seconds", {"status_code": "{status}"})],
     "http_request_duration_seconds_count",
     ["express-prom-bundle (prom-client)", "prometheus-fastapi-instrumentator",
      "prometheus-flask-exporter (NO_PREFIX)", HAND_WRITTEN], {M: None, R: None, S: "status_code"}),
    ("prom-client-by-hand", [
        ("counter", "http_requests_total", {"method": "{method}", "route": "{route}", "code": "{status}"})],
     "http_requests_total", ["prometheus-fastapi-instrumentator", HAND_WRITTEN],
     {M: "method", R: "route", S: "code"}),
    ("starlette-prometheus", [
        ("counter", "starlette_requests_total", {"method": "{method}", "path_template": "{route}"}),
        ("counter", "starlette_responses_total",
         {"method": "{method}", "path_template": "{route}", "status_code": "{status}"})],
     "starlette_responses_total", ["starlette-prometheus", "asgi-monitor (Starlette)"],
     {M: "method", R: "path_template", S: "status_code"}),
    ("starlette-exporter", [("counter", "starlette_requests_total", STARLETTE_EXPORTER),
                            ("histogram", "starlette_request_duration_seconds", STARLETTE_EXPORTER)],
     "starlette_requests_total",
     ["starlette-exporter", "starlette-prometheus", "asgi-monitor (Starlette)"],
     {M: "method", R: "path", S: "status_code"}),
    ("asgi-monitor-aiohttp", [
        ("counter", "aiohttp_requests_total", {k: v for k, v in ASGI_MONITOR.items() if k != "status_code"}),
        ("counter", "aiohttp_responses_total", ASGI_MONITOR)],
     "aiohttp_responses_total", ["asgi-monitor (aiohttp)"], {M: "method", R: "path", S: "status_code"}),
    ("asgi-monitor-fastapi", [("counter", "fastapi_responses_total", ASGI_MONITOR)],
     "fastapi_responses_total", ["asgi-monitor (FastAPI)"], {M: "method", R: "path", S: "status_code"}),
    ("django-prometheus", [  # PrometheusAfterMiddleware's request families
        ("counter", "django_http_requests_total_by_method", {"method": "{method}"}),
        ("counter", "django_http_requests_total_by_view_transport_method",
         {"view": "{view}", "transport": "http", "method": "{method}"}),
        DJANGO_RESPONSES,
        ("histogram", "django_http_requests_latency_seconds_by_view_method",
         {"view": "{view}", "method": "{method}"})],
     "django_http_responses_total_by_status_view_method_total", ["django-prometheus"],
     {M: "method", R: None, S: "status"}),  # view names are no paths: compared without
    ("django-prometheus-latency", [("histogram", "django_http_requests_latency_seconds_by_view_method",
                                    {"view": "{view}", "method": "{method}"})],
     "django_http_requests_latency_seconds_by_view_method_count", ["django-prometheus"],
     {M: "method", R: None, S: None}),
    ("django-prometheus-by-view-transport", [
        ("counter", "django_http_requests_total_by_view_transport_method",
         {"view": "{view}", "transport": "http", "method": "{method}"})],
     "django_http_requests_total_by_view_transport_method_total", ["django-prometheus"],
     {M: "method", R: None, S: None}),
    ("django-prometheus-by-method", [
        ("counter", "django_http_requests_total_by_method", {"method": "{method}"})],
     "django_http_requests_total_by_method_total", ["django-prometheus"], {M: "method", R: None, S: None}),
]


def family(name: str) -> list:
    return next(f[1] for f in FAMILIES if f[0] == name)


@pytest.mark.parametrize("metrics, sample, candidates, labels", [f[1:] for f in FAMILIES],
                         ids=[f[0] for f in FAMILIES])
def test_each_family_names_its_candidate_exporters_and_the_labels_read(run, metrics, sample,
                                                                        candidates, labels):
    r = kt002(load(run(exporter=Shape(metrics))))
    assert r.status == Status.PASS, (r.message, r.evidence)
    prom = r.observed["prometheus"]
    assert (prom["metric"], prom["family"]) == (sample, sample.removesuffix("_count").removesuffix("_total"))
    assert prom["candidate_exporters"] == candidates
    assert prom["labels"] == labels
    read = [v for v in labels.values() if v]
    assert set(read) <= set(prom["label_names"]), prom["label_names"]
    assert (prom["source"], prom["found_by"], prom["kernel_count"]) == ("/metrics", "known family", 12)


@pytest.mark.parametrize("metrics", [f[1] for f in FAMILIES], ids=[f[0] for f in FAMILIES])
def test_each_family_is_really_compared(run, metrics):
    r = kt002(load(run(exporter=Shape(metrics)), uncounted={4}))  # i=4: POST /orders 201
    assert r.status == Status.FAIL, (r.message, r.evidence)
    assert "1 series differ" in r.message


def test_an_ambiguous_family_lists_every_candidate_and_claims_none(run):
    """starlette_requests_total is emitted by three libraries: the message names all."""
    r = kt002(load(run(exporter=Shape(family("starlette-exporter")))))
    names = ("starlette-exporter", "starlette-prometheus", "asgi-monitor (Starlette)")
    assert r.observed["prometheus"]["candidate_exporters"] == list(names)
    assert "starlette_requests_total from /metrics; known from starlette-exporter, " \
           "starlette-prometheus or asgi-monitor (Starlette)" in r.message, r.message


def test_a_named_known_family_still_lists_its_candidates(run):
    r = kt002(load(run(exporter=Shape(family("express-prom-bundle")), scenario={"metric": "http_request_duration_seconds"})))
    prom = r.observed["prometheus"]
    assert r.status == Status.PASS, r.message
    assert prom["found_by"] == "named by the scenario" and len(prom["candidate_exporters"]) == 4
    assert "named by the scenario; known from express-prom-bundle (prom-client), " in r.message


def test_a_named_unknown_family_claims_no_exporter(run):
    scenario = {"metric": {"name": "myapp_hits", "labels": {"method": "verb", "route": "uri",
                                                            "status": "code"}}}
    r = kt002(load(run(exporter=CustomExporter(), scenario=scenario)))
    prom = r.observed["prometheus"]
    assert (prom["family"], prom["candidate_exporters"]) == ("myapp_hits", [])
    assert prom["labels"] == {"method": "verb", "route": "uri", "status": "code"}
    assert "myapp_hits_total from /metrics, named by the scenario" in r.message
    assert "known from" not in r.message
