"""The phase runner against a plain witness server: scrapes before/during/after in both
formats, the health probe, and the agent User-Agent on every request the agent makes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.driver import LoadDriver
from agent.errors import ObsconformError
from agent.evidence import AGENT_USER_AGENT, DRIVER_USER_AGENT, EvidenceWriter
from agent.phaserun import health_probe, run_phases
from agent.phases import plan
from agent.scenario import from_paths
from agent.scrape import Scraper

METRICS = b"# TYPE hits counter\nhits_total 1\n"


class Witness(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, str]] = []  # (path, user-agent, accept)
        self.health: list[int] = []  # statuses /healthz answers, in turn (then 200)
        self.metrics_status = 200
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        w: Witness = self.server  # type: ignore[assignment]
        with w.lock:
            w.seen.append((self.path, self.headers.get("User-Agent", ""), self.headers.get("Accept", "")))
            status = w.health.pop(0) if self.path == "/healthz" and w.health else 200
        if self.path == "/metrics":
            status = w.metrics_status
        body = METRICS if self.path == "/metrics" else b"ok"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


@pytest.fixture
def witness() -> Iterator[Witness]:
    w = Witness()
    t = threading.Thread(target=w.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield w
    w.shutdown()
    w.server_close()
    t.join(5)


@pytest.fixture
def writer(tmp_path) -> Iterator[EvidenceWriter]:
    w = EvidenceWriter(tmp_path / "run")
    yield w
    w.close()


def test_scrapes_surround_the_phases_and_agent_requests_say_so(witness, writer):
    scenario = from_paths(["/a"], metrics_url=witness.url + "/metrics")
    p = plan(scenario, requests=120, concurrency=4)
    scraper = Scraper(witness.url + "/metrics", writer)
    messages: list[str] = []
    records = run_phases(p, LoadDriver(witness.url, writer), scraper, messages.append, scrape_interval_s=0.05)

    assert len(records) == p.total() and all(r.status == 200 for r in records)
    assert [r.phase for r in records] == [r.phase for ph in p.phases for r in ph.requests]
    phases = [(s.phase, "openmetrics" in s.accept.split(",")[0]) for s in scraper.scrapes]
    assert phases[:2] == [("before", False), ("before", True)]
    assert phases[-2:] == [("after", False), ("after", True)]
    assert {ph for ph, _ in phases[2:-2]} == {"during"}, "during scrapes only, between before and after"
    # Scrapes are the agent's, the phases' requests the driver's.
    for path, ua, _ in witness.seen:
        prefix = AGENT_USER_AGENT if path == "/metrics" else DRIVER_USER_AGENT
        assert ua.startswith(prefix + "/"), (path, ua)
    assert [m for m in messages if m.startswith("load: ")] == [
        "load: 30/120 requests (25%)", "load: 60/120 requests (50%)", "load: 90/120 requests (75%)"]
    assert messages[0] == "tc phase: sending 14 trace-context cases one at a time"


def test_a_failing_before_scrape_stops_the_run(witness, writer):
    witness.metrics_status = 500
    scraper = Scraper(witness.url + "/metrics", writer)
    with pytest.raises(ObsconformError, match=r"cannot scrape .*/metrics: HTTP 500.*check --metrics-url"):
        run_phases(plan(from_paths(["/a"]), requests=1, concurrency=1), LoadDriver(witness.url), scraper)


def test_a_metrics_url_answering_404_is_recorded_once_and_the_run_goes_on(witness, writer):
    """No /metrics endpoint is a finding about the SUT (KT-002 and SC-001 skip and say so),
    not a harness error: the 404 stays in the evidence and nothing more is scraped."""
    witness.metrics_status = 404
    scraper = Scraper(witness.url + "/metrics", writer)
    records = run_phases(plan(from_paths(["/a"]), requests=3, concurrency=1),
                         LoadDriver(witness.url, writer), scraper, scrape_interval_s=0.05)
    assert records and all(r.status == 200 for r in records)
    assert [(s.phase, s.status) for s in scraper.scrapes] == [("before", 404)]
    assert [p for p, _, _ in witness.seen].count("/metrics") == 1


@pytest.mark.parametrize(("answers", "status"), [([], 200), ([503, 503], 200), ([404], 404)],
                         ids=["ok", "retries-5xx", "4xx-is-final"])
def test_the_health_probe_retries_only_what_may_pass(witness, answers, status):
    witness.health = list(answers)
    result = health_probe(witness.url, "/healthz", timeout_s=5)
    assert (result["status"], result["error"]) == (status, "")
    probes = [s for s in witness.seen if s[0] == "/healthz"]
    assert len(probes) == (len(answers) if status == 404 else len(answers) + 1)
    assert all(ua.startswith(AGENT_USER_AGENT + "/") for _, ua, _ in probes)


def test_the_health_probe_gives_up_at_the_deadline():
    from tests.e2e.conftest import free_port

    result = health_probe(f"http://127.0.0.1:{free_port()}", "/healthz", timeout_s=0.3)
    assert result["status"] is None and "ConnectionRefused" in result["error"]
    assert 0.3 <= result["waited_s"] < 3
