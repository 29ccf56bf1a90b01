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
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from raindrops import capacity, exposition, scoreboard, segments
from raindrops._process import at_fork_in_child
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
_leave_counting = scoreboard.leave_counting
_leave = scoreboard.leave
_fail = scoreboard.fail
_NO_SLOT = scoreboard.NO_SLOT
_request_respond = scoreboard.request_respond
_request_respond_numbered = scoreboard.request_respond_numbered
_request_leave = scoreboard.request_leave
_request_fail = scoreboard.request_fail
_LEAVE_STEPS: tuple[Callable[[], None], ...] = ()
"""Each token's native leave (scoreboard.request_leave_steps): made by the first bind, not at
import (4,096 ctypes functions, about 3 ms)."""
_clock_ns = time.perf_counter_ns
_SERVER_ERROR = "500 Internal Server Error"
_NO_NUMBERS: dict[str, dict[str | int, int]] = {}
Route = Callable[[Environ], object]
"""The middleware's `route=`: names a request's route (a URL rule, not the path) from the
environ after the application ran; None or anything but a short str is `other`."""


class _Request(list):  # type: ignore[type-arg]
    """One request: the application's start_response (it sees the status) and then the
    response body, whose close() ends the request once.

    The request holds a slot of this process's table of requests in flight
    (Bound.request_enter), named by its token, which keeps its board,
    series and start time natively; `_bound` keeps what the slot points at
    alive. A list response whose series has a number is copied into this list,
    so that the server iterates it in C, and its close() is the token's own
    native leave: no Python runs after the application returns. Any other
    response is wrapped by a _Stream, or keeps its wsgi.file_wrapper, and _end()
    closes it first. A request that found no free slot (its token is _NO_SLOT)
    is counted with its board and a duration measured here. Attributes are set
    by Middleware.__call__, without an __init__ call.
    """

    __slots__ = (
        "_start_response",
        "_bound",
        "_token",
        "_status",
        "_environ",
        "_route",
        "_series",
        "_started_ns",
        "_close",
        "_open",
        "close",
    )
    _start_response: StartResponse
    _bound: scoreboard.Bound
    _token: int
    _status: str
    _environ: Environ
    _route: Route | None
    _series: scoreboard.Series | None
    _started_ns: int
    _close: Callable[[], object] | None
    _open: bool
    close: Callable[[], None]

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self._status = status
        if exc_info is None:
            return self._start_response(status, headers)
        return self._start_response(status, headers, exc_info)

    def begin(self, token: int, environ: Environ, route: Route | None) -> None:
        """What the paths other than the common one need, set only when they run."""
        self._token = token
        self._environ = environ
        self._route = route

    def respond(self, close: Callable[[], object] | None) -> None:
        """The application returned: the request moves from calling to writing; close() ends
        it after closing the application's body (`close`)."""
        self._close = close
        self._open = True
        self.close = self._end
        status = getattr(self, "_status", None)
        series = self._series = None if status is None else self._series_of(status)
        if self._token != _NO_SLOT:
            _request_respond(self._token, series)
        elif series is None:
            _respond(self._bound.board)
        else:
            _respond_counted(self._bound.board, series)

    def _series_of(self, status: str) -> scoreboard.Series:
        bound = self._bound
        method = self._environ.get("REQUEST_METHOD", "")
        if self._route is not None:
            return bound.routed(route_name(self._route, self._environ), method, status)
        bound.numbered(method, status)  # the next such request takes the common path
        return bound.series(method, status)

    def fail(self) -> None:
        """The application raised: a 500 and an exception, without a body."""
        series = self._series_of(_SERVER_ERROR)
        if self._token != _NO_SLOT:
            _request_fail(self._token, series)
        else:
            _fail(self._bound.board, series, self._elapsed_us())

    def _elapsed_us(self) -> int:
        return (_clock_ns() - self._started_ns) // 1000

    def _end(self) -> None:
        """Ends the request; a second call changes nothing (PEP 3333)."""
        if not self._open:
            return
        self._open = False
        try:
            if self._close is not None:
                self._close()
        finally:
            series = self._series
            if series is None:  # the status came late, or never: counted now
                late = self._series_of(getattr(self, "_status", None) or "")
                if self._token != _NO_SLOT:
                    _request_leave(self._token, late)
                else:
                    _leave_counting(self._bound.board, late, self._elapsed_us())
            elif self._token != _NO_SLOT:
                _request_leave(self._token, None)
            else:
                _leave(self._bound.board, series, self._elapsed_us())


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
        self._bound: scoreboard.Bound | None = None
        """This process's Bound once made, read by the per-request path without a call; a
        forked child finds None (_unbind_in_child) and makes its own."""

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
        global _LEAVE_STEPS
        _LEAVE_STEPS = scoreboard.request_leave_steps()
        bound = self._bound = self._counts.bind(environ, self._capacity())
        _BOUND.add(self)
        return bound

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            endpoint = environ["PATH_INFO"] == self.path
        except KeyError:  # PEP 3333 lets a server leave out an empty PATH_INFO
            endpoint = False
        if endpoint:
            return self._endpoint(environ, start_response)
        bound = self._bound
        if bound is None:
            bound = self._bind(environ)
        request = _Request()
        request._start_response = start_response
        request._bound = bound
        numbers = bound.numbered_by_status
        token = bound.request_enter()
        try:
            request.close = _LEAVE_STEPS[token]
        except IndexError:  # no free slot: counted with the board, timed here, never by number
            request._started_ns = _clock_ns()
            numbers = _NO_NUMBERS
        try:
            result = self.app(environ, request)
        except BaseException:
            request.begin(token, environ, self._route)
            request.fail()
            raise
        if result.__class__ is list:
            # The common response: a list, a slot, a status whose series has a number. Any
            # other raises LookupError (no number, no slot) or AttributeError (no status).
            try:
                numbered = numbers[environ["REQUEST_METHOD"]][request._status]
            except (LookupError, AttributeError):
                pass
            else:
                request.extend(result)
                _request_respond_numbered(token | numbered)
                return request
        request.begin(token, environ, self._route)
        return self._other_body(result, request, environ)

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


_BOUND: weakref.WeakSet[Middleware] = weakref.WeakSet()
"""The middlewares bound in this process."""


def _unbind_in_child() -> None:
    """A forked child's middlewares bind again: their parent's board is not the child's. Run by
    every fork (raindrops._process: os.fork and uWSGI's), which keeps PROCESS.pid current too."""
    for middleware in list(_BOUND):
        middleware._bound = None
    _BOUND.clear()


at_fork_in_child(_unbind_in_child)


def no_totals(board: Scoreboard) -> scoreboard.Totals:
    """What an endpoint reports of a scoreboard it cannot read: nothing counted, nobody known
    (segments.ServerWide.report says why)."""
    return scoreboard.Totals(0, 0, 0, 0, 0, 0, 0.0, (), board.series.buckets)


__all__ = ["Middleware", "NAME_PREFIX", "no_totals"]
