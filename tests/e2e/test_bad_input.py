"""Bad input gets one line on stderr saying what to do, exit code 1, and no probe left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.errors import ObsconformError
from agent.kernel import attached_program_ids
from agent.runner import RunConfig, run
from tests.e2e.conftest import free_port


def one_error_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.startswith("obsconform: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def idle_process():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


CASES = [
    pytest.param(lambda port, pid: ["run", "--pid", str(pid), "--url", f"http://127.0.0.1:{port}",
                                    "--otlp-listen", f"127.0.0.1:{free_port()}"],  # 4318 may be taken
                 "nothing answers", id="unreachable-url"),
    pytest.param(lambda port, pid: ["run", "--exec", "false", "--url", f"http://127.0.0.1:{port}"],
                 "exited with code 1", id="command-exits-at-once"),
    pytest.param(lambda port, pid: ["run", "--exec", "no-such-command-xyz", "--url", f"http://127.0.0.1:{port}"],
                 "not found", id="command-not-found"),
    pytest.param(lambda port, pid: ["run", "--pid", "999999999", "--url", f"http://127.0.0.1:{port}"],
                 "no such process", id="no-such-pid"),
    pytest.param(lambda port, pid: ["run", "--pid", str(pid), "--url", "ftp://x"],
                 "not an http:// URL", id="bad-url"),
    pytest.param(lambda port, pid: ["run", "--url", f"http://127.0.0.1:{port}"],
                 "exactly one target", id="no-target"),
    pytest.param(lambda port, pid: ["run", "--pid", str(pid), "--url", f"http://127.0.0.1:{port}", "--check", "BOGUS"],
                 "unknown check 'BOGUS'", id="unknown-check"),
    pytest.param(lambda port, pid: ["run", "--agent", f"http://127.0.0.1:{port}", "--pid", str(pid),
                                    "--url", f"http://127.0.0.1:{port}", "--check", "KT-999"],
                 "unknown check 'KT-999'", id="unknown-check-before-submitting"),
]


@pytest.mark.kernel
@pytest.mark.parametrize("argv, fragment", CASES)
def test_bad_input_is_one_line_and_exit_1(obsconform, idle_process, argv, fragment):
    r = obsconform(*argv(free_port(), idle_process.pid), timeout=60)
    assert r.code == 1, r.stderr
    assert fragment in one_error_line(r.stderr)


@pytest.mark.kernel
def test_run_without_root_says_use_sudo_or_no_ebpf(obsconform, idle_process):
    r = obsconform("run", "--pid", str(idle_process.pid), "--url", f"http://127.0.0.1:{free_port()}",
                   "--out", "/tmp", user="65534")
    assert r.code == 1, r.stderr
    line = one_error_line(r.stderr)
    assert "root" in line and "--no-ebpf" in line


@pytest.mark.kernel
@pytest.mark.parametrize("cmd", ["false", f"{sys.executable} -c 'import time; time.sleep(0.3)'"],
                         ids=["exits-at-once", "exits-while-waiting"])
def test_probes_are_detached_when_a_run_fails(tmp_path, cmd):
    # Only this process's programs: other runs on the host may hold their own.
    before = attached_program_ids(os.getpid())
    cfg = RunConfig(url=f"http://127.0.0.1:{free_port()}", exec_cmd=cmd, out_dir=tmp_path)
    with pytest.raises(ObsconformError, match="exited with code"):
        run(cfg)
    assert attached_program_ids(os.getpid()) - before == set()
    # The failed run is still recorded.
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "meta.json").exists()
