"""`report html`: one self-contained HTML page — verdict, check table, inline SVG charts of the evidence."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conformance.join import JoinedRequest

log = logging.getLogger(__name__)

# Scatter points beyond this are sampled evenly: the page stays small and fast on big runs.
MAX_SCATTER_POINTS = 4000
HIST_BINS = 30
LOSS_BINS = 24
W, H = 560, 300  # chart size in px
PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 16, 44
STATUS_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#9a6700", "skip": "#6e7781"}
VERDICT_COLOURS = {"compliant": "#1a7f37", "non_compliant": "#cf222e", "inconclusive": "#9a6700"}


@dataclass
class Series:
    """Per-request figures for the charts, from the run's evidence."""

    kernel_ms: list[float] = field(default_factory=list)  # answered requests with a span
    span_ms: list[float] = field(default_factory=list)
    drift_us: list[float] = field(default_factory=list)
    t_s: list[float] = field(default_factory=list)  # every request: seconds since the first
    fate: list[str] = field(default_factory=list)  # ... and its KEPT | MISSING | NOT_JUDGED
    note: str = ""


KEPT, MISSING, NOT_JUDGED = "kept", "missing", "not_judged"


def span_fate(r: JoinedRequest) -> str:
    """A request as KT-001 judges it: unanswered requests, and unsampled ones (trace-flags
    00) without a span, are no loss; the chart must not paint them as one."""
    if not r.answered:
        return NOT_JUDGED
    if r.spans:
        return KEPT
    tp = r.traceparent
    return NOT_JUDGED if tp is not None and not tp.sampled else MISSING


def load_series(evidence_dir: Path | None) -> Series:
    """Join the evidence the way the checks do; an empty Series with a note when it cannot."""
    if evidence_dir is None or not (Path(evidence_dir) / "meta.json").is_file():
        return Series(note="per-request charts need the run's evidence directory, which is not available here")
    try:
        from agent.evidence import load_evidence
        from conformance.join import join

        joined = join(load_evidence(Path(evidence_dir)))
    except Exception as e:  # a damaged evidence dir must still give the verdict and table
        log.warning("cannot load evidence from %s: %s", evidence_dir, e)
        return Series(note=f"per-request charts unavailable: cannot read the evidence ({type(e).__name__}: {e})")
    s = Series()
    if not joined.requests:
        s.note = "the kernel saw no request under test (degraded run without eBPF, or nothing was sent)"
        return s
    t0 = joined.requests[0].kernel.t_req_first
    for r in joined.requests:
        k = r.kernel
        s.t_s.append((k.t_req_first - t0) / 1e9)
        s.fate.append(span_fate(r))
        if r.spans and k.duration_ns is not None:
            span = r.spans[0]
            s.kernel_ms.append(k.duration_ns / 1e6)
            s.span_ms.append(span.duration_ns / 1e6)
            s.drift_us.append((k.duration_ns - span.duration_ns) / 1e3)
    return s


def find_evidence(report: dict, report_path: Path | None = None) -> Path | None:
    """The run's evidence directory: the report's own, else next to a downloaded copy of it
    (``obsconform run --agent`` lays out ``OUT/runs/<run dir>`` like a local run)."""
    recorded = (report.get("run") or {}).get("evidence_dir") or ""
    candidates = [Path(recorded)] if recorded else []
    if report_path is not None:
        here = Path(report_path).resolve().parent
        candidates.append(here)
        if recorded:
            candidates.append(here / "runs" / Path(recorded).name)
    return next((c for c in candidates if (c / "meta.json").is_file()), None)


# -- small SVG toolkit ------------------------------------------------------------------

def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = [round(first, 10)]
    while ticks[-1] < hi - step * 1e-9:  # the last tick covers hi
        ticks.append(round(first + len(ticks) * step, 10))
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"


