"""ASGI 3 middleware: requests in flight across every worker, and an endpoint to read them.

The counters are raindrops.wsgi.middleware's scoreboard, found the same way
(raindrops.segments.ServerWide). ASGI has no `wsgi.multiprocess`, so a worker
shares the scoreboard of its master's workers when it can tell that it is one:
it was started by multiprocessing (uvicorn --workers and hypercorn --workers
spawn their workers, which inherit no memory and have the supervisor as
parent), or it runs inside gunicorn (uvicorn_worker.UvicornWorker). Anything
else (a single uvicorn or hypercorn process) keeps its private scoreboard.
Open websockets are counted by a second scoreboard, shared the same way.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any, NamedTuple

from raindrops import capacity, exposition, scoreboard
from raindrops._process import PROCESS
from raindrops.metrics.registry import with_metrics
from raindrops.routes import route_name
from raindrops.scoreboard import Scoreboard
from raindrops.series import DEFAULT_BUCKETS
from raindrops.wsgi import http
from raindrops.wsgi.http import DEFAULT_ALLOW
from raindrops.wsgi.middleware import no_totals
from raindrops.wsgi.settings import middleware_settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]
"""Any ASGI 3 application: frameworks type scopes differently (dicts, TypedDicts, mappings)."""

_respond = scoreboard.respond
_respond_counted = scoreboard.respond_counted
_leave = scoreboard.leave
_leave_counting = scoreboard.leave_counting
_fail = scoreboard.fail
_clock_ns = time.perf_counter_ns
_CALLING, _WRITING, _DONE = 0, 1, 2
_SERVER_ERROR = 500
Route = Callable[[Scope], object]
"""The middleware's `route=`: names a request's route from its scope (see raindrops.routes)."""
_NO_RESPONSE = 0  # code `other`
WEBSOCKETS_PATH_SUFFIX = " websockets"
"""Appended to the endpoint path to name the websockets' scoreboard apart from the requests'."""
WEBSOCKETS = exposition.Metric(
    "raindrops_websockets", "gauge", "Websocket connections open now, across all workers."
)


class _Request:
    """One request's place on the board; as the app's `send`, it sees the response go out.

    `calling` lasts until http.response.start (where the request is counted by
    method and status), `writing` until the last body message is sent. end()
    runs in a finally after the app: whatever is still open (an exception, a
    cancelled task, a client gone) is closed exactly once (see end()).
    """

    __slots__ = ("_bound", "_scope", "_route", "_send", "_state", "_series", "_started_ns")

    def __init__(
        self, bound: scoreboard.Bound, scope: Scope, route: Route | None, send: Send
    ) -> None:
        self._bound = bound
        self._scope = scope
        self._route = route
        self._send = send
        self._state = _CALLING
        self._series: scoreboard.Series | None = None
        self._started_ns = _clock_ns()

    def __call__(self, message: Message) -> Awaitable[None]:
        """Returns the server's own awaitable, wrapped only for the last body message, which
        ends `writing` once the server has taken it."""
        state = self._state
        if state == _WRITING:
            if message.get("more_body", False):
                return self._send(message)
            return self._last(message)
        if state == _CALLING and message["type"] == "http.response.start":
            self._state = _WRITING
            series = self._series = self._series_of(message.get("status", 200))
            _respond_counted(self._bound.board, series)
        return self._send(message)

    def _series_of(self, status: int) -> scoreboard.Series:
        bound = self._bound
        method = self._scope.get("method", "")
        if self._route is None:
            return bound.series(method, status)
        return bound.routed(route_name(self._route, self._scope), method, status)

    async def _last(self, message: Message) -> None:
        await self._send(message)
        self._finish()

    def _finish(self) -> None:
        series = self._series
        if self._state == _WRITING and series is not None:
            self._state = _DONE
            _leave(self._bound.board, series, (_clock_ns() - self._started_ns) // 1000)

    def end(self, raised: bool) -> None:
        """After the app: a response never started is a 500 and an exception if the app
        raised; if it returned without one (Django does when the client went away), the
        request is counted with code `other`, neither an error nor an exception."""
        if self._state != _CALLING:
            self._finish()
            return
        self._state = _DONE
        board = self._bound.board
        elapsed_us = (_clock_ns() - self._started_ns) // 1000
        if raised:
            _fail(board, self._series_of(_SERVER_ERROR), elapsed_us)
        else:
            _respond(board)
            _leave_counting(board, self._series_of(_NO_RESPONSE), elapsed_us)


_WEBSOCKET_SESSION = 101
"""What a websocket session counts as in the websockets' scoreboard once it ends: GET, 101."""


def _unknown_capacity() -> int:
    return capacity.UNKNOWN


def worker_of_a_server() -> bool:
    """Whether this process is one of several workers of a server, as far as it can tell.

    multiprocessing children are the workers of uvicorn --workers and hypercorn
    --workers (spawned, so the middleware is built in each); gunicorn's
    arbiter module is loaded in every gunicorn worker.
    """
    return multiprocessing.parent_process() is not None or "gunicorn.arbiter" in sys.modules


def environ_of(scope: Scope) -> dict[str, Any]:
    """The WSGI environ keys raindrops.wsgi.http reads, from an ASGI scope.

    Repeated headers are joined with commas as WSGI servers join them, so that a
    second forwarding header cannot hide from the access rule.
    """
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "REMOTE_ADDR": str(client[0]) if client else "",
    }
    for name, value in scope.get("headers", ()):
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


