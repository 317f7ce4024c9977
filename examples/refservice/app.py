"""The Flask application of the reference service: routes and their business logic."""

from __future__ import annotations

import time

from flask import Flask, Response, jsonify, request

from .faults import ActiveFaults
from .middleware import InstrumentationMiddleware
from .telemetry import Telemetry

MAX_SLOW_MS = 10_000


def create_app(telemetry: Telemetry, faults: ActiveFaults) -> Flask:
    """Build the app and wrap its WSGI callable in the instrumentation middleware."""
    app = Flask("refservice")
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = telemetry.metrics.exposition(request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    @app.get("/items/<int:item_id>")
    def get_item(item_id: int) -> Response:
        return jsonify(
            id=item_id,
            name=f"item-{item_id}",
            price_cents=100 + (item_id * 37) % 900,
            in_stock=item_id % 7 != 0,
        )

    @app.get("/slow")
    def slow() -> Response | tuple[Response, int]:
        try:
            ms = float(request.args.get("ms", "100"))
        except ValueError:
            return jsonify(message="ms must be a number"), 400
        ms = min(max(ms, 0.0), MAX_SLOW_MS)
        time.sleep(ms / 1000.0)
        return jsonify(slept_ms=ms)

    app.wsgi_app = InstrumentationMiddleware(app, telemetry, faults)  # type: ignore[method-assign]
    return app
