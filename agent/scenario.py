"""Scenarios: load a JSON/YAML scenario, validate it against the schema, resolve it to the
dict stored in ``RunMeta.scenario`` (routes, fan-out, metric, errcode catalogue, load mix).

The resolved form is the contract with the checks (docs/SCENARIO.md). It validates against
the same schema, so it can be sent inline to a remote agent and resolved again unchanged.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.errcodes import Catalogue, load_catalogue, parse_text
from agent.errors import InputError
from agent.schemas import load_schema, validator

SCHEMA_PATH = Path(__file__).with_name("scenario.schema.json")
PROFILES = ("errortrace-0.4",)
DEFAULT_PROFILE = PROFILES[0]
DEFAULT_BIZ_CODE_HEADER = "X-Biz-Code"
MAX_SCENARIO_BYTES = 16 * 1024 * 1024
# Where a resolved scenario came from when it was not a file.
DEFAULT_SOURCE, INLINE_SOURCE = "default", "inline"


def schema() -> dict:
    return load_schema(SCHEMA_PATH)


def _validator():
    return validator(SCHEMA_PATH)


def _field(path) -> str:
    """``routes./x``, ``load[2].method``: how messages name a field."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _deepest(error):
    """For oneOf/anyOf, the branch error that went furthest into the value (the real problem)."""
    while error.validator in ("oneOf", "anyOf") and error.context:
        deeper = max(error.context, key=lambda e: len(e.absolute_path))
        if len(deeper.absolute_path) <= len(error.absolute_path):
            break
        error = deeper
    return error


def _message(error) -> str:
    error = _deepest(error)
    where = list(error.absolute_path)
    if error.validator == "required":
        missing = next((n for n in error.validator_value if n not in (error.instance or {})), "?")
        return f"{_field(where + [missing])}: is required"
    if error.validator == "additionalProperties" and error.validator_value is False:
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{_field(where + extra[:1])}: unknown field; allowed: {allowed}"
    allowed = error.schema.get("allowed") if isinstance(error.schema, dict) else None
    if "propertyNames" in error.schema_path:  # the instance is the offending key itself
        return f"{_field(where + [error.instance])}: not allowed as a key; must be {allowed or 'a valid name'}"
    if error.validator in ("maxItems", "maxProperties", "maxLength"):  # (the message quotes the value)
        unit = "characters" if error.validator == "maxLength" else "entries"
        return f"{_field(where)}: at most {error.validator_value} {unit}"
    return f"{_field(where)}: must be {allowed}" if allowed else f"{_field(where)}: {error.message[:200]}"


