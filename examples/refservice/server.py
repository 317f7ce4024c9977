"""gunicorn (gthread) hosting of the app, with per-worker telemetry hooks."""

from __future__ import annotations

import logging
import os
from typing import Any

from gunicorn.app.base import BaseApplication

from .faults import ActiveFaults
from .logs import LOGGER_NAME, setup_logging
from .telemetry import Telemetry, start_worker_telemetry

DEFAULT_THREADS = 8
GRACEFUL_TIMEOUT_S = 10
KEEPALIVE_S = 5

log = logging.getLogger(LOGGER_NAME)


class RefServiceApplication(BaseApplication):
    """Runs the Flask app under gunicorn without a config file or CLI parsing of its own."""

    def __init__(self, host: str, port: int, workers: int, faults: ActiveFaults) -> None:
        self._faults = faults
        self._telemetry: Telemetry | None = None
        self._options: dict[str, Any] = {
            "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "workers": workers,
            "worker_class": "gthread",
            "threads": DEFAULT_THREADS,
            "keepalive": KEEPALIVE_S,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "control_socket_disable": True,  # one fixed socket path would clash between instances
            "post_fork": self._post_fork,
            "worker_exit": self._worker_exit,
            "child_exit": self._child_exit,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self):  # called in each worker, after post_fork
        from .app import create_app

        assert self._telemetry is not None, "post_fork must run before the app is loaded"
        return create_app(self._telemetry, self._faults)

    def _post_fork(self, server: Any, worker: Any) -> None:
        # The BatchSpanProcessor's export thread does not survive fork: build every provider
        # in the worker itself.
        setup_logging(with_trace_context=not self._faults.logs_without_trace)
        self._telemetry = start_worker_telemetry(self._faults)

    def _worker_exit(self, server: Any, worker: Any) -> None:
        if self._telemetry is not None:
            self._telemetry.shutdown()  # flushes queued spans before the process ends

    def _child_exit(self, server: Any, worker: Any) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid)
