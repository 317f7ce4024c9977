"""gunicorn settings for the Django and Falcon services: 2 sync workers (gunicorn's default
worker, what their docs deploy), the OTel SDK set up in each worker after fork, and
prometheus_client's multiprocess mode (each worker's /metrics aggregates all workers)."""

from __future__ import annotations

import os
import tempfile

# prometheus_client picks its multiprocess value class when it is imported: set first.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="prom-multiproc-"))

from prometheus_client import multiprocess  # noqa: E402

from examples.realworld.otelsetup import configure  # noqa: E402

workers = 2
worker_class = "sync"
bind = os.environ.get("BIND", "127.0.0.1:8000")
graceful_timeout = 5


def post_fork(server, worker):
    configure()  # before the worker imports the app: the instrumentors find the provider


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