class Plot:
    """Linear axes on a W×H canvas; maps data to pixels and draws the frame."""

    def __init__(self, xs: tuple[float, float], ys: tuple[float, float], xlabel: str, ylabel: str) -> None:
        self.xt, self.yt = nice_ticks(*xs), nice_ticks(*ys)
        self.x0, self.x1 = self.xt[0], self.xt[-1] if self.xt[-1] > self.xt[0] else self.xt[0] + 1
        self.y0, self.y1 = self.yt[0], self.yt[-1] if self.yt[-1] > self.yt[0] else self.yt[0] + 1
        self.xlabel, self.ylabel = xlabel, ylabel

    def px(self, x: float) -> float:
        return PAD_L + (x - self.x0) / (self.x1 - self.x0) * (W - PAD_L - PAD_R)

    def py(self, y: float) -> float:
        return H - PAD_B - (y - self.y0) / (self.y1 - self.y0) * (H - PAD_T - PAD_B)

    def frame(self) -> list[str]:
        out = []
        for t in self.yt:
            y = self.py(t)
            out.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" class="grid"/>'
                       f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        for t in self.xt:
            x = self.px(t)
            out.append(f'<line x1="{x:.1f}" y1="{H - PAD_B}" x2="{x:.1f}" y2="{H - PAD_B + 4}" class="axis"/>'
                       f'<text x="{x:.1f}" y="{H - PAD_B + 16}" text-anchor="middle">{_fmt(t)}</text>')
        out.append(f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" class="axis"/>'
                   f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" class="axis"/>'
                   f'<text x="{(PAD_L + W - PAD_R) / 2}" y="{H - 6}" text-anchor="middle">{escape(self.xlabel)}</text>'
                   f'<text transform="translate(14 {(PAD_T + H - PAD_B) / 2}) rotate(-90)" '
                   f'text-anchor="middle">{escape(self.ylabel)}</text>')
        return out


def _svg(chart_id: str, title: str, body: list[str]) -> str:
    return (f'<svg id="{chart_id}" class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>')


def _empty(chart_id: str, title: str, why: str) -> str:
    return _svg(chart_id, title, [f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="empty">'
                                  f'{escape(why)}</text>'])


def scatter_chart(s: Series) -> str:
    title = "Kernel vs span duration per request"
    if not s.kernel_ms:
        return _empty("chart-scatter", title, "no request with both a kernel view and a span")
    step = max(1, math.ceil(len(s.kernel_ms) / MAX_SCATTER_POINTS))
    xs, ys = s.kernel_ms[::step], s.span_ms[::step]
    hi = max(max(xs), max(ys))
    p = Plot((0.0, hi), (0.0, hi), "kernel duration (ms)", "span duration (ms)")
    body = p.frame()
    # The diagonal is a telemetry that tells the truth; points below it hide time from the span.
    body.append(f'<line x1="{p.px(0):.1f}" y1="{p.py(0):.1f}" x2="{p.px(p.x1):.1f}" y2="{p.py(p.x1):.1f}" '
                f'class="diag"/>')
    body += [f'<circle cx="{p.px(x):.1f}" cy="{p.py(y):.1f}" r="2.2" class="pt"><title>kernel {x:.3f} ms, '
             f'span {y:.3f} ms</title></circle>' for x, y in zip(xs, ys)]
    return _svg("chart-scatter", title, body)


def histogram_chart(s: Series) -> str:
    title = "Latency drift distribution (kernel − span)"
    if not s.drift_us:
        return _empty("chart-drift", title, "no drift samples")
    vals = sorted(s.drift_us)
    lo, hi = vals[int(0.005 * (len(vals) - 1))], vals[int(0.995 * (len(vals) - 1))]
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    width = (hi - lo) / HIST_BINS
    counts = [0] * HIST_BINS
    for v in vals:  # values outside the 0.5–99.5 % range land in the edge bins
        counts[min(HIST_BINS - 1, max(0, int((v - lo) / width)))] += 1
    p = Plot((lo, hi), (0, max(counts)), "drift (µs)", "requests")
    body = p.frame()
    for i, c in enumerate(counts):
        x0, x1 = p.px(lo + i * width), p.px(lo + (i + 1) * width)
        y = p.py(c)
        body.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(0.5, x1 - x0 - 1):.1f}" '
                    f'height="{p.py(0) - y:.1f}" class="bar"><title>{lo + i * width:.0f} to '
                    f'{lo + (i + 1) * width:.0f} µs: {c}</title></rect>')
    return _svg("chart-drift", title, body)


