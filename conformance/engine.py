"""Run the selected catalogue checks on one run's evidence and return their results.

Gates, in order: a check the catalogue marks unimplemented (or with no registered function)
is ``skip`` "not implemented in this version"; a check that needs kernel truth is
``inconclusive`` when the run had no eBPF or the agent lost or did not report its loss
counters (KT-007 alone still runs on loss, to name the counters: inconclusive too); a check that raises is
``inconclusive`` with the error, so one broken check never takes the report down. Only
bad input (unknown check ids, bad thresholds) raises, as InputError.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import conformance.checks  # noqa: F401  (registers every implemented check)
from agent.errors import InputError
from agent.evidence import Evidence, gc_paused
from conformance.catalogue import Catalogue, CheckSpec, load_catalogue
from conformance.gate import NO_EBPF, kernel_gate
from conformance.model import NOT_IMPLEMENTED, CheckResult, Finding, Status
from conformance.registry import REGISTRY, CheckContext

log = logging.getLogger(__name__)


def resolve_thresholds(catalogue: Catalogue, *layers: dict[str, Any] | None
                       ) -> dict[str, dict[str, float]]:
    """Catalogue defaults overlaid by each layer in turn.

    A layer maps check id → {name: number}, or "ID.name" → number (command-line form).
    Unknown ids, unknown names and non-numbers raise InputError naming what is allowed.
    """
    effective = catalogue.default_thresholds()
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict):
                items = [(key, name, v) for name, v in value.items()]
            elif isinstance(key, str) and "." in key:
                cid, name = key.split(".", 1)
                items = [(cid, name, value)]
            else:
                raise InputError(f"threshold {key!r}: give {{check id: {{name: number}}}} "
                                 "or 'ID.name' = number")
            for cid, name, v in items:
                cid = str(cid).upper()
                if cid not in effective:
                    known = ", ".join(sorted(effective)) or "none"
                    raise InputError(f"threshold for {cid}: that check has no thresholds "
                                     f"(checks with thresholds: {known})")
                if name not in effective[cid]:
                    raise InputError(f"{cid} has no threshold {name!r} (known: "
                                     f"{', '.join(effective[cid])})")
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise InputError(f"threshold {cid}.{name} must be a number, got {v!r}")
                effective[cid][name] = v
    return effective


def select_checks(catalogue: Catalogue, select: Iterable[str] | None) -> list[CheckSpec]:
    """Checks named by id ("KT-001") or prefix ("KT"), in catalogue order."""
    if not select:
        return list(catalogue.checks)
    wanted = [s.strip().upper() for s in select if s and s.strip()]
    chosen: list[CheckSpec] = []
    for token in wanted:
        matches = [c for c in catalogue.checks if c.id == token or c.prefix == token]
        if not matches:
            raise InputError(f"unknown check {token!r}: use an id such as KT-001 or a "
                             f"prefix such as KT (known: {', '.join(catalogue.ids)})")
        chosen.extend(m for m in matches if m not in chosen)
    order = {cid: n for n, cid in enumerate(catalogue.ids)}
    return sorted(chosen, key=lambda c: order[c.id])


def evaluate(evidence: Evidence, select: list[str] | None = None,
             thresholds: dict[str, Any] | None = None, *,
             catalogue: Catalogue | None = None) -> list[CheckResult]:
    """Run the selected checks (default: all) and return one result per check.

    Threshold precedence: ``thresholds`` > the run's ``meta.profile["thresholds"]`` >
    catalogue defaults.
    """
    catalogue = catalogue or load_catalogue()
    specs = select_checks(catalogue, select)
    effective = resolve_thresholds(catalogue, evidence.meta.profile.get("thresholds"),
                                   thresholds)
    gate = kernel_gate(evidence.meta)
    cache: dict[str, Any] = {}
    results = []
    # The join and the views build millions of small objects that hold no cycles.
    with gc_paused():
        for spec in specs:
            ctx = CheckContext(evidence, spec, effective.get(spec.id, {}), cache)
            results.append(_to_result(spec, _run_one(spec, ctx, gate)))
    return results


def _run_one(spec: CheckSpec, ctx: CheckContext, gate: tuple[str, str] | None) -> Finding:
    registered = REGISTRY.get(spec.id)
    if not spec.implemented or registered is None:
        return Finding.skipped(NOT_IMPLEMENTED)
    if spec.needs_kernel and gate is not None:
        kind, reason = gate
        if kind == NO_EBPF or not registered.runs_on_agent_loss:
            return Finding.inconclusive(reason, gate=kind)
    try:
        finding = registered.fn(ctx)
        if not isinstance(finding, Finding):
            raise TypeError(f"returned {type(finding).__name__}, not Finding")
        return finding
    except Exception as e:  # one broken check must not take the report down
        log.exception("check %s raised", spec.id)
        return Finding.inconclusive(
            f"check could not run: {type(e).__name__}: {e} (an obsconform bug; please "
            "report it with the run directory)", error=f"{type(e).__name__}: {e}")


def _to_result(spec: CheckSpec, f: Finding) -> CheckResult:
    return CheckResult(
        id=spec.id, title=spec.title, level=spec.level, category=spec.category,
        status=Status(f.status), message=f.message, observed=f.observed, expected=f.expected,
        evidence=dict(f.evidence), spec_refs=[dict(r) for r in spec.spec_refs],
    )
