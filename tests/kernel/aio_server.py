"""An asyncio HTTP/1.1 server (aiohttp) run as a child process for the kernel tests.

Prints "port <n>" once it listens. Routes: / (200 "ok"), POST /echo (echoes the body,
chunked or not), /chunked?n=K&size=S (a chunked response of K chunks of S bytes, each
written and drained on its own), /ws (WebSocket: 101, then echoes one message), /sleep?ms=N.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import WSMsgType, web


async def ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


async def chunked(request: web.Request) -> web.StreamResponse:
    n, size = int(request.query.get("n", "4")), int(request.query.get("size", "100"))
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(n):
        await resp.write(bytes([97 + i % 26]) * size)
        await resp.drain()
    await resp.write_eof()
    return resp


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            await sock.send_str(msg.data)
            await sock.close()
    return sock


async def sleep(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.query.get("ms", "20")) / 1000)
    return web.Response(text="ok")


def main() -> None:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.add_routes([web.get("/", ok), web.post("/echo", echo), web.get("/chunked", chunked),
                    web.get("/ws", ws), web.get("/sleep", sleep)])
    sock = socket.create_server(("127.0.0.1", 0))
    print(f"port {sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=False)


if __name__ == "__main__":
    main()
