"""A SUT whose leader exits mid-run: the run fails with one error line, yet stops every process
the SUT left behind and keeps the kernel evidence it collected (kernel.jsonl, kernel_stats)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.sut import LaunchedSut, tcp_open
from tests.e2e.conftest import ROOT, free_port
from tests.e2e.test_bad_input import one_error_line

KILL_PARENT_AT = 30  # requests served before the wrapper shell is killed


@pytest.fixture(scope="module")
def leader_exits_mid_run(tmp_path_factory):
    """One real eBPF run whose SUT is a shell wrapper killed at the 30th request."""
    out = tmp_path_factory.mktemp("out")
    port = free_port()
    server = f"{shlex.quote(sys.executable)} tests/e2e/orphaning_server.py {port} {KILL_PARENT_AT}"
    argv = [sys.executable, "-m", "agent.cli", "run", "--exec", f"sh -c {shlex.quote(server + ' & wait')}",
            "--url", f"http://127.0.0.1:{port}", "-n", "60", "-c", "2", "--out", str(out)]
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    run_dirs = list((out / "runs").iterdir())
    assert len(run_dirs) == 1, p.stderr
    return p, port, run_dirs[0]


@pytest.mark.kernel
def test_the_run_fails_with_one_line_naming_the_exit(leader_exits_mid_run):
    p, _, _ = leader_exits_mid_run
    assert p.returncode == 1, p.stderr
    assert "the SUT exited with code -9 during the run" in one_error_line(p.stderr)


@pytest.mark.kernel
def test_no_process_of_the_sut_outlives_the_run(leader_exits_mid_run):
    _, port, _ = leader_exits_mid_run
    assert not tcp_open("127.0.0.1", port), "the orphaned server still listens after the run"


@pytest.mark.kernel
def test_the_kernel_evidence_of_a_failed_run_is_kept(leader_exits_mid_run):
    _, _, run_dir = leader_exits_mid_run
    kernel = [json.loads(line) for line in (run_dir / "kernel.jsonl").read_text().splitlines()]
    served = [k for k in kernel if k.get("direction", "server") == "server"]
    assert len(served) >= KILL_PARENT_AT, f"{len(served)} kernel requests recorded"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["kernel_stats"]["user_received"] > 0, meta["kernel_stats"]
    assert meta["finished_at"], "meta.json was finalised"


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaps is dead: PID 1 here may not reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _pid_written(path: Path, timeout_s: float = 10) -> int:
    """The pid sh writes after starting its background job (which may print before that):
    complete once echo's newline is there."""
    deadline = time.monotonic() + timeout_s
    while True:
        raw = path.read_text() if path.exists() else ""
        if raw.endswith("\n"):
            return int(raw)
        if time.monotonic() > deadline:
            raise AssertionError(f"sh did not write the child's pid to {path}: {raw!r}")
        time.sleep(0.01)


def test_stop_kills_a_group_that_ignores_sigterm(tmp_path):
    """SIGTERM, then SIGKILL of the whole group after the timeout; the log is complete."""
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    marker = tmp_path / "child.pid"
    cmd = f"sh -c {shlex.quote(f'{sys.executable} -c {shlex.quote(script)} & echo $! > {marker}; wait')}"
    seen = threading.Event()
    sut = LaunchedSut(cmd, dict(os.environ), tmp_path / "sut.log", on_line=lambda l: seen.set())
    sut.release()
    assert seen.wait(10), "the child never printed"
    child = _pid_written(marker)
    t0 = time.monotonic()
    sut.stop(timeout_s=0.5)
    assert time.monotonic() - t0 < 5
    assert not alive(child), "the child that ignored SIGTERM survived stop()"
    assert "up" in (tmp_path / "sut.log").read_text()
