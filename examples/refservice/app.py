"""The Flask application of the reference service: routes, business rules and error mapping."""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from .bizcode import LeakyBizCodeHolder, current_biz_code
from .errcodes import ErrorResponder, ServiceError, load_catalogue
from .faults import ActiveFaults
from .harness import HarnessCaller, parse_actions
from .logs import LOGGER_NAME
from .middleware import InstrumentationMiddleware
from .outbound import DownstreamError, InventoryClient
from .telemetry import Telemetry

MAX_SLOW_MS = 10_000
MAX_ITEM_ID = 100_000
PAYMENT_LIMIT_CENTS = 100_000
WAREHOUSES_IN_MAINTENANCE = frozenset({"ams-2"})
EXPIRED_TOKENS = frozenset({"expired"})
# Cents per unit of each currency the ledger can book; XTS (the ISO "testing" code) is
# deliberately missing: booking it hits an unhandled KeyError, i.e. a real 500.
_LEDGER_RATES = {"EUR": 100, "USD": 100, "JPY": 1}

log = logging.getLogger(LOGGER_NAME)


def create_app(telemetry: Telemetry, faults: ActiveFaults) -> Flask:
    """Build the app and wrap its WSGI callable in the instrumentation middleware."""
    app = Flask("refservice")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    responder = ErrorResponder(load_catalogue(), faults)
    downstream_url = os.environ.get("OBSCONFORM_DOWNSTREAM_URL", "").strip()
    inventory = InventoryClient(downstream_url, telemetry.tracer, faults) if downstream_url else None
    leaky = LeakyBizCodeHolder() if faults.leak_bizcode else None
    harness = HarnessCaller(telemetry.tracer, faults)

    def outbound_biz_code() -> str:
        return leaky.current() if leaky is not None else current_biz_code()

    @app.before_request
    def authenticate() -> None:
        if leaky is not None:
            leaky.remember(request.environ)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip() in EXPIRED_TOKENS:
            raise ServiceError("AUTH_TOKEN_EXPIRED", "the access token has expired")

    @app.errorhandler(ServiceError)
    def on_service_error(exc: ServiceError) -> tuple[Response, int]:
        return responder.respond(exc.name, exc.message, request.environ)

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> tuple[Response, int] | HTTPException:
        if isinstance(exc, MethodNotAllowed):
            return responder.respond("METHOD_NOT_ALLOWED", f"{request.method} is not allowed here", request.environ)
        if isinstance(exc, NotFound):
            return responder.respond("ROUTE_NOT_FOUND", f"no route for {request.path}", request.environ)
        if exc.code is not None and exc.code < 500:
            return responder.respond("REQUEST_INVALID", exc.description or "bad request", request.environ)
        return responder.respond("INTERNAL_ERROR", "internal error", request.environ)

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> tuple[Response, int]:
        log.error("unhandled exception", exc_info=exc)
        return responder.respond("INTERNAL_ERROR", "internal error", request.environ)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = telemetry.metrics.exposition(request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    @app.get("/items/<int:item_id>")
    def get_item(item_id: int) -> Response:
        return jsonify(_item(item_id))

    @app.get("/slow")
    def slow() -> Response:
        try:
            ms = float(request.args.get("ms", "100"))
        except ValueError:
            raise ServiceError("REQUEST_INVALID", "ms must be a number") from None
        ms = min(max(ms, 0.0), MAX_SLOW_MS)
        time.sleep(ms / 1000.0)
        return jsonify(slept_ms=ms)

    @app.post("/payments")
    def create_payment() -> tuple[Response, int]:
        body = _json_object()
        amount, currency = body.get("amount_cents"), body.get("currency")
        if not isinstance(amount, int) or amount <= 0 or not isinstance(currency, str):
            raise ServiceError("REQUEST_INVALID", "amount_cents (positive int) and currency are required")
        if amount > PAYMENT_LIMIT_CENTS:
            raise ServiceError("PAYMENT_INSUFFICIENT_FUNDS", "amount exceeds the available balance")
        units = amount / _LEDGER_RATES[currency.upper()]  # KeyError → INTERNAL_ERROR, on purpose
        return jsonify(payment_id=uuid.uuid4().hex, status="captured", units=units), 201

    def _reserve(item_id: int, quantity: int, warehouse: str) -> dict[str, Any]:
        _item(item_id)
        if warehouse in WAREHOUSES_IN_MAINTENANCE or inventory is None:
            raise ServiceError("INVENTORY_BACKEND_UNAVAILABLE", f"inventory for {warehouse} is unavailable")
        payload = {"item_id": item_id, "quantity": quantity, "warehouse": warehouse}
        try:
            return inventory.reserve(payload, outbound_biz_code())
        except DownstreamError as exc:
            log.warning("inventory reservation failed", extra={"fields": {"error": str(exc)}})
            raise ServiceError("INVENTORY_BACKEND_UNAVAILABLE", "inventory service failed") from exc

    @app.post("/orders")
    def create_order() -> tuple[Response, int]:
        body = _json_object()
        item_id, quantity = body.get("item_id"), body.get("quantity", 1)
        if not isinstance(item_id, int) or not isinstance(quantity, int) or quantity < 1:
            raise ServiceError("REQUEST_INVALID", "item_id and quantity (>= 1) must be integers")
        reservation = _reserve(item_id, quantity, str(body.get("warehouse", "ams-1")))
        return jsonify(order_id=uuid.uuid4().hex, reservation=reservation), 201

    @app.get("/fanout")
    def fanout() -> Response:
        return jsonify(reservation=_reserve(1, 1, "ams-1"))

    @app.post("/test")
    def w3c_test_harness() -> Response:
        """The W3C trace-context test-harness contract: call each url back, in order."""
        try:
            actions = parse_actions(request.get_json(force=True, silent=True))
        except ValueError as exc:
            raise ServiceError("REQUEST_INVALID", str(exc)) from None
        return jsonify(results=[harness.call(a, outbound_biz_code()) for a in actions])

    app.wsgi_app = InstrumentationMiddleware(app, telemetry, faults)  # type: ignore[method-assign]
    return app


def _item(item_id: int) -> dict[str, Any]:
    if not 1 <= item_id <= MAX_ITEM_ID:
        raise ServiceError("ITEM_NOT_FOUND", f"item {item_id} does not exist")
    return {
        "id": item_id,
        "name": f"item-{item_id}",
        "price_cents": 100 + (item_id * 37) % 900,
        "in_stock": item_id % 7 != 0,
    }


def _json_object() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ServiceError("REQUEST_INVALID", "the body must be a JSON object")
    return body