def loss_chart(s: Series) -> str:
    """Requests per time bin, stacked: with a server span, missing one (KT-001's loss), and
    not judged (unanswered, or unsampled without a span). Only MISSING is red."""
    title = "Span loss over time"
    if not s.t_s:
        return _empty("chart-loss", title, "no kernel-observed requests")
    span = max(s.t_s) or 1.0
    width = span / LOSS_BINS
    bins = [{KEPT: 0, MISSING: 0, NOT_JUDGED: 0} for _ in range(LOSS_BINS)]
    for t, fate in zip(s.t_s, s.fate):
        bins[min(LOSS_BINS - 1, int(t / width)) if width else 0][fate] += 1
    p = Plot((0.0, span), (0, max(sum(b.values()) for b in bins)),
             "seconds since the first request", "requests")
    body = p.frame()
    bar_w = max(0.5, p.px(width) - p.px(0) - 1)
    for i, b in enumerate(bins):
        x, total = p.px(i * width), sum(b.values())
        judged = b[KEPT] + b[MISSING]
        pct = 100.0 * b[MISSING] / judged if judged else 0.0
        tip = (f"{i * width:.2f}–{(i + 1) * width:.2f} s: {total} requests, {b[MISSING]} without a "
               f"span ({pct:.1f} % of {judged} judged), {b[NOT_JUDGED]} not judged")
        rects, base = [], 0
        for fate, css in ((KEPT, "bar"), (MISSING, "lost"), (NOT_JUDGED, "unjudged")):
            if b[fate]:  # no zero-height rects: a red sliver of nothing is still a red mark
                top = p.py(base + b[fate])
                rects.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar_w:.1f}" '
                             f'height="{p.py(base) - top:.1f}" class="{css}"/>')
                base += b[fate]
        body.append(f'<g><title>{tip}</title>{"".join(rects)}</g>')
    return _svg("chart-loss", title, body)


def loss_legend(s: Series) -> str:
    """What the loss chart's colours mean, with the run's totals."""
    n = {f: s.fate.count(f) for f in (KEPT, MISSING, NOT_JUDGED)}
    items = [("bar", f"with a server span ({n[KEPT]})"),
             ("lost", f"missing a server span, the loss KT-001 counts ({n[MISSING]} of "
                      f"{n[KEPT] + n[MISSING]})"),
             ("unjudged", f"not judged: unanswered, or unsampled (trace-flags 00) without a "
                          f"span ({n[NOT_JUDGED]})")]
    return ('<p class="legend" id="loss-legend">' + " ".join(
        f'<span class="li"><span class="sw {css}"></span>{escape(text)}</span>' for css, text in items)
        + "</p>")


