"""The check catalogue: load and validate catalogue.yaml, render it as a Markdown table.

``python -m conformance.catalogue --markdown`` prints the table;
``--markdown-into README.md`` rewrites the block between the catalogue markers.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.errors import InputError

CATALOGUE_PATH = Path(__file__).with_name("catalogue.yaml")
LEVELS = ("MUST", "SHOULD", "MAY")
CATEGORIES = ("kernel-truth", "trace-context", "bizcode", "errcode", "alignment", "exposition")
MARKER_START = "<!-- catalogue:start -->"
MARKER_END = "<!-- catalogue:end -->"
_ID = re.compile(r"^[A-Z]{2}-\d{3}$")
_REQUIRED = ("id", "title", "level", "category", "needs_kernel", "implemented", "sends",
             "expects", "spec_refs")
_OPTIONAL = ("thresholds",)


@dataclass(frozen=True)
class CheckSpec:
    """One catalogue entry."""

    id: str
    title: str
    level: str
    category: str
    needs_kernel: bool
    implemented: bool
    sends: str
    expects: str
    spec_refs: tuple[dict[str, str], ...]
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return self.id.split("-", 1)[0]


@dataclass(frozen=True)
class Catalogue:
    """The whole catalogue, checks in file order."""

    profile_name: str
    profile_version: str
    checks: tuple[CheckSpec, ...]

    def get(self, check_id: str) -> CheckSpec:
        for spec in self.checks:
            if spec.id == check_id:
                return spec
        raise KeyError(check_id)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.checks]

    def default_thresholds(self) -> dict[str, dict[str, float]]:
        return {c.id: dict(c.thresholds) for c in self.checks if c.thresholds}


def validate_catalogue_data(data: Any) -> list[str]:
    """Return every problem found in a parsed catalogue document (empty when valid)."""
    if not isinstance(data, dict):
        return ["catalogue: top level must be a mapping"]
    errors: list[str] = []
    profile = data.get("profile")
    if not isinstance(profile, dict) or not profile.get("name") or not profile.get("version"):
        errors.append("catalogue: profile needs name and version")
    checks = data.get("checks")
    if not isinstance(checks, list) or not checks:
        return errors + ["catalogue: checks must be a non-empty list"]
    seen: set[str] = set()
    for n, entry in enumerate(checks):
        where = f"checks[{n}]"
        if not isinstance(entry, dict):
            errors.append(f"{where}: must be a mapping")
            continue
        cid = entry.get("id")
        if isinstance(cid, str):
            where = cid
        errors.extend(f"{where}: missing field {k!r}" for k in _REQUIRED if k not in entry)
        unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
        errors.extend(f"{where}: unknown field {k!r}" for k in unknown)
        if not isinstance(cid, str) or not _ID.match(cid):
            errors.append(f"{where}: id must look like KT-001, got {cid!r}")
        elif cid in seen:
            errors.append(f"{where}: duplicate id")
        else:
            seen.add(cid)
        if "level" in entry and entry["level"] not in LEVELS:
            errors.append(f"{where}: level {entry['level']!r} is not one of {', '.join(LEVELS)}")
        if "category" in entry and entry["category"] not in CATEGORIES:
            errors.append(f"{where}: category {entry['category']!r} is not one of "
                          f"{', '.join(CATEGORIES)}")
        for flag in ("needs_kernel", "implemented"):
            if flag in entry and not isinstance(entry[flag], bool):
                errors.append(f"{where}: {flag} must be true or false")
        for text in ("title", "sends", "expects"):
            if text in entry and (not isinstance(entry[text], str) or not entry[text].strip()):
                errors.append(f"{where}: {text} must be non-empty text")
        errors.extend(_validate_refs(where, entry.get("spec_refs")))
        errors.extend(_validate_thresholds(where, entry.get("thresholds", {})))
    return errors


def _validate_refs(where: str, refs: Any) -> list[str]:
    if refs is None:
        return []  # reported as a missing field
    if not isinstance(refs, list) or not refs:
        return [f"{where}: spec_refs must be a non-empty list"]
    errors = []
    for ref in refs:
        if not isinstance(ref, dict) or not isinstance(ref.get("title"), str):
            errors.append(f"{where}: each spec_ref needs a title")
        elif set(ref) - {"title", "url"}:
            errors.append(f"{where}: spec_ref {ref['title']!r} has unknown keys")
        elif "url" in ref and not str(ref["url"]).startswith("https://"):
            errors.append(f"{where}: spec_ref {ref['title']!r} url must be https")
    return errors


def _validate_thresholds(where: str, thresholds: Any) -> list[str]:
    if not isinstance(thresholds, dict):
        return [f"{where}: thresholds must be a mapping of name to number"]
    return [f"{where}: threshold {k!r} must be a number" for k, v in thresholds.items()
            if isinstance(v, bool) or not isinstance(v, (int, float))]


def parse_catalogue(data: Any, source: str = "catalogue") -> Catalogue:
    """Build a Catalogue from a parsed document, raising InputError listing every problem."""
    errors = validate_catalogue_data(data)
    if errors:
        raise InputError(f"{source} is invalid: " + "; ".join(errors))
    checks = tuple(
        CheckSpec(
            id=e["id"], title=e["title"].strip(), level=e["level"], category=e["category"],
            needs_kernel=e["needs_kernel"], implemented=e["implemented"],
            sends=" ".join(e["sends"].split()), expects=" ".join(e["expects"].split()),
            spec_refs=tuple(dict(r) for r in e["spec_refs"]),
            thresholds={k: v for k, v in (e.get("thresholds") or {}).items()},
        )
        for e in data["checks"]
    )
    return Catalogue(str(data["profile"]["name"]), str(data["profile"]["version"]), checks)


_CACHE: dict[Path, Catalogue] = {}


def load_catalogue(path: Path | str | None = None) -> Catalogue:
    """Load and validate a catalogue file (default: the packaged catalogue.yaml)."""
    path = Path(path) if path else CATALOGUE_PATH
    if path in _CACHE:
        return _CACHE[path]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"cannot read check catalogue {path}: {e}") from e
    catalogue = parse_catalogue(data, str(path))
    _CACHE[path] = catalogue
    return catalogue


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ref_md(ref: dict[str, str]) -> str:
    return f"[{_cell(ref['title'])}]({ref['url']})" if ref.get("url") else _cell(ref["title"])


def render_markdown(catalogue: Catalogue | None = None) -> str:
    """The catalogue as a Markdown table (one row per check), ending with a newline."""
    catalogue = catalogue or load_catalogue()
    rows = ["| ID | Level | Category | Check | Thresholds | Implemented | References |",
            "|---|---|---|---|---|---|---|"]
    for c in catalogue.checks:
        thresholds = ", ".join(f"`{k}={v}`" for k, v in c.thresholds.items()) or "—"
        kernel = " (needs kernel truth)" if c.needs_kernel else ""
        rows.append(
            f"| {c.id} | {c.level} | {c.category}{kernel} | **{_cell(c.title)}**<br>"
            f"Sends: {_cell(c.sends)}<br>Expects: {_cell(c.expects)} | {thresholds} | "
            f"{'yes' if c.implemented else 'not yet'} | "
            f"{'<br>'.join(_ref_md(r) for r in c.spec_refs)} |"
        )
    return "\n".join(rows) + "\n"


def marked_block(text: str) -> str | None:
    """The text between the catalogue markers, or None when the markers are absent."""
    start, end = text.find(MARKER_START), text.find(MARKER_END)
    if start < 0 or end < start:
        return None
    return text[start + len(MARKER_START):end]


def replace_block(text: str, table: str) -> str:
    """Return ``text`` with the block between the markers replaced by ``table``."""
    start, end = text.find(MARKER_START), text.find(MARKER_END)
    if start < 0 or end < start:
        raise InputError(f"no {MARKER_START} ... {MARKER_END} block found: add both markers "
                         "where the catalogue table belongs")
    return text[:start + len(MARKER_START)] + "\n" + table + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.catalogue",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue", type=Path, default=None, help="catalogue file")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the Markdown table")
    group.add_argument("--markdown-into", type=Path, metavar="FILE",
                       help="rewrite the table between the catalogue markers of FILE")
    args = parser.parse_args(argv)
    try:
        table = render_markdown(load_catalogue(args.catalogue))
        if args.markdown:
            sys.stdout.write(table)
            return 0
        target: Path = args.markdown_into
        text = target.read_text(encoding="utf-8")
        new = replace_block(text, table)
        if new != text:
            target.write_text(new, encoding="utf-8")
        return 0
    except (InputError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
