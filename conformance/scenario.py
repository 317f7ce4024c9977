"""What the checks read from the run's resolved scenario (``RunMeta.scenario``, see
docs/SCENARIO.md): fan-out routes, route templates, the bizCode header, the errcode catalogue
and its wire codes, the driver's case names, and the --url path prefix of the targets sent."""

from __future__ import annotations

from typing import Any

from agent.errcodes import entry_wire_code
from agent.evidence import DriverRecord, RunMeta
# The scenario's path of a target as sent: the target without the base_path prefix.
from agent.urlpath import scenario_path as local_path
from conformance.httpsem import route_matches

FANOUT_SUFFIX = "@fanout"
DEFAULT_BIZ_CODE_HEADER = "X-Biz-Code"
BIZ_DEFAULT = "default"


def fanout_routes(scenario: dict[str, Any]) -> list[str]:
    """Paths or route templates whose requests make the SUT call the downstream."""
    fanout = scenario.get("fanout") or []
    routes = fanout.get("routes", []) if isinstance(fanout, dict) else fanout
    return [str(r) for r in routes or []]


def base_path(meta: RunMeta) -> str:
    """The --url path the driver put before every scenario path ("" for none, and for runs
    recorded before it was kept): DriverRecord.path and kernel targets include it, the
    scenario's routes do not (agent.urlpath)."""
    value = (meta.target or {}).get("base_path")
    return value if isinstance(value, str) else ""


def route_templates(base: str, template: str | None) -> set[str]:
    """A scenario route template as a span or metric may carry it: the app's own, and with
    the prefix in front when the app is not mounted under it (both are right)."""
    if not template:
        return set()
    return {template, base + template} if base else {template}


def route_of(scenario: dict[str, Any], path: str) -> str | None:
    """The route template the scenario gives for a concrete request target."""
    routes = scenario.get("routes") or {}
    return routes.get(path) or routes.get(path.split("?", 1)[0])


def is_fanout(scenario: dict[str, Any], d: DriverRecord, base: str = "") -> bool:
    """Whether the request calls the downstream: its case says so, or its route fans out."""
    return d.case.endswith(FANOUT_SUFFIX) or fans_out(scenario, local_path(base, d.path))


def fans_out(scenario: dict[str, Any], target: str) -> bool:
    """Whether requests to ``target`` (path and query) make the SUT call the downstream."""
    routes = fanout_routes(scenario)
    if not routes:
        return False
    path = target.split("?", 1)[0]
    template = route_of(scenario, target)
    return any(r in (target, path, template) or route_matches(r, path) for r in routes)


def base_case(d: DriverRecord) -> str:
    """The case without the fan-out suffix: ``tc/invalid/version-ff@fanout`` → ``tc/invalid/version-ff``."""
    return d.case[: -len(FANOUT_SUFFIX)] if d.case.endswith(FANOUT_SUFFIX) else d.case


def biz_header(scenario: dict[str, Any]) -> str:
    """The bizCode header name, lower-cased (driver and witness headers are lower-case)."""
    return str(scenario.get("biz_code_header") or DEFAULT_BIZ_CODE_HEADER).lower()


def expected_biz_code(scenario: dict[str, Any], d: DriverRecord) -> str:
    """The bizCode this request carries: the header trimmed, ``default`` when missing or blank."""
    value = d.request_headers.get(biz_header(scenario))
    return (value or "").strip(" \t") or BIZ_DEFAULT


def errcodes(scenario: dict[str, Any]) -> list[Any]:
    entries = scenario.get("errcodes")
    return entries if isinstance(entries, list) else []


def catalogue_by_code(scenario: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Catalogue entries by wire code (the first entry wins when a code repeats: EC-005)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in errcodes(scenario):
        code = entry_wire_code(entry)
        if code is not None and code not in out:
            out[code] = entry
    return out
