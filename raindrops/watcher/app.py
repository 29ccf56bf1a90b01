"""raindrops.Watcher, the WSGI application: its routes and endpoints.

Endpoints (relative links, so the app can be mounted under a prefix):
  GET /                          live dashboard (charts every second) and raindrops' table
  GET /series.json?since=T       the samples taken after time T, for the dashboard
  GET /active/ADDR.txt|.html|.json, /queued/...
                                 histogram with raindrops' X-* headers
  GET /tail/ADDR.txt?active_min=N&queued_min=M
                                 one line per sample passing the filters, until the client leaves
                                 or tail_seconds_max; 503 beyond the streams a process may run
  POST /reset/ADDR               forget ADDR's statistics and peaks, 302 back; only from a page of
                                 the same origin (Origin, else Referer), else 403
  (the mount point without its slash)
                                 302 to it with the slash, so that relative links resolve
Every route answers only the clients its AccessRule allows (raindrops.wsgi.http: `allow`,
`trusted_proxies`), as every raindrops endpoint does.
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
import math
import select
import socket
import sys
import threading
import time
import weakref
import wsgiref.util
from collections.abc import Generator, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from email.utils import formatdate
from types import FrameType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from raindrops import _process, capacity, exposition, linux, segments
from raindrops._process import PerProcess
from raindrops.linux import ListenStats
from raindrops.watcher import pages, shared
from raindrops.watcher.sampler import KINDS, LOG, View, _Sampler
from raindrops.wsgi import http
from raindrops.wsgi.http import DEFAULT_ALLOW, Environ, StartResponse

DELAY = 1.0
DELAY_MIN = 0.001
DELAY_MAX = 3600.0
HISTORY = 300
HISTORY_MAX = 100_000
TAIL_SECONDS_MAX = 300.0
"""How long a /tail stream runs at most by default: then it ends, and the client asks again."""
TAIL_SECONDS_LIMIT = 86_400.0
TAIL_STREAMS_THREADED = 1
"""/tail streams per process by default when the server runs threads but does not say how many:
the others serve the app. Where it says (raindrops.capacity), (capacity - 1) // 2."""
TAIL_STREAMS_LIMIT = 1024
_CLIENT_CHECK = 0.25  # seconds between checks that a /tail client is still there
_RESET_WAIT_MAX = 10.0
_TAIL_ADDRESS_WIDTH_MAX = 35
_STAT_TYPES = {"txt": "text/plain", "html": "text/html", "json": "application/json"}
_GET = ("GET", "HEAD")
_POST = ("POST",)
_NEVER = "Thu, 01 Jan 1970 00:00:00 GMT"
_TAIL_HEADERS = (
    ("Content-Type", "text/plain"),
    ("Cache-Control", "no-transform"),
    ("Expires", _NEVER),
    ("X-Accel-Buffering", "no"),
)
_CROSS_SITE = (
    b"403 Forbidden: a reset must come from a page of this server "
    b"(an Origin or Referer header of the same scheme, host and port)\n"
)
_RAW_URI_KEYS = ("RAW_URI", "REQUEST_URI")
"""environ keys where servers keep the request line's target (gunicorn, uWSGI)."""


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


def _slash_url(environ: Environ) -> str:
    """The mount point with its slash, and the query: where the dashboard's relative links work."""
    query = environ.get("QUERY_STRING", "")
    return _application_url(environ) + (f"?{query}" if query and http.header_safe(query) else "")


def _missing_slash(environ: Environ) -> bool:
    """Whether the URL asked for lacks the slash after the mount point although PATH_INFO is "/":
    a dispatcher that hands "/watch" over as "/" would make every relative link resolve one
    level up. The request line's target tells, where the server keeps it."""
    for key in _RAW_URI_KEYS:
        raw = environ.get(key)
        if isinstance(raw, str) and raw:
            path = raw.partition("?")[0].partition("#")[0]
            if "://" in path:  # the absolute form a proxy may send
                path = urlsplit(path).path or "/"
            return not path.endswith("/")
    return False


