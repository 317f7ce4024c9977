"""Run specs (POST /v1/runs): JSON Schema validation, the exec and path rules, → RunConfig."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path, PurePosixPath
from typing import Any

from agent._http import parse_listen
from agent.errors import InputError
from agent.schemas import load_schema, validator

SCHEMA_PATH = Path(__file__).with_name("run-spec.schema.json")
DEFAULT_OUT = "daemon"
# Run-spec field → RunConfig field, where the names differ.
_RENAMED = {"exec": "exec_cmd"}
# Fields the daemon handles itself and never passes on.
_DAEMON_ONLY = {"out", "junit", "timeout_s", "label"}


class SpecError(ValueError):
    """A run spec the daemon refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def schema() -> dict:
    return load_schema(SCHEMA_PATH)


def _validator():
    return validator(SCHEMA_PATH)


def _where(error) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(spec: Any, *, allow_exec: bool) -> dict:
    """Check a decoded run spec; returns it, or raises SpecError (400 invalid, 403 forbidden)."""
    errors = sorted(_validator().iter_errors(spec), key=lambda e: (len(e.absolute_path), e.message))
    if errors:
        first = errors[0]
        if first.validator == "oneOf" and isinstance(spec, dict):
            message = "give exactly one target: \"exec\", \"pid\", \"port\" or \"cgroup\""
        else:
            message = f"{_where(first)}: {first.message}"
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise SpecError(400, f"invalid run spec: {message}{more}; see GET /v1/schema/run-spec")
    if "exec" in spec and not allow_exec:
        raise SpecError(403, "exec run specs are refused: this daemon was started without --allow-exec; "
                             "start the SUT yourself and give \"pid\", or restart the daemon with --allow-exec")
    for field in ("out", "junit"):
        if field in spec:
            _check_relative(field, spec[field])
    for field in ("otlp_listen", "otlp_grpc_listen", "sink_listen"):
        if field in spec:
            _field_ok(field, parse_listen, spec[field], f"\"{field}\":")
    if "scenario" in spec:  # a malformed scenario is refused now, not after the queue
        from agent.scenario import from_inline

        _field_ok("scenario", from_inline, spec["scenario"], metrics_url=spec.get("metrics_url"))
    if "checks" in spec:
        import conformance

        _field_ok("checks", conformance.select_checks, conformance.load_catalogue(), spec["checks"])
    return spec


def _field_ok(field: str, check, *args: Any, **kwargs: Any) -> None:
    """Run a validator of one spec field; its InputError becomes a 400 naming the field."""
    try:
        check(*args, **kwargs)
    except InputError as e:
        message = str(e)
        if not message.startswith((f"\"{field}\"", f"{field}:")):
            message = f"\"{field}\": {message}"
        raise SpecError(400, f"invalid run spec: {message}") from e


def _check_relative(field: str, value: str) -> None:
    """A spec path must stay inside the daemon's reports directory: relative, no '..'."""
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value or "\0" in value:
        raise SpecError(403, f"\"{field}\": {value!r} escapes the reports directory; "
                             "give a relative path without '..'")


def confined(base: Path, relative: str, field: str) -> Path:
    """``base/relative`` resolved, refused if it (or a symlink on the way) leaves ``base``."""
    _check_relative(field, relative)
    base = Path(base).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise SpecError(403, f"\"{field}\": {relative!r} escapes the reports directory (through a symlink)")
    return target


def run_out_dir(reports_dir: Path, spec: dict, run_id: str) -> Path:
    """The directory a run writes into: ``reports_dir/<out>/<run id>``."""
    return confined(reports_dir, str(PurePosixPath(spec.get("out", DEFAULT_OUT)) / run_id), "out")


def run_config(spec: dict, out_dir: Path):
    """The RunConfig for a validated spec, writing under ``out_dir`` (the run's own directory)."""
    from agent.runner import RunConfig

    known = {f.name for f in dataclasses.fields(RunConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in spec.items():
        if key in _DAEMON_ONLY:
            continue
        name = _RENAMED.get(key, key)
        if name in known:
            kwargs[name] = value
    kwargs["out_dir"] = Path(out_dir)
    if "junit" in spec:
        kwargs["junit"] = confined(out_dir, spec["junit"], "junit")
    return RunConfig(**kwargs)
