"""Alignment of metrics and traces: AL-001 (target labels = span resource), AL-002 (exemplars
point at exported traces), AL-004 (no trace or span id in a metric label). AL-003 (logs) is
in al_logs."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Iterator

from agent.exposition import Exposition
from conformance.model import Finding
from conformance.registry import CheckContext, check
from conformance.scrapes import answered, parsed_scrape
from conformance.view import span_index

SAMPLES = 10
# Span resource attribute → the Prometheus label names that carry it (OTel's target_info
# convention first, then the short names exporters and hand-written metrics use).
RESOURCE_LABELS = {
    "service.name": ("service_name", "service"),
    "service.namespace": ("service_namespace",),
    "service.instance.id": ("service_instance_id",),
    "deployment.environment.name": ("deployment_environment_name", "deployment_environment",
                                    "env", "environment"),
    "k8s.pod.name": ("k8s_pod_name", "pod", "pod_name"),
}
RESOURCE_ALIASES = {"deployment.environment.name": ("deployment.environment",)}
# Families that describe the process (one series each, like every *_info), not requests:
# exempt from AL-004's look-alike rule, which would otherwise catch a 32-hex
# service.instance.id or a build hash.
PROCESS_FAMILIES = ("target_info", "otel_scope_info", "python_info", "process_info")
ID_LABEL_NAMES = {"traceid", "spanid", "parentid", "parentspanid", "trace", "span"}
_TRACE_LIKE = re.compile(r"[0-9a-fA-F]{32}")
_SPAN_LIKE = re.compile(r"[0-9a-fA-F]{16}")


def _resource_values(spans: list[Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    # Each resource once: spans of one process share their resource (one dict when loaded).
    for resource in {id(s.resource): s.resource for s in spans}.values():
        for key in RESOURCE_LABELS:
            for name in (key, *RESOURCE_ALIASES.get(key, ())):
                if resource.get(name) not in (None, ""):
                    out[key].add(str(resource[name]))
                    break
    return out


def _last_expositions(ctx: CheckContext) -> list[tuple[Any, Exposition]]:
    """The last answered scrape of each format (what the service exposes after the load)."""
    last: dict[str, Any] = {}
    for s in answered(ctx.evidence):
        last[s.content_type.split(";", 1)[0].strip().lower()] = s
    return [(s, parsed_scrape(ctx, s)) for s in last.values()]


@check("AL-001")
def target_labels_match_resource(ctx: CheckContext) -> Finding:
    ev = ctx.evidence
    spans = [s for s in ev.spans if s.kind == "SERVER"] or ev.spans
    resource = _resource_values(spans)
    expected = {"labels": "each target label equals the span resource attribute it names"}
    compared, mismatches = [], []

    def compare(source: str, key: str, label: str, value: str) -> None:
        if key not in resource:
            return
        row = {"source": source, "label": label, "resource_attribute": key, "metric": value,
               "spans": sorted(resource[key])[:5]}
        compared.append(row)
        if value not in resource[key]:
            mismatches.append(row)

    for scrape, expo in _last_expositions(ctx):
        seen: set[tuple[str, str, str]] = set()
        for sample in expo.samples:
            for key, labels in RESOURCE_LABELS.items():
                for label in labels:
                    value = sample.labels.get(label)
                    if value not in (None, "") and (key, label, value) not in seen:
                        seen.add((key, label, value))
                        compare(f"/metrics scrape {scrape.seq}", key, label, value)
    otlp_seen: set[tuple[str, str]] = set()
    for p in ev.metrics:
        for key in RESOURCE_LABELS:
            value = p.resource.get(key)
            if value not in (None, "") and (key, str(value)) not in otlp_seen:
                otlp_seen.add((key, str(value)))
                compare("OTLP metrics resource", key, key, str(value))
    observed = {"span_resource": {k: sorted(v)[:5] for k, v in resource.items()},
                "compared": len(compared), "mismatched": len(mismatches)}
    evidence = {"mismatches": mismatches[:SAMPLES], "compared": compared[:SAMPLES]}
    if mismatches:
        m = mismatches[0]
        return Finding.failed(f"{len(mismatches)} target label(s) disagree with the span "
                              f"resource, e.g. {m['source']}: {m['label']}={m['metric']!r} but "
                              f"spans say {m['resource_attribute']}={m['spans']}", observed,
                              expected, **evidence)
    if not compared:
        return Finding.skipped("no target label (target_info, service/env/pod labels, OTLP "
                               "metric resource) names a resource attribute the spans carry: "
                               "nothing to compare", observed=observed)
    return Finding.passed(f"{len(compared)} target label value(s) agree with the span resource",
                          observed, expected, **evidence)


def _trace_key(labels: dict[str, str]) -> tuple[str | None, str | None]:
    trace = span = None
    for k, v in labels.items():
        norm = k.lower().replace("_", "").replace(".", "")
        if norm == "traceid":
            trace = v.lower()
        elif norm == "spanid":
            span = v.lower()
    return trace, span


def _exemplars(ctx: CheckContext) -> Iterator[tuple[str, str, str | None]]:
    """(where, trace_id, span_id) of every exemplar in the run's scrapes and OTLP points."""
    start = min((d.t_send_ns for d in ctx.evidence.driver), default=0)
    stale: set[str] = set()  # exposed before the driver's first request: not this run's
    for s in answered(ctx.evidence):
        for sample in parsed_scrape(ctx, s).samples:
            if sample.exemplar is None:
                continue
            trace, span = _trace_key(sample.exemplar.labels)
            ts = sample.exemplar.timestamp
            if trace is None:
                continue
            if s.phase == "before" or (ts is not None and ts * 1e9 < start):
                stale.add(trace)
            elif trace not in stale:
                yield f"{sample.name} (scrape {s.seq}, {s.phase})", trace, span
    for p in ctx.evidence.metrics:
        for ex in p.exemplars:
            trace = str(ex.get("trace_id") or "").lower()
            if trace and (not ex.get("time_ns") or ex["time_ns"] >= start):
                yield f"{p.name} (OTLP)", trace, str(ex.get("span_id") or "").lower() or None