# -- the page ---------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#1f2328;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.verdict{display:inline-block;padding:6px 14px;border-radius:6px;color:#fff;font-weight:600;font-size:18px}
.muted{color:#59636e}.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #d1d9e0;
vertical-align:top}th{cursor:pointer;background:#f6f8fa}.st{font-weight:600}pre{margin:4px 0;white-space:pre-wrap;
font-size:12px;max-height:220px;overflow:auto;background:#f6f8fa;padding:6px}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{border:1px solid #d1d9e0;border-radius:6px;background:#fff}
.chart text{font-size:11px;fill:#59636e}.chart .empty{font-size:13px}.grid{stroke:#eaeef2}.axis{stroke:#8c959f}
.diag{stroke:#8c959f;stroke-dasharray:4 3}.pt{fill:#0969da;fill-opacity:.55}.bar{fill:#54aeff}.lost{fill:#cf222e}.unjudged{fill:#afb8c1}
.legend{font-size:12px;color:#59636e;max-width:560px;margin:4px 0}.li{white-space:nowrap;display:inline-block}.sw{display:inline-block;width:10px;height:10px;margin:0 4px 0 8px}.sw.bar{background:#54aeff}.sw.lost{background:#cf222e}.sw.unjudged{background:#afb8c1}
figure{margin:0}figcaption{font-weight:600;margin:4px 0}button{margin-right:6px}#js-errors{color:#cf222e}
"""

_JS = """
window.addEventListener('error',function(e){document.getElementById('js-errors').textContent+=
 'script error: '+e.message+'\\n';});
(function(){var rows=[].slice.call(document.querySelectorAll('#checks tbody tr'));
 function show(f){rows.forEach(function(r){r.style.display=(f==='all'||r.dataset.status===f)?'':'none';});}
 document.querySelectorAll('button[data-filter]').forEach(function(b){
  b.addEventListener('click',function(){show(b.dataset.filter);});});
 document.querySelectorAll('#checks th').forEach(function(th,i){th.addEventListener('click',function(){
  var body=document.querySelector('#checks tbody');rows.sort(function(a,b){
   return a.cells[i].textContent.localeCompare(b.cells[i].textContent);});
  rows.forEach(function(r){body.appendChild(r);});});});
 document.body.dataset.ready='1';})();
"""


def _dump(value: object) -> str:
    return escape(json.dumps(value, indent=1, default=str, sort_keys=True)[:4000])


def _check_rows(checks: list[dict]) -> str:
    rows = []
    for c in checks:
        status = str(c.get("status", ""))
        colour = STATUS_COLOURS.get(status, "#1f2328")
        detail = ""
        if status in ("fail", "inconclusive") or c.get("observed") is not None:
            detail = (f'<details><summary>observed / expected</summary><pre>observed: {_dump(c.get("observed"))}'
                      f'\nexpected: {_dump(c.get("expected"))}</pre>'
                      f'<pre>evidence: {_dump(c.get("evidence"))}</pre></details>')
        rows.append(f'<tr data-status="{escape(status)}"><td>{escape(str(c.get("id", "")))}</td>'
                    f'<td>{escape(str(c.get("level", "")))}</td><td>{escape(str(c.get("category", "")))}</td>'
                    f'<td class="st" style="color:{colour}">{escape(status)}</td>'
                    f'<td>{escape(str(c.get("title", "")))}<div class="muted">{escape(str(c.get("message", "")))}'
                    f'</div>{detail}</td></tr>')
    return "\n".join(rows)


def _loss_rows(loss: dict) -> list[tuple[str, object]]:
    """The report's measurements.loss as readable rows: span loss (KT-001), metric count
    (KT-002); a shape this page does not know is shown as ``key value`` pairs, never JSON."""
    rows: list[tuple[str, object]] = []
    for kind, v in loss.items():
        if not v:
            continue
        if kind == "spans" and isinstance(v, dict) and "missing" in v:
            rows.append(("span loss", f"{v.get('missing')} of {v.get('kernel_requests', '?')} requests "
                                      f"without a server span ({_pct(v.get('pct'))} %), "
                                      f"{v.get('duplicates', 0)} duplicated"))
        elif kind == "metrics" and isinstance(v, dict) and "metric" in v:
            rows.append(("metric count", f"{_num(v.get('metric_count'))} counted by {v.get('metric')}, "
                                         f"{_num(v.get('kernel_count'))} seen by the kernel; "
                                         f"{_num(v.get('mismatched_series'))} series differ"))
        elif isinstance(v, dict):
            rows.append((f"{kind} loss", ", ".join(f"{k} {_num(x)}" for k, x in v.items())))
        else:
            rows.append((f"{kind} loss", _num(v)))
    return rows


def _pct(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else "–"


def _num(v: object) -> str:
    return "–" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def _kv(pairs: list[tuple[str, object]]) -> str:
    return "".join(f"<div class=muted>{escape(k)}</div><div>{escape(str(v))}</div>" for k, v in pairs
                   if v not in (None, "", {}))


def render_html(report: dict, evidence_dir: Path | None = None) -> str:
    """The whole page as one string; ``evidence_dir`` defaults to the report's own."""
    if evidence_dir is None:
        evidence_dir = (report.get("run") or {}).get("evidence_dir") or None
    series = load_series(Path(evidence_dir) if evidence_dir else None)
    summary = report.get("summary") or {}
    verdict = str(summary.get("verdict", "unknown"))
    target, run, tool = report.get("target") or {}, report.get("run") or {}, report.get("tool") or {}
    meas = report.get("measurements") or {}
    drift, kernel, loss = meas.get("latency_drift_us") or {}, meas.get("kernel") or {}, meas.get("loss") or {}
    counts = summary.get("counts") or {}
    checks = report.get("checks") or []
    note = f'<p class="muted" id="charts-note">{escape(series.note)}</p>' if series.note else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>obsconform report — {escape(verdict)}</title><style>{_CSS}</style></head>
<body>
<h1>Observability conformance report</h1>
<p class="muted">{escape(str(tool.get("name", "obsconform")))} {escape(str(tool.get("version", "")))} ·
report {escape(str(report.get("report_id", "")))} · generated {escape(str(report.get("generated_at", "")))}</p>
<p><span class="verdict" id="verdict" style="background:{VERDICT_COLOURS.get(verdict, '#6e7781')}">{escape(verdict)}</span>
<span id="verdict-reason">{escape(str(summary.get("verdict_reason", "")))}</span></p>
<p class="muted" id="counts">{escape(", ".join(f"{n} {s}" for s, n in (counts.get("by_status") or {}).items()))}</p>
<div class="kv">{_kv([("target", target.get("url")), ("found by", ", ".join(f"{k}={v}" for k, v in target.items()
                      if k in ("exec", "pid", "cgroup", "port"))), ("run", f"{run.get('started_at', '')} → {run.get('finished_at', '')}"),
                     ("requests sent", run.get("requests_sent")), ("kernel requests", kernel.get("requests")),
                     ("agent drops", kernel.get("agent_drops")),
                     *_loss_rows(loss),
                     ("drift p50/p99/max µs", "/".join(_num(drift.get(k)) for k in ("p50", "p99", "max"))
                      if any(drift.get(k) is not None for k in ("p50", "p99", "max")) else None),
                     ("evidence", run.get("evidence_dir"))])}</div>
<h2>Charts</h2>{note}
<div class="charts">
<figure><figcaption>Kernel vs span duration per request</figcaption>{scatter_chart(series)}</figure>
<figure><figcaption>Latency drift (kernel − span)</figcaption>{histogram_chart(series)}</figure>
<figure><figcaption>Span loss over time (requests per time bin)</figcaption>{loss_chart(series)}{loss_legend(series) if series.t_s else ""}</figure>
</div>
<h2>Checks</h2>
<p><button data-filter="all">all</button><button data-filter="fail">failing</button>
<button data-filter="inconclusive">inconclusive</button><button data-filter="pass">passing</button></p>
<table id="checks"><thead><tr><th>id</th><th>level</th><th>category</th><th>status</th><th>check</th></tr></thead>
<tbody>
{_check_rows(checks)}
</tbody></table>
<p class="muted">A conformance check against the open specifications of CNCF projects (OpenTelemetry,
OpenMetrics/Prometheus) and W3C Trace Context — not an official CNCF certification.</p>
<pre id="js-errors"></pre>
<script>{_JS}</script>
</body></html>
"""


def write_html(report: dict, path: Path, evidence_dir: Path | None = None) -> Path:
    """Render and write atomically; returns ``path``."""
    from agent.evidence import write_text_atomic

    write_text_atomic(Path(path), render_html(report, evidence_dir))
    return Path(path)
