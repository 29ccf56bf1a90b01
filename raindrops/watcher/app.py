"""raindrops.Watcher, the WSGI application: its routes and endpoints.

Endpoints (relative links, so the app can be mounted under a prefix):
  GET /                          live dashboard (charts every second) and raindrops' table
  GET /series.json?since=T       the samples taken after time T, for the dashboard
  GET /active/ADDR.txt|.html|.json, /queued/...
                                 histogram with raindrops' X-* headers
  GET /tail/ADDR.txt?active_min=N&queued_min=M
                                 one line per sample passing the filters, until the client leaves
  POST /reset/ADDR               forget ADDR's statistics and peaks, 302 back
ADDR is the listener's name as raindrops.linux prints it, in its printable form
(exposition.printable_name: a backslash doubled, spaces, controls and bytes
that are not UTF-8 as \\xNN), URL-escaped ("127.0.0.1%3A8080",
"%2Ftmp%2Fapp.sock"). HEAD works wherever GET does.

Where this differs from raindrops' Watcher: an address the sampler has not
seen is 404 (not an empty 200); reset also forgets the peaks; its redirect is
an absolute URL; a peak time is empty until a non-zero peak happened; /tail
ends when the client disconnects; request threads never wait for the first
sample; sampler errors are logged and retried instead of killing the thread.
"""

from __future__ import annotations

import json
import select
import socket
import time
import weakref
import wsgiref.util
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from raindrops import exposition, linux
from raindrops._process import PerProcess
from raindrops.linux import ListenStats
from raindrops.watcher import pages
from raindrops.watcher.sampler import KINDS, View, _Sampler
from raindrops.wsgi import http
from raindrops.wsgi.http import Environ, StartResponse

DELAY = 1.0
DELAY_MIN = 0.001
DELAY_MAX = 3600.0
HISTORY = 300
HISTORY_MAX = 100_000
_CLIENT_CHECK = 0.25  # seconds between checks that a /tail client is still there
_RESET_WAIT_MAX = 10.0
_TAIL_ADDRESS_WIDTH_MAX = 35
_STAT_TYPES = {"txt": "text/plain", "html": "text/html", "json": "application/json"}
_GET = ("GET", "HEAD")
_POST = ("POST",)
_NEVER = "Thu, 01 Jan 1970 00:00:00 GMT"


def httpdate(when: float) -> str:
    return formatdate(when, usegmt=True)


def isodate(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Requests.


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
    if top in KINDS and extension in _STAT_TYPES:
        return _Route("stats", _GET, top, address, extension)
    if top == "tail" and extension == "txt":
        return _Route("tail", _GET, address=address)
    return None


def _path_info(environ: Environ) -> str:
    """PATH_INFO as text: WSGI hands over the raw bytes as latin-1, names are UTF-8
    (or any bytes)."""
    raw: str = environ.get("PATH_INFO", "")
    return raw.encode("latin-1", "replace").decode("utf-8", "surrogateescape")


def _non_negative(query: dict[str, list[str]], name: str) -> int:
    text = query.get(name, ["0"])[-1]
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{name} must be a non-negative integer, not {text!r}")
    return int(text)


def _application_url(environ: Environ) -> str:
    url = wsgiref.util.application_uri(environ)
    return url if url.endswith("/") else url + "/"


def _back(environ: Environ) -> str:
    """Where a reset returns: the page it came from when that is this server, else the
    dashboard."""
    referer: str = environ.get("HTTP_REFERER", "")
    host = environ.get("HTTP_HOST") or (
        f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    )
    try:
        parts = urlsplit(referer)
    except ValueError:
        return _application_url(environ)
    if parts.scheme in ("http", "https") and parts.netloc == host:
        return referer
    return _application_url(environ)


def _redirect(start_response: StartResponse, method: str, location: str) -> list[bytes]:
    body = f"Redirecting to {location}".encode("latin-1", "replace")
    extra = [("Location", location)]
    return http.reply(start_response, method, "302 Found", "text/plain", body, extra)


# Answers.


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


def _view_headers(view: View) -> list[tuple[str, str]]:
    """raindrops' X-* headers of one number of one listener."""
    return exposition.watcher_headers(view.snapshot) + [
        ("X-Last-Reset", httpdate(view.last_reset)),
        ("X-Current", str(view.current)),
        ("X-First-Peak-At", "" if view.first_peak is None else httpdate(view.first_peak)),
        ("X-Last-Peak-At", "" if view.last_peak is None else httpdate(view.last_peak)),
    ]


def _client_gone(sock: Any) -> bool:
    """True once the peer closed (or reset) the connection; never blocks.

    poll() first: recv() on a socket with a timeout would wait that long even
    with MSG_DONTWAIT. Readable with nothing to read is the peer's FIN.
    """
    hangup = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | getattr(select, "POLLRDHUP", 0))
        events = poller.poll(0)
        if not events:
            return False
        if events[0][1] & hangup:
            return True
        peeked: bytes = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return peeked == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True


