"""The /metrics scraper against prometheus_client's own HTTP server and a witness server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from agent.downstream import DownstreamSink
from agent.evidence import AGENT_USER_AGENT, RunMeta, load_evidence
from agent.exposition import counter_value, parse_exposition
from agent.scrape import ACCEPT_OPENMETRICS, ACCEPT_PROMETHEUS, Scraper, ScrapeLoop


@pytest.fixture(scope="module")
def exporter() -> Iterator[tuple[str, Counter]]:
    """prometheus_client's real /metrics server (it negotiates the format and gzips on request)."""
    reg = CollectorRegistry()
    counter = Counter("jobs", "Jobs done.", ["kind"], registry=reg)
    counter.labels("a").inc(5)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    yield f"http://127.0.0.1:{server.server_port}/metrics", counter
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize(
    ("openmetrics", "media", "fmt"),
    [(False, "text/plain", "prometheus"), (True, "application/openmetrics-text", "openmetrics")],
    ids=["text-0.0.4", "openmetrics-negotiated"],
)
def test_scrape_negotiates_stores_and_parses(exporter, writer, openmetrics, media, fmt):
    url, counter = exporter
    scrape = Scraper(url, writer).scrape("before", openmetrics=openmetrics)
    assert (scrape.status, scrape.error, scrape.phase) == (200, "", "before")
    assert scrape.content_type.startswith(media)
    assert scrape.accept == (ACCEPT_OPENMETRICS if openmetrics else ACCEPT_PROMETHEUS)
    writer.meta(RunMeta(run_id="t", started_at="2025-01-01T00:00:00Z"))
    evidence = load_evidence(writer.run_dir)
    (stored,) = evidence.scrapes
    assert stored == scrape and stored.file.startswith("scrapes/")
    exp = parse_exposition(evidence.scrape_text(stored), stored.content_type)  # stored un-gzipped
    assert (exp.format, exp.error) == (fmt, "")
    assert counter_value(exp, "jobs", {"kind": "a"}) == 5


def test_phases_and_sequence_follow_the_run(exporter, writer):
    url, counter = exporter
    scraper = Scraper(url, writer)
    before = scraper.scrape("before")
    counter.labels("phases").inc(2)
    after = scraper.scrape("after")
    assert [(s.seq, s.phase) for s in scraper.scrapes] == [(0, "before"), (1, "after")]
    values = [
        counter_value(parse_exposition((writer.run_dir / s.file).read_text(), s.content_type), "jobs", {"kind": "phases"})
        for s in (before, after)
    ]
    assert values == [None, 2]


def test_agent_requests_carry_the_agent_user_agent(witness):
    scraper = Scraper(f"{witness.url}/metrics?x=1", None)
    scraper.scrape("before", openmetrics=True)
    (seen,) = witness.requests
    headers = dict(seen.headers)
    assert seen.path == "/metrics?x=1"
    assert headers["user-agent"].startswith(f"{AGENT_USER_AGENT}/")
    assert headers["accept"] == ACCEPT_OPENMETRICS


def test_server_down_is_recorded_not_raised(closed_port_url, writer):
    scrape = Scraper(f"{closed_port_url}/metrics", writer).scrape("during")
    assert (scrape.status, scrape.file) == (None, "")
    assert "ConnectionRefusedError" in scrape.error


def test_http_error_is_recorded_with_its_body(writer):
    with DownstreamSink(None) as sink:
        sink.respond("/metrics", status=503, body="overloaded")
        scrape = Scraper(f"{sink.url}/metrics", writer).scrape("during")
    assert (scrape.status, scrape.error) == (503, "HTTP 503 Service Unavailable")
    assert (writer.run_dir / scrape.file).read_text() == "overloaded"


def test_a_hanging_server_times_out(witness):
    witness.hang = threading.Event()
    t0 = time.monotonic()
    scrape = Scraper(witness.url, None, timeout_s=0.3).scrape("during")
    assert "timed out" in scrape.error and scrape.status is None
    assert time.monotonic() - t0 < 2


def test_scrape_loop_scrapes_during_load_until_stopped(exporter, writer):
    scraper = Scraper(exporter[0], writer)
    with ScrapeLoop(scraper, interval_s=0.02) as loop:
        deadline = time.monotonic() + 5
        while loop.count < 3 and time.monotonic() < deadline:
            threading.Event().wait(0.01)  # poll with a deadline
    stopped_at = len(scraper.scrapes)
    assert stopped_at >= 3 and loop.failures == 0
    assert {s.phase for s in scraper.scrapes} == {"during"}
    assert [s.seq for s in scraper.scrapes] == list(range(stopped_at))
    assert len(scraper.scrapes) == stopped_at  # nothing after stop()


@pytest.mark.parametrize(("url", "kwargs"), [("ftp://x/metrics", {}), ("localhost:9090", {}), ("http://h/m", {"timeout_s": 0})])
def test_bad_arguments_name_the_parameter(url, kwargs):
    with pytest.raises(ValueError, match="url|timeout_s"):
        Scraper(url, None, **kwargs)


class _CountingExporter:
    """A /metrics server whose request counter is bumped by a thread, and which counts its
    own scrapes under handler="/metrics" the way some exporters do."""

    def __init__(self, bumps: int, interval_s: float) -> None:
        import http.server

        from prometheus_client import generate_latest

        self.registry = CollectorRegistry()
        self.requests = Counter("app_requests", "requests", ["handler"], registry=self.registry)
        # A runtime counter that changes on every scrape, like process_cpu_seconds_total.
        self.ticks = Counter("process_ticks", "changes on its own", registry=self.registry)
        self.done = threading.Event()
        registry, requests, ticks = self.registry, self.requests, self.ticks

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.labels("/metrics").inc()
                ticks.inc()
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"

        def bump() -> None:
            for _ in range(bumps):
                if self.done.wait(interval_s):
                    return
                requests.labels("/items").inc()

        threading.Thread(target=bump, daemon=True).start()

    def close(self) -> None:
        self.done.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    "bumps, stable",
    [(0, True), (6, True), (10_000, False)],
    ids=["already-still", "settles-after-late-counts", "never-settles"],
)
def test_wait_stable_waits_for_late_counts_and_ignores_self_counted_scrapes(bumps, stable):
    exp = _CountingExporter(bumps, interval_s=0.1)
    try:
        t0 = time.monotonic()
        assert Scraper(exp.url, None).wait_stable(timeout_s=2.0) is stable
        if bumps == 6:  # it returned only once the sixth late count was in
            assert exp.requests.labels("/items")._value.get() == 6
            assert time.monotonic() - t0 >= 0.55
    finally:
        exp.close()


@pytest.mark.parametrize("body, fragment", [
    (lambda gz: gz[: len(gz) // 2], "truncated"),
    (lambda gz: b"not gzip at all", "bad gzip body"),
], ids=["truncated-gzip", "not-gzip"])
def test_a_broken_gzip_body_fails_the_scrape(writer, body, fragment):
    import gzip
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    payload = body(gzip.compress(b"# TYPE jobs counter\njobs_total 1\n" * 200))

    class Gzipped(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gzipped)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        scrape = Scraper(f"http://127.0.0.1:{server.server_port}/metrics", writer).scrape("during")
    finally:
        server.shutdown()
        server.server_close()
    assert fragment in scrape.error, scrape
