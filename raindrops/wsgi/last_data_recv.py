"""raindrops.LastDataRecv: how long requests waited in the listen queue, from every worker.

For each request the middleware reads TCP_INFO `last_data_recv` of the
client's socket (milliseconds since data last arrived on it) as the
application is called. When the listener has TCP_DEFER_ACCEPT set, a
connection enters the accept queue only once its request has arrived, so
for the first request of a connection this is the time it waited to be
accepted (plus the time the server took to read it): the queueing delay
that `queued` in listener stats counts but does not time. Without
TCP_DEFER_ACCEPT the number also includes the time the client took to send
its request after connecting. On a keep-alive connection later requests
measure how long they waited for the worker to read them. The kernel keeps
this in jiffies, so the resolution is 1000/HZ ms (1 to 10 ms).

Samples go into a histogram in shared memory that all workers update with
atomic instructions: no lock, no message, no sample lost or delayed. Its
endpoint answers like raindrops' LastDataRecv (X-* headers, text histogram)
and in the Prometheus format (`?format=prometheus`).

With gunicorn, set TCP_DEFER_ACCEPT on the listeners in the config file:

    from raindrops import defer_accept

    def when_ready(server):
        defer_accept(server.LISTENERS)

and wrap the application: `app = raindrops.LastDataRecv(app)`. The workers
find the shared histogram as raindrops.Middleware's do, with or without
--preload, and like them count on their own (and say so on the endpoint)
when it cannot be used.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Any

from raindrops import exposition, segments, tcp_info
from raindrops.counters import Raindrops
from raindrops.histogram import HistogramSnapshot, SharedHistogram
from raindrops.wsgi import http
from raindrops.wsgi.http import DEFAULT_ALLOW, Environ, StartResponse, WSGIApp

PATH = "/_raindrops/last_data_recv"
BUCKETS = 33
"""Bit lengths 0..32: tcpi_last_data_recv is 32-bit milliseconds, so every value has a bucket."""
DEFER_ACCEPT_SECONDS = 60
"""raindrops' choice: a connection silent for a minute is accepted anyway (or dropped)."""
_SKIPPED = (
    0  # requests whose socket had no TCP_INFO (unix socket, server without a socket in environ)
)
_HISTOGRAM = 1
COUNTERS = _HISTOGRAM + SharedHistogram.slots(BUCKETS)
_OFFSET, _FIELD = tcp_info._UNITS["last_data_recv"]
_TCP_INFO_BYTES = _OFFSET + _FIELD.size
_SECONDS_MAX = 2**31 - 1


def last_data_recv(sock: Any) -> int | None:
    """tcpi_last_data_recv of a connected TCP socket in ms, None when it has no TCP_INFO.

    One getsockopt of just the bytes needed, since it runs on every request.
    """
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    except (OSError, AttributeError, TypeError, ValueError):
        return None
    if not isinstance(raw, bytes) or len(raw) < _TCP_INFO_BYTES:
        return None
    value: int = _FIELD.unpack_from(raw, _OFFSET)[0]
    return value


class LastDataRecvStats:
    """The shared counters: requests not measured, then the histogram of milliseconds."""

    def __init__(self, *, name: str | None = None, mode: int = 0o600) -> None:
        self.counters = Raindrops(COUNTERS, name=name, mode=mode)
        self.histogram = SharedHistogram(self.counters, _HISTOGRAM, BUCKETS)

    @property
    def name(self) -> str | None:
        return self.counters.name

    def observe(self, milliseconds: int) -> None:
        self.histogram.observe(milliseconds)

    def skip(self) -> None:
        self.counters.incr(_SKIPPED)

    @property
    def skipped(self) -> int:
        return self.counters[_SKIPPED]

    def snapshot(self) -> HistogramSnapshot:
        return self.histogram.snapshot()

    def read(self) -> tuple[HistogramSnapshot, int]:
        """The histogram and the requests not measured, for the endpoint."""
        return self.histogram.snapshot(), self.skipped

    def close(self) -> None:
        self.counters.close()


def _unreadable(_: LastDataRecvStats) -> tuple[HistogramSnapshot, int]:
    """What the endpoint reports of a histogram it cannot read: no sample (the notice says why)."""
    return HistogramSnapshot(0, 0, 0, None, None, (0,) * BUCKETS), 0


