"""obsconform on the services people run, through the real CLI with real eBPF: Flask under
gunicorn (2 gthread workers, prometheus-flask-exporter in multiprocess mode), FastAPI under
uvicorn (prometheus-fastapi-instrumentator), aiohttp (prometheus_client middleware), each with
the official OTel instrumentation, in the instrumentations' default (pre-1.21) semconv and
with OTEL_SEMCONV_STABILITY_OPT_IN=http. Every check's status is asserted; every non-pass is
explained in NOT_PASS below. Then a real fault on the real Flask stack, and its control."""

from __future__ import annotations

import pytest

from tests.realworld.conftest import BY_NAME, REQUESTS, SERVICES

pytestmark = pytest.mark.kernel

ALL = tuple(s.name for s in SERVICES)
OLD, STABLE = "semconv-old", "semconv-stable"
MODES = {OLD: {}, STABLE: {"OTEL_SEMCONV_STABILITY_OPT_IN": "http"}}
EC = ("EC-001", "EC-002", "EC-003", "EC-004", "EC-005")

# (checks, status, services, modes, why). Anything not listed here must pass.
NOT_PASS = [
    (EC, "skip", ALL, (OLD, STABLE),
     "no errcode catalogue: these services do not implement the errortrace profile"),
    (("BC-001",), "fail", ALL, (OLD, STABLE),
     "true finding for the errortrace profile: no service forwards X-Biz-Code on its "
     "outbound call (the OTel instrumentations propagate traceparent only)"),
    (("BC-003",), "fail", ALL, (OLD, STABLE),
     "true finding (SHOULD): no span carries biz.code"),
    (("BC-002",), "skip", ALL, (OLD, STABLE),
     "neither outbound calls nor spans carry any bizCode: nothing can leak (BC-001/BC-003 "
     "judge the missing layer)"),
    (("AL-003",), "skip", ALL, (OLD, STABLE),
     "no OTLP log records and no JSON log lines: nothing to align"),
    (("TC-003",), "fail", ("fastapi", "aiohttp"), (OLD, STABLE),
     "true library defect: with two traceparent fields the ASGI and aiohttp getters return "
     "both values and TraceContextTextMapPropagator.extract continues header[0] "
     "(opentelemetry-api trace/propagation/tracecontext.py); the W3C harness "
     "(test_traceparent_duplicated) requires a new trace. WSGI joins the fields into one "
     "invalid value, so Flask restarts the trace and passes"),
    (("SC-003",), "fail", ALL, (OLD,),
     "true finding: the instrumentations 0.66b1 default to the pre-1.21 attribute names "
     "(http.method, http.status_code, http.target); stable HTTP semconv needs "
     "OTEL_SEMCONV_STABILITY_OPT_IN=http, and passes with it"),
    (("SC-004",), "fail", ("flask", "aiohttp"), (OLD,),
     "true finding (SHOULD): without the opt-in the OTLP duration metric is the pre-1.21 "
     "http.server.duration in ms"),
    (("SC-004",), "skip", ("fastapi",), (OLD, STABLE),
     "no OTLP metrics arrive: uvicorn re-raises SIGTERM after its graceful shutdown, so the "
     "SDK's atexit flush never runs and the 60 s periodic reader never fired; "
     "prometheus-fastapi-instrumentator has no semconv histogram"),
    (("AL-001", "AL-002"), "skip", ("fastapi",), (OLD, STABLE),
     "no target labels and no exemplars: the instrumentator exposes neither, and no OTLP "
     "metrics arrive (see SC-004)"),
]

# Checks whose status depends on the host's load, with why; either status is accepted.
LOAD_DEPENDENT = {
    "KT-004": "SHOULD; the exporters time only the framework's part (prometheus-flask-exporter "
              "from its before_request hook, the instrumentator and the aiohttp middleware "
              "inside the app), not parsing, queueing and the response write, and that part "
              "grows with CPU contention on 2 shared cores: the sum falls short by 0.3 ms to "
              "2.5 ms a request from run to run, across the 2 ms/request slack",
}

# Which request metric KT-002 must find in /metrics, and which OTLP one (None: none sent).
PROM_METRIC = {"flask": "flask_http_request_duration_seconds_count",
               "fastapi": "http_requests_total", "aiohttp": "http_requests_total"}
