"""Flask service as people run it: gunicorn workers (see gunicorn_conf), FlaskInstrumentor,
the requests instrumentation for outbound calls, prometheus-flask-exporter in gunicorn
multiprocess mode (metrics served by the gunicorn master on METRICS_PORT)."""

from __future__ import annotations

import os
import time

import requests
from flask import Flask, abort, jsonify, request
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

from examples.realworld.otelsetup import downstream_url

DOWNSTREAM_PATH = "/inventory/reserve"
ITEMS = {1: "apple", 2: "pear", 42: "answer"}
# REALWORLD_FAULT=<kind>:<ms> injects latency the way real apps do:
#   outer-middleware-ms — a WSGI middleware (rate limiter, auth) wrapped around app.wsgi_app
#     after the instrumentor: the span starts after it, so it hides time the client waited;
#   before-request-ms — a before_request hook registered ahead of the instrumentor's: NOT
#     hidden, the instrumentation starts the span at WSGI entry (a control for KT-003).
FAULT_KIND, _, FAULT_MS = os.environ.get("REALWORLD_FAULT", "").partition(":")

app = Flask(__name__)

if FAULT_KIND == "before-request-ms":
    @app.before_request
    def slow_auth_hook() -> None:
        time.sleep(float(FAULT_MS) / 1000.0)

FlaskInstrumentor().instrument_app(app)
RequestsInstrumentor().instrument()
metrics = GunicornPrometheusMetrics(app)  # defaults: /healthz is counted too

if FAULT_KIND == "outer-middleware-ms":
    _inner_wsgi = app.wsgi_app

    def slow_rate_limiter(environ, start_response):
        time.sleep(float(FAULT_MS) / 1000.0)
        return _inner_wsgi(environ, start_response)

    app.wsgi_app = slow_rate_limiter
_session = requests.Session()


@app.get("/healthz")
def healthz():
    return "ok"


@app.get("/hello")
def hello():
    return jsonify(greeting="hello")


@app.get("/items/<int:item_id>")
def item(item_id: int):
    if item_id not in ITEMS:
        abort(404)
    return jsonify(id=item_id, name=ITEMS[item_id])


@app.post("/orders")
def orders():
    order = request.get_json(silent=True) or {}
    r = _session.post(downstream_url(DOWNSTREAM_PATH), json={"item_id": order.get("item_id")},
                      timeout=5)
    return jsonify(reserved=r.ok), 201 if r.ok else 502
