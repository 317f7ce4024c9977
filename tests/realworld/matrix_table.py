"""The README's "Tested stacks" table, generated from the compatibility matrix's records:
each stack's installed versions, tracing, exporter, and per run what does not pass and why.

``python -m tests.realworld.matrix --markdown-into README.md`` rewrites the block between
the matrix markers (``make matrix-table``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tests.realworld.matrix import MatrixRun, Stack, all_stacks

MARKER_START = "<!-- matrix:start -->"
MARKER_END = "<!-- matrix:end -->"
ROOT = Path(__file__).resolve().parents[2]
NPM_DIR = ROOT / "examples" / "realworld" / "node"  # where the Node stacks' package.json is


def upstream_version(debian_version: str) -> str:
    """``[epoch:]upstream[-revision]`` → upstream (a native package has no revision)."""
    return debian_version.split(":", 1)[-1].rsplit("-", 1)[0]


def package_version(kind: str, name: str, npm_dir: Path = NPM_DIR) -> str:
    """The installed version of a pip distribution, npm package or Debian package, else what
    is requested (npm: package.json's range, marked "wanted"), else "not installed".

    Debian: the upstream version only (``1.22.1`` of ``1.22.1-9+deb12u12``): a stable
    release's security updates change the revision, and the table would go stale with them."""
    if kind == "deb":
        try:
            out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", name],
                                 capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            return "not installed"
        status, _, version = out.stdout.partition(" ")
        if out.returncode or status != "installed" or not version:
            return "not installed"
        return upstream_version(version)
    if kind == "pip":
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"
    if kind == "npm":
        installed = npm_dir / "node_modules" / name / "package.json"
        if installed.is_file():
            return json.loads(installed.read_text(encoding="utf-8"))["version"]
        manifest = npm_dir / "package.json"
        if manifest.is_file():
            deps = json.loads(manifest.read_text(encoding="utf-8")).get("dependencies", {})
            if name in deps:
                return f"{deps[name]} (wanted)"
        return "not installed"
    raise ValueError(f"package kind must be 'pip', 'npm' or 'deb', not {kind!r}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class _Notes:
    """Reasons numbered in order of first use, so a reason shared by many runs is written once."""

    def __init__(self) -> None:
        self.order: list[tuple[str, bool]] = []

    def ref(self, why: str, finding: bool) -> int:
        key = (why, finding)
        if key not in self.order:
            self.order.append(key)
        return self.order.index(key) + 1


def _shared(stack: Stack) -> tuple[list, dict[str, str]]:
    """The non-passes (and load-dependent checks) every run of ``stack`` has."""
    runs = stack.runs
    if not runs:
        return [], {}
    common = [np for np in runs[0].not_pass if all(np in r.not_pass for r in runs[1:])]
    load = {c: w for c, w in runs[0].load_dependent.items()
            if all(r.load_dependent.get(c) == w for r in runs[1:])}
    return common, load


def _items(not_pass, load_dependent: dict[str, str], notes: _Notes) -> list[str]:
    parts = [f"{', '.join(np.checks)} {np.status} [{notes.ref(np.why, np.finding)}]"
             for np in not_pass]
    parts += [f"{check} pass or fail [{notes.ref(why, True)}]"
              for check, why in load_dependent.items()]
    return parts


def _run_cell(run: MatrixRun, common, common_load: dict[str, str], notes: _Notes) -> str:
    parts = _items([np for np in run.not_pass if np not in common],
                   {c: w for c, w in run.load_dependent.items() if c not in common_load}, notes)
    head = f"**{run.name}**" + (f" ({_cell(run.description)})" if run.description else "")
    return f"{head}: {'; '.join(parts) or 'nothing more'}"


def render_markdown(stacks: list[Stack] | None = None, npm_dir: Path = NPM_DIR) -> str:
    """The table (one row per stack) and its numbered reasons, ending with a newline."""
    stacks = all_stacks() if stacks is None else stacks
    notes = _Notes()
    rows = ["| Stack | Versions | Tracing | Exporter | Every run: not passing | "
            "Each run: not passing besides |",
            "|---|---|---|---|---|---|"]
    for s in stacks:
        versions = "<br>".join(f"{name} {package_version(kind, name, npm_dir)}"
                               for kind, name in s.packages) or "—"
        common, common_load = _shared(s)
        every = "<br>".join(_items(common, common_load, notes)) or "—"
        runs = "<br>".join(_run_cell(r, common, common_load, notes) for r in s.runs) or "—"
        rows.append(f"| **{_cell(s.title)}** (`{s.name}`) | {versions} | {_cell(s.tracing)} | "
                    f"{_cell(s.exporter)} | {every} | {runs} |")
    rows.append("")
    for i, (why, finding) in enumerate(notes.order, 1):
        rows.append(f"{i}. {'' if finding else '(injected fault) '}{_cell(why)}")
    return "\n".join(rows) + "\n"


def marked_block(text: str) -> str | None:
    """The text between the matrix markers, or None when the markers are absent."""
    start, end = text.find(MARKER_START), text.find(MARKER_END)
    if start < 0 or end < start:
        return None
    return text[start + len(MARKER_START):end]


def replace_block(text: str, table: str) -> str:
    """Return ``text`` with the block between the matrix markers replaced by ``table``."""
    start, end = text.find(MARKER_START), text.find(MARKER_END)
    if start < 0 or end < start:
        raise ValueError(f"no {MARKER_START} ... {MARKER_END} block found: add both markers "
                         "where the tested-stacks table belongs")
    return text[:start + len(MARKER_START)] + "\n" + table + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.realworld.matrix",
                                     description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the Markdown table")
    group.add_argument("--markdown-into", type=Path, metavar="FILE",
                       help="rewrite the table between the matrix markers of FILE")
    args = parser.parse_args(argv)
    table = render_markdown()
    if args.markdown:
        sys.stdout.write(table)
        return 0
    try:
        text = args.markdown_into.read_text(encoding="utf-8")
        new = replace_block(text, table)
        if new != text:
            tmp = args.markdown_into.with_name(args.markdown_into.name + ".tmp")
            tmp.write_text(new, encoding="utf-8")
            tmp.replace(args.markdown_into)
        return 0
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