@check("AL-002")
def exemplars_reference_exported_traces(ctx: CheckContext) -> Finding:
    by_trace = span_index(ctx).by_trace  # no set of every span: a few exemplars are looked up
    expected = {"exemplar": "trace_id (and span_id) of a span the SUT exported"}
    checked: set[tuple[str, str, str | None]] = set()
    missing = []
    for where, trace, span in _exemplars(ctx):
        if (trace, span, where.split(" (")[0]) in checked:
            continue
        checked.add((trace, span, where.split(" (")[0]))
        if trace not in by_trace:
            missing.append({"where": where, "trace_id": trace, "span_id": span,
                            "problem": "no exported span has this trace_id"})
        elif span and all(s.span_id != span for s in by_trace[trace]):
            missing.append({"where": where, "trace_id": trace, "span_id": span,
                            "problem": "the trace was exported but not this span_id"})
    observed = {"exemplars": len(checked), "unresolved": len(missing),
                "exported_traces": len(by_trace)}
    if not checked:
        return Finding.skipped("no exemplar with a trace_id was exposed during the run "
                               "(OpenMetrics scrapes and OTLP metrics): nothing to resolve",
                               observed=observed)
    if missing:
        m = missing[0]
        return Finding.failed(f"{len(missing)} of {len(checked)} exemplars point at spans that "
                              f"were never exported, e.g. {m['where']}: trace_id {m['trace_id']} "
                              f"({m['problem']})", observed, expected, unresolved=missing[:SAMPLES])
    return Finding.passed(f"{len(checked)} exemplars all reference exported spans", observed,
                          expected)


def _id_problem(family: str, name: str, value: str, run_ids: set[str]) -> str | None:
    norm = name.lower().replace("_", "").replace("-", "").replace(".", "")
    if norm in ID_LABEL_NAMES:
        return f"label name {name!r} names a trace/span id"
    if value.lower() in run_ids:
        return "value is a trace/span id of this run"
    per_process = family in PROCESS_FAMILIES or family.endswith("_info")
    if not per_process and (_TRACE_LIKE.fullmatch(value) or _SPAN_LIKE.fullmatch(value)):
        return f"value looks like a {'trace' if len(value) == 32 else 'span'} id"
    return None


def _run_ids_among(ev: Any, values: set[str]) -> set[str]:
    """The trace and span ids of this run (spans, traceparents sent) that are in ``values``:
    a few hundred label values are looked up, not millions of ids put in a set."""
    found = {i for s in ev.spans for i in (s.trace_id, s.span_id) if i in values}
    found |= {i for d in ev.driver for i in (d.trace_id, d.parent_id) if i in values}
    found.discard("")
    return found


@check("AL-004")
def no_id_in_metric_labels(ctx: CheckContext) -> Finding:
    ev = ctx.evidence
    scrapes = answered(ev)
    labelled = [(f"scrape {s.seq} ({s.phase})", fam.name, sample.labels)
                for s in scrapes for fam in parsed_scrape(ctx, s).families
                for sample in fam.samples]
    labelled += [("OTLP metrics", p.name, p.attributes) for p in ev.metrics]
    run_ids = _run_ids_among(ev, {str(v).lower() for _, _, labels in labelled
                                  for v in labels.values()})
    expected = {"labels": "no label name or value that is a trace or span id (exemplars are fine)"}
    offenders: dict[tuple[str, str], dict[str, Any]] = {}
    label_sets = 0

    def judge(where: str, family: str, labels: dict[str, Any]) -> None:
        for name, value in labels.items():
            why = _id_problem(family, name, str(value), run_ids)
            if why is None:
                continue
            row = offenders.setdefault((family, name), {"metric": family, "label": name,
                                                        "problem": why, "series": 0,
                                                        "examples": [], "where": where})
            row["series"] += 1
            if len(row["examples"]) < 3:
                row["examples"].append(str(value))

    for where, family, labels in labelled:
        label_sets += 1
        judge(where, family, labels)
    observed = {"label_sets": label_sets, "offending_labels": len(offenders)}
    if not scrapes and not ev.metrics:
        return Finding.skipped("no /metrics scrape and no OTLP metric: no label to check",
                               observed=observed)
    if offenders:
        rows = sorted(offenders.values(), key=lambda r: -r["series"])
        r = rows[0]
        return Finding.failed(f"{len(rows)} metric label(s) hold trace or span ids (unbounded "
                              f"cardinality), e.g. {r['metric']}{{{r['label']}=\"{r['examples'][0]}\"}}"
                              f" in {r['series']} series: {r['problem']}", observed, expected,
                              offenders=rows[:SAMPLES])
    return Finding.passed(f"{label_sets} label sets checked: no trace or span id", observed,
                          expected)