def _back(environ: Environ) -> str:
    """Where a reset returns: the page it came from when that is a page of this origin that
    can go into a header line as it is, else the dashboard."""
    referer: str = environ.get("HTTP_REFERER", "")
    if http.header_safe(referer) and http.url_origin(referer) == http.own_origin(environ):
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
    sampler: _Sampler,
    address: str,
    active_min: int,
    queued_min: int,
    client: Any,
    end_monotonic: float,
) -> Generator[bytes, None, None]:
    """raindrops' tail lines, one per new sample that passes the filters.

    Ends when the client is gone (seen on its socket when the server exposes
    it, else when writing fails and the server closes this generator), at
    `end_monotonic`, or when the Watcher is closed.
    """
    width = min(len(address), _TAIL_ADDRESS_WIDTH_MAX)
    try:
        seen = sampler.state().sequence
        while not sampler.stopped:
            left = end_monotonic - time.monotonic()
            if left <= 0:
                return
            fresh = sampler.wait_next(seen, min(sampler.delay, _CLIENT_CHECK, left))
            if client is not None and _client_gone(client):
                return
            if not fresh:
                continue
            state = sampler.state()
            seen, taken, stat = state.sequence, state.taken, state.latest.get(address)
            if stat is not None and stat.active >= active_min and stat.queued >= queued_min:
                stamp = isodate(taken)
                line = exposition.tail_line(stamp, address, stat.active, stat.queued, width)
                yield line.encode("utf-8")
    except segments.SEGMENT_ERRORS:
        return  # the segment went bad (logged by the sampler): the next request falls back


class _TailSlots:
    """This process's /tail streams, each by the monotonic time it must end at the latest.

    A stream holds a server thread for as long as it runs: bounding them per
    process leaves the other threads to the application.
    """

    __slots__ = ("_lock", "_ends")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ends: list[float] = []

    def __len__(self) -> int:
        return len(self._ends)

    def take(self, limit: int, seconds: float) -> float | None:
        """A new stream's end, or None when `limit` streams run already."""
        with self._lock:
            if len(self._ends) >= limit:
                return None
            end = time.monotonic() + seconds
            self._ends.append(end)
            return end

    def give(self, end: float) -> None:
        with self._lock:
            self._ends.remove(end)

    def retry_after(self, seconds: float) -> int:
        """Whole seconds until the first stream ends at the latest (`seconds` when none runs)."""
        with self._lock:
            first = min(self._ends, default=time.monotonic() + seconds)
        return max(1, math.ceil(first - time.monotonic()))


class _TailBody:
    """A /tail response body: its lines, holding a stream slot until the server's close()."""

    __slots__ = ("_lines", "_slots", "_once")

    def __init__(self, lines: Generator[bytes, None, None], slots: _TailSlots, end: float) -> None:
        self._lines = lines
        self._slots = slots
        self._once = [end]  # list.pop() is atomic: a second close() finds it empty

    def __iter__(self) -> Iterator[bytes]:
        return self._lines

    def close(self) -> None:
        try:
            end = self._once.pop()
        except IndexError:
            return
        try:
            self._lines.close()
        finally:
            self._slots.give(end)


# The application.


def _checked_seconds(name: str, value: float, minimum: float, maximum: float) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not minimum <= value <= maximum:
        raise ValueError(
            f"{name} must be a number of seconds in [{minimum}, {maximum}], not {value!r}"
        )
    return float(value)


def _checked_streams(streams: int | None) -> int | None:
    """None leaves the bound to the server's threading (Watcher._tail_limit)."""
    if streams is None:
        return None
    if isinstance(streams, bool) or not isinstance(streams, int):
        raise ValueError(f"tail_streams_max must be None or an int, not {streams!r}")
    if not 0 <= streams <= TAIL_STREAMS_LIMIT:
        raise ValueError(f"tail_streams_max must be in [0, {TAIL_STREAMS_LIMIT}], not {streams}")
    return streams


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


def _segment_path(listeners: Sequence[str] | None, delay: float, history: int) -> str:
    """What names a Watcher's segment among those of its server (the `path` of
    segments.ServerWide): two Watchers watching the same way share it, two others do not."""
    watched = "\0".join(listeners) if listeners is not None else "*"
    return f"/watch\0{watched}\0{delay!r}\0{history}"


