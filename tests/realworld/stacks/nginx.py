"""nginx as people run it in front of services: no telemetry at all (no OpenTelemetry module,
no /metrics, no traceparent handling), 2 worker processes, /orders reverse-proxied to the
downstream sink. What obsconform must say: it exports nothing (KT-001 fails on every
request), the metric checks skip, the span checks cannot judge and say why, and the proxy's
pass-through of trace headers fails TC-002/TC-003 on the wire. Every answer is seen by the
kernel in both workers (the probes follow the master's forks)."""

from __future__ import annotations

from tests.e2e.conftest import ROOT
from tests.realworld.matrix import MatrixRun, NotPass, Stack

SCENARIO = ROOT / "examples" / "realworld" / "nginx" / "scenario.json"
NO_SPAN = "no span arrives: the span checks cannot judge (their messages say the SUT exported no span)"
# 60 load + 29 tc (with @fanout cases) + 67 bc requests; the one /metrics scrape (404) is the
# agent's and excluded. Two tc cases are unsampled (flags 00): KT-001 judges 154.
SENT = 156
FANOUT = 94  # POST /orders, each proxied once: load 12 (1 in 5), tc 15 @fanout, bc 67

CLEAN = MatrixRun(
    name="clean",
    description="nginx as shipped: static answers, /orders proxied, no telemetry",
    exit_code=2,  # non_compliant: KT-001 fails on kernel truth that is complete (KT-007 passes)
    not_pass=(
        NotPass(("KT-001",), "fail", "no OTLP spans: nginx has no OpenTelemetry module, so all "
                f"{SENT - 2} sampled requests the kernel saw have no server span (100% loss)"),
        NotPass(("KT-002", "KT-004"), "skip", "no request metric: GET /metrics answers 404 (no "
                "endpoint) and no OTLP metric arrives; the run records the 404 once and goes on"),
        NotPass(("SC-001", "SC-002", "SC-004", "AL-001", "AL-002", "AL-004"), "skip",
                "no /metrics endpoint and no OTLP metric: nothing to parse, lint or align"),
        NotPass(("AL-003",), "skip", "no OTLP log records and no JSON log lines"),
        NotPass(("KT-003", "KT-005", "KT-006", "TC-001", "TC-004", "TC-005", "BC-003",
                 "SC-003"), "inconclusive", NO_SPAN + "; TC-004: the proxy starts no trace of "
                "its own, it only forwards what came"),
        NotPass(("TC-002",), "fail", "nginx's proxy_pass forwards the inbound traceparent "
                "unchanged: the outbound parent-id is still the caller's, not a span of the "
                "SUT"),
        NotPass(("TC-003",), "fail", "invalid inbound traceparents (version ff, zero ids, ...) "
                "are forwarded byte for byte on /orders: no new trace is started"),
        NotPass(("BC-001",), "fail", "X-Biz-Code is forwarded as it came, and nothing when "
                "none came: the profile's 'default' is never sent"),
        NotPass(("BC-002",), "fail", "no leak between requests (leaked 0), but the 21 "
                "concurrent requests without a bizCode reach the upstream without 'default' "
                "(BC-002 counts a wrong value as well as a leak)"),
        NotPass(("EC-001", "EC-002", "EC-003", "EC-004", "EC-005"), "skip",
                "no errcode catalogue: nginx does not implement the errortrace profile"),
    ),
    counts={
        "measurements.kernel.requests": SENT,  # == requests sent: both workers are seen
        "measurements.kernel.outbound_requests": FANOUT,
        "measurements.kernel.agent_drops": 0,
        "measurements.telemetry.spans": 0,
        "measurements.telemetry.metric_points": 0,
        "measurements.telemetry.scrapes_answered": 0,
        "measurements.telemetry.metrics_endpoint_missing": 404,
        "KT-001.observed.missing": SENT - 2,
        "KT-007.observed.driver_answers_unseen": 0,
        "TC-002.observed.calls_failing": FANOUT,
        "TC-003.observed.failed": 11,  # the 11 invalid variants sent to /orders
        "BC-002.observed.leaked": 0,
    },
)

STACKS = [
    Stack(
        name="nginx",
        title="nginx (Debian nginx-light), 2 workers, /orders as a reverse proxy",
        command="{py} -m examples.realworld.nginx.launch --port {port}",
        scenario=SCENARIO,
        tracing="none",
        exporter="none",
        packages=(("deb", "nginx-light"),),
        runs=(CLEAN,),
    ),
]
