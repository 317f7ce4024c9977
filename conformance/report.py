"""CNCF-compliance-report.json: build it from check results, decide the verdict, validate it
against conformance/CNCF-compliance-report.schema.json and write it atomically."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import jsonschema

from agent.errors import ObsconformError
from agent.evidence import Evidence, json_safe, write_json_atomic
from conformance.catalogue import LEVELS, Catalogue, load_catalogue
from conformance.engine import resolve_thresholds
from conformance.join import is_agent_request
from conformance.model import CheckResult, Status
from conformance.telemetry import exported

SCHEMA_VERSION = "1.0"
# Shipped inside the package so that a wheel install (e.g. a CI client) can validate reports.
SCHEMA_PATH = Path(__file__).resolve().with_name("CNCF-compliance-report.schema.json")
COMPLIANT, NON_COMPLIANT, INCONCLUSIVE = "compliant", "non_compliant", "inconclusive"
EXIT_CODES = {COMPLIANT: 0, NON_COMPLIANT: 2, INCONCLUSIVE: 3}
DISCLAIMER = (
    "obsconform checks conformance to the open specifications of CNCF projects "
    "(OpenTelemetry, OpenMetrics/Prometheus) and to W3C Trace Context. This report is not "
    "an official CNCF certification and is not endorsed by the CNCF or the W3C."
)
_STATUSES = [s.value for s in Status]


class ReportError(ObsconformError):
    """A report could not be validated or written."""


def exit_code(verdict: str) -> int:
    """CLI exit code for a verdict: 0 compliant, 2 non-compliant, 3 inconclusive."""
    try:
        return EXIT_CODES[verdict]
    except KeyError:
        raise ValueError(f"verdict must be one of {', '.join(EXIT_CODES)}, got {verdict!r}") \
            from None


def decide_verdict(checks: Iterable[dict[str, Any]], catalogue: Catalogue | None = None, *,
                   ebpf: bool = True) -> tuple[str, str, list[str]]:
    """(verdict, one-line reason, MUST ids of the catalogue absent from ``checks``).

    SPEC §6: compliant iff EVERY MUST of the catalogue passed; non_compliant iff a MUST
    failed; else inconclusive. A skipped MUST (not implemented, not applicable) and a MUST
    the user did not select are unverified, not passed: at best inconclusive. SPEC §3: a run
    without eBPF (degraded mode) can never be compliant.
    """
    catalogue = catalogue or load_catalogue()
    checks = list(checks)
    musts = [c for c in checks if c["level"] == "MUST"]
    present = {c["id"] for c in checks}
    absent = [c.id for c in catalogue.checks if c.level == "MUST" and c.id not in present]
    scope = f"; {len(absent)} MUST not selected ({_ids(absent)})" if absent else ""
    by_status: dict[str, list[str]] = {s: [] for s in _STATUSES}
    for c in musts:
        by_status[c["status"]].append(c["id"])
    if by_status["fail"]:
        return NON_COMPLIANT, f"MUST failed: {_ids(by_status['fail'])}{scope}", absent
    unsettled = []
    if by_status["inconclusive"]:
        unsettled.append(f"{len(by_status['inconclusive'])} MUST inconclusive "
                         f"({_ids(by_status['inconclusive'])})")
    if by_status["skip"]:
        unsettled.append(f"{len(by_status['skip'])} MUST skipped ({_ids(by_status['skip'])})")
    if absent:
        unsettled.append(f"{len(absent)} MUST not selected ({_ids(absent)})")
    if not ebpf:
        unsettled.append("degraded mode (no eBPF): kernel truth was not observed")
    if not musts:
        return INCONCLUSIVE, "; ".join(["no MUST check was evaluated", *unsettled]), absent
    if unsettled:
        return INCONCLUSIVE, "no MUST failed, but " + "; ".join(unsettled), absent
    return COMPLIANT, f"all {len(musts)} MUST checks passed", absent


def _ids(ids: list[str], limit: int = 4) -> str:
    return ", ".join(ids[:limit]) + (f" +{len(ids) - limit} more" if len(ids) > limit else "")


def _counts(checks: list[dict[str, Any]]) -> dict[str, Any]:
    by_status = {s: 0 for s in _STATUSES}
    by_level = {lvl: {s: 0 for s in _STATUSES} for lvl in LEVELS}
    for c in checks:
        by_status[c["status"]] += 1
        by_level[c["level"]][c["status"]] += 1
    return {"by_status": by_status, "by_level": by_level}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration_s(start: str | None, end: str | None) -> float | None:
    try:
        a = datetime.fromisoformat(start or "")
        b = datetime.fromisoformat(end or "")
        return max(0.0, round((b - a).total_seconds(), 3))
    except (TypeError, ValueError):
        return None


def _host(raw: dict[str, Any]) -> dict[str, Any]:
    host = dict(raw)
    for key in ("hostname", "kernel", "arch", "bcc_version"):
        value = host.get(key)
        host[key] = str(value) if value not in (None, "") else None
    host["btf"] = bool(host["btf"]) if host.get("btf") is not None else None
    return host


def _target(raw: dict[str, Any]) -> dict[str, Any]:
    target = dict(raw)
    for key in ("pid", "port"):
        value = target.get(key)
        if isinstance(value, str) and value.isdigit():
            target[key] = int(value)
    return target


def _observed(results: dict[str, dict[str, Any]], check_id: str) -> dict[str, Any] | None:
    c = results.get(check_id)
    if c is None or c["status"] == "skip" or not isinstance(c.get("observed"), dict):
        return None
    return c["observed"]


def _measurements(evidence: Evidence, by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    meta = evidence.meta
    ebpf = bool(meta.ebpf)
    server = [k for k in evidence.kernel if k.direction == "server"]
    agent = sum(1 for k in server if is_agent_request(k))
    stats = meta.kernel_stats or {}

    def stat(*names: str) -> int | None:
        values = [stats.get(n) for n in names]
        if not ebpf or not any(isinstance(v, (int, float)) for v in values):
            return None
        return sum(int(v) for v in values if isinstance(v, (int, float)))

    kt1 = _observed(by_id, "KT-001")
    spans = None
    if kt1 and "kernel_requests" in kt1 and (kt1["kernel_requests"] or kt1.get("unjoinable")):
        spans = {"kernel_requests": kt1["kernel_requests"], "missing": kt1["missing"],
                 "duplicates": kt1["duplicates"], "pct": kt1["loss_pct"],
                 "unjoinable": kt1.get("unjoinable", 0),
                 "joined_by": {k[len("joined_by_"):]: v for k, v in kt1.items()
                               if k.startswith("joined_by_")}}
    kt2 = _observed(by_id, "KT-002")
    metrics = None
    source = next((kt2[s] for s in ("prometheus", "otlp") if kt2 and isinstance(kt2.get(s), dict)
                   and kt2[s].get("metric")), None)
    if source:
        metrics = {k: source[k] for k in ("metric", "kernel_count", "metric_count",
                                          "mismatched_series")}
    kt3 = _observed(by_id, "KT-003")
    drift_src = (kt3 or {}).get("drift_us") or {}
    drift = {k: drift_src.get(k) for k in ("p50", "p90", "p99", "max", "mean")}
    drift["samples"] = int(drift_src.get("samples") or 0)
    return {
        "kernel": {
            "requests": len(server) - agent if ebpf else None,
            "outbound_requests": len(evidence.kernel) - len(server) if ebpf else None,
            "agent_requests": agent if ebpf else None,
            "agent_drops": stat("ring_drops", "map_full"),
            "truncated_captures": stat("truncated_captures"),
            **_kernel_detail(stats if ebpf else {}, stat),
        },
        "clock": _clock(meta.clock) if ebpf else None,
        "loss": {"spans": spans, "metrics": metrics},
        "latency_drift_us": drift,
        "telemetry": exported(evidence),
    }


_BLIND_COUNTS = ("tls", "http2", "other_protocol", "upgraded", "in_flight_at_attach", "orphan_responses",
                 "sendfile_calls")
_BLIND_SAMPLE_KINDS = ("tls", "http2", "other_protocol")


def _kernel_detail(stats: dict[str, Any], stat) -> dict[str, Any]:
    """Self-loss detail, blind spots and sizes from kernel_stats; None where not reported
    (degraded mode, or evidence written before the collector reported them)."""
    def count(value: Any) -> int:
        return max(0, int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

    per_cpu = stats.get("ring_drops_per_cpu")
    map_full = None
    if "map_full_connections" in stats:
        map_full = {"connections": count(stats.get("map_full_connections")),
                    "syscalls": count(stats.get("map_full_syscalls")),
                    "targets": count(stats.get("map_full_targets"))}
    raw = stats.get("blind_spots")
    blind = None
    if isinstance(raw, dict):  # older evidence held a plain list of descriptions here
        blind = {k: count(raw.get(k)) for k in _BLIND_COUNTS}
        blind["samples"] = [
            {"tgid": count(x.get("tgid")), "fd": int(x.get("fd") or 0), "role": x.get("role"),
             "kind": x.get("kind"), "first_bytes": str(x.get("first_bytes") or "")}
            for x in raw.get("samples") or []
            if isinstance(x, dict) and x.get("role") in ("server", "client") and x.get("kind") in _BLIND_SAMPLE_KINDS]
    sizes = stats.get("sizes")
    return {
        "loss": stat("loss"),
        "ring_drops_per_cpu": [count(v) for v in per_cpu] if isinstance(per_cpu, list) else None,
        "map_full": map_full,
        "blind_spots": blind,
        "sizes": {str(k): count(v) for k, v in sizes.items()} if isinstance(sizes, dict) else None,
    }


def _clock(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The clock conversion as measured at start and end; None when it was not measured."""
    def sample(x: Any) -> dict[str, int] | None:
        if not isinstance(x, dict) or not all(isinstance(x.get(k), int) for k in ("offset_ns", "uncertainty_ns")):
            return None
        return {"offset_ns": x["offset_ns"], "uncertainty_ns": max(0, x["uncertainty_ns"]),
                "mono_ns": max(0, int(x.get("mono_ns") or 0))}

    start = sample(raw.get("start"))
    if start is None:
        return None
    steps = raw.get("steps")
    drift = raw.get("drift_ns")
    return {
        "start": start,
        "end": sample(raw.get("end")),
        "uncertainty_ns": max(0, int(raw.get("uncertainty_ns") or 0)),
        "drift_ns": drift if isinstance(drift, int) else None,
        "samples": max(0, int(raw.get("samples") or 0)),
        "stepped": bool(raw.get("stepped")),
        "steps": len(steps) if isinstance(steps, list) else 0,
        "warning": str(raw.get("warning") or ""),
    }


