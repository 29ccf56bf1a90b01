"""WSGI middleware: requests in flight across every worker, and an endpoint to read them.

Wrapping the application is the whole set-up. The counters live in shared
memory that all workers of a preforking server find by themselves:
- built before fork (gunicorn --preload), the anonymous segment made here is
  inherited by every worker;
- built in each worker after fork (no preload), the workers of one master meet
  in a named segment derived from the master and the endpoint path;
- in a single-process server the segment is private to it.
A worker that cannot use the server-wide segment (another user's, corrupt,
no room in /dev/shm, every slot taken) serves on with a private scoreboard;
its endpoint says so (raindrops.segments). An endpoint that cannot read the
segment any more (its header overwritten after the attach) answers without
its numbers, and says why.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from raindrops import capacity, exposition, scoreboard, segments
from raindrops._process import PROCESS
from raindrops.metrics.registry import with_metrics
from raindrops.routes import route_name
from raindrops.scoreboard import Scoreboard
from raindrops.series import DEFAULT_BUCKETS
from raindrops.wsgi import http
from raindrops.wsgi.http import DEFAULT_ALLOW, Environ, StartResponse, WSGIApp
from raindrops.wsgi.settings import middleware_settings

NAME_PREFIX = segments.PREFIX + "mw-"
"""Start of the names of the per-master segments (see raindrops.segments)."""
_respond = scoreboard.respond
_respond_counted = scoreboard.respond_counted
_leave = scoreboard.leave
_leave_small = scoreboard.leave_small
_SMALL_INT_MAX = scoreboard.SMALL_INT_MAX
_leave_counting = scoreboard.leave_counting
_fail = scoreboard.fail
_clock_ns = time.perf_counter_ns
_SERVER_ERROR = "500 Internal Server Error"
_NOTHING_CACHED: dict[str | int, scoreboard.Series] = {}
Route = Callable[[Environ], object]
"""The middleware's `route=`: names a request's route (a URL rule, not the path) from the
environ after the application ran; None or anything but a short str is `other`."""


class _Request(list):  # type: ignore[type-arg]
    """One request: the application's start_response (it sees the status) and then the
    response body, whose close() ends the request once.

    A list response is copied into this list, so that the server iterates it in
    C; any other response is wrapped by a _Stream. The request is counted by
    method and status when the application returns with its response started,
    else when the body closes (a generator that starts its response while
    iterated). Its attributes are set by Middleware.__call__, without an
    __init__ call.
    """

    __slots__ = (
        "_start_response",
        "_bound",
        "_environ",
        "_route",
        "_status",
        "_series",
        "_started_ns",
        "_close",
        "_open",
    )
    _start_response: StartResponse
    _bound: scoreboard.Bound
    _environ: Environ
    _route: Route | None
    _status: str | None
    _series: scoreboard.Series | None
    _started_ns: int
    _close: Callable[[], object] | None
    _open: bool

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self._status = status
        if exc_info is None:
            return self._start_response(status, headers)
        return self._start_response(status, headers, exc_info)

    def respond(self, close: Callable[[], object] | None) -> None:
        """The application returned: the request moves from calling to writing."""
        self._close = close
        status = self._status
        if status is None:
            _respond(self._bound.board)
            return
        series = self._series = self._series_of(status)
        _respond_counted(self._bound.board, series)

    def _series_of(self, status: str) -> scoreboard.Series:
        bound = self._bound
        method = self._environ.get("REQUEST_METHOD", "")
        if self._route is None:
            return bound.series(method, status)
        return bound.routed(route_name(self._route, self._environ), method, status)

    def fail(self) -> None:
        """The application raised: a 500 and an exception, without a body."""
        series = self._series_of(_SERVER_ERROR)
        _fail(self._bound.board, series, (_clock_ns() - self._started_ns) // 1000)

    def close(self) -> None:
        """Ends the request; a second close() changes nothing (PEP 3333)."""
        if not self._open:
            return
        self._open = False
        try:
            if self._close is not None:
                self._close()
        finally:
            elapsed_us = (_clock_ns() - self._started_ns) // 1000
            series = self._series
            board = self._bound.board
            if series is None:
                _leave_counting(board, self._series_of(self._status or ""), elapsed_us)
            elif elapsed_us <= _SMALL_INT_MAX:
                _leave_small(board, series, elapsed_us)
            else:
                _leave(board, series, elapsed_us)


class _Stream:
    """A response body that is not a list: iterated as the application made it."""

    __slots__ = ("_iterable", "close")

    def __init__(self, iterable: Iterable[bytes], request: _Request) -> None:
        self._iterable = iterable
        self.close = request.close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._iterable)


def _wrap_file(result: Any, request: _Request) -> Any:
    """Keeps a wsgi.file_wrapper body (sendfile) by hooking its close() instead of wrapping it."""
    request.respond(getattr(result, "close", None))
    try:
        result.close = request.close
    except AttributeError:
        return _Stream(result, request)
    return result


class Middleware:
    """Counts `calling` (inside the application) and `writing` (while the body is sent).

    GET `path` answers in raindrops' text format, in the Prometheus text format
    (`?format=prometheus`, or an Accept header asking for it) or JSON
    (`?format=json`). `listeners=None` reports the listening sockets of the
    process (inherited from the master); a list overrides, `[]` disables.
    `allow` lists the client networks that may read the endpoint, `trusted_proxies` the
    proxies whose forwarding headers name the client (http.AccessRule).
    `worker_capacity` is how many requests one worker holds at once, where the
    server does not tell it (raindrops.capacity finds it for gunicorn and uWSGI).
    `buckets` are the duration histogram's bounds in seconds. `route` names each
    request's route for a `route` label (see Route).
    """

    def __init__(
        self,
        app: WSGIApp,
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
            request_is="environ",
        )
        self.app = app
        self.path, self._access, self._listeners, self._counts, self._route = settings[:5]
        self._worker_capacity = settings.worker_capacity
        self._bound = self._counts.bound  # read by the per-request path without a call

    @property
    def stats(self) -> Scoreboard:
        return self._counts.found.current

    def _capacity(self) -> Callable[[], int]:
        """This worker's capacity, found from the frames above __call__ (none when a server
        calls it from C, as uWSGI's threads do) unless given."""
        given = self._worker_capacity
        server_frame = sys._getframe(2).f_back  # _capacity <- _bind or _endpoint <- __call__
        return lambda: given if given else capacity.of_this_worker(server_frame)

    def _bind(self, environ: Environ) -> scoreboard.Bound:
        """This process's board in the scoreboard it shares with its server's other workers."""
        return self._counts.bind(environ, self._capacity())

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == self.path:
            return self._endpoint(environ, start_response)
        holder = self._bound
        bound = holder.value if holder.pid == PROCESS.pid else None
        if bound is None:
            bound = self._bind(environ)
        request = _Request()
        request._start_response = start_response
        request._bound = bound
        request._environ = environ
        request._route = route = self._route
        request._status = request._series = None
        request._open = True
        board = bound.board
        request._started_ns = _clock_ns()
        bound.enter()
        try:
            result = self.app(environ, request)
        except BaseException:
            request.fail()
            raise
        if result.__class__ is not list:
            return self._other_body(result, request, environ)
        # request.respond(None), inlined for the most common body: two calls fewer per request
        request.extend(result)
        request._close = None  # a list has no close()
        status = request._status
        if status is None:
            _respond(board)
            return request
        if route is None:
            method = environ.get("REQUEST_METHOD", "")
            series = bound.by_status.get(method, _NOTHING_CACHED).get(status) or bound.series(
                method, status
            )
        else:
            series = request._series_of(status)
        request._series = series
        _respond_counted(board, series)
        return request

    @staticmethod
    def _other_body(result: Any, request: _Request, environ: Environ) -> Iterable[bytes]:
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            return _wrap_file(result, request)  # type: ignore[no-any-return]
        request.respond(getattr(result, "close", None))
        return _Stream(result, request)

    def _endpoint(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        form, refusal = http.endpoint_request(environ, start_response, self._access)
        if refusal is not None:
            return refusal
        capacity = self._capacity()
        totals, degraded = self._counts.found.report(
            lambda: self._counts.totals(environ, capacity), no_totals
        )
        report = exposition.MiddlewareReport(totals, self._listeners.read(), degraded.reasons)
        method = environ.get("REQUEST_METHOD", "GET")
        return http.serve(start_response, method, form, with_metrics(report), degraded.headers)


def no_totals(board: Scoreboard) -> scoreboard.Totals:
    """What an endpoint reports of a scoreboard it cannot read: nothing counted, nobody known
    (segments.ServerWide.report says why)."""
    return scoreboard.Totals(0, 0, 0, 0, 0, 0, 0.0, (), board.series.buckets)


__all__ = ["Middleware", "NAME_PREFIX", "no_totals"]
