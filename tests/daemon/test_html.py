"""`report html`: a self-contained page that headless Chromium renders with verdict, table and charts."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

import conformance
from agent.evidence import EvidenceWriter, KernelRequest, RunMeta, Scrape, Span, load_evidence
from conformance.html import LOSS_BINS, MAX_SCATTER_POINTS, nice_ticks, render_html
from conformance.report import validate_report
from tests.daemon.conftest import ROOT

CHROMIUM = shutil.which("chromium")
N_REQUESTS = 300
LOST_EVERY = 10  # every 10th request has no server span: 30 lost
T0 = 1_800_000_000_000_000_000


def make_run_dir(run_dir, n=N_REQUESTS, lost_every=LOST_EVERY, seed=7, lost=None, unsampled=(),
                 unanswered=(), scrapes=False):
    """A run directory with kernel requests and spans: known durations, drift and losses.

    ``lost`` (indices) overrides ``lost_every``; ``unsampled`` requests carry trace-flags 00
    and get no span (a parent-based sampler's right answer); ``unanswered`` ones get no
    response and no span; ``scrapes`` adds before/after /metrics scrapes of a counter."""
    rng = random.Random(seed)
    lost = set(range(0, n, lost_every)) if lost is None else set(lost)
    w = EvidenceWriter(run_dir)
    w.meta(RunMeta(run_id="html-test", started_at="2027-01-15T08:00:00Z", finished_at="2027-01-15T08:00:07Z",
                   host={"hostname": "h"}, target={"url": "http://127.0.0.1:8080", "pid": 42},
                   requests_sent=n, concurrency=4, ebpf=True, capture_bytes=1024,
                   kernel_stats={"ring_drops": 0, "truncated_captures": 0, "map_full": 0}, clock={"uncertainty_ns": 2000}))
    kernel, spans = [], []
    for i in range(n):
        trace_id, parent = f"{i + 1:032x}", f"{i + 1:016x}"
        start = T0 + i * 20_000_000
        dur = rng.randint(1_000_000, 12_000_000)
        flags, answered = "00" if i in unsampled else "01", i not in unanswered
        kernel.append(KernelRequest(
            id=f"k{i}", conn=f"42:7:{i}", seq=0, direction="server", tgid=42, tid=42, fd=7, method="GET",
            target=f"/items/{i}", version="1.1", headers={"traceparent": [f"00-{trace_id}-{parent}-{flags}"]},
            headers_complete=True, t_req_first=start, status=200 if answered else None,
            t_resp_first=start + dur - 50_000 if answered else None, t_resp_last=start + dur if answered else None))
        if i not in lost and i not in unsampled and answered:
            drift = rng.randint(100_000, 600_000)
            spans.append(Span(trace_id=trace_id, span_id=f"{i + 1:015x}f", parent_span_id=parent,
                              name="GET /items/{id}", kind="SERVER", start_ns=start + drift // 2,
                              end_ns=start + dur - drift // 2,
                              attributes={"http.request.method": "GET", "http.response.status_code": 200,
                                          "url.path": f"/items/{i}", "http.route": "/items/{id}"}))
    w.kernel(kernel)
    w.spans(spans)
    if scrapes:
        counted = sum(k.status is not None for k in kernel)
        for seq, (phase, t, count) in enumerate([("before", T0 - 5_000_000, 0),
                                                 ("after", T0 + n * 20_000_000, counted)]):
            registry = CollectorRegistry()
            Counter("http_requests", "requests", ("method", "handler", "status"),
                    registry=registry).labels("GET", "/items/{id}", "2xx").inc(count)
            w.scrape(Scrape(seq=seq, phase=phase, t_ns=t, url="http://127.0.0.1:8080/metrics", accept="text/plain",
                            content_type=CONTENT_TYPE_LATEST, status=200), generate_latest(registry))
    w.close()
    return run_dir


@pytest.fixture
def run_dir(tmp_path):
    return make_run_dir(tmp_path / "run")


def real_report(run_dir) -> dict:
    evidence = load_evidence(run_dir)
    return conformance.build_report(evidence, conformance.evaluate(evidence), tool_version="test")


def test_page_is_self_contained(run_dir):
    page = render_html(real_report(run_dir), run_dir)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page), "no external resource"
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page, "the CSP forbids any fetch, so a stray reference cannot load"


def test_charts_carry_every_joined_request(run_dir):
    page = render_html(real_report(run_dir), run_dir)
    scatter = re.search(r'<svg id="chart-scatter".*?</svg>', page, re.S)[0]
    assert scatter.count("<circle") == N_REQUESTS - N_REQUESTS // LOST_EVERY
    drift = re.search(r'<svg id="chart-drift".*?</svg>', page, re.S)[0]
    counts = [int(c) for c in re.findall(r"µs: (\d+)</title>", drift)]
    assert sum(counts) == N_REQUESTS - N_REQUESTS // LOST_EVERY
    loss = re.search(r'<svg id="chart-loss".*?</svg>', page, re.S)[0]
    lost = [int(c) for c in re.findall(r"(\d+) without a span", loss)]
    assert sum(lost) == N_REQUESTS // LOST_EVERY


def _loss_bins(page: str) -> list[tuple[float, int, str]]:
    """(bin start s, requests without a span, the bin's svg) per bin of the loss chart."""
    loss = re.search(r'<svg id="chart-loss".*?</svg>', page, re.S)[0]
    return [(float(m[1]), int(m[2]), m[0]) for m in
            re.finditer(r"<g><title>([\d.]+)–[\d.]+ s: \d+ requests, (\d+) without a span.*?</g>", loss)]


def _kt001(report: dict) -> dict:
    return next(c for c in report["checks"] if c["id"] == "KT-001")["observed"]


def test_a_run_without_loss_paints_no_loss_bars(tmp_path):
    """Unsampled (trace-flags 00) and unanswered requests have no span and are no loss: the
    reference service's TC phase sends three unsampled ones, which were painted red."""
    run_dir = make_run_dir(tmp_path / "run", n=120, lost=(), unsampled={3, 4, 60}, unanswered={90})
    report = real_report(run_dir)
    kt1 = next(c for c in report["checks"] if c["id"] == "KT-001")
    assert (kt1["status"], kt1["observed"]["missing"]) == ("pass", 0)
    page = render_html(report, run_dir)
    bins = _loss_bins(page)
    assert len(bins) == LOSS_BINS and sum(n for _, n, _ in bins) == 0
    assert 'class="lost"' not in page.split('id="chart-loss"')[1].split("</svg>")[0], "no red at all"
    assert page.count('class="unjudged"') == 3, "unsampled and unanswered are drawn apart, in grey"
    legend = re.search(r'<p class="legend" id="loss-legend">.*?</p>', page)[0]
    assert "the loss KT-001 counts (0 of 116)" in legend and "not judged" in legend and "(4)" in legend


def test_loss_bars_sit_where_the_loss_is_and_add_up_to_kt001(tmp_path):
    n = 200
    late = {i for i in range(n // 2, n) if i % 4 == 0}  # loss only in the second half
    run_dir = make_run_dir(tmp_path / "run", n=n, lost=late, unsampled={1})
    report = real_report(run_dir)
    bins = _loss_bins(render_html(report, run_dir))
    assert sum(k for _, k, _ in bins) == _kt001(report)["missing"] == len(late)
    half = (n // 2) * 20_000_000 / 1e9
    red = [(t, k) for t, k, svg in bins if 'class="lost"' in svg]
    assert red and all(k > 0 for _, k in red) and len(red) == sum(1 for _, k, _ in bins if k)
    assert all(t >= half - (n * 0.02 / LOSS_BINS) for t, _ in red), red


def test_the_loss_rows_read_as_text_not_json(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", n=60, lost={5}, scrapes=True)
    report = real_report(run_dir)
    assert validate_report(report) == []
    assert report["measurements"]["loss"]["metrics"], "the scrapes give KT-002 a metric"
    kv = re.search(r'<div class="kv">(.*?)</div>\n<h2>', render_html(report, run_dir), re.S)[1]
    assert "{" not in kv and "&quot;" not in kv, kv
    assert "<div class=muted>span loss</div><div>1 of 60 requests without a server span (1.67 %), " \
           "0 duplicated</div>" in kv
    assert "<div class=muted>metric count</div><div>60 counted by http_requests_total, 60 seen by the " \
           "kernel; 0 series differ</div>" in kv


def test_big_runs_are_sampled_in_the_scatter(tmp_path):
    run_dir = make_run_dir(tmp_path / "big", n=MAX_SCATTER_POINTS * 2 + 10, lost_every=10**9)
    page = render_html({"summary": {"verdict": "compliant"}, "checks": []}, run_dir)
    n = re.search(r'<svg id="chart-scatter".*?</svg>', page, re.S)[0].count("<circle")
    assert MAX_SCATTER_POINTS // 2 <= n <= MAX_SCATTER_POINTS


@pytest.mark.parametrize("evidence", [None, "missing-dir", "garbage"], ids=["none", "missing", "unreadable"])
def test_without_evidence_the_page_still_has_verdict_and_table(run_dir, tmp_path, evidence):
    report = real_report(run_dir)
    report["run"]["evidence_dir"] = None
    if evidence == "missing-dir":
        evidence = tmp_path / "nope"
    elif evidence == "garbage":
        evidence = tmp_path / "garbage"
        evidence.mkdir()
        (evidence / "meta.json").write_text("{broken")
    page = render_html(report, evidence)
    assert f'id="verdict"' in page and report["summary"]["verdict"] in page
    assert page.count('<tr data-status=') == len(report["checks"])
    assert 'id="charts-note"' in page
    assert "<circle" not in page


@pytest.mark.parametrize("lo, hi, expected", [(0, 10, [0, 2, 4, 6, 8, 10]), (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
                                              (-130, 470, [-200, 0, 200, 400, 600]), (5, 5, [5, 5.2, 5.4, 5.6, 5.8, 6])],
                         ids=["0-10", "0-1", "negative", "flat"])
def test_nice_ticks_are_round_and_cover_the_range(lo, hi, expected):
    ticks = nice_ticks(lo, hi)
    assert ticks == pytest.approx(expected)
    assert ticks[0] <= lo and ticks[-1] >= hi


# Never skipped in CI, where `make test` installs the report group.
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="needs Debian chromium: scripts/setup-host.sh report")
def test_chromium_renders_verdict_and_charts_without_console_errors(run_dir, tmp_path):
    report = real_report(run_dir)
    out = tmp_path / "report.json"
    out.write_text(__import__("json").dumps(report))
    # Through the real CLI: report html FILE --evidence DIR.
    html = tmp_path / "report.html"
    r = subprocess.run([sys.executable, "-m", "agent.cli", "report", "html", str(out), "-o", str(html),
                        "--evidence", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
             "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                         timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert re.search(rf'id="verdict"[^>]*>{report["summary"]["verdict"]}<', page)
    assert 'data-ready="1"' in page, "the page's script ran to the end"
    assert re.search(r'<pre id="js-errors"></pre>', page), "the in-page error hook caught nothing"
    console = [l for l in dom.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert not console, console
    for chart in ("chart-scatter", "chart-drift", "chart-loss"):
        assert f'id="{chart}"' in page
    assert page.count("<circle") == N_REQUESTS - N_REQUESTS // LOST_EVERY
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,1400", f"--screenshot={shot}", html.as_uri()],
                   capture_output=True, timeout=90)
    assert shot.stat().st_size > 20_000, "a page with three charts is not a blank screenshot"
