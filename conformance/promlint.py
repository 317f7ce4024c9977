"""Lint of a /metrics body: ``promtool check metrics`` when it is installed, else a built-in
subset of its rules (client_golang's promlint: help text, _total suffixes, base units, unit
abbreviations, camelCase, reserved names and labels, type in the name, colons)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

from agent.exposition import Exposition

PROMTOOL_TIMEOUT_S = 20.0
PROMTOOL, BUILTIN = "promtool", "builtin"

_BASE_UNITS = {
    "amperes": "amperes", "bytes": "bytes", "celsius": "celsius", "grams": "grams",
    "joules": "joules", "kelvin": "kelvin", "meters": "meters", "metres": "metres",
    "seconds": "seconds", "volts": "volts",
    "minutes": "seconds", "hours": "seconds", "days": "seconds", "weeks": "seconds",
    "kelvins": "kelvin", "fahrenheit": "celsius", "rankine": "celsius", "inches": "meters",
    "yards": "meters", "miles": "meters", "bits": "bytes", "calories": "joules",
    "pounds": "grams", "ounces": "grams",
}
_PREFIXES = ("pico", "nano", "micro", "milli", "centi", "deci", "deca", "hecto", "kilo", "kibi",
             "mega", "mibi", "giga", "gibi", "tera", "tebi", "peta", "pebi")
_ABBREVIATIONS = ("s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d")
_TYPES = ("counter", "gauge", "summary", "histogram", "gauge_histogram")
_CAMEL = re.compile(r"[a-z][A-Z]")
_TYPE_LINE = re.compile(r"#\s+TYPE\s+(\S+)\s+(\S+)")
_HELP_LINE = re.compile(r"#\s+HELP\s+(\S+)(?:\s+(.*))?")


@dataclass
class LintResult:
    tool: str  # PROMTOOL | BUILTIN
    problems: list[str] = field(default_factory=list)
    error: str = ""  # the linter could not judge the body (parse error, crash)
    detail: str = ""  # version / why the built-in subset was used


def promtool_path() -> str | None:
    return shutil.which("promtool")


def run_promtool(text: str, binary: str) -> LintResult:
    """``promtool check metrics`` reads the body on stdin: exit 0 clean, 3 lint problems
    (on stderr), 1 when it cannot parse the body."""
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=PROMTOOL_TIMEOUT_S).stdout.splitlines()
        proc = subprocess.run([binary, "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=PROMTOOL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return LintResult(PROMTOOL, error=f"promtool did not run: {e}")
    out = LintResult(PROMTOOL, detail=version[0] if version else binary)
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    if proc.returncode == 0:
        return out
    errors = [ln for ln in lines if ln.startswith("error")]
    if errors or proc.returncode not in (0, 3):
        out.error = "; ".join(errors or lines[:3]) or f"promtool exited {proc.returncode}"
    out.problems = [ln for ln in lines if not ln.startswith("error")]
    return out


def _unit_problem(name: str) -> str | None:
    for part in name.split("_"):
        if part in _BASE_UNITS:
            base = _BASE_UNITS[part]
            return None if base == part else f'use base unit "{base}" instead of "{part}"'
        for prefix in _PREFIXES:
            if part.startswith(prefix) and part[len(prefix):] in _BASE_UNITS:
                return f'use base unit "{_BASE_UNITS[part[len(prefix):]]}" instead of "{part}"'
    return None


def builtin_lint(text: str, expo: Exposition) -> list[str]:
    """promlint's rules over the TYPE/HELP lines of ``text`` and the parsed label names."""
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    for line in text.splitlines():
        if m := _TYPE_LINE.match(line):
            types.setdefault(m[1], m[2].lower())
        elif m := _HELP_LINE.match(line):
            helps.setdefault(m[1], (m[2] or "").strip())
    labels: dict[str, set[str]] = {}
    for fam in expo.families:
        names = labels.setdefault(fam.name, set())
        for s in fam.samples:
            names.update(s.labels)
    problems = []
    for name, mtype in types.items():
        low = name.lower()
        # OpenMetrics names a counter family without _total; its samples carry it.
        has_total = name.endswith("_total") or (mtype == "counter" and "openmetrics" in expo.format)
        found = labels.get(name) or labels.get(name.removesuffix("_total")) or set()
        rules = [
            (not helps.get(name), "no help text"),
            (mtype == "counter" and not has_total, 'counter metrics should have "_total" suffix'),
            (mtype not in ("counter", "untyped", "unknown") and name.endswith("_total"),
             'non-counter metrics should not have "_total" suffix'),
            (bool(_CAMEL.search(name)), "metric names should be written in 'snake_case' not 'camelCase'"),
            (any(_CAMEL.search(lb) for lb in found),
             "label names should be written in 'snake_case' not 'camelCase'"),
            (":" in name, "metric names should not contain ':'"),
            (any(f"_{a}_" in low or low.endswith(f"_{a}") for a in _ABBREVIATIONS),
             "metric names should not contain abbreviated units"),
            (mtype != "histogram" and name.endswith("_bucket"),
             'non-histogram metrics should not have "_bucket" suffix'),
            (mtype not in ("histogram", "summary") and name.endswith("_count"),
             'non-histogram and non-summary metrics should not have "_count" suffix'),
            (mtype not in ("histogram", "summary") and name.endswith("_sum"),
             'non-histogram and non-summary metrics should not have "_sum" suffix'),
            (mtype != "histogram" and "le" in found, 'non-histogram metrics should not have "le" label'),
            (mtype != "summary" and "quantile" in found,
             'non-summary metrics should not have "quantile" label'),
        ]
        problems += [f"{name} {msg}" for bad, msg in rules if bad]
        problems += [f"{name} metric name should not include type '{t}'" for t in _TYPES
                     if f"_{t}_" in low or low.endswith(f"_{t}")]
        if (unit := _unit_problem(name)) is not None:
            problems.append(f"{name} {unit}")
    return problems