def _tail_lines(
    sampler: _Sampler, address: str, active_min: int, queued_min: int, client: Any
) -> Iterator[bytes]:
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
                stamp = isodate(taken)
                line = exposition.tail_line(stamp, address, stat.active, stat.queued, width)
                yield line.encode("utf-8")
    finally:
        with sampler.lock:
            sampler.streams -= 1


# The application.


def _checked_delay(delay: float) -> float:
    number = isinstance(delay, (int, float)) and not isinstance(delay, bool)
    if not number or not DELAY_MIN <= delay <= DELAY_MAX:
        raise ValueError(
            f"delay must be a number of seconds in [{DELAY_MIN}, {DELAY_MAX}], not {delay!r}"
        )
    return float(delay)


def _checked_history(history: int) -> int:
    if isinstance(history, bool) or not isinstance(history, int) or not 2 <= history <= HISTORY_MAX:
        raise ValueError(f"history must be an int in [2, {HISTORY_MAX}], not {history!r}")
    return history


def _watched(listeners: Sequence[str] | None) -> list[str] | None:
    """The listeners to watch, checked now rather than in the sampler thread (linux.ListenerSet
    raises TypeError for anything but a list of str, ValueError for a bad address); None, the
    whole host, for None or an empty list. Each sampler makes its own ListenerSet of them, so
    that the netlink socket is its thread's to close."""
    if listeners is None:
        return None
    return list(linux.ListenerSet(listeners).keys) or None


