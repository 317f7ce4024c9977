"""Fixtures for end-to-end runs: the real CLI, real eBPF, the reference service on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port  # noqa: F401  (re-exported to the e2e, daemon and phase tests)

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    out_dir: Path

    @property
    def report(self) -> dict:
        path = self.out_dir / "CNCF-compliance-report.json"
        # A run that wrote no report must say why in the failure, not only that the file is absent.
        assert path.exists(), f"no report (exit {self.code})\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        return json.loads(path.read_text())

    def check(self, check_id: str) -> dict:
        return next(c for c in self.report["checks"] if c["id"] == check_id)

    @property
    def run_dir(self) -> Path:
        return Path(self.report["run"]["evidence_dir"])



@pytest.fixture
def obsconform(tmp_path):
    """Call the real `obsconform` CLI in a subprocess; returns a CliResult."""

    def call(*args: str, env: dict | None = None, timeout: float = 180, user: str | None = None) -> CliResult:
        out = tmp_path / "out"
        argv = [sys.executable, "-m", "agent.cli", *args]
        if "--out" not in args and args and args[0] in ("run", "demo"):
            argv += ["--out", str(out)]
        if user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        p = subprocess.run(argv, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                           text=True, timeout=timeout)
        return CliResult(p.returncode, p.stdout, p.stderr, out)

    return call


def refservice_cmd(port: int) -> str:
    return f"{sys.executable} -m examples.refservice --port {port}"
