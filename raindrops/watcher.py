"""raindrops.Watcher: listener statistics over time, as a WSGI application.

A sampler thread (one per process, started by the first request, with its own
netlink socket) reads `active` and `queued` of every watched listener each
`delay` seconds and keeps, per listener and since its last reset: count, min,
max, mean, standard deviation and a log2 histogram of both numbers, the
current values and when their peak was first and last reached. The last
`history` samples feed the live dashboard.

Endpoints (relative links, so the app can be mounted under a prefix):
  GET /                          live dashboard (charts every second) and raindrops' table
  GET /series.json?since=T       the samples taken after time T, for the dashboard
  GET /active/ADDR.txt|.html|.json, /queued/...
                                 histogram with raindrops' X-* headers
  GET /tail/ADDR.txt?active_min=N&queued_min=M
                                 one line per sample passing the filters, until the client leaves
  POST /reset/ADDR               forget ADDR's statistics and peaks, 302 back
ADDR is the listener's name as raindrops.linux prints it, URL-escaped
("127.0.0.1%3A8080", "%2Ftmp%2Fapp.sock"). HEAD works wherever GET does.

Where this differs from raindrops' Watcher: an address the sampler has not
seen is 404 (not an empty 200); reset also forgets the peaks; its redirect is
an absolute URL; a peak time is empty until a non-zero peak happened; /tail
ends when the client disconnects; request threads never wait for the first
sample; sampler errors are logged and retried instead of killing the thread.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
import time
import weakref
import wsgiref.util
from collections import deque
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Any, Iterator, NamedTuple, Sequence
from urllib.parse import parse_qs, urlsplit

from raindrops import dashboard, exposition, linux
from raindrops.aggregate import Aggregate
from raindrops.histogram import HistogramSnapshot
from raindrops.linux import ListenStats
from raindrops._process import PROCESS
from raindrops.wsgi.http import Environ, StartResponse

DELAY = 1.0
DELAY_MIN = 0.001
DELAY_MAX = 3600.0
HISTORY = 300
HISTORY_MAX = 100_000
CLIENT_SOCKET_KEYS = ("gunicorn.socket", "raindrops.socket")
"""environ keys where servers put the client's socket (raindrops.server.make_server sets the second)."""
_CLIENT_CHECK = 0.25  # seconds between checks that a /tail client is still there
_RESET_WAIT_MAX = 10.0
_JOIN_TIMEOUT = 5.0
_TAIL_ADDRESS_WIDTH_MAX = 35
_KINDS = ("active", "queued")
_STAT_TYPES = {"txt": "text/plain", "html": "text/html", "json": "application/json"}
_GET = ("GET", "HEAD")
_POST = ("POST",)

LOG = logging.getLogger("raindrops.watcher")


def httpdate(when: float) -> str:
    return formatdate(when, usegmt=True)