class LastDataRecv:
    """WSGI middleware: each request's TCP_INFO last_data_recv, in a histogram all workers share.

    GET `path` (loopback clients by default, see `allow` and `trusted_proxies`, the same
    rule as raindrops.Middleware's) answers like
    raindrops' LastDataRecv: `X-Count`, and past one sample `X-Min`, `X-Max`,
    `X-Mean`, `X-Std-Dev` (whole ms), `X-Outliers-Low` (samples of 0 ms) and
    `X-Outliers-High`, with the text histogram as the body;
    `?format=prometheus` (or `openmetrics`, or `json`) gives the histogram in
    that format. Requests to `path` are not measured.
    """

    def __init__(
        self,
        app: WSGIApp,
        path: str = PATH,
        *,
        stats: LastDataRecvStats | None = None,
        name: str | None = None,
        allow: Iterable[str] = DEFAULT_ALLOW,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.path, self._access = http.endpoint_settings(path, allow, trusted_proxies)
        self._histogram = segments.ServerWide(
            LastDataRecvStats, given=stats, name=name, kind="ldr", path=self.path
        )

    @property
    def stats(self) -> LastDataRecvStats:
        return self._histogram.current

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == self.path:
            return self._endpoint(environ, start_response)
        stats = self._histogram.get(environ)
        client = http.client_socket(environ)
        waited = None if client is None else last_data_recv(client)
        if waited is None:
            stats.skip()
        else:
            stats.observe(waited)
        return self.app(environ, start_response)

    def _endpoint(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        form, refusal = http.endpoint_request(environ, start_response, self._access)
        if refusal is not None:
            return refusal
        stats = self._histogram.get(environ)
        (snapshot, skipped), degraded = self._histogram.report(stats.read, _unreadable)
        report = exposition.LastDataRecvReport(snapshot, skipped, degraded.reasons)
        headers = exposition.last_data_recv_headers(snapshot) if form == "text" else []
        return http.serve(
            start_response,
            environ.get("REQUEST_METHOD", "GET"),
            form,
            report,
            headers + degraded.headers,
        )


# TCP_DEFER_ACCEPT.


def _fileno(listener: Any) -> int:
    if isinstance(listener, bool):
        raise TypeError("a listener must be a socket, an object with fileno() or an fd, not bool")
    if isinstance(listener, int):
        return listener
    fileno = getattr(listener, "fileno", None)
    if fileno is None:
        raise TypeError(
            "a listener must be a socket, an object with fileno() or an fd, "
            f"not {type(listener).__name__}"
        )
    fd = fileno()
    if not isinstance(fd, int):
        raise TypeError(f"fileno() returned {type(fd).__name__}, not int")
    return fd


def _listeners(listeners: Any) -> Sequence[Any]:
    if isinstance(listeners, (int, socket.socket)) or hasattr(listeners, "fileno"):
        return [listeners]
    return list(listeners)


def defer_accept(listeners: Any, seconds: int = DEFER_ACCEPT_SECONDS) -> list[int]:
    """Sets TCP_DEFER_ACCEPT on TCP listening sockets; returns the fds it set it on.

    `listeners` is a socket, an fd, an object with fileno() (gunicorn's
    server.LISTENERS entries), or a list of them; unix sockets in it are
    skipped. A connection then waits in the kernel until its first data
    arrives (or for about `seconds`), which makes LastDataRecv measure the
    listen queue. `seconds=0` turns it off again.
    """
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int)
        or not 0 <= seconds <= _SECONDS_MAX
    ):
        raise ValueError(f"seconds must be an int in [0, {_SECONDS_MAX}], not {seconds!r}")
    changed = []
    for listener in _listeners(listeners):
        fd = _fileno(listener)
        sock = socket.socket(fileno=fd)
        try:
            if (
                sock.family not in (socket.AF_INET, socket.AF_INET6)
                or sock.type != socket.SOCK_STREAM
            ):
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, seconds)
            changed.append(fd)
        finally:
            sock.detach()
    return changed


__all__ = [
    "BUCKETS",
    "PATH",
    "LastDataRecv",
    "LastDataRecvStats",
    "defer_accept",
    "last_data_recv",
]