def _abandon(sampler: PerProcess[_Sampler]) -> None:
    """A dropped Watcher's finalizer: this process's sampler thread, if any, is told to end."""
    running = sampler.current()
    if running is not None:
        running.abandon()


def _greenlets() -> bool:
    """Whether a greenlet library is loaded. There the sampler starts at the first request: a
    thread started earlier (gunicorn's gevent worker patches threading after fork) would be a
    real one, whose locks block every greenlet of the worker."""
    return "gevent" in sys.modules or "eventlet" in sys.modules


def _built_in_a_worker(frame: FrameType | None) -> bool:
    """Whether a Watcher is being built in a worker of a prefork server, after fork (gunicorn
    without --preload, uWSGI --lazy-apps), as the server tells: the gunicorn worker among the
    calling frames (raindrops.capacity), uWSGI's worker number. A master building it before
    fork is no worker: it never samples, its workers start as they are forked."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None:
        return int(uwsgi.worker_id()) > 0
    return capacity.of_this_worker(frame) != capacity.UNKNOWN


class _Fallback(NamedTuple):
    """A process's own board after the server's segment went bad under it, and why."""

    board: shared.Board
    notice: segments.Notice


class Watcher:
    """A WSGI application: live dashboard and raindrops' per-listener endpoints.

    `listeners=None` (or empty) watches every TCP and unix listener of the
    host, as they come and go; a list of addresses ("127.0.0.1:8080",
    "[::]:443", "/run/app.sock") watches those, reading 0 while one is
    absent. `delay` is the sampling interval in seconds, `history` how many
    samples the dashboard shows. `allow` and `trusted_proxies` say who may
    use it, as for every raindrops endpoint (loopback by default).

    A /tail stream holds its server thread: each process runs at most
    `tail_streams_max` of them (503 with Retry-After beyond), and each ends
    after `tail_seconds_max`. By default most of a worker's threads stay with
    the application: (capacity - 1) // 2 streams where the server tells its
    capacity (raindrops.capacity: gunicorn --threads, uWSGI cores), so none
    for one or two threads; elsewhere TAIL_STREAMS_THREADED when the server
    runs threads and none when it does not (wsgi.multithread).

    Every worker of a server answers the same samples, peaks and resets: they
    live in shared memory found as the middleware's is (raindrops.segments:
    inherited when the Watcher is built before fork, named after the master
    otherwise), and one process at a time samples the kernel, holding a lease
    that another worker takes over when it dies (raindrops.watcher.shared).
    Every worker watches the lease from its start, not from its first request
    (a forked child of a process holding a Watcher, or a worker that builds its
    own, as the server tells; under gevent and eventlet, from its first
    request). A segment that goes bad under a process (a buggy process of the
    same user wrote its header) leaves that process sampling alone in private
    memory, saying so on every answer (X-Raindrops-Degraded).
    """

    def __init__(
        self,
        listeners: Sequence[str] | None = None,
        *,
        delay: float = DELAY,
        history: int = HISTORY,
        allow: Iterable[str] = DEFAULT_ALLOW,
        trusted_proxies: Iterable[str] = (),
        tail_streams_max: int | None = None,
        tail_seconds_max: float = TAIL_SECONDS_MAX,
    ) -> None:
        self.delay = _checked_seconds("delay", delay, DELAY_MIN, DELAY_MAX)
        self.history = _checked_history(history)
        self._access = http.AccessRule(allow, trusted_proxies)
        self.tail_streams_max = _checked_streams(tail_streams_max)
        self.tail_seconds_max = _checked_seconds(
            "tail_seconds_max", tail_seconds_max, DELAY_MIN, TAIL_SECONDS_LIMIT
        )
        self._tails: PerProcess[_TailSlots] = PerProcess()
        self._listeners = _watched(listeners)
        self._layout = shared.Layout.of(self._listeners, self.history)
        self._boards = segments.ServerWide(
            shared.board_maker(self._layout),
            given=None,
            name=None,
            kind=shared.KIND,
            path=_segment_path(self._listeners, self.delay, self.history),
        )
        self._fallback: PerProcess[_Fallback] = PerProcess()
        self.hostname = socket.gethostname()
        self._sampler: PerProcess[_Sampler] = PerProcess()
        # A Watcher dropped without close() ends its thread, which closes its socket. The
        # finalizer holds the sampler's holder, never the Watcher, and the thread holds only
        # the sampler: nothing keeps a dropped Watcher alive.
        weakref.finalize(self, _abandon, self._sampler)
        _STARTED_IN_CHILDREN.add(self)
        if not _greenlets() and _built_in_a_worker(sys._getframe(1)):
            self._start_early({"wsgi.multiprocess": True}, look_now=True)

    # The sampler.

    def _running(self, environ: Environ | None = None) -> _Sampler:
        """This process's sampler, started on first use (and again in a forked child), on the
        segment this process shares with its server's other workers (`environ` of a request
        tells whether there are several; without one, the Watcher's own segment)."""
        return self._sampler.get(lambda: self._start_sampler(environ or {}))

    def _start_sampler(self, environ: Environ, *, look_now: bool = True) -> _Sampler:
        fallback = self._fallback.current()
        board = self._boards.get(environ) if fallback is None else fallback.board
        listeners = linux.ListenerSet(self._listeners)
        sampler = _Sampler(board, listeners, self.delay, self.history)
        sampler.start(look_now=look_now)
        _STARTED_IN_CHILDREN.add(self)
        return sampler

    def _start_early(self, environ: Environ, *, look_now: bool) -> None:
        """Starts this process's sampler before any request, so that it watches the lease from
        now on; never raises (observability never breaks the app): the first request tries
        again."""
        try:
            self._sampler.get(lambda: self._start_sampler(environ, look_now=look_now))
        except Exception as error:  # noqa: BLE001 - logged, and retried by the first request
            LOG.warning(
                "raindrops.Watcher could not start sampling in process %d (%s: %s); "
                "its first request starts it",
                _process.PROCESS.pid,
                type(error).__name__,
                error,
            )

    def start(self) -> None:
        """Starts sampling now rather than at the first request (a server of its own does this)."""
        self._running()

    def close(self) -> None:
        """Stops the sampler thread and ends the /tail streams; a later request starts it again
        (a child forked meanwhile does not start it)."""
        _STARTED_IN_CHILDREN.discard(self)
        sampler = self._sampler.take()
        if sampler is not None:
            sampler.stop()

    def _fall_back(self, error: BaseException) -> bool:
        """After `error` from a request's work: when this process's board itself is broken (a
        same-uid process wrote its header after attach), this process samples alone from now
        on, in private memory, and its answers say so; False when the board is sound (the
        error is not the segment's) or is that private memory already."""
        sampler = self._sampler.current()
        if sampler is None or self._fallback.current() is not None:
            return False
        try:
            len(sampler.board.counters)
        except segments.SEGMENT_ERRORS:
            pass
        else:
            return False
        self._fallback.get(lambda: self._private(error))
        if self._sampler.current() is sampler:  # not replaced by another request meanwhile
            broken = self._sampler.take()
            if broken is not None:
                broken.stop()
        return True

    def _private(self, error: BaseException) -> _Fallback:
        reason = segments.degraded_reason(error)
        LOG.warning(
            "raindrops.Watcher: its shared memory went bad under process %d (%s: %s); this "
            "process samples alone from now on (%s)",
            _process.PROCESS.pid,
            type(error).__name__,
            error,
            reason,
        )
        notice = segments.Notice((reason,), [(segments.DEGRADED_HEADER, reason)])
        return _Fallback(shared.Board(self._layout), notice)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def streams(self) -> int:
        """How many /tail responses this process is streaming now."""
        slots = self._tails.current()
        return 0 if slots is None else len(slots)

    def stats(self) -> dict[str, ListenStats]:
        """The latest sample: listener name (printable, as in every output) -> ListenStats,
        sorted by name."""
        return dict(self._running().state().latest)

    def view(self, address: str, kind: str) -> View | None:
        """Statistics of `kind` ("active" or "queued") of a listener, None if never sampled."""
        if kind not in KINDS:
            raise ValueError(f"kind must be 'active' or 'queued', not {kind!r}")
        return self._running().view(address, kind)

    # WSGI.

    def __call__(self, environ: Environ, start_response: StartResponse) -> Any:
        method = environ.get("REQUEST_METHOD", "GET")
        if not self._access.allows(environ):
            return http.forbidden(start_response, method)
        if not http.valid_host(environ.get("HTTP_HOST", "")):
            return http.plain(start_response, method, "400 Bad Request")  # it makes our URLs
        route = _route(_path_info(environ))
        if route is None:
            return http.plain(start_response, method, "404 Not Found")
        if method not in route.methods:
            allow = ", ".join(route.methods)
            return http.plain(start_response, method, "405 Method Not Allowed", [("Allow", allow)])
        if route.name == "slash" or (route.name == "index" and _missing_slash(environ)):
            return _redirect(start_response, method, _slash_url(environ))
        if route.name == "reset" and not http.same_origin(environ):
            return http.reply(start_response, method, "403 Forbidden", "text/plain", _CROSS_SITE)
        server_frame = sys._getframe(1)  # the server's, where raindrops.capacity looks
        try:
            return self._answer(route, environ, start_response, method, server_frame)
        except segments.SEGMENT_ERRORS as error:
            if not self._fall_back(error):
                raise
        return self._answer(route, environ, start_response, method, server_frame)

    def _answer(
        self,
        route: _Route,
        environ: Environ,
        start_response: StartResponse,
        method: str,
        server_frame: FrameType | None,
    ) -> Any:
        sampler = self._running(environ)
        sampler.claim_orphaned()
        if route.name == "index":
            return self._index(sampler, start_response, method)
        if route.name == "series":
            return self._series(sampler, environ, start_response, method)
        if route.name == "reset":
            return self._reset(sampler, route.address, environ, start_response, method)
        if route.name == "tail":
            return self._tail(sampler, route.address, environ, start_response, server_frame)
        return self._stats(sampler, route, start_response, method)

    def _expires(self, sampler: _Sampler) -> str:
        return httpdate(sampler.state().taken + self.delay)

    def _notice(self) -> segments.Notice:
        """Why this process's answers are its own samples, not the server's: it could not use
        its server's segment, or that segment went bad under it."""
        fallback = self._fallback.current()
        return self._boards.notice() if fallback is None else fallback.notice

    def _degraded(self) -> list[tuple[str, str]]:
        """X-Raindrops-Degraded when this process answers from its own samples."""
        return self._notice().headers

    def _index(self, sampler: _Sampler, start_response: StartResponse, method: str) -> list[bytes]:
        state = sampler.state()
        latest, taken = state.latest, state.taken
        page = pages.index_page(self.hostname, isodate(taken), sampler.window, latest)
        headers = [
            ("Last-Modified", httpdate(taken)),
            ("Expires", self._expires(sampler)),
            ("Content-Security-Policy", pages.CONTENT_SECURITY_POLICY),
            ("X-Content-Type-Options", "nosniff"),
            *self._degraded(),
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
        state = sampler.state()
        current = {address: stat._asdict() for address, stat in state.latest.items()}
        body = {
            "host": self.hostname,
            "delay": self.delay,
            "window": sampler.window,
            "updated": state.taken if state.points else 0.0,
            "listeners": current,
            "points": sampler.points(state, since),
            "sampler": state.sampler,
            "left_out": state.left_out,
            "degraded": list(self._notice().reasons),
        }
        data = json.dumps(body, separators=(",", ":")).encode()
        extra = [("Cache-Control", "no-store"), *self._degraded()]
        return http.reply(start_response, method, "200 OK", "application/json", data, extra)

    def _stats(
        self, sampler: _Sampler, route: _Route, start_response: StartResponse, method: str
    ) -> list[bytes]:
        view = sampler.view(route.address, route.kind)
        if view is None:
            return http.plain(start_response, method, "404 Not Found")
        headers = _view_headers(view) + self._degraded()
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
        ticket = sampler.ask_reset(address)
        if ticket is None:
            return http.plain(start_response, method, "404 Not Found")
        # The sampling process (maybe another worker) applies it with its next sample. Like
        # raindrops: answer after that sample, so the page it returns to is not empty.
        sampler.wait_reset(ticket, min(2 * self.delay + 0.5, _RESET_WAIT_MAX))
        return _redirect(start_response, method, _back(environ))

    def _tail(
        self,
        sampler: _Sampler,
        address: str,
        environ: Environ,
        start_response: StartResponse,
        server_frame: FrameType | None,
    ) -> Any:
        method = environ.get("REQUEST_METHOD", "GET")
        if address not in sampler.state().slots:
            return http.plain(start_response, method, "404 Not Found")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            active_min = _non_negative(query, "active_min")
            queued_min = _non_negative(query, "queued_min")
        except ValueError:
            return http.plain(start_response, method, "400 Bad Request")
        limit, why = self._tail_limit(environ, server_frame)
        slots = self._tails.get(_TailSlots)
        if method == "HEAD":
            if len(slots) >= limit:
                return self._tails_busy(slots, why, start_response, method)
            start_response("200 OK", list(_TAIL_HEADERS))
            return []
        end = slots.take(limit, self.tail_seconds_max)
        if end is None:
            return self._tails_busy(slots, why, start_response, method)
        try:
            start_response("200 OK", list(_TAIL_HEADERS))
        except BaseException:
            slots.give(end)
            raise
        client = http.client_socket(environ)
        lines = _tail_lines(sampler, address, active_min, queued_min, client, end)
        return _TailBody(lines, slots, end)

    def _tail_limit(self, environ: Environ, server_frame: FrameType | None) -> tuple[int, str]:
        """How many /tail streams this process may run, and why no more (for the 503):
        tail_streams_max when given; else (capacity - 1) // 2 where the server tells how many
        requests a worker serves at once (a stream holds one of them: most stay with the
        application); else one with threads and none without (a stream would hold a whole
        worker)."""
        given = self.tail_streams_max
        if given is not None:
            return given, f"at most {_streams(given)} per process run at once (tail_streams_max)"
        held = capacity.of_this_worker(server_frame)
        if held != capacity.UNKNOWN:
            limit = min((held - 1) // 2, TAIL_STREAMS_LIMIT)
            plural = "" if held == 1 else "s"
            return limit, (
                f"this worker serves {held} request{plural} at once and keeps most of them for "
                f"the application: at most {_streams(limit)} at once; "
                "Watcher(tail_streams_max=N) allows N"
            )
        if not environ.get("wsgi.multithread", True):
            return 0, (
                "this server runs one thread per worker (wsgi.multithread is false), so a /tail "
                "stream would hold a whole worker; Watcher(tail_streams_max=N) allows N"
            )
        return TAIL_STREAMS_THREADED, (
            f"at most {_streams(TAIL_STREAMS_THREADED)} per process run at once, so that the "
            "other threads serve the application; see Watcher(tail_streams_max=N)"
        )

    def _tails_busy(
        self, slots: _TailSlots, reason: str, start_response: StartResponse, method: str
    ) -> list[bytes]:
        """503: this process streams all the /tail responses it may; says when to ask again."""
        body = f"503 Service Unavailable: {reason}\n".encode()
        retry = [("Retry-After", str(slots.retry_after(self.tail_seconds_max)))]
        return http.reply(
            start_response, method, "503 Service Unavailable", "text/plain", body, retry
        )


def _streams(count: int) -> str:
    return f"{count} /tail stream{'' if count == 1 else 's'}"


_STARTED_IN_CHILDREN: weakref.WeakSet[Watcher] = weakref.WeakSet()
"""The Watchers (not closed) whose sampler a forked child starts at once."""


def _start_in_child() -> None:
    """In a forked child (a worker of a preloaded server): each Watcher it inherited starts its
    sampler now, so that this worker takes over sampling when the sampler dies even if it never
    serves the Watcher. The thread looks at the lease after half an interval: no I/O here."""
    if _greenlets():
        return
    for watcher in list(_STARTED_IN_CHILDREN):
        watcher._start_early({}, look_now=False)


_process.at_fork_in_child(_start_in_child)


__all__ = ["DELAY", "HISTORY", "View", "Watcher"]
