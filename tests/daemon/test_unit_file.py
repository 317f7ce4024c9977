"""deploy/obsconform.service: systemd accepts it, and its first start can write the token
under /etc although ProtectSystem makes /etc read-only for the service."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.daemon.conftest import ROOT

UNIT = ROOT / "deploy" / "obsconform.service"


def directives(name: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{name}=")]


def test_the_token_step_can_write_etc_under_protect_system():
    assert directives("ProtectSystem") in (["full"], ["strict"], ["yes"])
    writable = [p.lstrip("-") for v in directives("ReadWritePaths") for p in v.split()]
    writers = [c for c in directives("ExecStartPre") if "/etc/obsconform" in c]
    assert writers, "the unit makes the token in an ExecStartPre"
    for cmd in writers:
        # "+" runs the step with full privileges, outside ProtectSystem's read-only /etc.
        assert cmd.startswith("+") or "/etc/obsconform" in writable, cmd


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    # The agent is not installed at /opt here: verify the unit with ExecStart on a real binary.
    text = UNIT.read_text().replace("ExecStart=/opt/obsconform/.venv/bin/obsconform", "ExecStart=/bin/true")
    unit = tmp_path / "obsconform.service"
    unit.write_text(text)
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
