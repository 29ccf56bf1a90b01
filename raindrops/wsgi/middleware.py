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
its endpoint says so (raindrops.segments).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from raindrops import capacity, exposition, linux, scoreboard, segments
from raindrops._process import PROCESS
from raindrops.scoreboard import Scoreboard
from raindrops.wsgi import http
from raindrops.wsgi.http import DEFAULT_ALLOW, Environ, StartResponse, WSGIApp

NAME_PREFIX = segments.PREFIX + "mw-"
"""Start of the names of the per-master segments (see raindrops.segments)."""
_enter = scoreboard.enter
_respond = scoreboard.respond
_leave = scoreboard.leave
_fail = scoreboard.fail
_clock_ns = time.perf_counter_ns


class _Body:
    """The response body, wrapped so that close() ends the request exactly once."""

    __slots__ = ("_iterable", "_close", "_once", "_started_ns")

    def __init__(
        self,
        iterable: Iterable[bytes],
        board: scoreboard.Board,
        started_ns: int,
        close: Callable[[], object] | None,
    ) -> None:
        self._iterable = iterable
        self._close = close
        self._once = [board]  # list.pop() is atomic: a second close() finds it empty
        self._started_ns = started_ns

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._iterable)

    def close(self) -> None:
        try:
            board = self._once.pop()
        except IndexError:
            return
        try:
            if self._close is not None:
                self._close()
        finally:
            _leave(board, (_clock_ns() - self._started_ns) // 1000)


def _wrap_file(result: Any, board: scoreboard.Board, started_ns: int) -> Any:
    """Keeps a wsgi.file_wrapper body (sendfile) by hooking its close() instead of wrapping it."""
    body = _Body(result, board, started_ns, getattr(result, "close", None))
    try:
        result.close = body.close
    except AttributeError:
        return body
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
    ) -> None:
        self.app = app
        self._worker_capacity = capacity.checked(worker_capacity)
        self.path, self._access = http.endpoint_settings(path, allow, trusted_proxies)
        self._listeners = linux.ListenerSet.own_or(listeners)  # bad addresses fail now
        self._counts = scoreboard.ServerBoard.configured(self.path, stats, name)
        self._board = self._counts.board  # read by the per-request path without a call

    @property
    def stats(self) -> Scoreboard:
        return self._counts.found.current

    def _bind(self, environ: Environ) -> scoreboard.Board:
        """This process's board in the scoreboard it shares with its server's other workers."""
        server_frame = sys._getframe(2)  # whoever called __call__: the server's worker
        given = self._worker_capacity
        return self._counts.bind(
            environ, lambda: given if given else capacity.of_this_worker(server_frame)
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == self.path:
            return self._endpoint(environ, start_response)
        bound = self._board
        board = bound.value if bound.pid == PROCESS.pid else None
        if board is None:
            board = self._bind(environ)
        started_ns = _clock_ns()
        _enter(board)
        try:
            result = self.app(environ, start_response)
        except BaseException:
            _fail(board, (_clock_ns() - started_ns) // 1000)
            raise
        _respond(board)
        if result.__class__ is list:
            return _Body(result, board, started_ns, None)  # a list has no close()
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            return _wrap_file(result, board, started_ns)  # type: ignore[no-any-return]
        return _Body(result, board, started_ns, getattr(result, "close", None))

    def _endpoint(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        form, refusal = http.endpoint_request(environ, start_response, self._access)
        if refusal is not None:
            return refusal
        totals = self._counts.scoreboard(environ).totals()
        degraded = self._counts.found.notice()
        report = exposition.MiddlewareReport(totals, self._listeners.read(), degraded.reasons)
        method = environ.get("REQUEST_METHOD", "GET")
        return http.serve(start_response, method, form, report, degraded.headers)


__all__ = ["Middleware", "NAME_PREFIX"]
