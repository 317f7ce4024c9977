"""Falcon service as people run it: `gunicorn examples.realworld.falconapp:app` (2 sync
workers, see gunicorn_sync_conf), FalconInstrumentor before the App is built, requests +
RequestsInstrumentor for outbound calls, and a prometheus_client middleware with /metrics
on the app (multiprocess mode; Falcon has no dominant exporter: this is what its users write)."""

from __future__ import annotations

import os
import time

import falcon
import requests
from opentelemetry.instrumentation.falcon import FalconInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess,
)

from examples.realworld.otelsetup import downstream_url

DOWNSTREAM_PATH = "/inventory/reserve"
ITEMS = {1: "apple", 2: "pear", 42: "answer"}

REQUESTS = Counter("http_requests_total", "HTTP requests answered",
                   ["method", "handler", "status"])
LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency",
                    ["method", "handler"])


class PrometheusMiddleware:
    """Counts and times every request by its route template (``/items/{item_id:int}``)."""

    def process_request(self, req, resp):
        req.context.prom_start = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded):
        handler = req.uri_template or "unmatched"
        REQUESTS.labels(req.method, handler, resp.status[:3]).inc()
        LATENCY.labels(req.method, handler).observe(
            time.perf_counter() - req.context.get("prom_start", time.perf_counter()))


class Metrics:
    def on_get(self, req, resp):
        registry = CollectorRegistry()
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            multiprocess.MultiProcessCollector(registry)  # all gunicorn workers
        resp.data = generate_latest(registry)
        resp.content_type = CONTENT_TYPE_LATEST


class Healthz:
    def on_get(self, req, resp):
        resp.text = "ok"
        resp.content_type = falcon.MEDIA_TEXT


class Hello:
    def on_get(self, req, resp):
        resp.media = {"greeting": "hello"}


class Item:
    def on_get(self, req, resp, item_id: int):
        if item_id not in ITEMS:
            raise falcon.HTTPNotFound(description="no such item")
        resp.media = {"id": item_id, "name": ITEMS[item_id]}


class Orders:
    def __init__(self) -> None:
        self._session = requests.Session()

    def on_post(self, req, resp):
        order = req.get_media(default_when_empty={}) or {}
        r = self._session.post(downstream_url(DOWNSTREAM_PATH),
                               json={"item_id": order.get("item_id")}, timeout=5)
        resp.media = {"reserved": r.ok}
        resp.status = falcon.HTTP_201 if r.ok else falcon.HTTP_502


# The instrumentor replaces falcon.App: before the app exists (its README's order).
FalconInstrumentor().instrument()
RequestsInstrumentor().instrument()
app = falcon.App(middleware=[PrometheusMiddleware()])
app.add_route("/metrics", Metrics())
app.add_route("/healthz", Healthz())
app.add_route("/hello", Hello())
app.add_route("/items/{item_id:int}", Item())
app.add_route("/orders", Orders())
