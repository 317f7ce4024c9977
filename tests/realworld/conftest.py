"""Real-world services under the real CLI: each run launches one with --exec and returns
the CLI's result (report, evidence directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, CliResult, free_port

EXAMPLES = ROOT / "examples" / "realworld"
REQUESTS = 60  # load phase; tc and bc add 96 requests of their own (154 answered in all)


@dataclass(frozen=True)
class Service:
    name: str
    command: str  # {py} {port} placeholders
    separate_metrics_port: bool = False  # gunicorn's master serves /metrics on its own port

    @property
    def scenario(self) -> Path:
        return EXAMPLES / f"{self.name}.scenario.json"


SERVICES = [
    Service("flask", "{py} -m gunicorn -c python:examples.realworld.gunicorn_conf "
                     "examples.realworld.flaskapp:app", separate_metrics_port=True),
    Service("fastapi", "{py} -m uvicorn examples.realworld.fastapiapp:app "
                       "--host 127.0.0.1 --port {port}"),
    Service("aiohttp", "{py} -m examples.realworld.aiohttpapp --port {port}"),
]
BY_NAME = {s.name: s for s in SERVICES}


@pytest.fixture
def run_service(tmp_path):
    """Run ``obsconform run --exec`` on a service; ``env`` reaches the service."""

    def call(service: Service, env: dict[str, str] | None = None) -> CliResult:
        port, metrics_port = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        args = ["run", "--exec", service.command.format(py=sys.executable, port=port),
                "--url", url, "--scenario", str(service.scenario), "-n", str(REQUESTS),
                "-c", "4", "--out", str(tmp_path / "out")]
        if service.separate_metrics_port:
            args += ["--metrics-url", f"http://127.0.0.1:{metrics_port}/metrics"]
        multiproc = tmp_path / "prometheus-multiproc"
        multiproc.mkdir(exist_ok=True)
        full_env = {**os.environ, "BIND": f"127.0.0.1:{port}", "METRICS_PORT": str(metrics_port),
                    "PROMETHEUS_MULTIPROC_DIR": str(multiproc), **(env or {})}
        p = subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT, env=full_env,
                           capture_output=True, text=True, timeout=120)
        return CliResult(p.returncode, p.stdout, p.stderr, tmp_path / "out")

    return call
