"""/metrics scraper: negotiated Prometheus text or OpenMetrics, raw bodies stored with phase labels."""

from __future__ import annotations

import http.client
import logging
import threading
import time

from agent._http import client_target, decode_content, user_agent
from agent.evidence import AGENT_USER_AGENT, EvidenceWriter, Scrape
from agent.exposition import labels_key, parse_exposition

log = logging.getLogger(__name__)

# What Prometheus itself sends (scrape_protocols without protobuf): OpenMetrics 1.0.0
# preferred, text 0.0.4 accepted, so a server that cannot do OpenMetrics still answers.
ACCEPT_OPENMETRICS = (
    "application/openmetrics-text;version=1.0.0;q=0.9,"
    "application/openmetrics-text;version=0.0.1;q=0.8,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
ACCEPT_PROMETHEUS = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# A metrics URL answering these has no endpoint (a finding, not a harness error): the run
# records the scrape and does not scrape it again.
NO_ENDPOINT = (404, 410)


# A series counts requests when one of its labels is named like an HTTP dimension; runtime
# counters (process CPU, GC) change on their own and would never let a scrape settle.
_HTTP_LABEL_PARTS = ("method", "status", "code", "route", "handler", "path", "endpoint", "target")


def _request_counts(body: bytes, metrics_path: str) -> dict | None:
    """Request-counting samples of a text exposition, minus the scrape's own series."""
    expo = parse_exposition(body.decode("utf-8", "replace"), "text/plain; version=0.0.4")
    if expo.error:
        return None
    return {
        (s.name, labels_key(s.labels)): s.value
        for fam in expo.families if fam.type in ("counter", "histogram", "summary")
        for s in fam.samples
        if (fam.type == "counter" or s.name.endswith("_count")) and not s.name.endswith("_created")
        and any(part in name.lower() for name in s.labels for part in _HTTP_LABEL_PARTS)
        and metrics_path not in s.labels.values()
    }


class Scraper:
    """Scrapes one /metrics URL; every scrape (failed ones too) is recorded, nothing raises."""

    def __init__(
        self,
        url: str,
        writer: EvidenceWriter | None,
        timeout_s: float = 5.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        parts = client_target(url, timeout_s)
        self.url = url
        self.writer = writer
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.scrapes: list[Scrape] = []
        self.last_body: bytes | None = None
        self._parts = parts
        self._lock = threading.Lock()
        self._seq = 0

    def scrape(self, phase: str, openmetrics: bool = False) -> Scrape:
        """Fetch once and record it (body under scrapes/ when there is a writer)."""
        record, body = self.fetch(phase, openmetrics)
        if self.writer is not None:
            record = self.writer.scrape(record, body)
        else:
            with self._lock:
                record.seq, self._seq = self._seq, self._seq + 1
        with self._lock:
            self.scrapes.append(record)
            self.last_body = body
        return record

    def wait_stable(self, quiet_s: float = 0.5, timeout_s: float = 5.0) -> bool:
        """Re-scrape until request counters have not changed for ``quiet_s``; True if so.

        Services often count a request just after its response has left (the histogram is
        observed when the handler returns), so a scrape right after the last response can
        miss the last few. Only series that can count requests are compared, and none that
        names the metrics path itself, since some exporters count their own scrapes.
        """
        start = time.monotonic()
        deadline = start + timeout_s
        last, since = None, start
        while True:
            record, body = self.fetch("settle")
            now = time.monotonic()
            sig = None if record.error or body is None else _request_counts(body, self._parts.path or "/")
            if sig is None or sig != last:
                last, since = sig, now
            elif now - since >= quiet_s:
                return True
            if now >= deadline:
                return False
            time.sleep(min(quiet_s / 4, max(0.0, deadline - now)))

    def fetch(self, phase: str, openmetrics: bool = False) -> tuple[Scrape, bytes | None]:
        """One GET; returns the record (not yet stored) and the decoded body, if any arrived."""
        accept = ACCEPT_OPENMETRICS if openmetrics else ACCEPT_PROMETHEUS
        record = Scrape(seq=0, phase=phase, t_ns=time.time_ns(), url=self.url, accept=accept)
        p = self._parts
        conn_cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(p.hostname, p.port, timeout=self.timeout_s)
        target = (p.path or "/") + (f"?{p.query}" if p.query else "")
        deadline = time.monotonic() + self.timeout_s
        try:
            conn.request(
                "GET",
                target,
                headers={
                    "Accept": accept,
                    "Accept-Encoding": "gzip",
                    "User-Agent": user_agent(AGENT_USER_AGENT),
                    "Connection": "close",
                },
            )
            resp = conn.getresponse()
            record.status = resp.status
            record.content_type = resp.getheader("Content-Type", "")
            body = self._read(resp, deadline)
            encoding = (resp.getheader("Content-Encoding") or "").lower()
            if encoding in ("gzip", "x-gzip"):
                # BodyError (a ValueError): a bad, truncated or oversized gzip body fails the scrape.
                body = decode_content(body, encoding, self.max_body_bytes)
            if resp.status != 200:
                record.error = f"HTTP {resp.status} {resp.reason}".strip()
            return record, body
        except (OSError, http.client.HTTPException, ValueError) as e:
            record.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            return record, None
        finally:
            conn.close()

    def _read(self, resp: http.client.HTTPResponse, deadline: float) -> bytes:
        parts: list[bytes] = []
        total = 0
        while chunk := resp.read(65536):
            total += len(chunk)
            if total > self.max_body_bytes:
                raise ValueError(f"body exceeds {self.max_body_bytes} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"body not read within {self.timeout_s}s")
            parts.append(chunk)
        return b"".join(parts)


class ScrapeLoop:
    """Scrapes every ``interval_s`` on a thread (first scrape at once) until ``stop()``."""

    def __init__(self, scraper: Scraper, interval_s: float = 1.0, phase: str = "during", openmetrics: bool = False) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.scraper = scraper
        self.interval_s = interval_s
        self.phase = phase
        self.openmetrics = openmetrics
        self.count = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ScrapeLoop:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="scrape-loop", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.scraper.timeout_s + 1)

    def __enter__(self) -> ScrapeLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                record = self.scraper.scrape(self.phase, self.openmetrics)
                if record.error:
                    self.failures += 1
                    if self.failures == 1:
                        log.warning("scrape of %s failed: %s (further failures counted)", record.url, record.error)
            except Exception as e:  # noqa: BLE001 - e.g. a full disk must not kill the loop silently
                self.failures += 1
                if self.failures == 1:
                    log.warning("scrape of %s failed: %s (further failures counted)", self.scraper.url, e)
            self.count += 1
            self._stop.wait(self.interval_s)
