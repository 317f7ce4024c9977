"""`obsconform demo` (what `make demo` runs): the reference service end to end, compliant, and
the path of the report it wrote printed whole, however deep the output directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance import validate_report

pytestmark = pytest.mark.kernel


def test_demo_is_compliant_and_prints_the_whole_path_of_its_report(obsconform, tmp_path):
    out = tmp_path / ("deep-" * 12) / "out"  # a path longer than the summary's 80 columns
    r = obsconform("demo", "--out", str(out), "-n", "40", "-c", "2", timeout=180)
    assert r.code == 0, r.stdout + r.stderr
    printed = [line.removeprefix("report: ") for line in r.stdout.splitlines()
               if line.startswith("report: ")]
    assert len(printed) == 1, r.stdout
    path = Path(printed[0])
    assert path.is_file() and path.name == "CNCF-compliance-report.json", printed[0]
    assert str(path).startswith(str(out))
    assert validate_report(json.loads(path.read_text())) == []
