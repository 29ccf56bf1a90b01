"""Middleware benchmark: what raindrops.Middleware adds to each request, in process.

A request here is a WSGI call, iterating the body and closing it, with no
socket, so that only the instrumentation is measured. Rows: the bare
application; the application under raindrops.Middleware (calling, writing,
requests and durations by method and code, 5xx errors, busy time, shared by
all workers); and the same metrics from prometheus_client in multiprocess
mode (an in-progress Gauge, labelled Counter and Histogram, an error Counter:
the usual instrumentation).
Two floors measured in the same run show what a WSGI middleware built on
ctypes costs before it counts anything: a wrapper that only captures the
status (its own start_response, a list body, a Python close()), and that
wrapper plus three argument-free native calls (the fewest that keep `calling`
and `writing` apart: enter, response start, end).
Then the time to render the endpoint in each format with 4 live listeners.
The figures move with the interpreter's build: the Makefile's venv uses the
system CPython (PGO and LTO) when it can; the first line says which ran.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from io import BytesIO
from typing import Any

from _bench import (
    hello_wsgi,
    ns_per_op,
    ns_per_op_interleaved,
    one_wsgi_request,
    prometheus_multiprocess_dir,
    table,
)

_PROMETHEUS_DIR = prometheus_multiprocess_dir("prometheus")
from prometheus_client import Counter, Gauge, Histogram  # noqa: E402

from raindrops import Middleware, Raindrops, _native  # noqa: E402

ROUNDS = 7
"""timeit runs per stack, the stacks taking turns (_bench.ns_per_op_interleaved)."""
ADDED_US_MAX = 0.8  # issue 15; Ruby raindrops' middleware adds about 0.8 us
PROMETHEUS_RATIO_MAX = 0.5
RENDER_MS_MAX = 1.0
LISTENERS = 4
FLOOR_WRAPPER = "floor: a wrapper that sees the status, counts nothing"
FLOOR_NATIVE = "floor: that wrapper + 3 argument-free native calls"

Environ = dict[str, Any]
App = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]


def prometheus_instrumented(app: App) -> App:
    """The same metrics as the middleware (requests and durations by method and code, errors,
    in flight), the way prometheus_client users write them."""
    in_progress = Gauge("bench_in_progress", "in flight", multiprocess_mode="livesum")
    requests = Counter("bench_requests", "requests", ["method", "code"])
    errors = Counter("bench_errors", "5xx responses")
    durations = Histogram("bench_duration_seconds", "durations", ["method", "code"])

    def instrumented(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        statuses: list[str] = []

        def recording(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            return start_response(status, headers, exc_info)

        in_progress.inc()
        try:
            return app(environ, recording)
        except BaseException:
            statuses.append("500")
            raise
        finally:
            in_progress.dec()
            method, code = environ["REQUEST_METHOD"], statuses[-1][:3] if statuses else "500"
            requests.labels(method, code).inc()
            if code.startswith("5"):
                errors.inc()
            durations.labels(method, code).observe(time.perf_counter() - started)

    return instrumented


def environ_for(path: str, query: str = "") -> Environ:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": BytesIO(),
        "wsgi.multiprocess": False,
    }


class _Captured(list):  # type: ignore[type-arg]
    """The least a counting WSGI middleware does: the application's start_response (to see the
    status), the list body, and a close() that ends the request."""

    __slots__ = ("start_response", "status", "ended")

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status = status
        return self.start_response(status, headers, exc_info)

    def close(self) -> None:
        self.ended()


def floor_middleware(app: App, steps: tuple[Callable[[], object], ...] | None) -> App:
    """A middleware that counts nothing (steps None) or makes three argument-free native calls."""
    enter, respond, end = steps or (object, object, object)

    def middleware(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = _Captured()
        request.start_response = start_response
        request.ended = end
        enter()
        request.extend(app(environ, request))
        respond()
        return request

    return middleware


def _native_steps(counters: Raindrops) -> tuple[Callable[[], object], ...]:
    slots = [_native.slot_claim(_native.CounterPointer(counters.address(i))) for i in range(3)]
    if None in slots:
        raise SystemExit("no free native update slot for the floor")
    return tuple(_native.slot_steps(slot)[0] for slot in slots if slot is not None)


def request_costs() -> dict[str, float]:
    environ = environ_for("/")
    floor_counters = Raindrops(3)
    apps: dict[str, App] = {
        "bare application": hello_wsgi,
        "raindrops.Middleware": Middleware(hello_wsgi, listeners=[]),
        "prometheus_client multiprocess": prometheus_instrumented(hello_wsgi),
        FLOOR_WRAPPER: floor_middleware(hello_wsgi, None),
        FLOOR_NATIVE: floor_middleware(hello_wsgi, _native_steps(floor_counters)),
    }
    return ns_per_op_interleaved(
        "one_request(app, environ)",
        {
            name: {"one_request": one_wsgi_request, "app": app, "environ": environ}
            for name, app in apps.items()
        },
        rounds=ROUNDS,
    )


def render_costs(stack: ExitStack) -> tuple[dict[str, float], list[str]]:
    keys = []
    for _ in range(LISTENERS):
        server = stack.enter_context(socket.socket())
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        keys.append(f"127.0.0.1:{server.getsockname()[1]}")
    app = Middleware(hello_wsgi, listeners=keys)
    one_wsgi_request(app, environ_for("/"))
    costs = {}
    for form in ("text", "prometheus", "json"):
        environ = environ_for("/_raindrops", f"format={form}")
        costs[form] = ns_per_op(
            "one_request(app, environ)",
            {"one_request": one_wsgi_request, "app": app, "environ": environ},
            repeats=3,
        )
    return costs, keys


def verdict(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def main() -> int:
    print(f"raindrops middleware benchmark: Python {sys.version.split()[0]} ({sys.executable})\n")
    costs = request_costs()
    bare = costs["bare application"]
    added = {name: cost - bare for name, cost in costs.items()}
    print(
        f"1. per-request cost, in process (call, iterate, close; best of {ROUNDS} timeit runs, "
        "the stacks taking turns)"
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
    with ExitStack() as stack:
        renders, keys = render_costs(stack)
    print(f"\n2. endpoint render with {len(keys)} live listeners (netlink query included)")
    print(
        table(
            ["format", "ms/render"], [[form, f"{cost / 1e6:.3f}"] for form, cost in renders.items()]
        )
    )
    ours = added["raindrops.Middleware"] / 1000
    ratio = added["raindrops.Middleware"] / added["prometheus_client multiprocess"]
    slowest_ms = max(renders.values()) / 1e6
    print("\ntargets")
    print(
        table(
            ["target", "measured", "goal", "result"],
            [
                [
                    "us added per request",
                    f"{ours:.2f}",
                    f"<= {ADDED_US_MAX}",
                    verdict(ours <= ADDED_US_MAX),
                ],
                [
                    "added / prometheus_client's added",
                    f"{ratio:.2f}x",
                    f"<= {PROMETHEUS_RATIO_MAX}x",
                    verdict(ratio <= PROMETHEUS_RATIO_MAX),
                ],
                [
                    "slowest endpoint render, ms",
                    f"{slowest_ms:.3f}",
                    f"<= {RENDER_MS_MAX}",
                    verdict(slowest_ms <= RENDER_MS_MAX),
                ],
            ],
        )
    )
    floor = added[FLOOR_NATIVE] / 1000
    print(
        f"\nThe floor of a counting middleware on ctypes in this run: {floor:.2f} us added "
        f"({added[FLOOR_WRAPPER] / 1000:.2f} us of Python wrapper, "
        f"{(added[FLOOR_NATIVE] - added[FLOOR_WRAPPER]) / 1000:.2f} us for 3 argument-free "
        f"native calls); raindrops.Middleware is {ours / floor:.2f}x that floor."
    )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    finally:
        _PROMETHEUS_DIR.cleanup()
