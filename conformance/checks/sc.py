"""Exposition checks: SC-001 (/metrics parses in its negotiated format, counters never
decrease), SC-002 (promtool lint), SC-004 (http.server.request.duration in seconds with the
semconv bucket advice). SC-003 (server span semconv) is in sc_spans."""

from __future__ import annotations

import math
from typing import Any

from agent.exposition import Exposition, labels_key, parse_le
from agent.scrape import NO_ENDPOINT
from conformance.model import Finding
from conformance.promlint import BUILTIN, LintResult, builtin_lint, promtool_path, run_promtool
from conformance.registry import CheckContext, check
from conformance.scrapes import answered, is_openmetrics, last_good, parsed_scrape
from conformance.telemetry import metrics_absent

SAMPLES = 10
MEDIA = ("text/plain", "application/openmetrics-text")
# OTel HTTP semconv: explicit bucket boundaries advice of http.server.request.duration.
BUCKET_ADVICE = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
SEMCONV_OTLP = "http.server.request.duration"
SEMCONV_PROM = "http_server_request_duration"
# Before semconv 1.21 (and still the default of OTel Python instrumentations without
# OTEL_SEMCONV_STABILITY_OPT_IN=http): http.server.duration in milliseconds.
OLD_OTLP, OLD_PROM = "http.server.duration", "http_server_duration"


def _monotonic_samples(expo: Exposition) -> dict[tuple[str, Any], float]:
    """Samples that must never decrease: counters, histogram buckets and counts, and a
    histogram's sum when no bucket is negative (OpenMetrics: only then is it a counter)."""
    out: dict[tuple[str, Any], float] = {}
    for fam in expo.families:
        if fam.type not in ("counter", "histogram"):
            continue
        negative = fam.type == "histogram" and any(
            s.name.endswith("_bucket") and _le(s.labels.get("le")) < 0 for s in fam.samples)
        for s in fam.samples:
            if s.name.endswith("_created") or (s.name.endswith("_sum") and negative):
                continue
            labels = dict(s.labels)
            if "le" in labels:
                labels["le"] = repr(_le(labels["le"]))
            out[(s.name, labels_key(labels))] = s.value
    return out


def _le(value: Any) -> float:
    try:
        return parse_le(str(value))
    except ValueError:
        return math.nan


_SERIES_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")
START_TIME = "process_start_time_seconds"


def _series_of(name: str, labels: dict[str, Any]) -> tuple[str, Any]:
    """The series a monotonic sample belongs to, as its ``_created`` sample names it:
    (base name, labels without ``le``)."""
    base = next((name[: -len(x)] for x in _SERIES_SUFFIXES if name.endswith(x)), name)
    return base, labels_key({k: v for k, v in labels.items() if k != "le"})


def _created(expo: Exposition) -> dict[tuple[str, Any], float]:
    return {_series_of(s.name, dict(s.labels)): s.value for s in expo.samples
            if s.name.endswith("_created")}


def _start_time(expo: Exposition) -> float | None:
    return next((s.value for s in expo.samples if s.name == START_TIME), None)


def _reset(key: tuple[str, Any], old: tuple[dict, float | None], new: tuple[dict, float | None]
           ) -> bool:
    """Was the series of sample ``key`` legitimately reset between two scrapes? Only when its
    own ``_created`` changed or, when it has none in either scrape, when the whole process
    restarted (its start time changed). A new or changed series elsewhere excuses nothing."""
    series = _series_of(key[0], dict(key[1]))
    (created_old, start_old), (created_new, start_new) = old, new
    if series in created_old and series in created_new:
        return created_old[series] != created_new[series]
    return start_old is not None and start_new is not None and start_old != start_new


