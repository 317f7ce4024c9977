"""`obsconform run --agent` on loopback: progress, a stopped client cancels its remote run, exec refusal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.daemon.conftest import ROOT, slow_spec


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agent.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_sigterm_to_the_client_cancels_the_remote_run(daemons, target, tmp_path):
    d = daemons.start()
    spec = slow_spec(target, seconds=60)
    cli = start_cli("run", "--agent", d.url, "--token-file", str(d.token_file), "--pid", str(target.pid),
                    "--url", target.url, "--path", spec["paths"][0], "-n", str(spec["requests"]), "-c", "1",
                    "--no-ebpf", "--out", str(tmp_path / "out"))
    deadline = time.monotonic() + 60
    runs = []
    while not runs or runs[0]["state"] != "running":
        assert time.monotonic() < deadline and cli.poll() is None, cli.stderr.read() if cli.poll() else "timeout"
        runs = d.api("GET", "/v1/runs")[1]["runs"]
        time.sleep(0.1)
    cli.send_signal(signal.SIGTERM)
    _, err = cli.communicate(timeout=30)
    assert cli.returncode == 1
    assert "cancelling remote run" in err and "obsconform: error: interrupted" in err, err
    run = d.wait(runs[0]["id"], timeout_s=30)
    assert run["state"] == "cancelled"


def test_exec_refusal_reaches_the_client_as_one_error_line(daemons, target, tmp_path):
    d = daemons.start()
    r = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--agent", d.url, "--token-file", str(d.token_file),
                        "--exec", "sleep 60", "--url", target.url, "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "403" in r.stderr and "--allow-exec" in r.stderr, r.stderr
    assert d.api("GET", "/v1/runs")[1]["runs"] == []