OTLP_METRIC = {OLD: "http.server.duration", STABLE: "http.server.request.duration"}
# The attribute KT-002 reads the OTLP route from: old-semconv Flask puts the template in
# http.target; old-semconv aiohttp records none (compared per method and status then).
OTLP_ROUTE = {("flask", OLD): "http.target", ("aiohttp", OLD): None,
              ("flask", STABLE): "http.route", ("aiohttp", STABLE): "http.route"}
ANSWERED = REQUESTS + 29 + 67  # load + tc (29 cases) + bc (3 sequential + 64 concurrent)


def expected_statuses(service: str, mode: str, check_ids: list[str]) -> dict[str, str]:
    out = dict.fromkeys(check_ids, "pass")
    for checks, status, services, modes, _why in NOT_PASS:
        if service in services and mode in modes:
            out.update(dict.fromkeys(checks, status))
    return out


def statuses(report: dict) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["checks"]}


def explain(report: dict, ids) -> str:
    return "\n".join(f"{c['id']} {c['status']}: {c['message']}" for c in report["checks"]
                     if c["id"] in ids)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ALL)
def test_each_check_judges_the_real_service_as_documented(run_service, name, mode):
    r = run_service(BY_NAME[name], MODES[mode])
    assert r.code == 2, r.stdout + r.stderr  # BC-001 fails on every one: non-compliant
    rep = r.report
    got = statuses(rep)
    want = expected_statuses(name, mode, list(got))
    wrong = {i for i in got if got[i] != want[i] and i not in LOAD_DEPENDENT}
    assert not wrong, "\n".join(f"{i}: expected {want[i]}" for i in sorted(wrong)) + "\n" + \
        explain(rep, wrong)
    assert all(got[i] in ("pass", "fail") for i in LOAD_DEPENDENT), explain(rep, LOAD_DEPENDENT)

    kt1 = next(c for c in rep["checks"] if c["id"] == "KT-001")["observed"]
    # every request sent was seen; the 2 tc/valid-unsampled ones rightly have no span
    assert kt1["kernel_requests"] + kt1["unsampled_without_span_excluded"] == ANSWERED
    assert (kt1["unsampled_without_span_excluded"], kt1["missing"], kt1["duplicates"]) == (2, 0, 0)
    kt2 = next(c for c in rep["checks"] if c["id"] == "KT-002")["observed"]
    assert kt2["prometheus"]["metric"] == PROM_METRIC[name]
    assert kt2["prometheus"]["mismatched_series"] == 0
    if name == "fastapi":  # uvicorn's exit loses the SDK's metric flush (see SC-004 above)
        assert kt2["otlp"] is None
    else:
        assert kt2["otlp"]["metric"] == OTLP_METRIC[mode]
        assert kt2["otlp"]["labels"]["route"] == OTLP_ROUTE[name, mode]
        assert kt2["otlp"]["mismatched_series"] == 0
    assert rep["measurements"]["kernel"]["agent_drops"] == 0


FAULT_MS = 15


@pytest.mark.parametrize("fault, kt003", [
    ("outer-middleware-ms", "fail"),
    ("before-request-ms", "pass"),
], ids=["wsgi-middleware-outside-the-instrumentor-hides-latency",
        "before-request-hook-is-inside-the-span-control"])
def test_latency_hidden_outside_the_flask_instrumentation(run_service, fault, kt003):
    """A 15 ms WSGI middleware wrapped around the instrumented app (a rate limiter added after
    FlaskInstrumentor) is time the client waits and the span misses: KT-003 fails with a
    median drift of ~15 ms, nothing else changes. A before_request hook registered ahead of
    the instrumentor's is no fault for the span: the instrumentation starts it at WSGI entry
    (KT-003 passes), but the exporter's histogram misses it (KT-004)."""
    r = run_service(BY_NAME["flask"], {**MODES[STABLE], "REALWORLD_FAULT": f"{fault}:{FAULT_MS}"})
    rep = r.report
    got = statuses(rep)
    want = expected_statuses("flask", STABLE, list(got))
    want["KT-003"] = kt003
    # KT-004 (SHOULD) fails in both: prometheus-flask-exporter times a request from its own
    # before_request hook, registered after the slow one, so its histogram misses the 15 ms
    # either way (a true finding on the exporter; the OTel span covers the hook).
    want["KT-004"] = "fail"
    wrong = {i for i in got if got[i] != want[i]}
    assert not wrong, explain(rep, wrong)
    drift = rep["measurements"]["latency_drift_us"]
    if kt003 == "fail":
        assert abs(drift["p50"] - FAULT_MS * 1000) < 2000, drift
    else:
        assert abs(drift["p50"]) < 2000, drift