def _abandon(sampler: PerProcess[_Sampler]) -> None:
    """A dropped Watcher's finalizer: this process's sampler thread, if any, is told to end."""
    running = sampler.current()
    if running is not None:
        running.abandon()


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
        self,
        listeners: Sequence[str] | None = None,
        *,
        delay: float = DELAY,
        history: int = HISTORY,
    ) -> None:
        self.delay = _checked_delay(delay)
        self.history = _checked_history(history)
        self._listeners = _watched(listeners)
        self.hostname = socket.gethostname()
        self._sampler: PerProcess[_Sampler] = PerProcess()
        # A Watcher dropped without close() ends its thread, which closes its socket. The
        # finalizer holds the sampler's holder, never the Watcher, and the thread holds only
        # the sampler: nothing keeps a dropped Watcher alive.
        weakref.finalize(self, _abandon, self._sampler)

    # The sampler.

    def _running(self) -> _Sampler:
        """This process's sampler, started on first use (and again in a forked child)."""
        return self._sampler.get(self._start_sampler)

    def _start_sampler(self) -> _Sampler:
        sampler = _Sampler(linux.ListenerSet(self._listeners), self.delay, self.history)
        sampler.start()
        return sampler

    def start(self) -> None:
        """Starts sampling now rather than at the first request (a server of its own does this)."""
        self._running()

    def close(self) -> None:
        """Stops the sampler thread and ends the /tail streams; a later request starts it again."""
        sampler = self._sampler.take()
        if sampler is not None:
            sampler.stop()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def streams(self) -> int:
        """How many /tail responses are streaming now."""
        sampler = self._sampler.current()
        return 0 if sampler is None else sampler.streams

    def stats(self) -> dict[str, ListenStats]:
        """The latest sample: listener name (printable, as in every output) -> ListenStats,
        sorted by name."""
        sampler = self._running()
        with sampler.lock:
            return dict(sampler.latest)

    def view(self, address: str, kind: str) -> View | None:
        """Statistics of `kind` ("active" or "queued") of a listener, None if never sampled."""
        if kind not in KINDS:
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
            return http.plain(start_response, method, "404 Not Found")
        if method not in route.methods:
            allow = ", ".join(route.methods)
            return http.plain(start_response, method, "405 Method Not Allowed", [("Allow", allow)])
        if route.name == "slash":
            return _redirect(start_response, method, _application_url(environ))
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
        page = pages.index_page(self.hostname, isodate(taken), sampler.window, latest)
        headers = [
            ("Last-Modified", httpdate(taken)),
            ("Expires", self._expires(sampler)),
            ("Content-Security-Policy", pages.CONTENT_SECURITY_POLICY),
            ("X-Content-Type-Options", "nosniff"),
        ]
        body = page.encode("utf-8", "xmlcharrefreplace")
        return http.reply(
            start_response, method, "200 OK", "text/html; charset=utf-8", body, headers
        )

    def _series(
        self, sampler: _Sampler, environ: Environ, start_response: StartResponse, method: str
    ) -> list[bytes]:
        try:
            since = float(parse_qs(environ.get("QUERY_STRING", "")).get("since", ["0"])[-1])
        except ValueError:
            return http.plain(start_response, method, "400 Bad Request")
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
        extra = [("Cache-Control", "no-store")]
        return http.reply(start_response, method, "200 OK", "application/json", data, extra)

    def _stats(
        self, sampler: _Sampler, route: _Route, start_response: StartResponse, method: str
    ) -> list[bytes]:
        with sampler.lock:
            listener = sampler.listeners.get(route.address)
            view = None if listener is None else listener.view(route.kind)
        if view is None:
            return http.plain(start_response, method, "404 Not Found")
        headers = _view_headers(view)
        if route.extension == "json":
            body = json.dumps(_view_json(route.address, route.kind, view)).encode() + b"\n"
        elif route.extension == "html":
            histogram = exposition.histogram_text(view.snapshot)
            page = pages.listener_page(self.hostname, route.address, route.kind, headers, histogram)
            body = page.encode("utf-8", "xmlcharrefreplace")
            headers.append(("Content-Security-Policy", pages.PAGE_CONTENT_SECURITY_POLICY))
        else:
            body = exposition.histogram_text(view.snapshot).encode()
        headers.append(("Content-Type", _STAT_TYPES[route.extension]))
        headers.append(("Expires", self._expires(sampler)))
        # raindrops' order, X-* first and Content-Length last, which http.reply does not keep.
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [] if method == "HEAD" else [body]

    def _reset(
        self,
        sampler: _Sampler,
        address: str,
        environ: Environ,
        start_response: StartResponse,
        method: str,
    ) -> list[bytes]:
        with sampler.lock:
            listener = sampler.listeners.get(address)
            if listener is None:
                return http.plain(start_response, method, "404 Not Found")
            listener.reset(time.time())
            sequence = sampler.sequence
        # Like raindrops: answer after the next sample, so the page it returns to is not empty.
        sampler.wait_next(sequence, min(2 * self.delay + 0.5, _RESET_WAIT_MAX))
        return _redirect(start_response, method, _back(environ))

    def _tail(
        self,
        sampler: _Sampler,
        address: str,
        environ: Environ,
        start_response: StartResponse,
        method: str,
    ) -> Any:
        with sampler.lock:
            known = address in sampler.listeners
        if not known:
            return http.plain(start_response, method, "404 Not Found")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            active_min = _non_negative(query, "active_min")
            queued_min = _non_negative(query, "queued_min")
        except ValueError:
            return http.plain(start_response, method, "400 Bad Request")
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Cache-Control", "no-transform"),
                ("Expires", _NEVER),
                ("X-Accel-Buffering", "no"),
            ],
        )
        if method == "HEAD":
            return []
        client = http.client_socket(environ)
        return _tail_lines(sampler, address, active_min, queued_min, client)


__all__ = ["DELAY", "HISTORY", "View", "Watcher"]
