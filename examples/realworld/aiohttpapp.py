"""aiohttp service as people run it: `python -m examples.realworld.aiohttpapp --port N`,
AioHttpServerInstrumentor, the aiohttp client instrumentation for outbound calls, and a
prometheus_client middleware with /metrics on the app (aiohttp has no dominant exporter:
this hand-written pattern is what its users write)."""

from __future__ import annotations

import argparse
import time

import aiohttp
from aiohttp import web
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from examples.realworld.otelsetup import configure, downstream_url

DOWNSTREAM_PATH = "/inventory/reserve"
ITEMS = {1: "apple", 2: "pear", 42: "answer"}

REQUESTS = Counter("http_requests_total", "HTTP requests answered",
                   ["method", "handler", "status"])
LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency",
                    ["method", "handler"])


def _handler_label(request: web.Request) -> str:
    """The route template (``/items/{item_id}``), not the path: bounded cardinality."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def prometheus_middleware(request: web.Request, handler):
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        label = _handler_label(request)
        REQUESTS.labels(request.method, label, str(status)).inc()
        LATENCY.labels(request.method, label).observe(time.perf_counter() - start)


async def metrics(request: web.Request) -> web.Response:
    resp = web.Response(body=generate_latest())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"greeting": "hello"})


async def item(request: web.Request) -> web.Response:
    item_id = int(request.match_info["item_id"])
    if item_id not in ITEMS:
        raise web.HTTPNotFound(text="no such item")
    return web.json_response({"id": item_id, "name": ITEMS[item_id]})


async def orders(request: web.Request) -> web.Response:
    order = await request.json()
    session: aiohttp.ClientSession = request.app["http"]
    async with session.post(downstream_url(DOWNSTREAM_PATH),
                            json={"item_id": order.get("item_id")}) as r:
        ok = r.status < 400
    return web.json_response({"reserved": ok}, status=201 if ok else 502)


async def _client_session(app: web.Application):
    app["http"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    yield
    await app["http"].close()


def make_app() -> web.Application:
    configure()
    # The instrumentors patch aiohttp's classes: before the Application and the session exist.
    AioHttpServerInstrumentor().instrument()
    AioHttpClientInstrumentor().instrument()
    app = web.Application(middlewares=[prometheus_middleware])
    app.cleanup_ctx.append(_client_session)
    app.add_routes([
        web.get("/metrics", metrics),
        web.get("/healthz", healthz),
        web.get("/hello", hello),
        web.get(r"/items/{item_id:\d+}", item),
        web.post("/orders", orders),
    ])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