class _Answer:
    """The start_response that raindrops.wsgi.http answers through, kept for ASGI messages."""

    __slots__ = ("status", "headers")

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []

    def __call__(self, status: str, headers: Sequence[tuple[str, str]]) -> None:
        self.status = int(status.partition(" ")[0])
        self.headers = [(name.lower().encode(), value.encode()) for name, value in headers]

    async def send(self, send: Send, body: list[bytes]) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"".join(body)})


class Report(NamedTuple):
    """The middleware's report plus the open websockets (Prometheus and JSON; the text format
    stays raindrops' own, byte for byte)."""

    requests: exposition.MiddlewareReport
    websockets: int

    def text(self) -> str:
        return self.requests.text()

    def prometheus(self, openmetrics: bool) -> str:
        gauge = exposition.scalar(WEBSOCKETS, self.websockets, openmetrics)
        return self.requests.prometheus(openmetrics) + gauge

    def json(self) -> dict[str, object]:
        return {**self.requests.json(), "websockets": self.websockets}


class Middleware:
    """Counts `calling` (inside the application) and `writing` (while the response is sent).

    The same endpoint, formats and keywords as raindrops.Middleware (WSGI):
    GET or HEAD `path` answers in raindrops' text, Prometheus, OpenMetrics or
    JSON format to the clients `allow` and `trusted_proxies` admit; Prometheus
    and JSON also give the open websockets. Lifespan scopes pass through
    untouched; websockets pass through too, counted by a second scoreboard
    (its `calling` is the open connections: a killed worker's drop out as its
    requests do) shared the same way as the first. `worker_capacity` is how many
    requests one worker holds at once (uvicorn's --limit-concurrency, say): ASGI
    servers do not tell it, except uWSGI's. `route` names each request's route from
    its scope once the response starts (Starlette and FastAPI put the matched route in
    `scope["route"]`: `route=lambda scope: scope["route"].path`).
    """

    def __init__(
        self,
        app: ASGIApp,
        path: str = "/_raindrops",
        listeners: Sequence[str] | None = None,
        stats: Scoreboard | None = None,
        *,
        name: str | None = None,
        allow: Iterable[str] = DEFAULT_ALLOW,
        trusted_proxies: Iterable[str] = (),
        worker_capacity: int | None = None,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        route: Route | None = None,
    ) -> None:
        settings = middleware_settings(
            path,
            listeners,
            stats,
            name=name,
            allow=allow,
            trusted_proxies=trusted_proxies,
            worker_capacity=worker_capacity,
            buckets=buckets,
            route=route,
            request_is="scope",
        )
        self.app = app
        self.path, self._access, self._listeners, self._counts, self._route = settings[:5]
        given = settings.worker_capacity
        self._capacity: Callable[[], int] = (
            (lambda: given) if given else (lambda: capacity.of_this_worker(None))
        )
        self._bound = self._counts.bound  # read by the per-request path without a call
        # Open websockets: a second scoreboard, found the same way; a named one's is named after it.
        websockets_name = None if self._counts.name is None else self._counts.name + "-websockets"
        self._websockets = scoreboard.ServerBoard(
            self.path + WEBSOCKETS_PATH_SUFFIX, name=websockets_name
        )

    @property
    def stats(self) -> Scoreboard:
        return self._counts.found.current

    @staticmethod
    def _server() -> dict[str, bool]:
        """What ServerWide asks of a WSGI environ: does this process serve with siblings?"""
        return {"wsgi.multiprocess": worker_of_a_server()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if scope["path"] == self.path:
            await self._endpoint(scope, send)
            return
        holder = self._bound
        bound = holder.value if holder.pid == PROCESS.pid else None
        if bound is None:
            bound = self._counts.bind(self._server(), self._capacity)
        request = _Request(bound, scope, self._route, send)
        bound.enter()
        try:
            await self.app(scope, receive, request)
        except BaseException:
            request.end(raised=True)
            raise
        request.end(raised=False)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One open connection for as long as the app runs it, however that ends."""
        bound = self._websockets.bind(self._server(), _unknown_capacity)
        series = bound.series("GET", _WEBSOCKET_SESSION)
        started_ns = _clock_ns()
        bound.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            _respond_counted(bound.board, series)
            _leave(bound.board, series, (_clock_ns() - started_ns) // 1000)

    async def _endpoint(self, scope: Scope, send: Send) -> None:
        environ = environ_of(scope)
        answer = _Answer()
        form, refusal = http.endpoint_request(environ, answer, self._access)
        if refusal is not None:
            await answer.send(send, refusal)
            return
        server = self._server()
        totals, notice = self._counts.found.report(
            lambda: self._counts.totals(server, self._capacity), no_totals
        )
        websockets, websockets_notice = self._websockets.found.report(
            lambda: self._websockets.totals(server, _unknown_capacity), no_totals
        )
        reasons = tuple(dict.fromkeys(notice.reasons + websockets_notice.reasons))
        headers = notice.headers or websockets_notice.headers
        requests = exposition.MiddlewareReport(totals, self._listeners.read(), reasons)
        report = Report(requests, websockets.calling + websockets.writing)
        body = http.serve(answer, environ["REQUEST_METHOD"], form, with_metrics(report), headers)
        await answer.send(send, body)


__all__ = ["WEBSOCKETS", "Middleware", "Report", "environ_of", "worker_of_a_server"]
