"""The compatibility matrix as data: each stack people run, how to start it, and what
obsconform must say about it clean and under each injected fault.

One record per stack (``Stack``), each with its runs (``MatrixRun``); the tests run every
run through the real CLI with real eBPF and assert the exact statuses and counts, and the
README's "Tested stacks" table is generated from the same records. Stack families live in
``tests/realworld/stacks/<family>.py``, each exporting ``STACKS``; ``all_stacks()`` gathers
them.

Expectations name only what does not pass: every check a run does not list must pass. Each
non-pass carries its reason, the finding a user would act on ("legacy semconv names", "no
OTLP metrics: uvicorn re-raises SIGTERM ...").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# A count's expected value read from what the service itself says it did (e.g. the number
# of spans its fault dropped, from the file named by REALWORLD_COUNTS_FILE): see MatrixRun.
SERVICE_COUNT = "service:"


@dataclass(frozen=True)
class NotPass:
    """Checks that do not pass in a run, their status, and why (shown in the README)."""

    checks: tuple[str, ...]
    status: str  # "fail" | "skip" | "inconclusive"
    why: str
    finding: bool = True  # a true finding on the stack (not a limit of obsconform's)


@dataclass(frozen=True)
class MatrixRun:
    """One run of a stack: extra environment, what does not pass, and exact counts.

    ``counts`` maps "CHECK-ID.observed.key[.key...]" (a path into that check's ``observed``)
    or "measurements.key[.key...]" to the exact value the report must hold; a value
    ``SERVICE_COUNT + name`` means the number the service wrote under ``name`` in its
    counts file (JSON object) at exit."""

    name: str  # "clean", "clean-stable-semconv", "drop-spans", "propagator-b3", ...
    env: dict[str, str] = field(default_factory=dict)
    not_pass: tuple[NotPass, ...] = ()
    counts: dict[str, Any] = field(default_factory=dict)
    # Checks whose status depends on the host's load, with why; pass or fail accepted.
    load_dependent: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None  # the CLI's exit code when it must be one in particular
    description: str = ""  # what the fault is, for the README


@dataclass(frozen=True)
class Stack:
    """A service as people run it: server, official instrumentation, common exporter."""

    name: str  # "flask-gthread": test ids and table rows
    title: str  # "Flask on gunicorn, 2 gthread workers"
    command: str  # placeholders: {py} (this venv's python), {port}, {metrics_port}, {node}
    scenario: Path
    tracing: str  # "FlaskInstrumentor (opentelemetry-instrumentation-flask)"
    exporter: str  # "prometheus-flask-exporter, multiprocess mode" or "none"
    # Distributions whose installed versions the README table shows: ("pip", name) or
    # ("npm", name); read when the table is generated.
    packages: tuple[tuple[str, str], ...] = ()
    separate_metrics_port: bool = False  # /metrics on {metrics_port}, not the app's port
    env: dict[str, str] = field(default_factory=dict)
    runs: tuple[MatrixRun, ...] = ()
    # Called once before the stack's first run (e.g. npm install); raises to fail the runs.
    prepare: Callable[[], None] | None = None
    requests: int = 60  # -n of the load phase
    concurrency: int = 4


def all_stacks() -> list[Stack]:
    """Every stack of every family module under tests/realworld/stacks/."""
    import importlib
    import pkgutil

    from tests.realworld import stacks as pkg

    out: list[Stack] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        out.extend(importlib.import_module(f"{pkg.__name__}.{info.name}").STACKS)
    return out


if __name__ == "__main__":  # python -m tests.realworld.matrix --markdown-into README.md
    import sys

    from tests.realworld.matrix_table import main

    sys.exit(main())
