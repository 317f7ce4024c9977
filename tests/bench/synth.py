"""Synthetic evidence for the analysis benchmark: a refservice-like load run of N requests.

``write_run(run_dir, n)`` writes what a real run directory holds (meta.json, kernel, spans,
driver, downstream, logs, scrapes) through the project's own ``EvidenceWriter``, so the
format cannot drift from the real one. The SUT it pretends to be is the reference service
under its own scenario, driven at concurrency 4: every request carries a sampled
traceparent, gets one SERVER span continuing it (fan-out routes add one outbound call seen
by the kernel, a CLIENT span and a downstream sink record), one JSON log line, and is
counted in the duration histogram the before/after scrapes show. About 1% of /orders
answer 503 and 1% of /payments 402, with the errcode body, headers and span attributes the
reference service sends. Deterministic for a seed.
"""

from __future__ import annotations

import heapq
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from agent import __version__
from agent import scenario as scenario_mod
from agent.errcodes import entry_wire_code
from agent.evidence import (
    DownstreamRecord, DriverRecord, EvidenceWriter, KernelRequest, LogRecord, RunMeta, Scrape,
    Span,
)
from agent.phases import encode_body
from agent.scrape import ACCEPT_OPENMETRICS, ACCEPT_PROMETHEUS
from examples.refservice import SCENARIO_PATH
from examples.refservice.metrics import DURATION_METRIC, SEMCONV_DURATION_BUCKETS

HOST = "127.0.0.1:8080"
SINK = "127.0.0.1:8099"
TGID = 4242
CONCURRENCY = 4
T0_NS = 1_800_000_000_000_000_000  # a fixed start keeps output identical for a seed
CHUNK = 20_000  # requests per writer call: bounded memory whatever N is
DRIVER_UA = f"obsconform-driver/{__version__}"
RESOURCE = {"telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": "1.45.1", "service.instance.id": "synthetic-0001",
            "service.name": "sut"}
SCOPE = "examples.refservice"
# Handler time in µs (low, high) per route template; fan-out routes include the outbound call.
HANDLER_US = {"/slow": (5_050, 5_600), "/fanout": (1_200, 2_800), "/orders": (1_200, 2_800)}
DEFAULT_US = (250, 900)
# (route template, errcode name, share of that route's requests answered with it)
FAILURES = {"/orders": ("INVENTORY_BACKEND_UNAVAILABLE", 0.01),
            "/payments": ("PAYMENT_INSUFFICIENT_FUNDS", 0.01)}
OK_BODY = {"/items/<int:item_id>": '{"id":1,"name":"item-1","price_cents":137,"in_stock":true}\n',
           "/slow": '{"slept_ms":5}\n', "/fanout": '{"reservation":{"ok":true}}\n',
           "/orders": '{"order_id":"%s","reservation":{"ok":true}}\n',
           "/payments": '{"payment_id":"%s","status":"captured"}\n'}
OK_STATUS = {"/orders": 201, "/payments": 201}


@dataclass
class SynthRun:
    """What ``write_run`` wrote (counts the bench and its test check against)."""

    run_dir: Path
    requests: int
    outbound: int
    failures: int
    spans: int

    @property
    def records(self) -> int:
        """Lines in the JSONL files: kernel and spans (N + outbound each), driver (N), logs
        (N + the start line), downstream (outbound)."""
        return 4 * self.requests + 3 * self.outbound + 1


def _hex(rng: random.Random, bits: int) -> str:
    return format(rng.getrandbits(bits) | 1, f"0{bits // 4}x")  # | 1: never the all-zero id


