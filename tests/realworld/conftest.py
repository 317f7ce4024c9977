"""Real-world services under the real CLI: each run launches one stack of the compatibility
matrix (tests/realworld/matrix.py) with --exec and returns the CLI's result (report,
evidence directory) and the counts the service itself wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, CliResult, free_port
from tests.realworld.matrix import Stack

EXAMPLES = ROOT / "examples" / "realworld"
CLI_TIMEOUT_S = 150


@dataclass
class StackResult(CliResult):
    """The CLI's result plus what the service counted (REALWORLD_COUNTS_FILE, summed)."""

    service_counts: dict[str, int] = field(default_factory=dict)


def read_service_counts(base: Path) -> dict[str, int]:
    """Sum the JSON objects the service's processes wrote to ``base`` and ``base.<pid>``."""
    out: dict[str, int] = {}
    for f in sorted(base.parent.glob(base.name + "*")):
        if f.name.endswith(".tmp"):
            continue
        for key, value in json.loads(f.read_text(encoding="utf-8")).items():
            out[key] = out.get(key, 0) + int(value)
    return out


@pytest.fixture(scope="session")
def prepared_stacks():
    """Each stack's prepare() runs once per session; its error fails every run of it."""
    done: dict[str, BaseException | None] = {}

    def ensure(stack: Stack) -> None:
        if stack.prepare is None:
            return
        if stack.name not in done:
            try:
                stack.prepare()
                done[stack.name] = None
            except Exception as e:  # reported on every run of the stack, not only the first
                done[stack.name] = e
        if done[stack.name] is not None:
            raise RuntimeError(f"{stack.name}: prepare() failed: {done[stack.name]}") \
                from done[stack.name]

    return ensure


@pytest.fixture
def run_stack(tmp_path, prepared_stacks):
    """Run ``obsconform run --exec`` on a stack; ``env`` (the run's) reaches the service."""

    def call(stack: Stack, env: dict[str, str] | None = None) -> StackResult:
        prepared_stacks(stack)
        port, metrics_port = free_port(), free_port()
        command = stack.command.format(py=sys.executable, port=port, metrics_port=metrics_port,
                                       node=shutil.which("node") or "node")
        out = tmp_path / "out"
        args = ["run", "--exec", command, "--url", f"http://127.0.0.1:{port}",
                "--scenario", str(stack.scenario), "-n", str(stack.requests),
                "-c", str(stack.concurrency), "--out", str(out)]
        if stack.separate_metrics_port:
            args += ["--metrics-url", f"http://127.0.0.1:{metrics_port}/metrics"]
        multiproc = tmp_path / "prometheus-multiproc"
        multiproc.mkdir(exist_ok=True)
        counts = tmp_path / "service-counts" / "counts.json"
        counts.parent.mkdir(exist_ok=True)
        full_env = {**os.environ, "BIND": f"127.0.0.1:{port}", "METRICS_PORT": str(metrics_port),
                    "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
                    "REALWORLD_COUNTS_FILE": str(counts), **stack.env, **(env or {})}
        p = subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT, env=full_env,
                           capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
        return StackResult(p.returncode, p.stdout, p.stderr, out,
                           service_counts=read_service_counts(counts))

    return call