def validate(data: Any, label: str) -> None:
    """Schema and cross-field checks; InputError ``"<label>: <field>: must be ..."`` on the first."""
    errors = sorted(_validator().iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise InputError(f"{label}: {_message(errors[0])}{more}")
    routes = data.get("routes")
    if routes is None:
        routes = {r["path"]: r["path"] for r in data["load"]}
    else:
        for i, req in enumerate(data["load"]):
            if req["path"] not in routes:
                raise InputError(f"{label}: load[{i}].path: {req['path']} is not a key of routes; "
                                 "add it there (concrete path → route template)")
    known = set(routes) | set(routes.values())
    for i, route in enumerate(fanout_routes(data)):
        if route not in known:
            raise InputError(f"{label}: fanout.routes[{i}]: {route} is neither a path nor a "
                             "template of routes (nor a load path)")
    if "catalogue" in data and "errcodes" in data:
        raise InputError(f"{label}: catalogue: give either a catalogue path or inline errcodes, not both")


def fanout_routes(data: dict) -> list[str]:
    fanout = data.get("fanout") or []
    return list(fanout.get("routes", [])) if isinstance(fanout, dict) else list(fanout)


def read_file(path: Path | str) -> dict:
    """Parse and validate a scenario file (not yet resolved)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_SCENARIO_BYTES:
            raise InputError(f"scenario {path} is {size} bytes, over the {MAX_SCENARIO_BYTES} limit")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise InputError(f"cannot read scenario {path}: {reason}; check --scenario") from e
    try:
        data = parse_text(text, p.suffix)
    except ValueError as e:
        raise InputError(f"{p.name}: {e}; fix the scenario file") from e
    validate(data, p.name)
    return data


def resolve(data: dict, *, source: str, base_dir: Path | None, catalog: Path | str | None = None,
            metrics_url: str | None = None, label: str = "scenario") -> dict:
    """The dict stored in RunMeta.scenario: defaults filled in, the catalogue loaded raw.

    ``catalog`` (from --catalog) overrides the scenario's catalogue; a relative catalogue
    path in the scenario resolves against ``base_dir`` (the scenario file's directory).
    """
    validate(data, label)
    out = copy.deepcopy(data)
    cat_path = out.pop("catalogue", None)
    if "routes" not in out:
        out["routes"] = {r["path"]: r["path"].split("?", 1)[0] for r in out["load"]}
    fanout = out.get("fanout")
    out["fanout"] = {"routes": list(fanout)} if isinstance(fanout, list) else (fanout or {"routes": []})
    out.setdefault("schema", 1)
    out.setdefault("profile", DEFAULT_PROFILE)
    out.setdefault("metric", None)
    if "metrics_path" not in out:  # "" = not scraped
        out["metrics_path"] = (urlsplit(metrics_url).path or "/") if metrics_url else ""
    out.setdefault("health_path", "")
    out.setdefault("uninstrumented", [p for p in (out["metrics_path"], out["health_path"]) if p])
    out.setdefault("biz_code_header", DEFAULT_BIZ_CODE_HEADER)
    out.setdefault("w3c_harness", None)  # null = the SUT has no W3C test-harness endpoint
    for req in out["load"]:
        req.setdefault("method", "GET")
        req.setdefault("headers", {})
        req.setdefault("body", None)
        req.setdefault("weight", 1)
    out["source"] = source

    if catalog is not None or cat_path is not None:
        if catalog is None and base_dir is None:
            # An inline scenario comes from a remote client: it may not make us read files.
            raise InputError(f"{label}: catalogue: an inline scenario cannot name a catalogue "
                             "file; give its entries inline as errcodes")
        path = Path(catalog) if catalog is not None else Path(cat_path)
        if catalog is None and not path.is_absolute():
            path = base_dir / path
        cat = load_catalogue(path)
    elif "errcodes" in out:
        cat = Catalogue(out["errcodes"], out.get("errcodes_source") or INLINE_SOURCE,
                        out.get("errcodes_error", ""))
    else:
        cat = Catalogue()
    out["errcodes"], out["errcodes_source"], out["errcodes_error"] = cat.entries, cat.source, cat.error
    return out


def from_file(path: Path | str, *, catalog: Path | str | None = None, metrics_url: str | None = None) -> dict:
    """Read, validate and resolve a scenario file (--scenario)."""
    p = Path(path).resolve()
    return resolve(read_file(path), source=str(p), base_dir=p.parent, catalog=catalog,
                   metrics_url=metrics_url, label=Path(path).name)


def from_paths(paths: list[str], *, catalog: Path | str | None = None, metrics_url: str | None = None) -> dict:
    """The default scenario when none is given: GETs on ``paths``, each its own route, no
    fan-out, no catalogue (unless --catalog) — fan-out and errcode checks then skip."""
    for p in paths:
        if not p.startswith("/") or any(c.isspace() for c in p):
            raise InputError(f"--path {p!r}: give a request target starting with / (no spaces)")
    data = {"load": [{"method": "GET", "path": p} for p in dict.fromkeys(paths)]}
    return resolve(data, source=DEFAULT_SOURCE, base_dir=None, catalog=catalog,
                   metrics_url=metrics_url, label="--path")


def from_inline(data: Any, *, catalog: Path | str | None = None, metrics_url: str | None = None) -> dict:
    """A scenario given as a dict (daemon run spec); catalogue files must be inlined."""
    if not isinstance(data, dict):
        raise InputError("scenario: must be a mapping of scenario fields (see docs/SCENARIO.md)")
    return resolve(data, source=data.get("source") or INLINE_SOURCE, base_dir=None, catalog=catalog,
                   metrics_url=metrics_url, label="scenario")


def route_of(scenario: dict, path: str) -> str | None:
    """The route template of a concrete request target, when the scenario names it."""
    return scenario.get("routes", {}).get(path)


def harness_path(scenario: dict) -> str | None:
    """The SUT's W3C trace-context test-harness endpoint, when the scenario names one."""
    harness = scenario.get("w3c_harness")
    return harness["path"] if isinstance(harness, dict) else None


def is_fanout(scenario: dict, path: str) -> bool:
    """Whether requests to ``path`` make the SUT call the downstream."""
    routes = set(fanout_routes(scenario))
    return path in routes or route_of(scenario, path) in routes
