"""Fixtures for conformance tests (builders live in tests/conformance/builders.py)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conformance.builders import RunBuilder


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., RunBuilder]:
    """Factory: ``run(ebpf=False, exporter=SemconvExporter(), ...)`` → RunBuilder."""
    counter = itertools.count()

    def make(**kw: Any) -> RunBuilder:
        return RunBuilder(tmp_path / f"r{next(counter)}", **kw)

    return make