def build_report(evidence: Evidence, results: list[CheckResult], *, tool_version: str,
                 started_at: str | None = None, finished_at: str | None = None,
                 thresholds: dict[str, Any] | None = None, generated_at: str | None = None,
                 report_id: str | None = None, catalogue: Catalogue | None = None
                 ) -> dict[str, Any]:
    """The report dict (SPEC §6 fields plus a disclaimer, strict JSON: non-finite numbers
    as None); validate with validate_report.

    ``thresholds`` are the run's overrides as given to ``evaluate``, so the report states
    the effective thresholds the checks used. Times default to the run's meta.
    """
    catalogue = catalogue or load_catalogue()
    meta = evidence.meta
    checks = [r.to_dict() for r in results]
    by_id = {c["id"]: c for c in checks}
    verdict, reason, absent = decide_verdict(checks, catalogue, ebpf=bool(meta.ebpf))
    started = started_at or meta.started_at or None
    finished = finished_at or meta.finished_at or None
    run: dict[str, Any] = {
        "run_id": meta.run_id,
        "started_at": started,
        "finished_at": finished,
        "duration_s": _duration_s(started, finished),
        "requests_sent": int(meta.requests_sent or 0),
        "evidence_dir": str(evidence.run_dir),
        "ebpf": bool(meta.ebpf),
        "degraded_reason": meta.degraded_reason or ("" if meta.ebpf else "eBPF was off"),
        "notes": [str(n) for n in meta.notes],
    }
    # json_safe: NaN/inf read from a scrape become null, so the report is strict JSON.
    return json_safe({
        "schema_version": SCHEMA_VERSION,
        "report_id": report_id or str(uuid.uuid4()),
        "generated_at": generated_at or _now(),
        "tool": {"name": "obsconform", "version": tool_version or "unknown"},
        "host": _host(meta.host),
        "target": _target(meta.target),
        "profile": {
            "name": catalogue.profile_name,
            "version": catalogue.profile_version,
            "thresholds": resolve_thresholds(catalogue, meta.profile.get("thresholds"),
                                             thresholds),
        },
        "run": run,
        "measurements": _measurements(evidence, by_id),
        "summary": {"verdict": verdict, "verdict_reason": reason, "counts": _counts(checks),
                    "not_evaluated": absent},
        "checks": checks,
        "disclaimer": DISCLAIMER,
    })


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    try:
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReportError(f"cannot read the report schema {SCHEMA_PATH}: {e}; reinstall "
                          "obsconform from its source tree") from e
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate_report(report: Any) -> list[str]:
    """Every schema violation of ``report`` as "path: message" (empty when valid)."""
    # Round-trip through JSON so what is validated is exactly what would be written.
    try:
        data = json.loads(json.dumps(report, default=str, allow_nan=False))
    except (TypeError, ValueError) as e:
        return [f"$: not JSON-serialisable ({e})"]
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    return [f"{e.json_path}: {e.message}" for e in errors]


def write_report(report: dict[str, Any], path: Path | str) -> Path:
    """Validate, then write atomically (temp file + rename); raise ReportError if invalid."""
    errors = validate_report(report)
    if errors:
        shown = "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")
        raise ReportError(f"report does not match its schema, not written: {shown} (an "
                          "obsconform bug; please report it with the run directory)")
    path = Path(path)
    try:
        write_json_atomic(path, report)
    except OSError as e:
        raise ReportError(f"cannot write report {path}: {e}; check the directory is "
                          "writable") from e
    return path
