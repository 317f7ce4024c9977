"""JUnit XML of a report: one testsuite per category, one testcase per check."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any


def _text(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def render_junit(report: dict[str, Any]) -> str:
    """fail → <failure>, inconclusive → <error type="inconclusive">, skip → <skipped>."""
    root = ET.Element("testsuites", name="obsconform",
                      verdict=report["summary"]["verdict"])
    suites: dict[str, ET.Element] = {}
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for c in report["checks"]:
        suite = suites.get(c["category"])
        if suite is None:
            suite = suites[c["category"]] = ET.SubElement(
                root, "testsuite", name=c["category"],
                tests="0", failures="0", errors="0", skipped="0")
        case = ET.SubElement(suite, "testcase", classname=f"obsconform.{c['category']}",
                             name=f"{c['id']} [{c['level']}] {c['title']}")
        kind = {"fail": ("failure", "failures"), "inconclusive": ("error", "errors"),
                "skip": ("skipped", "skipped")}.get(c["status"])
        suite.set("tests", str(int(suite.get("tests", "0")) + 1))
        totals["tests"] += 1
        if kind:
            tag, counter = kind
            el = ET.SubElement(case, tag, message=c["message"])
            if c["status"] != "skip":
                el.set("type", c["status"] if c["status"] == "inconclusive" else c["level"])
                el.text = (f"observed: {_text(c['observed'])}\n"
                           f"expected: {_text(c['expected'])}\n"
                           f"evidence: {_text(c['evidence'])}")
            suite.set(counter, str(int(suite.get(counter, "0")) + 1))
            totals[counter] += 1
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
