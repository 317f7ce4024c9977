"""gunicorn settings for the Flask service: 2 gthread workers, the OTel SDK set up in each
worker after fork (the batch exporter's thread does not survive a fork), and
prometheus-flask-exporter's multiprocess hooks (metrics served by the master)."""

from __future__ import annotations

import os
import tempfile

# prometheus_client picks its multiprocess value class when it is imported: set first.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="prom-multiproc-"))

from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics  # noqa: E402

from examples.realworld.otelsetup import configure  # noqa: E402

workers = 2
worker_class = "gthread"
threads = 4
bind = os.environ.get("BIND", "127.0.0.1:8000")
graceful_timeout = 5


def when_ready(server):
    GunicornPrometheusMetrics.start_http_server_when_ready(int(os.environ.get("METRICS_PORT", "9200")),
                                                          host="127.0.0.1")


def post_fork(server, worker):
    configure()


def child_exit(server, worker):
    GunicornPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
