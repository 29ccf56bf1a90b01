"""ASGI benchmark: what raindrops.asgi.Middleware adds to each request, in process.

A request here is one `await app(scope, receive, send)` in a loop inside one
asyncio event loop, with no socket, so that only the instrumentation is
measured: a fresh copy of the scope per request (a server builds one per
request), a receive that returns one http.request message and a send that
discards. The application awaits receive, then sends the response start and
one body message. Rows: the bare application (the floor); the application under
raindrops.asgi.Middleware (calling, writing, requests, errors, busy time and a
duration histogram, shared by all workers); the same metrics from
prometheus_client in multiprocess mode written as a small ASGI middleware (two
in-progress Gauges, two Counters and a Histogram, the usual instrumentation);
and, for comparison, raindrops.Middleware on a bare WSGI application, timed
as bench_middleware.py times it.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from io import BytesIO
from typing import Any

from _bench import (
    REPEATS,
    hello_wsgi,
    ns_per_op_interleaved,
    one_wsgi_request,
    prometheus_multiprocess_dir,
    table,
)

_PROMETHEUS_DIR = prometheus_multiprocess_dir("prometheus")

from prometheus_client import Counter, Gauge, Histogram  # noqa: E402

from raindrops import ASGIMiddleware, Middleware  # noqa: E402

PROMETHEUS_RATIO_MAX = 0.5
RUN_SECONDS_MIN = 0.2
"""Each timed run lasts at least this long, as timeit's autorange does."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
    "scheme": "http",
    "method": "GET",
    "root_path": "",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")],
}
"""What uvicorn passes for `GET /`; copied for every request."""


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Message) -> None:
    return None


def prometheus_instrumented(app: ASGIApp) -> ASGIApp:
    """The same metrics as the middleware, the way prometheus_client users write them for ASGI.

    An error is a request that ended before its response started, as raindrops counts it.
    """
    calling = Gauge("bench_calling", "inside the app", multiprocess_mode="livesum")
    writing = Gauge("bench_writing", "sending the response", multiprocess_mode="livesum")
    requests = Counter("bench_requests", "requests")
    errors = Counter("bench_errors", "errors")
    durations = Histogram("bench_duration_seconds", "durations")

    async def instrumented(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        state = "calling"

        async def counting_send(message: Message) -> None:
            nonlocal state
            kind = message["type"]
            if state == "calling" and kind == "http.response.start":
                state = "writing"
                calling.dec()
                writing.inc()
            await send(message)
            last = kind == "http.response.body" and not message.get("more_body", False)
            if state == "writing" and last:
                state = "done"
                writing.dec()

        calling.inc()
        try:
            await app(scope, receive, counting_send)
        finally:
            if state == "calling":
                calling.dec()
                errors.inc()
            elif state == "writing":
                writing.dec()
            requests.inc()
            durations.observe(time.perf_counter() - started)

    return instrumented


async def _requests(app: ASGIApp, number: int) -> float:
    """Seconds for `number` requests, each awaited in this task as a server's task awaits it."""
    started = time.perf_counter()
    for _ in range(number):
        await app(dict(SCOPE), receive, send)
    return time.perf_counter() - started


@contextmanager
def _gc_disabled() -> Iterator[None]:
    """timeit times with the collector off; the ASGI runs do the same, for like figures."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _number(loop: asyncio.AbstractEventLoop, app: ASGIApp) -> int:
    """Requests per run: timeit's autorange (1, 2, 5, 10, ...) until a run lasts long enough."""
    scale = 1
    while True:
        for step in (1, 2, 5):
            number = scale * step
            if loop.run_until_complete(_requests(app, number)) >= RUN_SECONDS_MIN:
                return number
        scale *= 10


def asgi_costs(apps: dict[str, ASGIApp]) -> dict[str, float]:
    """ns per request of each app, best of REPEATS rounds; each round runs every app once, so
    that a busy moment of the machine falls on all of them rather than on one."""
    loop = asyncio.new_event_loop()
    try:
        with _gc_disabled():
            numbers = {name: _number(loop, app) for name, app in apps.items()}
            best = dict.fromkeys(apps, float("inf"))
            for _ in range(REPEATS):
                for name, app in apps.items():
                    seconds = loop.run_until_complete(_requests(app, numbers[name]))
                    best[name] = min(best[name], seconds / numbers[name] * 1e9)
        return best
    finally:
        loop.close()


Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]


def wsgi_costs() -> dict[str, float]:
    """The WSGI middleware's cost as bench_middleware.py measures it (timeit, call, iterate,
    close), so that the two layers' added costs sit side by side."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": BytesIO(),
        "wsgi.multiprocess": False,
    }
    apps: dict[str, WSGIApp] = {
        "bare WSGI application": hello_wsgi,
        "raindrops.Middleware (WSGI)": Middleware(hello_wsgi, listeners=[]),
    }
    return ns_per_op_interleaved(
        "one_request(app, environ)",
        {
            name: {"one_request": one_wsgi_request, "app": app, "environ": environ}
            for name, app in apps.items()
        },
    )


def verdict(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def main() -> int:
    asgi = asgi_costs(
        {
            "bare ASGI application": application,
            "raindrops.asgi.Middleware": ASGIMiddleware(application, listeners=[]),
            "prometheus_client multiprocess (ASGI)": prometheus_instrumented(application),
        }
    )
    wsgi = wsgi_costs()
    added = {name: cost - asgi["bare ASGI application"] for name, cost in asgi.items()}
    added.update({name: cost - wsgi["bare WSGI application"] for name, cost in wsgi.items()})
    costs = {**asgi, **wsgi}
    print("1. per-request cost, in process; added = minus the bare application of the same kind")
    print(f"   ASGI: await app(scope, receive, send) in one asyncio loop, best of {REPEATS} rounds")
    print(
        f"   WSGI: call, iterate, close (as bench_middleware.py), best of {REPEATS} timeit runs, "
        "the two taking turns"
    )
    print(
        table(
            ["stack", "us/request", "added us"],
            [
                [name, f"{cost / 1000:.2f}", f"{added[name] / 1000:.2f}"]
                for name, cost in costs.items()
            ],
        )
    )
    ours = added["raindrops.asgi.Middleware"]
    ratio = ours / added["prometheus_client multiprocess (ASGI)"]
    versus_wsgi = ours / added["raindrops.Middleware (WSGI)"]
    print("\ntargets")
    print(
        table(
            ["target", "measured", "goal", "result"],
            [
                [
                    "ASGI added / prometheus_client ASGI added",
                    f"{ratio:.2f}x",
                    f"<= {PROMETHEUS_RATIO_MAX}x",
                    verdict(ratio <= PROMETHEUS_RATIO_MAX),
                ],
                [
                    "context: ASGI added / WSGI added (raindrops)",
                    f"{versus_wsgi:.2f}x",
                    "-",
                    "info",
                ],
            ],
        )
    )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    finally:
        _PROMETHEUS_DIR.cleanup()