def isodate(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Statistics.


class _Peak:
    """When the maximum since the last reset was first reached, and last reached again."""

    __slots__ = ("first", "last")

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None

    def update(self, value: int, previous_max: int | None, now: float) -> None:
        """0 is never a peak: an idle listener has none."""
        if value <= 0 or (previous_max is not None and value < previous_max):
            return
        if previous_max is None or value > previous_max:
            self.first = now
        self.last = now


class View(NamedTuple):
    """One number (active or queued) of one listener, as the endpoints report it."""

    snapshot: HistogramSnapshot
    current: int
    first_peak: float | None
    last_peak: float | None
    last_reset: float


class _Listener:
    """Everything kept about one listener since its last reset."""

    __slots__ = ("aggregates", "peaks", "reset_at", "current", "seen_at")

    def __init__(self, now: float) -> None:
        self.aggregates = {kind: Aggregate() for kind in _KINDS}
        self.peaks = {kind: _Peak() for kind in _KINDS}
        self.reset_at = now
        self.current = ListenStats(0, 0)
        self.seen_at = now

    def add(self, stats: ListenStats, now: float) -> None:
        for kind, value in zip(_KINDS, stats):
            self.peaks[kind].update(value, self.aggregates[kind].max, now)
            self.aggregates[kind].add(value)
        self.current = stats
        self.seen_at = now

    def reset(self, now: float) -> None:
        for kind in _KINDS:
            self.aggregates[kind].reset()
            self.peaks[kind] = _Peak()
        self.reset_at = now

    def view(self, kind: str) -> View:
        peak = self.peaks[kind]
        return View(self.aggregates[kind].snapshot(), getattr(self.current, kind), peak.first, peak.last, self.reset_at)


class _Source:
    """The listeners to read: all of the host's, or the configured ones (0/0 while absent)."""

    def __init__(self, listeners: Sequence[str] | None) -> None:
        if isinstance(listeners, (str, bytes)):
            raise TypeError("listeners must be a list of addresses, not a single string")
        names = None if listeners is None else list(listeners)
        self.everything = not names
        self.tcp = [name for name in names or () if not name.startswith(("/", "@"))]
        self.unix = [name for name in names or () if name.startswith(("/", "@"))]
        # Canonical keys, as the stats are keyed; also rejects bad addresses now.
        keys = [address.key for address in linux._tcp_addresses(self.tcp)] if self.tcp else []
        keys += [linux._unix_key(linux._unix_name(path)) for path in self.unix]
        self.configured = tuple(dict.fromkeys(keys))

    def read(self, sock: linux.InetDiagSocket) -> dict[str, ListenStats]:
        if self.everything:
            stats = linux.tcp_listener_stats(None, sock)
            stats.update(linux.unix_listener_stats(None))
            return stats
        stats = linux.tcp_listener_stats(self.tcp, sock) if self.tcp else {}
        if self.unix:
            stats.update(linux.unix_listener_stats(self.unix))
        return {key: stats.get(key, ListenStats(0, 0)) for key in self.configured}


Point = tuple[float, dict[str, tuple[int, int]]]


class _Sampler:
    """One process's sampler thread, its netlink socket, and the statistics it keeps.

    The thread is the only writer; request threads read under `lock` and wait
    on `changed` for the next sample.
    """

    def __init__(self, source: _Source, delay: float, history: int) -> None:
        self._source = source
        self.delay = delay
        self.window = delay * history
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.listeners: dict[str, _Listener] = {}
        self.points: deque[Point] = deque(maxlen=history)
        self.latest: dict[str, ListenStats] = {}
        self.taken = time.time()
        self.sequence = 0
        self.streams = 0
        self._stop = threading.Event()
        self._diag: linux.InetDiagSocket | None = None
        self._thread: threading.Thread | None = None
        self._last_error = ""

    def start(self) -> None:
        """Takes the first sample now (so the first request has data) and starts the thread."""
        self.sample()
        self._thread = threading.Thread(target=self._run, name="raindrops-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.delay):
                self.sample()
        finally:
            self._close_diag()

    def _close_diag(self) -> None:
        diag, self._diag = self._diag, None
        if diag is not None:
            diag.close()

    def _read(self) -> dict[str, ListenStats] | None:
        try:
            if self._diag is None:
                self._diag = linux.InetDiagSocket()
            stats = self._source.read(self._diag)
        except (OSError, ValueError) as error:
            self._close_diag()  # a fresh socket next time, in case this one is broken
            message = f"{type(error).__name__}: {error}"
            if message != self._last_error:
                LOG.error("raindrops.Watcher could not read listener stats: %s", message)
            self._last_error = message
            return None
        self._last_error = ""
        return stats

    def sample(self) -> None:
        stats = self._read()
        if stats is None:
            return
        now = time.time()
        with self.lock:
            for address, stat in stats.items():
                listener = self.listeners.get(address)
                if listener is None:
                    listener = self.listeners[address] = _Listener(now)
                listener.add(stat, now)
            self._forget_gone(stats, now)
            self.points.append((now, {address: (stat.active, stat.queued) for address, stat in stats.items()}))
            self.latest = dict(sorted(stats.items()))
            self.taken = now
            self.sequence += 1
            self.changed.notify_all()

    def _forget_gone(self, stats: dict[str, ListenStats], now: float) -> None:
        """Drops listeners gone for longer than the chart shows: a host where servers come and go
        on new ports would otherwise grow this dict forever."""
        for address, listener in list(self.listeners.items()):
            if address not in stats and now - listener.seen_at > self.window:
                del self.listeners[address]

    def wait_next(self, sequence: int, timeout: float) -> bool:
        """Waits until a sample newer than `sequence` exists or the sampler stops; False on timeout."""
        with self.changed:
            return self.changed.wait_for(lambda: self.sequence != sequence or self._stop.is_set(), timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        with self.changed:
            self.changed.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
        if thread is None:
            self._close_diag()


# The WSGI application.


class _Route(NamedTuple):
    name: str  # index, series, stats, tail, reset, slash
    methods: tuple[str, ...]
    kind: str = ""
    address: str = ""
    extension: str = ""


def _route(path: str) -> _Route | None:
    if path == "":
        return _Route("slash", _GET)
    if path == "/":
        return _Route("index", _GET)
    if path == "/series.json":
        return _Route("series", _GET)
    top, _, rest = path[1:].partition("/")
    if not rest:
        return None
    if top == "reset":
        return _Route("reset", _POST, address=rest)
    address, dot, extension = rest.rpartition(".")
    if not dot or not address:
        return None
    if top in _KINDS and extension in _STAT_TYPES:
        return _Route("stats", _GET, top, address, extension)
    if top == "tail" and extension == "txt":
        return _Route("tail", _GET, address=address)
    return None


def _path_info(environ: Environ) -> str:
    """PATH_INFO as text: WSGI hands over the raw bytes as latin-1, names are UTF-8 (or any bytes)."""
    raw: str = environ.get("PATH_INFO", "")
    return raw.encode("latin-1", "replace").decode("utf-8", "surrogateescape")


def _reply(
    start_response: StartResponse, method: str, status: str, headers: list[tuple[str, str]], body: bytes
) -> list[bytes]:
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [] if method == "HEAD" else [body]


def _plain(
    start_response: StartResponse, method: str, status: str, extra: Sequence[tuple[str, str]] = ()
) -> list[bytes]:
    """A short text answer such as raindrops' "Not Found"."""
    body = status.partition(" ")[2].encode()
    return _reply(start_response, method, status, [("Content-Type", "text/plain"), *extra], body)


def _client_gone(sock: Any) -> bool:
    """True once the peer closed (or reset) the connection; never blocks.

    poll() first: recv() on a socket with a timeout would wait that long even
    with MSG_DONTWAIT. Readable with nothing to read is the peer's FIN.
    """
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | getattr(select, "POLLRDHUP", 0))
        events = poller.poll(0)
        if not events:
            return False
        if events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)):
            return True
        peeked: bytes = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return peeked == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True


