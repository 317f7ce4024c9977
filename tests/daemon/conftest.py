"""Fixtures for daemon tests: the real `obsconform serve` in a subprocess, a tiny target, API helpers."""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.remote import AgentClient
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
ENDED = ("done", "failed", "aborted", "cancelled")


def in_netns(name: str) -> list[str]:
    """Command prefix that enters only the network namespace ``name``. (`ip netns exec` also
    remounts /sys, which hides tracefs and the cgroup tree the daemon needs.)"""
    return ["nsenter", f"--net=/run/netns/{name}", "--"]


def read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The next stdout line of ``proc``, or '' when it exits or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            return proc.stdout.readline()
    return ""


@dataclass
class DaemonProc:
    proc: subprocess.Popen
    url: str
    token: str
    token_file: Path
    reports_dir: Path
    log: Path
    stopped: bool = False

    def client(self, token: str | None = None) -> AgentClient:
        return AgentClient(self.url, self.token if token is None else token)

    def api(self, method: str, path: str, body=None, token: str | None = None):
        return self.client(token).request(method, path, body)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout_s)
        self.stopped = True
        return code

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def submit(self, spec: dict) -> str:
        status, body = self.api("POST", "/v1/runs", spec)
        assert status == 202, (status, body)
        return body["id"]

    def wait(self, run_id: str, states=ENDED, timeout_s: float = 90, progress: str | None = None) -> dict:
        """Poll the run (with a deadline) until it is in one of ``states`` (and shows ``progress``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            status, run = self.api("GET", f"/v1/runs/{run_id}")
            assert status == 200, (status, run)
            messages = " | ".join(p["message"] for p in run["progress"])
            if run["state"] in states and (progress is None or progress in messages):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {run['state']} after {timeout_s} s: {messages}\n"
                                     f"daemon log:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)


@dataclass
class Daemons:
    tmp: Path
    started: list[DaemonProc] = field(default_factory=list)

    def token_file(self, token: str | None = None, mode: int = 0o600) -> tuple[str, Path]:
        token = token or secrets.token_hex(24)
        path = self.tmp / f"token-{len(self.started)}-{secrets.token_hex(3)}"
        path.write_text(token + "\n")
        path.chmod(mode)
        return token, path

    def start(self, *extra: str, reports_dir: Path | None = None, token: str | None = None,
              listen: str = "127.0.0.1:0", netns: str | None = None, with_token: bool = True,
              token_mode: int = 0o600) -> DaemonProc:
        reports_dir = reports_dir or self.tmp / "reports"
        token, token_file = self.token_file(token, token_mode)
        argv = [sys.executable, "-m", "agent.cli", "serve", "--listen", listen, "--reports-dir", str(reports_dir),
                *(("--token-file", str(token_file)) if with_token else ()), *extra]
        if netns:
            argv = [*in_netns(netns), *argv]
        log = self.tmp / f"daemon-{len(self.started)}.log"
        with open(log, "w") as logf:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=logf, text=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        d = DaemonProc(proc, "", token, token_file, reports_dir, log)
        self.started.append(d)
        line = read_line(proc, START_TIMEOUT_S)
        m = re.search(r"serving on (\S+);", line)
        if not m:
            proc.kill()
            proc.wait()
            raise AssertionError(f"daemon did not start: {line!r}\n{log.read_text()}")
        d.url = m[1]
        if not with_token:
            d.token = Path(re.search(r"token in (\S+)", line)[1]).read_text().strip()
        return d

    def cleanup(self) -> None:
        for d in self.started:
            if d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
                try:
                    d.proc.wait(30)
                except subprocess.TimeoutExpired:
                    d.proc.kill()
                    d.proc.wait()
            if d.proc.stdout:
                d.proc.stdout.close()


@pytest.fixture
def daemons(tmp_path):
    ds = Daemons(tmp_path)
    yield ds
    ds.cleanup()


@dataclass
class Target:
    url: str
    pid: int
    proc: subprocess.Popen

    def spec(self, **kw) -> dict:
        # A --pid run's OTLP receiver defaults to 127.0.0.1:4318, which anything else on the
        # host may hold: each run gets a free port of its own.
        spec = {"url": self.url, "pid": self.pid, "no_ebpf": True, "requests": 20, "concurrency": 2,
                "otlp_listen": f"127.0.0.1:{free_port()}"}
        spec.update(kw)
        return spec


def start_target(netns: str | None = None) -> Target:
    argv = [sys.executable, str(Path(__file__).with_name("tiny_server.py"))]
    if netns:
        argv = [*in_netns(netns), *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    port = int(read_line(proc, 10) or 0)
    assert port, "tiny target server did not start"
    return Target(f"http://127.0.0.1:{port}", proc.pid, proc)


@pytest.fixture
def target():
    t = start_target()
    yield t
    t.proc.kill()
    t.proc.wait()
    t.proc.stdout.close()


def slow_spec(target: Target, seconds: float = 20, **kw) -> dict:
    """A run that stays in its load phase for about ``seconds`` (so it can be stopped mid-run)."""
    return target.spec(paths=["/slow?ms=50"], requests=int(seconds / 0.05), concurrency=1, **kw)