def _load_mix(scenario: dict) -> list[dict]:
    """The scenario's load entries, expanded by weight, with route, body and headers ready."""
    fanout = set(scenario["fanout"]["routes"]) if scenario.get("fanout") else set()
    mix = []
    for entry in scenario["load"]:
        body, headers = encode_body(entry.get("body"), dict(entry.get("headers") or {}))
        path = entry["path"].split("?", 1)[0]
        query = entry["path"].partition("?")[2]
        route = scenario["routes"].get(entry["path"], path)
        sent = {"host": HOST, "user-agent": DRIVER_UA,
                **{k.lower(): v for k, v in headers.items()}}
        item = {"method": entry["method"], "target": entry["path"], "path": path, "query": query,
                "route": route, "body": body, "headers": sent, "fanout": path in fanout}
        mix += [item] * int(entry.get("weight", 1))
    return mix


def _errcodes(scenario: dict) -> dict[str, tuple[int, str]]:
    return {e["name"]: (int(e["http_status"]), entry_wire_code(e) or e["name"])
            for e in scenario.get("errcodes") or []}


class _Histogram:
    """The duration histogram the SUT exports, per (method, route, status), with exemplars."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], list] = defaultdict(
            lambda: [[0] * (len(SEMCONV_DURATION_BUCKETS) + 1), 0.0, {}])

    def observe(self, key: tuple[str, str, str], seconds: float, trace_id: str, span_id: str) -> None:
        counts, _, exemplars = entry = self.series[key]
        i = next((n for n, b in enumerate(SEMCONV_DURATION_BUCKETS) if seconds <= b),
                 len(SEMCONV_DURATION_BUCKETS))
        counts[i] += 1
        entry[1] += seconds
        exemplars[i] = (trace_id, span_id, seconds)

    def collect(self):  # the prometheus_client custom-collector protocol
        yield InfoMetricFamily("target", "Target metadata (OTel resource attributes).",
                               value={"service_name": RESOURCE["service.name"],
                                      "service_instance_id": RESOURCE["service.instance.id"]})
        fam = HistogramMetricFamily(DURATION_METRIC, "Duration of HTTP server requests.",
                                    labels=("http_request_method", "http_route",
                                            "http_response_status_code"))
        bounds = [str(b) for b in SEMCONV_DURATION_BUCKETS] + ["+Inf"]
        for key, (counts, total, exemplars) in sorted(self.series.items()):
            buckets, running = [], 0
            for i, (le, n) in enumerate(zip(bounds, counts)):
                running += n
                ex = exemplars.get(i)
                buckets.append((le, running) if ex is None else (le, running, _exemplar(*ex)))
            fam.add_metric(list(key), buckets, total)
        yield fam


def _exemplar(trace_id: str, span_id: str, value: float):
    from prometheus_client.samples import Exemplar

    return Exemplar({"trace_id": trace_id, "span_id": span_id}, value)


def _scrape(writer: EvidenceWriter, hist: _Histogram, phase: str, t_ns: int) -> None:
    registry = CollectorRegistry()
    registry.register(hist)
    url = f"http://{HOST}/metrics"
    writer.scrape(Scrape(0, phase, t_ns, url, ACCEPT_PROMETHEUS, CONTENT_TYPE_LATEST, 200),
                  generate_latest(registry))
    writer.scrape(Scrape(0, phase, t_ns + 1_500_000, url, ACCEPT_OPENMETRICS,
                         openmetrics.CONTENT_TYPE_LATEST, 200), openmetrics.generate_latest(registry))


def _meta(n: int, scenario: dict, kernel_records: int) -> RunMeta:
    stats = {"records": kernel_records, "ring_drops": 0, "truncated_captures": 0, "map_full": 0,
             "loss": 0, "bad_records": 0, "callback_errors": 0, "targets": [TGID],
             "sizes": {"capture_bytes": 1024, "ringbuf_pages": 4096}}
    return RunMeta(run_id=f"synthetic-{n}", started_at="2027-01-15T08:00:00.000Z",
                   finished_at="2027-01-15T08:30:00.000Z", tool_version=__version__,
                   host={"hostname": "synthetic", "kernel": "6.18", "arch": "x86_64", "btf": True,
                         "bcc_version": "0.26.0", "cpus": 2},
                   target={"url": f"http://{HOST}", "metrics_url": f"http://{HOST}/metrics",
                           "exec": "synthetic", "pid": TGID},
                   profile={"name": "errortrace", "version": "0.4"}, scenario=scenario,
                   requests_sent=n, concurrency=CONCURRENCY, capture_bytes=1024,
                   kernel_stats=stats,
                   clock={"source": "synthetic", "offset_ns": 0, "uncertainty_ns": 70,
                          "drift_ns": 0, "steps": [], "stepped": False, "warning": ""},
                   settle={"waited_s": 1.0, "quiet": True},
                   extra={"phases": {"load": n}, "synthetic": True})


def write_run(run_dir: Path | str, n: int, *, seed: int = 1) -> SynthRun:
    """Write a run directory of ``n`` load requests (see the module docstring)."""
    run_dir = Path(run_dir)
    rng = random.Random(seed)
    scenario = scenario_mod.from_file(SCENARIO_PATH, metrics_url=f"http://{HOST}/metrics")
    mix, errcodes = _load_mix(scenario), _errcodes(scenario)
    writer = EvidenceWriter(run_dir)
    writer.meta(_meta(n, scenario, 0))
    hist = _Histogram()
    _scrape(writer, hist, "before", T0_NS - 5_000_000)
    workers = [(T0_NS + w * 50_000, w) for w in range(CONCURRENCY)]
    conn_seq = [0] * CONCURRENCY
    kid = outbound = failures = 0
    writer.logs([LogRecord("stdout", T0_NS - 9_000_000, "INFO", 9, "starting",
                           attributes={"host": "127.0.0.1", "port": 8080, "workers": 1},
                           received_ns=T0_NS - 8_990_000)])
    for start in range(0, n, CHUNK):
        kernel, spans, driver, logs, down = [], [], [], [], []
        for i in range(start, min(n, start + CHUNK)):
            m = mix[rng.randrange(len(mix))]
            free_at, w = heapq.heappop(workers)
            trace_id, parent_id, span_id = _hex(rng, 128), _hex(rng, 64), _hex(rng, 64)
            traceparent = f"00-{trace_id}-{parent_id}-01"
            t_send = free_at + rng.randrange(50_000, 1_500_000)  # the client between requests
            t_req = t_send + rng.randrange(30_000, 60_000)
            s_start = t_req + rng.randrange(50_000, 150_000)
            lo, hi = HANDLER_US.get(m["route"], DEFAULT_US)
            handler_ns = rng.randrange(lo, hi) * 1000
            if rng.random() < 0.001:  # the rare slow outlier (GC pause, a cold cache)
                handler_ns *= 8
            resp_first = s_start + handler_ns
            resp_last = resp_first + rng.randrange(5_000, 15_000)
            s_end = resp_last + rng.randrange(20_000, 150_000)
            t_recv = resp_last + rng.randrange(20_000, 50_000)
            heapq.heappush(workers, (t_recv, w))
            status, attrs_extra, resp_headers, log_extra = OK_STATUS.get(m["route"], 200), {}, {}, {}
            body = OK_BODY.get(m["route"], "{}\n")
            if "%s" in body:
                body = body % _hex(rng, 128)
            fail = FAILURES.get(m["route"])
            if fail and rng.random() < fail[1]:
                status, code = errcodes[fail[0]]
                failures += 1
                body = json.dumps({"code": code, "trace_id": trace_id, "message": fail[0].lower()},
                                  separators=(",", ":")) + "\n"
                attrs_extra = {"error.type": code, "retryable": status >= 500}
                resp_headers = {"x-error-code": code, "x-error-trace-id": trace_id}
                log_extra = {"error_code": code}
            span_status = "ERROR" if status >= 500 else "UNSET"
            kid += 1
            server_id = f"k{kid}"
            req_headers = {**m["headers"], "traceparent": traceparent}
            if m["body"] is not None:
                req_headers["content-length"] = str(len(m["body"]))
            kernel.append(KernelRequest(
                server_id, f"{TGID}:{10 + w}:0", conn_seq[w], "server", TGID, TGID + 1 + w, 10 + w,
                m["method"], m["target"], "1.1", {k: [v] for k, v in req_headers.items()}, True,
                t_req, status, resp_first, resp_last, 150 + len(m["body"] or b""), 180 + len(body)))
            conn_seq[w] += 1
            attrs = {"http.request.method": m["method"], "url.path": m["path"], "url.scheme": "http",
                     "server.address": "127.0.0.1", "server.port": 8080,
                     "network.protocol.version": "1.1", "client.address": "127.0.0.1",
                     "biz.code": "default", "http.route": m["route"]}
            if m["query"]:
                attrs["url.query"] = m["query"]
            attrs.update({"user_agent.original": DRIVER_UA, **attrs_extra,
                          "http.response.status_code": status})
            if span_status == "ERROR" and "error.type" not in attrs:
                attrs["error.type"] = str(status)
            received = s_end + 200_000_000
            spans.append(Span(trace_id, span_id, parent_id, f"{m['method']} {m['route']}", "SERVER",
                              s_start, s_end, span_status, "", attrs, RESOURCE, SCOPE,
                              received_ns=received))
            if m["fanout"]:
                outbound += 1
                kid += 1
                c_span = _hex(rng, 64)
                c_start = s_start + handler_ns // 4
                c_req = c_start + rng.randrange(20_000, 60_000)
                c_resp = c_req + rng.randrange(300_000, 700_000)
                c_tp = f"00-{trace_id}-{c_span}-01"
                out_body = '{"item_id":3,"quantity":1,"warehouse":"ams-1"}'
                out_headers = {"host": SINK, "accept-encoding": "identity",
                               "content-length": str(len(out_body)),
                               "content-type": "application/json", "x-biz-code": "default",
                               "traceparent": c_tp}
                listed = {k: [v] for k, v in out_headers.items()}
                kernel.append(KernelRequest(
                    f"k{kid}", f"{TGID}:{100 + w}:{i}", 0, "client", TGID, TGID + 1 + w, 100 + w,
                    "POST", "/inventory/reserve", "1.1", listed, True, c_req, 200, c_resp, c_resp,
                    280, 146, parent_request=server_id))
                spans.append(Span(trace_id, c_span, span_id, "POST", "CLIENT", c_start,
                                  c_resp + 30_000, "UNSET", "",
                                  {"http.request.method": "POST", "server.address": "127.0.0.1",
                                   "server.port": 8099,
                                   "url.full": f"http://{SINK}/inventory/reserve",
                                   "biz.code": "default", "http.response.status_code": 200},
                                  RESOURCE, SCOPE, received_ns=received))
                down.append(DownstreamRecord(c_req + rng.randrange(50_000, 150_000), "POST",
                                             "/inventory/reserve", listed, out_body))
            driver.append(DriverRecord(
                i, "load", m["method"], m["target"], req_headers, trace_id, parent_id, t_send,
                t_recv, status,
                {"server": "gunicorn", "date": "Fri, 15 Jan 2027 08:00:00 GMT",
                 "connection": "keep-alive", "content-type": "application/json",
                 "content-length": str(len(body)), **resp_headers},
                body, "", "load"))
            logs.append(LogRecord("stdout", s_end - 30_000, "INFO", 9, "request", trace_id, span_id,
                                  {"method": m["method"], "path": m["path"], "route": m["route"],
                                   "status": status, "biz_code": "default", **log_extra},
                                  received_ns=s_end))
            hist.observe((m["method"], m["route"], str(status)), (s_end - s_start) / 1e9,
                         trace_id, span_id)
        writer.kernel(kernel)
        writer.spans(spans)
        writer.driver(driver)
        writer.logs(logs)
        writer.downstream(down)
    end = max(t for t, _ in workers)
    _scrape(writer, hist, "after", end + 50_000_000)
    writer.meta(_meta(n, scenario, 2 * (n + outbound)))
    writer.close()
    return SynthRun(run_dir, n, outbound, failures, n + outbound)