def _non_negative(query: dict[str, list[str]], name: str) -> int:
    text = query.get(name, ["0"])[-1]
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{name} must be a non-negative integer, not {text!r}")
    return int(text)


def _view_json(address: str, kind: str, view: View) -> dict[str, object]:
    snapshot = view.snapshot
    body = exposition.histogram_json(snapshot)
    low, high = exposition.outliers(snapshot)
    body.update(
        address=address,
        kind=kind,
        current=view.current,
        mean=snapshot.mean if snapshot.count else None,
        std_dev=snapshot.std_dev if snapshot.count > 1 else None,
        outliers_low=low,
        outliers_high=high,
        last_reset=view.last_reset,
        first_peak_at=view.first_peak,
        last_peak_at=view.last_peak,
    )
    return body


class Watcher:
    """A WSGI application: live dashboard and raindrops' per-listener endpoints.

    `listeners=None` (or empty) watches every TCP and unix listener of the
    host, as they come and go; a list of addresses ("127.0.0.1:8080",
    "[::]:443", "/run/app.sock") watches those, reading 0 while one is
    absent. `delay` is the sampling interval in seconds, `history` how many
    samples the dashboard shows. Serve it from a multi-threaded server:
    /tail streams hold their thread.
    """

    def __init__(
        self, listeners: Sequence[str] | None = None, *, delay: float = DELAY, history: int = HISTORY
    ) -> None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not DELAY_MIN <= delay <= DELAY_MAX:
            raise ValueError(f"delay must be a number of seconds in [{DELAY_MIN}, {DELAY_MAX}], not {delay!r}")
        if isinstance(history, bool) or not isinstance(history, int) or not 2 <= history <= HISTORY_MAX:
            raise ValueError(f"history must be an int in [2, {HISTORY_MAX}], not {history!r}")
        self._source = _Source(listeners)
        self.delay = float(delay)
        self.history = history
        self.hostname = socket.gethostname()
        self._sampler: _Sampler | None = None
        self._pid = 0
        self._start_lock = threading.Lock()
        _WATCHERS.add(self)

    # The sampler.

    def _running(self) -> _Sampler:
        """This process's sampler, started on first use (and again in a forked child)."""
        sampler = self._sampler
        if sampler is not None and self._pid == PROCESS.pid:
            return sampler
        with self._start_lock:
            if self._sampler is None or self._pid != PROCESS.pid:
                sampler = _Sampler(self._source, self.delay, self.history)
                sampler.start()
                self._sampler, self._pid = sampler, PROCESS.pid
            return self._sampler

    def start(self) -> None:
        """Starts sampling now rather than at the first request (a server of its own does this)."""
        self._running()

    def close(self) -> None:
        """Stops the sampler thread and ends the /tail streams; a later request starts it again."""
        with self._start_lock:
            sampler, self._sampler = self._sampler, None
        if sampler is not None and self._pid == PROCESS.pid:
            sampler.stop()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def streams(self) -> int:
        """How many /tail responses are streaming now."""
        sampler = self._sampler
        return 0 if sampler is None else sampler.streams

    def stats(self) -> dict[str, ListenStats]:
        """The latest sample: listener name -> ListenStats, sorted by name."""
        sampler = self._running()
        with sampler.lock:
            return dict(sampler.latest)

    def view(self, address: str, kind: str) -> View | None:
        """Statistics of `kind` ("active" or "queued") of a listener, None if never sampled."""
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'active' or 'queued', not {kind!r}")
        sampler = self._running()
        with sampler.lock:
            listener = sampler.listeners.get(address)
            return None if listener is None else listener.view(kind)

    # WSGI.

    def __call__(self, environ: Environ, start_response: StartResponse) -> Any:
        method = environ.get("REQUEST_METHOD", "GET")
        route = _route(_path_info(environ))
        if route is None:
            return _plain(start_response, method, "404 Not Found")
        if method not in route.methods:
            allow = ", ".join(route.methods)
            return _plain(start_response, method, "405 Method Not Allowed", [("Allow", allow)])
        if route.name == "slash":
            return self._redirect(start_response, method, _application_url(environ))
        sampler = self._running()
        if route.name == "index":
            return self._index(sampler, start_response, method)
        if route.name == "series":
            return self._series(sampler, environ, start_response, method)
        if route.name == "reset":
            return self._reset(sampler, route.address, environ, start_response, method)
        if route.name == "tail":
            return self._tail(sampler, route.address, environ, start_response, method)
        return self._stats(sampler, route, start_response, method)

    def _expires(self, sampler: _Sampler) -> str:
        return httpdate(sampler.taken + self.delay)

    def _index(self, sampler: _Sampler, start_response: StartResponse, method: str) -> list[bytes]:
        with sampler.lock:
            latest, taken = dict(sampler.latest), sampler.taken
        page = dashboard.index_page(self.hostname, isodate(taken), sampler.window, latest)
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Last-Modified", httpdate(taken)),
            ("Expires", self._expires(sampler)),
            ("Content-Security-Policy", dashboard.CONTENT_SECURITY_POLICY),
            ("X-Content-Type-Options", "nosniff"),
        ]
        return _reply(start_response, method, "200 OK", headers, page.encode("utf-8", "xmlcharrefreplace"))

    def _series(self, sampler: _Sampler, environ: Environ, start_response: StartResponse, method: str) -> list[bytes]:
        try:
            since = float(parse_qs(environ.get("QUERY_STRING", "")).get("since", ["0"])[-1])
        except ValueError:
            return _plain(start_response, method, "400 Bad Request")
        with sampler.lock:
            points = [point for point in sampler.points if point[0] > since]
            current = {address: stat._asdict() for address, stat in sampler.latest.items()}
            taken = sampler.taken if sampler.points else 0.0
        body = {
            "host": self.hostname,
            "delay": self.delay,
            "window": sampler.window,
            "updated": taken,
            "listeners": current,
            "points": points,
        }
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        return _reply(start_response, method, "200 OK", headers, data)

    def _stats(self, sampler: _Sampler, route: _Route, start_response: StartResponse, method: str) -> list[bytes]:
        with sampler.lock:
            listener = sampler.listeners.get(route.address)
            view = None if listener is None else listener.view(route.kind)
        if view is None:
            return _plain(start_response, method, "404 Not Found")
        headers = exposition.watcher_headers(view.snapshot) + [
            ("X-Last-Reset", httpdate(view.last_reset)),
            ("X-Current", str(view.current)),
            ("X-First-Peak-At", "" if view.first_peak is None else httpdate(view.first_peak)),
            ("X-Last-Peak-At", "" if view.last_peak is None else httpdate(view.last_peak)),
        ]
        if route.extension == "json":
            body = json.dumps(_view_json(route.address, route.kind, view)).encode() + b"\n"
        elif route.extension == "html":
            histogram = exposition.histogram_text(view.snapshot)
            page = dashboard.listener_page(self.hostname, route.address, route.kind, headers, histogram)
            body = page.encode("utf-8", "xmlcharrefreplace")
            headers.append(("Content-Security-Policy", dashboard.PAGE_CONTENT_SECURITY_POLICY))
        else:
            body = exposition.histogram_text(view.snapshot).encode()
        headers += [("Content-Type", _STAT_TYPES[route.extension]), ("Expires", self._expires(sampler))]
        return _reply(start_response, method, "200 OK", headers, body)

    def _reset(
        self, sampler: _Sampler, address: str, environ: Environ, start_response: StartResponse, method: str
    ) -> list[bytes]:
        with sampler.lock:
            listener = sampler.listeners.get(address)
            if listener is None:
                return _plain(start_response, method, "404 Not Found")
            listener.reset(time.time())
            sequence = sampler.sequence
        # Like raindrops: answer after the next sample, so the page it returns to is not empty.
        sampler.wait_next(sequence, min(2 * self.delay + 0.5, _RESET_WAIT_MAX))
        return self._redirect(start_response, method, _back(environ))

    @staticmethod
    def _redirect(start_response: StartResponse, method: str, location: str) -> list[bytes]:
        body = f"Redirecting to {location}".encode("latin-1", "replace")
        headers = [("Location", location), ("Content-Type", "text/plain")]
        return _reply(start_response, method, "302 Found", headers, body)

    def _tail(
        self, sampler: _Sampler, address: str, environ: Environ, start_response: StartResponse, method: str
    ) -> Any:
        with sampler.lock:
            known = address in sampler.listeners
        if not known:
            return _plain(start_response, method, "404 Not Found")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            active_min, queued_min = _non_negative(query, "active_min"), _non_negative(query, "queued_min")
        except ValueError:
            return _plain(start_response, method, "400 Bad Request")
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Cache-Control", "no-transform"),
                ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ("X-Accel-Buffering", "no"),
            ],
        )
        if method == "HEAD":
            return []
        client = next((environ[key] for key in CLIENT_SOCKET_KEYS if hasattr(environ.get(key), "fileno")), None)
        return _tail_lines(sampler, address, active_min, queued_min, client)


