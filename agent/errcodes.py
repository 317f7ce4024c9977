"""Errcode catalogue intake: load the owner's JSON/YAML file raw, derive wire codes.

Loading only: judging the catalogue (unique codes, valid statuses and gRPC names) is check
EC-005's job, so entries are kept exactly as parsed and a file that does not parse is
recorded as an error message rather than stopping the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import InputError

MAX_REASON = 0xFFF  # three upper-case hex digits
MAX_CATALOGUE_BYTES = 16 * 1024 * 1024


@dataclass
class Catalogue:
    """What was loaded: the raw entries, where from, and why parsing failed (if it did)."""

    entries: list[Any] = field(default_factory=list)
    source: str = ""  # absolute file path, "inline", or "" (no catalogue)
    error: str = ""


def wire_code(domain: str, reason: int) -> str:
    """``<domain>_<reason as 3 upper-case hex digits>``: ("PAYMENT", 0x105) → "PAYMENT_105"."""
    if not isinstance(domain, str) or not domain:
        raise ValueError(f"domain must be a non-empty string, got {domain!r}")
    if isinstance(reason, bool) or not isinstance(reason, int) or not 0 <= reason <= MAX_REASON:
        raise ValueError(f"reason must be an integer 0..0x{MAX_REASON:X}, got {reason!r}")
    return f"{domain}_{reason:03X}"


def entry_wire_code(entry: Any) -> str | None:
    """The wire code of a raw catalogue entry, or None when its domain/reason cannot give one."""
    if not isinstance(entry, dict):
        return None
    try:
        return wire_code(entry.get("domain"), entry.get("reason"))  # type: ignore[arg-type]
    except ValueError:
        return None


def load_catalogue(path: Path | str) -> Catalogue:
    """Read a catalogue file: a list of entries, or a mapping holding one under ``errcodes``.

    A missing or unreadable file raises InputError (the user named it); content that does
    not parse, or has neither shape, is returned as ``Catalogue(error=...)`` for EC-005.
    """
    p = Path(path).resolve()
    try:
        size = p.stat().st_size
        if size > MAX_CATALOGUE_BYTES:
            raise InputError(f"errcode catalogue {path} is {size} bytes, over the "
                             f"{MAX_CATALOGUE_BYTES} limit; give the catalogue file itself")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return Catalogue(source=str(p), error=f"not UTF-8 text ({e.reason} at byte {e.start})")
    except OSError as e:
        raise InputError(f"cannot read errcode catalogue {path}: {e.strerror or e}; "
                         "check --catalog or the scenario's catalogue path") from e
    try:
        data = parse_text(text, p.suffix)
    except ValueError as e:
        return Catalogue(source=str(p), error=str(e))
    entries, error = _entries(data)
    return Catalogue(entries=entries, source=str(p), error=error)


def parse_text(text: str, suffix: str = "") -> Any:
    """JSON for .json, YAML for .yaml/.yml, else JSON then YAML; ValueError with a short reason."""
    suffix = suffix.lower()
    if suffix == ".json":
        return _json(text)
    if suffix in (".yaml", ".yml"):
        return _yaml(text)
    try:
        return _json(text)
    except ValueError:
        return _yaml(text)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from e


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        # str(e) quotes the offending lines; keep only the problem and where it is.
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ValueError(f"not valid YAML ({where}{problem})") from e


def _entries(data: Any) -> tuple[list[Any], str]:
    if isinstance(data, list):
        return data, ""
    if isinstance(data, dict) and isinstance(data.get("errcodes"), list):
        return data["errcodes"], ""
    if isinstance(data, dict) and "errcodes" in data:
        return [], f"errcodes must be a list of entries, got {type(data['errcodes']).__name__}"
    return [], ("expected a list of errcode entries or a mapping with an 'errcodes' list, "
                f"got {type(data).__name__}")