@check("SC-001")
def exposition_parses_counters_monotonic(ctx: CheckContext) -> Finding:
    ev = ctx.evidence
    expected = {"body": "parses as the format its Content-Type names",
                "counters": "never decrease from one scrape to the next"}
    if not ev.scrapes:
        return Finding.skipped("no /metrics scrape was taken (no metrics URL): nothing to parse")
    if all(s.status in NO_ENDPOINT for s in ev.scrapes):  # the SUT answered: no such endpoint
        s = ev.scrapes[0]
        return Finding.skipped(f"no /metrics endpoint: GET {s.url} answered {s.error or s.status} "
                               "(a wrong --metrics-url or metrics_path?): nothing to parse",
                               scrapes=len(ev.scrapes), status=s.status)
    problems, notes, parsed = [], [], []
    for s in sorted(ev.scrapes, key=lambda s: (s.t_ns, s.seq)):
        where = f"scrape {s.seq} ({s.phase})"
        if s.error or s.status != 200:
            problems.append(f"{where}: no body ({s.error or f'status {s.status}'})")
            continue
        media = s.content_type.split(";", 1)[0].strip().lower()
        if media not in MEDIA:
            problems.append(f"{where}: Content-Type {s.content_type!r} is neither Prometheus "
                            "text nor OpenMetrics")
            continue
        if "openmetrics" in s.accept and not is_openmetrics(s):
            notes.append(f"{where}: asked for OpenMetrics, answered text/plain (allowed fallback)")
        expo = parsed_scrape(ctx, s)
        if expo.error:
            problems.append(f"{where}: {s.content_type} body does not parse: {expo.error}")
            continue
        parsed.append((s, expo))
    decreases, resets = [], 0
    for (ps, pe), (cs, ce) in zip(parsed, parsed[1:]):
        before, after = _monotonic_samples(pe), _monotonic_samples(ce)
        origin = (_created(pe), _start_time(pe)), (_created(ce), _start_time(ce))
        for key, old in before.items():
            new = after.get(key)
            if new is None or new >= old:
                continue
            if _reset(key, *origin):
                resets += 1
                continue
            decreases.append({"sample": key[0], "labels": dict(key[1]), "from": old, "to": new,
                              "scrapes": f"{ps.seq} ({ps.phase}) -> {cs.seq} ({cs.phase})"})
    observed = {"scrapes": len(ev.scrapes), "parsed": len(parsed), "problems": len(problems),
                "decreases": len(decreases), "resets_with_new_created": resets,
                "formats": sorted({s.content_type.split(";")[0] for s, _ in parsed})}
    evidence = {"problems": problems[:SAMPLES], "decreases": decreases[:SAMPLES], "notes": notes}
    if problems or decreases:
        parts = list(problems[:1])
        if decreases:
            d = decreases[0]
            parts.append(f"{len(decreases)} counter sample(s) decreased, e.g. {d['sample']}"
                         f"{d['labels'] or ''} {d['from']:g} -> {d['to']:g} between scrapes "
                         f"{d['scrapes']}")
        if len(problems) > 1:
            parts.append(f"{len(problems) - 1} more scrape problem(s)")
        return Finding.failed("; ".join(parts), observed, expected, **evidence)
    if not parsed:
        return Finding.inconclusive("no scrape returned a body", observed, expected, **evidence)
    return Finding.passed(f"{len(parsed)} scrapes parse ({', '.join(observed['formats'])}); no "
                          "counter decreased", observed, expected, **evidence)


@check("SC-002")
def promtool_lint(ctx: CheckContext) -> Finding:
    ev = ctx.evidence
    text_scrape = last_good(ev, "after", "prometheus") or (
        [s for s in answered(ev) if not is_openmetrics(s)] or [None])[-1]
    scrape = text_scrape or last_good(ev, "after") or (answered(ev) or [None])[-1]
    expected = {"lint_problems": 0}
    if scrape is None:
        return Finding.skipped(f"{metrics_absent(ev) or 'no /metrics scrape returned a body'}: "
                               "nothing to lint")
    text = ev.scrape_text(scrape)
    binary = promtool_path()
    if binary and text_scrape is not None:
        result = run_promtool(text, binary)
        tool = f"promtool check metrics ({result.detail or binary})"
    else:
        why = ("promtool is not installed (Debian package prometheus)" if not binary else
               "promtool lints only the text format and every scrape was OpenMetrics")
        result = run_promtool_free(text, parsed_scrape(ctx, scrape), why)
        tool = f"built-in subset of promtool check metrics: {why}"
    observed = {"tool": tool, "scrape": {"seq": scrape.seq, "phase": scrape.phase,
                                         "content_type": scrape.content_type},
                "problems": len(result.problems)}
    evidence = {"tool": result.tool, "problems": result.problems[:SAMPLES * 3]}
    if result.error:
        return Finding.failed(f"{tool} cannot read the scrape: {result.error}", observed,
                              expected, **evidence)
    if result.problems:
        return Finding.failed(f"{len(result.problems)} lint problem(s), e.g. "
                              f"{result.problems[0]} ({tool})", observed, expected, **evidence)
    return Finding.passed(f"no lint problem ({tool}, scrape {scrape.seq})", observed, expected,
                          **evidence)