def _tail_lines(sampler: _Sampler, address: str, active_min: int, queued_min: int, client: Any) -> Iterator[bytes]:
    """raindrops' tail lines, one per new sample that passes the filters.

    Ends when the client is gone (seen on its socket when the server exposes
    it, else when writing fails and the server closes this generator), or
    when the Watcher is closed.
    """
    width = min(len(address), _TAIL_ADDRESS_WIDTH_MAX)
    with sampler.lock:
        sampler.streams += 1
        seen = sampler.sequence
    try:
        while not sampler.stopped:
            fresh = sampler.wait_next(seen, min(sampler.delay, _CLIENT_CHECK))
            if client is not None and _client_gone(client):
                return
            if not fresh:
                continue
            with sampler.lock:
                seen, taken, stat = sampler.sequence, sampler.taken, sampler.latest.get(address)
            if stat is not None and stat.active >= active_min and stat.queued >= queued_min:
                line = f"{isodate(taken):>20} {address:>{width}} {stat.active:>10} {stat.queued:>10}\n"
                yield line.encode("utf-8", "surrogateescape")
    finally:
        with sampler.lock:
            sampler.streams -= 1


def _application_url(environ: Environ) -> str:
    url = wsgiref.util.application_uri(environ)
    return url if url.endswith("/") else url + "/"


def _back(environ: Environ) -> str:
    """Where a reset returns: the page it came from when that is this server, else the dashboard."""
    referer: str = environ.get("HTTP_REFERER", "")
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    try:
        parts = urlsplit(referer)
    except ValueError:
        return _application_url(environ)
    if parts.scheme in ("http", "https") and parts.netloc == host:
        return referer
    return _application_url(environ)


_WATCHERS: weakref.WeakSet[Watcher] = weakref.WeakSet()


def _forget_after_fork() -> None:
    """In a forked child the parent's sampler thread does not exist: start afresh on first use."""
    for watcher in list(_WATCHERS):
        watcher._start_lock = threading.Lock()
        watcher._sampler = None


os.register_at_fork(after_in_child=_forget_after_fork)


__all__ = ["CLIENT_SOCKET_KEYS", "DELAY", "HISTORY", "View", "Watcher"]
