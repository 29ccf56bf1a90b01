"""WSGI middleware: requests in flight across every worker, and an endpoint to read them.

Wrapping the application is the whole set-up. The counters live in shared
memory that all workers of a preforking server find by themselves:
- built before fork (gunicorn --preload), the anonymous segment made here is
  inherited by every worker;
- built in each worker after fork (no preload), the workers of one master meet
  in a named segment derived from the master's pid and the endpoint path;
- in a single-process server the segment is private to it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import parse_qs

from raindrops import _native, exposition, linux, segments
from raindrops.scoreboard import PROCESS, Scoreboard, Totals
from raindrops.segments import SHM_DIR as SHM_DIR
from raindrops.segments import remove_stale_segments

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")
"""Clients allowed to read the endpoint by default: loopback only (a unix socket client is local too)."""
NAME_PREFIX = segments.PREFIX + "mw-"
"""Start of the names of the per-master segments (see raindrops.segments)."""
_enter = _native.board_enter
_respond = _native.board_respond
_leave = _native.board_leave
_leave_long = _native.board_leave_long
_fail = _native.board_fail
_fail_long = _native.board_fail_long
_SMALL_INT_MAX = _native.SMALL_INT_MAX
_clock_ns = time.perf_counter_ns


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_allowed(environ: Environ, networks: Iterable[Network]) -> bool:
    """Whether the client of this request is in one of `networks` (an endpoint's `allow`)."""
    remote = environ.get("REMOTE_ADDR") or ""
    if not remote:
        return True  # a unix socket peer is on this host
    try:
        address = ipaddress.ip_address(remote.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class _Body:
    """The response body, wrapped so that close() ends the request exactly once."""

    __slots__ = ("_iterable", "_close", "_once", "_started_ns")

    def __init__(self, iterable: Iterable[bytes], board: _native.CounterPointer, started_ns: int) -> None:
        self._iterable = iterable
        self._close: Callable[[], object] | None = getattr(iterable, "close", None)
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
            elapsed_us = (_clock_ns() - self._started_ns) // 1000
            if elapsed_us <= _SMALL_INT_MAX:
                _leave(board, elapsed_us)
            else:
                _leave_long(board, elapsed_us)


def _wrap_file(result: Any, board: _native.CounterPointer, started_ns: int) -> Any:
    """Keeps a wsgi.file_wrapper body (sendfile) by hooking its close() instead of wrapping it."""
    body = _Body(result, board, started_ns)
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
    `allow` lists the client networks that may read the endpoint.
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
    ) -> None:
        self.app = app
        self.path, self._allow = endpoint_settings(path, allow)
        self._listeners = None if listeners is None else list(listeners)
        self._tcp = [item for item in self._listeners or () if not item.startswith(("/", "@"))]
        self._unix = [item for item in self._listeners or () if item.startswith(("/", "@"))]
        if self._tcp:
            linux.tcp_listener_stats(self._tcp)  # bad addresses fail now, not on every scrape
        name = name or os.environ.get("RAINDROPS_NAME") or None
        self._explicit = stats is not None or name is not None
        self._stats = stats if stats is not None else Scoreboard(name=name)
        self._creator_pid = PROCESS.pid
        self._bound_pid = 0
        self._board: _native.CounterPointer | None = None
        self._bind_lock = threading.Lock()
        self._diag: linux.InetDiagSocket | None = None
        self._diag_pid = 0

    @property
    def stats(self) -> Scoreboard:
        return self._stats

    def _bind(self, environ: Environ) -> _native.CounterPointer:
        """Finds this process's scoreboard once: inherited, shared with sibling workers, or private."""
        with self._bind_lock:
            pid = PROCESS.pid
            if self._bound_pid != pid or self._board is None:
                self._stats = segments.shared_for_process(
                    self._stats,
                    environ,
                    creator_pid=self._creator_pid,
                    explicit=self._explicit,
                    kind="mw",
                    path=self.path,
                    open_named=lambda name: Scoreboard(name=name),
                    close=Scoreboard.close,
                )
                self._board = self._stats.board()
                self._bound_pid = pid
            return self._board

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == self.path:
            return self._endpoint(environ, start_response)
        board = self._board
        if self._bound_pid != PROCESS.pid or board is None:
            board = self._bind(environ)
        started_ns = _clock_ns()
        _enter(board)
        try:
            result = self.app(environ, start_response)
        except BaseException:
            elapsed_us = (_clock_ns() - started_ns) // 1000
            if elapsed_us <= _SMALL_INT_MAX:
                _fail(board, elapsed_us)
            else:
                _fail_long(board, elapsed_us)
            raise
        _respond(board)
        if result.__class__ is not list:
            file_wrapper = environ.get("wsgi.file_wrapper")
            if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
                return _wrap_file(result, board, started_ns)  # type: ignore[no-any-return]
        return _Body(result, board, started_ns)

    # The endpoint.

    def _listener_stats(self) -> dict[str, linux.ListenStats]:
        if self._listeners == []:
            return {}
        pid = PROCESS.pid
        if self._diag is None or self._diag_pid != pid:
            self._diag, self._diag_pid = linux.InetDiagSocket(), pid
        if self._listeners is None:
            found = linux.process_listeners()
            tcp = [item for item in found if not item.startswith(("/", "@"))]
            unix = [item for item in found if item.startswith(("/", "@"))]
        else:
            tcp, unix = self._tcp, self._unix
        stats = linux.tcp_listener_stats(tcp, self._diag) if tcp else {}
        if unix:
            stats.update(linux.unix_listener_stats(unix))
        return stats

    def _endpoint(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        form, refusal = endpoint_request(environ, start_response, self._allow)
        if refusal is not None:
            return refusal
        method = environ.get("REQUEST_METHOD", "GET")
        self._bind(environ)
        totals = self._stats.totals()
        listeners = self._listener_stats()
        if form == "json":
            body = json.dumps(exposition.middleware_json(totals, listeners), sort_keys=False).encode()
            return _reply(start_response, "200 OK", "application/json", body + b"\n", method)
        if form == "prometheus":
            return _reply(start_response, "200 OK", exposition.PROMETHEUS_CONTENT_TYPE, exposition.middleware_prometheus(totals, listeners).encode(), method)
        if form == "openmetrics":
            body = exposition.middleware_prometheus(totals, listeners, openmetrics=True).encode()
            return _reply(start_response, "200 OK", exposition.OPENMETRICS_CONTENT_TYPE, body, method)
        return _reply(start_response, "200 OK", "text/plain", exposition.middleware_text(totals, listeners).encode(), method)


def endpoint_settings(path: str, allow: Iterable[str]) -> tuple[str, tuple[Network, ...]]:
    """Checks where a statistics endpoint is mounted and parses who may read it."""
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', not {path!r}")
    return path, tuple(ipaddress.ip_network(network) for network in allow)


def endpoint_request(
    environ: Environ, start_response: StartResponse, allow: Iterable[Network]
) -> tuple[str, list[bytes] | None]:
    """Checks a statistics request: GET or HEAD, an allowed client, a known format.

    Returns (format, None) to go on, or ("", body) after answering 405, 403 or 400.
    """
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        refusal = b"405 Method Not Allowed\n"
        return "", _reply(start_response, "405 Method Not Allowed", "text/plain", refusal, method, [("Allow", "GET, HEAD")])
    if not client_allowed(environ, allow):
        return "", _reply(start_response, "403 Forbidden", "text/plain", b"403 Forbidden\n", method)
    form = _requested_format(environ)
    if form is None:
        refusal = b"unknown format: use text, prometheus, openmetrics or json\n"
        return "", _reply(start_response, "400 Bad Request", "text/plain", refusal, method)
    return form, None


def _requested_format(environ: Environ) -> str | None:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    asked = query.get("format", [""])[-1]
    if asked:
        return asked if asked in ("text", "prometheus", "openmetrics", "json") else None
    accept = environ.get("HTTP_ACCEPT", "")
    if "application/openmetrics-text" in accept:
        return "openmetrics"
    if "text/plain" in accept and "version=0.0.4" in accept:
        return "prometheus"
    return "text"


def _reply(
    start_response: StartResponse,
    status: str,
    content_type: str,
    body: bytes,
    method: str,
    extra: Sequence[tuple[str, str]] = (),
) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra]
    start_response(status, headers)
    return [] if method == "HEAD" else [body]


__all__ = ["DEFAULT_ALLOW", "Middleware", "Scoreboard", "Totals", "client_allowed", "endpoint_request", "endpoint_settings", "remove_stale_segments"]
