"""`obsconform analyze RUN_DIR` recomputes a run's report from its evidence alone, with the same result."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.daemon.conftest import ROOT
from tests.e2e.conftest import free_port, refservice_cmd

# Fields that name one computation of the report, not its content.
VOLATILE = ("report_id", "generated_at")


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def without_volatile(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in VOLATILE}


@pytest.mark.parametrize("mode", [
    pytest.param("no-ebpf", id="degraded"),
    pytest.param("ebpf", id="kernel", marks=pytest.mark.kernel),
])
def test_analyze_recomputes_the_same_report(tmp_path, mode):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "out"
    run = cli("run", "--exec", refservice_cmd(port), "--url", url, "--metrics-url", f"{url}/metrics",
              "--path", "/items/1", "--path", "/slow?ms=2", "-n", "120", "-c", "4", "--out", str(out),
              *(["--no-ebpf"] if mode == "no-ebpf" else []))
    assert run.returncode in (0, 2, 3), run.stderr
    original = json.loads((out / "CNCF-compliance-report.json").read_text())
    run_dir = original["run"]["evidence_dir"]
    if mode == "ebpf":
        assert original["measurements"]["kernel"]["requests"] >= 120, "a real run with kernel truth"

    again = cli("analyze", run_dir, "--out", str(tmp_path / "again"))
    assert again.returncode == run.returncode, again.stderr
    recomputed = json.loads((tmp_path / "again" / "CNCF-compliance-report.json").read_text())
    assert recomputed["report_id"] != original["report_id"], "a new computation, not a copy"
    assert without_volatile(recomputed) == without_volatile(original)
