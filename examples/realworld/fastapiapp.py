"""FastAPI service as people run it: `uvicorn examples.realworld.fastapiapp:app`,
FastAPIInstrumentor, the httpx instrumentation for outbound calls, and
prometheus-fastapi-instrumentator exposing /metrics on the app itself."""

from __future__ import annotations

import httpx
from fastapi import FastAPI, HTTPException
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import BaseModel

from examples.realworld.otelsetup import configure, downstream_url

DOWNSTREAM_PATH = "/inventory/reserve"
ITEMS = {1: "apple", 2: "pear", 42: "answer"}

configure()  # uvicorn runs one process: set up at import, before the app serves
HTTPXClientInstrumentor().instrument()
app = FastAPI(title="realworld-fastapi")
_client = httpx.AsyncClient(timeout=5)


class Order(BaseModel):
    item_id: int
    quantity: int = 1


@app.get("/healthz")
async def healthz() -> dict:
    return {"ok": True}


@app.get("/hello")
async def hello() -> dict:
    return {"greeting": "hello"}


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict:
    if item_id not in ITEMS:
        raise HTTPException(status_code=404, detail="no such item")
    return {"id": item_id, "name": ITEMS[item_id]}


@app.post("/orders", status_code=201)
async def orders(order: Order) -> dict:
    r = await _client.post(downstream_url(DOWNSTREAM_PATH), json={"item_id": order.item_id})
    if r.status_code >= 400:
        raise HTTPException(status_code=502, detail="inventory refused")
    return {"reserved": True}


# Both as their READMEs show, defaults kept: the instrumentator counts every handler,
# its own /metrics and /healthz included; the OTel instrumentor traces them too.
Instrumentator().instrument(app).expose(app)
FastAPIInstrumentor.instrument_app(app)