def run_promtool_free(text: str, expo: Exposition, why: str) -> LintResult:
    if expo.error:
        return LintResult(BUILTIN, error=expo.error, detail=why)
    return LintResult(BUILTIN, problems=builtin_lint(text, expo), detail=why)


def _same_bounds(bounds: list[float]) -> bool:
    finite = [b for b in bounds if not math.isinf(b)]
    return len(finite) == len(BUCKET_ADVICE) and all(
        math.isclose(a, b, rel_tol=1e-9) for a, b in zip(finite, BUCKET_ADVICE))


@check("SC-004")
def duration_histogram_semconv(ctx: CheckContext) -> Finding:
    ev = ctx.evidence
    expected = {"unit": "s (Prometheus name suffix _seconds)", "buckets": list(BUCKET_ADVICE)}
    problems, judged, old = [], [], set()
    for p in ev.metrics:
        if p.name == OLD_OTLP:
            old.add(f"OTLP {p.name} ({p.unit or 'no unit'})")
        if p.name != SEMCONV_OTLP:
            continue
        where = f"OTLP {p.name} {p.attributes.get('http.route', '')}".strip()
        judged.append(where)
        if p.unit != "s":
            problems.append(f"{where}: unit {p.unit!r}, not 's'")
        if p.kind == "histogram" and not _same_bounds(p.bucket_bounds):
            problems.append(f"{where}: bucket bounds {p.bucket_bounds} are not the advice")
    scrape = last_good(ev, "after") or (answered(ev) or [None])[-1]
    if scrape is not None:
        for fam in parsed_scrape(ctx, scrape).families:
            if fam.name.endswith("_created"):  # the text format's separate _created gauges
                continue
            if fam.name.startswith(OLD_PROM):
                old.add(fam.name)
                continue
            if not fam.name.startswith(SEMCONV_PROM):
                continue
            judged.append(fam.name)
            if fam.name != f"{SEMCONV_PROM}_seconds":
                problems.append(f"{fam.name}: the semconv duration histogram is in seconds "
                                f"({SEMCONV_PROM}_seconds)")
            if fam.type != "histogram":
                problems.append(f"{fam.name}: type {fam.type}, not histogram")
                continue
            per_series: dict[Any, list[float]] = {}
            for s in fam.samples:
                if s.name.endswith("_bucket"):
                    per_series.setdefault(labels_key(s.labels, ("le",)), []).append(
                        _le(s.labels.get("le")))
            bad = [b for b in per_series.values() if not _same_bounds(sorted(b))]
            if bad:
                problems.append(f"{fam.name}: {len(bad)} series use buckets "
                                f"{sorted(x for x in bad[0] if not math.isinf(x))}, not the advice")
    notes = []
    if old and judged:
        notes.append(f"pre-1.21 duration metric(s) {', '.join(sorted(old))} are emitted too "
                     "(dual emission during the semconv migration)")
    elif old:
        judged += sorted(old)
        problems += [f"{name} is the pre-1.21 duration metric: emit {SEMCONV_OTLP} in seconds "
                     "(OTel Python: OTEL_SEMCONV_STABILITY_OPT_IN=http)" for name in sorted(old)]
    problems = list(dict.fromkeys(problems))
    observed = {"judged": sorted(set(judged)), "problems": len(problems), "notes": notes}
    if not judged:
        return Finding.skipped(f"the SUT exposes no {SEMCONV_OTLP} (OTLP) or {SEMCONV_PROM}_* "
                               "(Prometheus) metric: nothing to check (KT-002 names the metric "
                               "it used)", observed=observed)
    if problems:
        return Finding.failed(f"{problems[0]}" + (f" (and {len(problems) - 1} more)"
                                                  if len(problems) > 1 else ""),
                              observed, expected, problems=problems[:SAMPLES])
    return Finding.passed(f"{', '.join(sorted(set(judged))[:3])}: seconds, advised buckets",
                          observed, expected)
