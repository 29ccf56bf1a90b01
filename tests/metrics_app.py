"""What the raindrops.metrics tests run in other processes.

`application` (WSGI, for gunicorn) and `asgi_application` (for uvicorn
--workers) are raindrops' middleware around one tiny app whose metrics are
made at import, in the default registry, so the middleware's /_raindrops
shows them:
- /work?route=R&amount=A: test_work_total{route=R} + 1, A observed in
  test_amounts; answers the worker's pid;
- /hold: test_held (livesum) and test_kept (sum) + 1 in this worker, never
  given back; answers the worker's pid;
- anything else: the worker's pid.
test_imports_total counts the processes that imported the app (the master
alone with --preload, every worker without).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import raindrops
from raindrops import metrics

WORK = metrics.Counter("test_work", "Requests to /work.", ["route"])
AMOUNTS = metrics.Histogram("test_amounts", "Amounts sent to /work.", buckets=(0.5, 1.0, 2.0))
HELD = metrics.Gauge("test_held", "Holds of live workers.", multiprocess_mode="livesum")
KEPT = metrics.Gauge("test_kept", "Holds of every worker ever.", multiprocess_mode="sum")
IMPORTS = metrics.Counter("test_imports", "Processes that imported the app.")
IMPORTS.inc()


def _answer(path: str, query: str) -> bytes:
    if path == "/work":
        fields = parse_qs(query)
        WORK.labels(fields.get("route", ["none"])[0]).inc()
        AMOUNTS.observe(float(fields.get("amount", ["0"])[0]))
    elif path == "/hold":
        HELD.inc()
        KEPT.inc()
    return str(os.getpid()).encode()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = _answer(environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = _answer(scope["path"], scope.get("query_string", b"").decode("latin-1"))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


application = raindrops.Middleware(app)
asgi_application = raindrops.ASGIMiddleware(asgi_app)
