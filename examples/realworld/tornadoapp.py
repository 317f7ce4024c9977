"""Tornado service as people run it: `python -m examples.realworld.tornadoapp --port N`,
TornadoInstrumentor (server handlers and the AsyncHTTPClient for outbound calls), and
prometheus_client counted in the Application's log_function with /metrics on the app
(Tornado has no dominant exporter: this is what its users write)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from opentelemetry.instrumentation.tornado import TornadoInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from examples.realworld.otelsetup import configure, downstream_url

DOWNSTREAM_PATH = "/inventory/reserve"
ITEMS = {1: "apple", 2: "pear", 42: "answer"}

REQUESTS = Counter("http_requests_total", "HTTP requests answered",
                   ["method", "handler", "status"])
LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency",
                    ["method", "handler"])

configure()
# Patches tornado.web.RequestHandler and AsyncHTTPClient: before any handler class is used.
TornadoInstrumentor().instrument()

import tornado.httpclient  # noqa: E402
import tornado.web  # noqa: E402


def log_function(handler: tornado.web.RequestHandler) -> None:
    """Tornado calls this once per finished request: count it by its route template."""
    req = handler.request
    template = getattr(handler, "route_template", "unmatched")
    REQUESTS.labels(req.method, template, str(handler.get_status())).inc()
    LATENCY.labels(req.method, template).observe(req.request_time())


class Metrics(tornado.web.RequestHandler):
    route_template = "/metrics"

    def get(self):
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest())


class Healthz(tornado.web.RequestHandler):
    route_template = "/healthz"

    def get(self):
        self.write("ok")


class Hello(tornado.web.RequestHandler):
    route_template = "/hello"

    def get(self):
        self.write({"greeting": "hello"})


class Item(tornado.web.RequestHandler):
    route_template = "/items/{item_id}"  # as the instrumentation names the route

    def get(self, item_id: str):
        if int(item_id) not in ITEMS:
            raise tornado.web.HTTPError(404, reason="no such item")
        self.write({"id": int(item_id), "name": ITEMS[int(item_id)]})


class Orders(tornado.web.RequestHandler):
    route_template = "/orders"

    async def post(self):
        try:
            order = json.loads(self.request.body or b"{}")
        except ValueError:
            order = {}
        client = tornado.httpclient.AsyncHTTPClient()
        r = await client.fetch(downstream_url(DOWNSTREAM_PATH), method="POST",
                               body=json.dumps({"item_id": order.get("item_id")}),
                               headers={"Content-Type": "application/json"},
                               request_timeout=5, raise_error=False)
        self.set_status(201 if r.code < 400 else 502)
        self.write({"reserved": r.code < 400})


def make_app() -> tornado.web.Application:
    return tornado.web.Application([
        (r"/metrics", Metrics), (r"/healthz", Healthz), (r"/hello", Hello),
        (r"/items/(\d+)", Item), (r"/orders", Orders),
    ], log_function=log_function)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8888)
    args = parser.parse_args()
    server = make_app().listen(args.port, address="127.0.0.1")
    # Stop on SIGTERM by returning from main: the interpreter then exits normally and the
    # SDK's atexit hook flushes spans and OTLP metrics (the default SIGTERM kills at once).
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main())
