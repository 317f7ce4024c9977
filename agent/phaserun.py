"""Sends a plan's phases in order, with /metrics scrapes before, during (load) and after,
and the agent's HTTP health probe; every agent request carries the agent User-Agent."""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from agent._http import user_agent
from agent.driver import LoadDriver
from agent.errors import ObsconformError
from agent.evidence import AGENT_USER_AGENT, DriverRecord
from agent.phases import Plan
from agent.scrape import NO_ENDPOINT, Scraper, ScrapeLoop
from agent.urlpath import wire_path

log = logging.getLogger(__name__)

SCRAPE_INTERVAL_S = 0.5
HEALTH_TIMEOUT_S = 10.0
PROGRESS_MIN_REQUESTS = 100  # phases at least this long report 25/50/75 %


def health_probe(base_url: str, path: str, timeout_s: float = HEALTH_TIMEOUT_S) -> dict:
    """GET ``path`` (under the path of ``base_url``, as the driver sends it) until it answers
    2xx (5xx and refused connections are retried until the deadline, 4xx is final); returns
    ``{path, status, waited_s, error}`` with the path as sent, never raises."""
    parts = urlsplit(base_url)
    target = wire_path(parts.path.rstrip("/"), path)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    t0 = time.monotonic()
    delay = 0.02
    status, error = None, ""
    while True:
        conn = cls(parts.hostname, parts.port, timeout=min(5.0, timeout_s))
        try:
            conn.request("GET", target, headers={"User-Agent": user_agent(AGENT_USER_AGENT),
                                                 "Connection": "close"})
            resp = conn.getresponse()
            resp.read()
            status, error = resp.status, ""
        except (OSError, http.client.HTTPException) as e:
            status, error = None, f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        waited = time.monotonic() - t0
        if (status is not None and status < 500) or waited > timeout_s:
            break
        time.sleep(delay)  # backoff between polls of a service that is still starting
        delay = min(delay * 2, 0.5)
    return {"path": target, "status": status, "waited_s": round(waited, 3), "error": error}


def _percent(progress: Callable[[str], None], title: str) -> Callable[[int, int], None]:
    marks = {25, 50, 75}

    def report(done: int, total: int) -> None:
        pct = done * 100 // total
        for m in sorted(marks):
            if pct >= m:
                marks.discard(m)
                progress(f"{title}: {done}/{total} requests ({m}%)")

    return report


def run_phases(plan: Plan, driver: LoadDriver, scraper: Scraper | None,
               progress: Callable[[str], None] = lambda msg: None,
               scrape_interval_s: float = SCRAPE_INTERVAL_S) -> list[DriverRecord]:
    """Scrape ``before`` (text and OpenMetrics), send each phase, scrape ``during`` the load
    phase and ``after``; returns every DriverRecord in sending order."""
    if scraper is not None:
        before = scraper.scrape("before", openmetrics=False)
        if before.status in NO_ENDPOINT:
            # The SUT answered: it has no metrics endpoint there. That is a finding about the
            # SUT (the failed scrape stays in the evidence for the checks), not a harness
            # error; nothing more is scraped.
            log.warning("%s answered %s: the SUT serves no /metrics there; not scraping it "
                        "(KT-002 and SC-001 will say so)", scraper.url, before.error)
            scraper = None
        elif before.error:
            raise ObsconformError(f"cannot scrape {scraper.url}: {before.error}; check --metrics-url")
        else:
            scraper.scrape("before", openmetrics=True)
    records: list[DriverRecord] = []
    for phase in plan.phases:
        n = len(phase.requests)
        progress(f"{phase.name} phase: {phase.title}")
        loop = ScrapeLoop(scraper, scrape_interval_s).start() if scraper and phase.name == "load" else None
        try:
            records += driver.run(phase.requests, phase.concurrency,
                                  _percent(progress, phase.name) if n >= PROGRESS_MIN_REQUESTS else None)
        finally:
            if loop is not None:
                loop.stop()
                if loop.failures:
                    log.warning("%d of %d scrapes during the load failed", loop.failures, loop.count)
    if scraper is not None:
        if not scraper.wait_stable():
            log.warning("request counters on %s still changed after 5 s; scraping anyway", scraper.url)
        scraper.scrape("after", openmetrics=False)
        scraper.scrape("after", openmetrics=True)
    return records
