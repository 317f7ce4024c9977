"""Fixtures: OTLP and downstream stubs, and a running reference service per module."""

from __future__ import annotations

import pytest

from .service import RefService, service_env
from .stubs import DownstreamStub, OtlpTraceStub


@pytest.fixture(scope="module")
def otlp():
    with OtlpTraceStub() as stub:
        yield stub


@pytest.fixture(scope="module")
def downstream():
    with DownstreamStub() as stub:
        yield stub


@pytest.fixture(scope="module")
def service(otlp, downstream, tmp_path_factory):
    """A fault-free service shared by the tests of one module."""
    with RefService(service_env(otlp.url, downstream.url), log_dir=tmp_path_factory.mktemp("svc")) as svc:
        yield svc


@pytest.fixture
def start_service(otlp, downstream, tmp_path):
    """Factory: start a service with extra environment (e.g. a fault switch); stopped at teardown."""
    started: list[RefService] = []

    def _start(workers: int = 1, **env: str) -> RefService:
        svc = RefService(service_env(otlp.url, downstream.url, **env), workers, log_dir=tmp_path)
        started.append(svc)
        return svc

    yield _start
    for svc in started:
        svc.stop()
