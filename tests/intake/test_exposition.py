"""Exposition parsing on prometheus_client's own output (text 0.0.4 and OpenMetrics) and on bad text."""

from __future__ import annotations

import math
import re
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client import exposition as prom_exposition
from prometheus_client.openmetrics import exposition as om_exposition

from agent.exposition import (
    OPENMETRICS,
    PROMETHEUS,
    counter_samples,
    counter_value,
    histogram_series,
    labels_key,
    parse_exposition,
)

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
BUCKETS = (0.01, 0.1, 0.5, 1.0)
OBSERVATIONS = {  # (method, route) → durations in seconds
    ("GET", "/items"): [0.005, 0.05, 0.05, 0.3, 2.0],
    ("POST", "/orders"): [0.2, 0.7],
}
COUNTS = {("GET", "200"): 7, ("GET", "500"): 2, ("POST", "201"): 4}
FORMATS = {
    PROMETHEUS: (prom_exposition.generate_latest, prom_exposition.CONTENT_TYPE_LATEST),
    OPENMETRICS: (om_exposition.generate_latest, om_exposition.CONTENT_TYPE_LATEST),
}


@pytest.fixture(scope="module")
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    requests = Counter("http_requests", "Requests served.", ["method", "status"], registry=reg)
    duration = Histogram(
        "http_server_request_duration", "Request duration.", ["method", "route"], unit="seconds", buckets=BUCKETS, registry=reg
    )
    Gauge("inflight_requests", "In flight.", registry=reg).set(3)
    Summary("payload_bytes", "Payload sizes.", registry=reg).observe(512)
    for (method, status), n in COUNTS.items():
        requests.labels(method, status).inc(n)
    requests.labels("GET", "200").inc(0, exemplar={"trace_id": TID})
    for (method, route), values in OBSERVATIONS.items():
        for v in values:
            duration.labels(method, route).observe(v, exemplar={"trace_id": TID} if v == 0.3 else None)
    return reg


def _exposed_sample_names(text: str) -> set[str]:
    """Sample names read straight off the text, independently of any parser."""
    return {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0) for line in text.splitlines() if line and not line.startswith("#")}


@pytest.mark.parametrize("fmt", [PROMETHEUS, OPENMETRICS])
def test_client_python_output_parses_with_exact_sample_names(registry, fmt):
    generate, content_type = FORMATS[fmt]
    text = generate(registry).decode()
    exp = parse_exposition(text, content_type)
    assert (exp.format, exp.error) == (fmt, "")
    assert {s.name for s in exp.samples} == _exposed_sample_names(text)
    assert "http_requests_total" in {s.name for s in exp.samples}


@pytest.mark.parametrize("fmt", [PROMETHEUS, OPENMETRICS])
def test_counter_values_by_label_subset(registry, fmt):
    generate, content_type = FORMATS[fmt]
    exp = parse_exposition(generate(registry).decode(), content_type)
    assert counter_value(exp, "http_requests_total", {"method": "GET", "status": "200"}) == 7
    assert counter_value(exp, "http_requests", {"method": "GET"}) == 9  # "_total" may be omitted
    assert counter_value(exp, "http_requests") == sum(COUNTS.values())
    assert counter_value(exp, "http_requests", {"method": "PUT"}) is None
    assert counter_value(exp, "no_such_metric") is None
    counters = counter_samples(exp)
    assert counters[("http_requests_total", labels_key({"method": "POST", "status": "201"}))] == 4
    assert not any(name.endswith("_created") for name, _ in counters)


@pytest.mark.parametrize("fmt", [PROMETHEUS, OPENMETRICS])
def test_histogram_series_are_cumulative_per_label_set(registry, fmt):
    generate, content_type = FORMATS[fmt]
    exp = parse_exposition(generate(registry).decode(), content_type)
    series = histogram_series(exp, "http_server_request_duration_seconds")
    assert set(series) == {labels_key({"method": m, "route": r}) for m, r in OBSERVATIONS}
    for (method, route), values in OBSERVATIONS.items():
        got = series[labels_key({"method": method, "route": route})]
        assert got["count"] == len(values)
        assert got["sum"] == pytest.approx(sum(values))
        want = {le: sum(v <= le for v in values) for le in (*BUCKETS, math.inf)}
        assert got["buckets"] == want


def test_openmetrics_exemplars_units_and_types(registry):
    exp = parse_exposition(om_exposition.generate_latest(registry).decode(), om_exposition.CONTENT_TYPE_LATEST)
    fam = exp.family("http_server_request_duration_seconds")
    assert (fam.type, fam.unit, fam.help) == ("histogram", "seconds", "Request duration.")
    with_exemplar = [s for s in exp.samples if s.exemplar is not None]
    bucket = next(s for s in with_exemplar if s.name.endswith("_bucket"))
    assert (bucket.labels["le"], bucket.exemplar.labels, bucket.exemplar.value) == ("0.5", {"trace_id": TID}, 0.3)
    assert bucket.exemplar.timestamp == pytest.approx(time.time(), abs=600)
    counter = next(s for s in with_exemplar if s.name == "http_requests_total")
    assert counter.exemplar.labels == {"trace_id": TID}
    assert {f.name: f.type for f in exp.families}.items() >= {
        ("http_requests", "counter"), ("inflight_requests", "gauge"), ("payload_bytes", "summary"),
    }  # fmt: skip


def test_sample_timestamps_are_unix_seconds_in_both_formats():
    prom = parse_exposition("up 1 1700000000123\n", "text/plain; version=0.0.4")  # milliseconds
    om = parse_exposition("up 1 1700000000.123\n# EOF\n", "application/openmetrics-text; version=1.0.0")  # seconds
    assert [s.timestamp for s in prom.samples] == [pytest.approx(1700000000.123)]
    assert [s.timestamp for s in om.samples] == [pytest.approx(1700000000.123)]


BAD = [
    # id, text, content type, fragment of the error
    ("garbage", "this is not metrics\n", "text/plain", "at line 1 ('this is not metrics')"),
    ("unclosed-labels", 'ok 1\nhttp_requests_total{method="GET 3\n', "text/plain; version=0.0.4", "at line 2"),
    ("non-numeric-value", "# TYPE x counter\nx_total abc\n", "text/plain", "abc"),
    ("bad-type", "# TYPE x bogus\nx 1\n", "text/plain", "Invalid metric type: bogus"),
    ("om-missing-eof", "# TYPE x counter\nx_total 1\n", "application/openmetrics-text; version=1.0.0", "Missing # EOF"),
    ("om-garbage", "!!!\n# EOF\n", "application/openmetrics-text", "at line 1"),
    ("protobuf-format", "\x0a\x03foo", "application/vnd.google.protobuf", "unsupported exposition Content-Type"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "ctype", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_text_gives_an_error_not_an_exception(text, ctype, fragment):
    exp = parse_exposition(text, ctype)
    assert fragment in exp.error


def test_families_completed_before_the_error_are_kept():
    exp = parse_exposition("# TYPE a gauge\na 1\n# TYPE b gauge\nb{ 2\n", "text/plain")
    assert [s.name for s in exp.samples] == ["a"] and "at line 4" in exp.error
