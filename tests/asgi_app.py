"""A small ASGI 3 application for tests/test_asgi.py, wrapped in raindrops.asgi.Middleware.

- /fast: 200 with the worker's pid;
- /hold: stays in the application (calling) until the client goes away, after
  printing "holding <pid>" so that a test knows which worker holds it;
- /stream: sends the headers and a first chunk, then stays in writing until the
  client goes away;
- /raise: raises;
- lifespan: answered (the middleware passes it through);
- websocket: sends the worker's pid, then echoes text.
"""

from __future__ import annotations

import os
from typing import Any

import raindrops.asgi

Scope = dict[str, Any]


async def _until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        kind = message["type"].rpartition(".")[2]
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


async def _websocket(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": str(os.getpid())})
        elif message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text") or ""})
        else:
            return


async def _start(send: Any, more: bytes | None) -> None:
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if more is not None:
        await send({"type": "http.response.body", "body": more, "more_body": True})


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["type"] == "websocket":
        return await _websocket(receive, send)
    path = scope["path"]
    if path == "/hold":
        os.write(1, f"holding {os.getpid()}\n".encode())  # one write: lines of workers never mix
        return await _until_disconnect(receive)
    if path == "/stream":
        await _start(send, f"{os.getpid()}\n".encode())
        return await _until_disconnect(receive)
    if path == "/raise":
        raise RuntimeError("raised by tests/asgi_app.py")
    await _start(send, None)
    await send({"type": "http.response.body", "body": f"{os.getpid()}\n".encode()})
    return None


application = raindrops.asgi.Middleware(app)
