"""Fixtures for conformance tests (builders live in tests/conformance/builders.py, the
simulated reference service in tests/conformance/simsut.py)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.evidence import Evidence
from tests.conformance.builders import NO_LOSS, RunBuilder
from tests.conformance.simsut import Faults, SimSut


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., RunBuilder]:
    """Factory: ``run(ebpf=False, exporter=SemconvExporter(), ...)`` → RunBuilder."""
    counter = itertools.count()

    def make(**kw: Any) -> RunBuilder:
        return RunBuilder(tmp_path / f"r{next(counter)}", **kw)

    return make


@pytest.fixture
def sim(tmp_path: Path) -> Callable[..., Evidence]:
    """Factory: the simulated reference service served the real phase plan →
    ``sim(leak_bizcode=True)``, ``sim(kernel=False)`` (degraded), ``sim(scenario=...)``."""
    counter = itertools.count()

    def make(kernel: bool = True, scenario: dict | None = None, requests: int = 12,
             **faults: Any) -> Evidence:
        b = RunBuilder(tmp_path / f"s{next(counter)}", ebpf=kernel,
                       kernel_stats=dict(NO_LOSS) if kernel else {},
                       degraded_reason="" if kernel else "--no-ebpf: kernel truth was not collected")
        return SimSut(b, Faults(**faults), scenario, kernel).run(requests).build()

    return make
