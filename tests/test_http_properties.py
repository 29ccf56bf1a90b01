"""Property-based HTTP tests: every endpoint answers any request with a well-formed response.

Hypothesis generates methods (standard and arbitrary tokens), paths under and around every
mount point (percent-encoded, unicode, invalid UTF-8 handed over as latin-1 the way WSGI
servers pass PATH_INFO, dot segments, very long), query strings and hostile headers, and calls
Middleware, LastDataRecv and Watcher (alone, and stacked) as WSGI applications in this
process. Whoever the client is and whatever the access rule decides (403 is a fine answer),
the properties hold:

- nothing raises out of the application, and nothing answers 5xx (but a 503 with Retry-After:
  a /tail refused for want of a free stream slot);
- start_response is called exactly once, with a valid status line and valid headers (names
  are tokens, values latin-1 text without CR, LF or NUL, one Content-Type and at most one
  Content-Length, which is the body's length);
- HEAD has an empty body;
- the body is well-formed for its Content-Type: JSON parses, Prometheus passes
  testsupport.formats.check_prometheus_text, OpenMetrics parses and ends with # EOF, the
  middleware's text is raindrops' format, and HTML reflects no generated input unescaped
  (nor the kernel's hostile unix socket name);
- the middleware's counters are back to 0 once a response is closed;
- a /tail stream ends as soon as its client is gone, and closing it leaves no stream open;
- redirects (the mount point without its slash, a reset's way back) copy neither a hostile Host
  nor a hostile Referer into Location.

The examples are derandomized, so that CI runs the same ones every time.
"""

from __future__ import annotations

import io
import json
import re
import socket
import string
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from raindrops import LastDataRecv, Middleware, Watcher
from raindrops.exposition import printable_name
from raindrops.watcher.sampler import KINDS
from raindrops.wsgi.last_data_recv import PATH as LDR_PATH
from testsupport.formats import check_prometheus_text, parse_prometheus, parse_text
from testsupport.gunicorn import SHM_DIR, segment_name

Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Any], Iterable[bytes]]

MW_PATH = "/_raindrops"
DELAY = 0.01  # the Watcher's sampling interval: a reset waits for one sample
STREAM_SECONDS_MAX = 5.0  # a /tail whose client left ends after one sampling interval
EXAMPLES = {
    "middleware": 1000,
    "last_data_recv": 700,
    "watcher": 1800,
    "stack": 700,
    "redirect": 300,
    "tail": 40,
}
"""Examples per property: about 5,000 requests, some 30 s on two busy cores."""
PROPERTY_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HOSTILE_UNIX_NAME = '<i>"q"&\'.sock'
"""A unix listener the Watcher and the middleware report: its name is markup."""

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
STATUS = re.compile(r"([1-5][0-9][0-9]) [\x20-\x7e\x80-\xff]*")
TAIL_LINE = re.compile(r" *\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +\S+ +\d+ +\d+\n")


def hello(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
    """The application the wrappers pass other requests to: a well-behaved one."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [] if environ["REQUEST_METHOD"] == "HEAD" else [b"hello"]


# The system under test: real listeners, real segments, one sampler thread.


@dataclass
class Served:
    tcp: str
    unix: str  # as the Watcher names it (printable)
    middleware: Middleware
    last_data_recv: LastDataRecv
    watcher: Watcher
    stack: Middleware  # Middleware(LastDataRecv(Watcher))
    client: socket.socket  # an accepted loopback connection whose peer is still there
    requests: dict[str, st.SearchStrategy[Request]] = field(default_factory=dict)

    @property
    def known(self) -> list[str]:
        return [self.tcp, self.unix]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    listener = socket.create_server(("127.0.0.1", 0))
    unix_path = str(tmp_path_factory.mktemp("http") / HOSTILE_UNIX_NAME)
    unix_listener = socket.socket(socket.AF_UNIX)
    unix_listener.bind(unix_path)
    unix_listener.listen()
    peer = socket.create_connection(listener.getsockname()[:2])
    accepted, _ = listener.accept()
    tcp = f"127.0.0.1:{listener.getsockname()[1]}"
    names = [segment_name("hp") for _ in range(4)]
    watched = [tcp, unix_path]
    watcher = Watcher(watched, delay=DELAY, history=10)
    # Sampling before any request keeps it in this process's own memory: a first request with
    # wsgi.multiprocess true would make a segment named after this process's parent.
    watcher.start()
    inner = LastDataRecv(watcher, name=names[2])
    stack = Middleware(inner, listeners=watched, name=names[3])
    served = Served(
        tcp=tcp,
        unix=printable_name(unix_path),
        middleware=Middleware(hello, listeners=watched, name=names[0]),
        last_data_recv=LastDataRecv(hello, name=names[1]),
        watcher=watcher,
        stack=stack,
        client=accepted,
    )
    served.requests.update(request_strategies(served))
    try:
        yield served
    finally:
        watcher.close()
        for app in (served.middleware, stack):
            app.stats.close()
        for ldr in (served.last_data_recv, inner):
            ldr.stats.close()
        for name in names:
            (SHM_DIR / name[1:]).unlink(missing_ok=True)
        for sock in (accepted, peer, listener, unix_listener):
            sock.close()


# Strategies.

T = TypeVar("T")


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """one_of with weights: Hypothesis's one_of draws some branches far more often than others
    (a sampled_from of ten methods lost to arbitrary text 9 to 1)."""
    total = sum(weight for weight, _ in choices)

    def branch(index: int) -> st.SearchStrategy[T]:
        for weight, strategy in choices:
            if index < weight:
                return strategy
            index -= weight
        raise AssertionError(index)

    return st.integers(0, total - 1).flatmap(branch)


def sampled(
    common: list[str], rare: st.SearchStrategy[str], rare_weight: int = 1
) -> st.SearchStrategy[str]:
    """Mostly one of `common`, sometimes `rare`."""
    return weighted((4, st.sampled_from(common)), (rare_weight, rare))


LATIN_1 = st.characters(min_codepoint=0, max_codepoint=255)
PAYLOADS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'\"><svg/onload=alert(1)>",
    "</title><h1>x</h1>",
    "\r\nSet-Cookie: pwned=1",
    "\nX-Injected: 1",
    "\rX-Injected: 1",
    "%0d%0aSet-Cookie:%20pwned=1",
    "&lt;b&gt;",
    "\x00",
    "\\",
    "\u00e4\u20ac\U0001f600".encode().decode("latin-1"),  # UTF-8 as a WSGI server passes it
]
hostile: st.SearchStrategy[str] = weighted(
    (2, st.sampled_from(PAYLOADS)),
    (
        2,
        st.builds(
            lambda before, payload, after: before + payload + after,
            st.text(LATIN_1, max_size=6),
            st.sampled_from(PAYLOADS),
            st.text(LATIN_1, max_size=6),
        ),
    ),
    (1, st.text(LATIN_1, max_size=20)),
)
"""Text that breaks out of markup or header lines, as latin-1 (what WSGI strings can hold)."""


def as_wsgi(text: str) -> str:
    """A decoded URL part as a WSGI server hands it over: its UTF-8 bytes read as latin-1."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


methods = weighted(
    (8, st.sampled_from(["GET", "HEAD", "POST"])),
    (2, st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "get", "Head"])),
    (1, st.text(string.ascii_letters + "!#$%&'*+-.^_`|~0123456789", min_size=1, max_size=10)),
    (1, st.text(LATIN_1, max_size=8)),  # what a broken server might pass on
)
MOUNTS = ["", "/", MW_PATH, LDR_PATH, "/series.json", "/active", "/queued", "/tail", "/reset"]
SUFFIXES = ["", "/", "//", "/.", "/..", "/./", "/../", "%2F", "%2f..", ";x", "?x", "#x", "\x00"]


def watcher_paths(served: Served) -> st.SearchStrategy[str]:
    """/KIND/ADDR.EXT, mostly for the listeners it watches, as the server decoded them (or not)."""
    known = st.sampled_from(served.known)
    addresses = weighted(
        (8, known),
        (1, known.map(lambda name: quote(name, safe=""))),  # escaped twice by the client
        (1, known.map(lambda name: name + ":")),
        (1, known.map(lambda name: name.upper() + " ")),
        (1, st.sampled_from(["127.0.0.1", "127.0.0.1:0", "[::1]:80", "/tmp/x.sock", "", ".."])),
        (1, hostile),
        (1, st.text(max_size=20).map(as_wsgi)),
    )
    routes = [(top, extension) for top in KINDS for extension in (".txt", ".html", ".json")]
    routes += [("tail", ".txt"), ("tail", ".txt"), ("reset", ""), ("reset", "")]
    valid = st.builds(lambda r, a: f"/{r[0]}/{a}{r[1]}", st.sampled_from(routes), known)
    tops = sampled(["active", "queued", "tail", "reset"], st.sampled_from(["x", "", "ACTIVE"]))
    extensions = sampled([".txt", ".html", ".json", ""], st.sampled_from([".xml", ".", ".TXT"]))
    mangled = st.builds(lambda t, a, e: f"/{t}/{a}{e}", tops, addresses, extensions)
    top = st.sampled_from(["", "/", "/series.json"])
    return weighted((4, valid), (4, mangled), (1, top))


def paths(served: Served) -> st.SearchStrategy[str]:
    """Anywhere: under and around every mount point, mangled every way a client can."""
    mounts = st.sampled_from(MOUNTS)
    segments = st.lists(
        weighted(
            (2, st.sampled_from([".", "..", "", "_raindrops", "active", "%2e%2e"])), (1, hostile)
        ),
        max_size=6,
    )
    return weighted(
        (4, watcher_paths(served)),
        (2, st.builds(lambda m, s: m + s, mounts, st.sampled_from(SUFFIXES))),
        (1, st.builds(lambda m, s: m + "/" + "/".join(s), mounts, segments)),
        (1, st.builds(lambda m, t: m + t, mounts, st.text(max_size=20).map(as_wsgi))),
        (1, st.binary(max_size=30).map(lambda raw: "/" + raw.decode("latin-1"))),  # not UTF-8
        (1, mounts.map(lambda m: quote(m, safe=""))),
        (1, st.builds(lambda m, n: m + "/" + "a" * n, mounts, st.integers(1000, 70_000))),
        (1, st.builds(lambda m, n: m + "/.." * n, mounts, st.integers(1, 5_000))),
    )


KEYS = ["format", "since", "active_min", "queued_min"]
VALUES = [
    "text", "prometheus", "openmetrics", "json", "xml", "", "0", "00", "1", "-1", "1.5", "1e400",
    "nan", "inf", "-inf", "9" * 5000, "\u0661\u0662", "\u00b2", "0x10", " 1", "Text", "1" * 30,
]  # fmt: skip


def query_pair(key: str, value: str, escape: bool) -> str:
    if escape:
        return quote(key, safe="") + "=" + quote(value, safe="")
    return as_wsgi(key) + "=" + as_wsgi(value)


pairs = st.builds(
    query_pair,
    sampled(KEYS, st.one_of(st.sampled_from(["x", "", "FORMAT", "format[]", "since "]), hostile)),
    sampled(VALUES, st.one_of(hostile, st.text(max_size=10)), 2),
    st.booleans(),
)
queries = weighted(
    (6, st.builds(lambda items, sep: sep.join(items), st.lists(pairs, max_size=5), st.just("&"))),
    (1, st.builds(lambda items: ";".join(items), st.lists(pairs, max_size=3))),
    (1, st.text(LATIN_1, max_size=30)),
    (1, st.sampled_from(["format", "=", "&&&", "format=json&format=xml", "since=1&since=", "%zz"])),
)
HOSTS = ["watch.test", "127.0.0.1:8080", "[::1]:80", "localhost", "evil.example", ""]
HEADER_EXAMPLES = {
    "HTTP_ACCEPT": [
        "text/plain;version=0.0.4",
        "text/plain; version=0.0.4; charset=utf-8",
        "application/openmetrics-text; version=1.0.0",
        "*/*",
        "text/html",
        "application/json",
    ],
    "HTTP_HOST": HOSTS,
    "HTTP_ORIGIN": ["http://watch.test", "null", "http://evil.example", "https://watch.test"],
    "HTTP_REFERER": ["http://watch.test/", "http://evil.example/", "/", "javascript:x"],
    "HTTP_X_FORWARDED_FOR": ["1.2.3.4", "127.0.0.1", "127.0.0.1, 10.0.0.1", "unknown"],
    "HTTP_FORWARDED": ["for=127.0.0.1;proto=http", 'for="[::1]:80"', "for=unknown, for=10.1.1.1"],
    "HTTP_X_REAL_IP": ["127.0.0.1", "10.0.0.1", "::1"],
    "HTTP_COOKIE": ["a=b", "session=x; other=y", ""],
    "HTTP_X_FORWARDED_PROTO": ["http", "https", "gopher"],
    "HTTP_X_FORWARDED_HOST": HOSTS,
    "HTTP_SEC_FETCH_SITE": ["same-origin", "cross-site", "none"],
    "CONTENT_TYPE": ["application/x-www-form-urlencoded", "text/plain"],
}
"""Plausible values of the headers an access rule or a redirect may read; hostile ones too."""
LOOPBACK = ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"]
ELSEWHERE = ["10.0.0.1", "192.0.2.1", "2001:db8::1", "fe80::1%eth0"]
NOT_ADDRESSES = ["", "localhost", "999.1.1.1", "unix:", "<script>", "127.0.0.1\r\n", "::1%"]
remote_addrs = weighted(
    (6, st.sampled_from(LOOPBACK)),
    (2, st.sampled_from(ELSEWHERE)),
    (1, st.sampled_from(NOT_ADDRESSES)),
    (1, st.none()),  # no REMOTE_ADDR at all
)


FORWARDING = ["HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP"]
"""The headers a proxy adds: refused (403) from a peer that is not a trusted proxy."""


@st.composite
def headers(draw: st.DrawFn) -> dict[str, str]:
    """Some of the headers, each with a plausible or a hostile value, forwarding headers in one
    request out of four; a Referer sometimes names the request's own Host (what a same-origin
    form sends) with something hostile after it."""
    others = sorted(set(HEADER_EXAMPLES) - set(FORWARDING))
    chosen = draw(st.lists(st.sampled_from(others), unique=True, max_size=5))
    chosen += draw(
        weighted((3, st.just([])), (1, st.lists(st.sampled_from(FORWARDING), min_size=1)))
    )
    values = {key: draw(sampled(HEADER_EXAMPLES[key], hostile, 2)) for key in chosen}
    if draw(st.booleans()):
        host = values.get("HTTP_HOST", "watch.test")
        tail = draw(sampled(["/", "/active/x.html"], hostile, 2))
        values["HTTP_REFERER"] = draw(st.sampled_from(["http://", "https://"])) + host + tail
    return values


any_headers = headers()
CLIENT_SOCKET_KEYS = ["gunicorn.socket", "raindrops.socket"]
"""Where servers put the client's socket: LastDataRecv reads it, /tail watches it."""
OPTIONAL_KEYS = st.sampled_from(["QUERY_STRING", "PATH_INFO", "SCRIPT_NAME", "CONTENT_LENGTH"])


@dataclass
class Request:
    environ: Environ
    inputs: list[str]  # every generated string the response must not reflect raw in HTML
    gone_key: str | None = None  # where the environ gets a client socket whose peer has left
    client: socket.socket | None = None

    def __enter__(self) -> Request:
        """Makes the client's socket, whose peer has left, for the duration of the call."""
        if self.gone_key is not None:
            self.client, peer = socket.socketpair()
            peer.close()
            self.environ[self.gone_key] = self.client
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def requests(
    served: Served,
    path: st.SearchStrategy[str],
    *,
    method: st.SearchStrategy[str] = methods,
    header: st.SearchStrategy[dict[str, str]] = any_headers,
    remote: st.SearchStrategy[str | None] = remote_addrs,
    absent: st.SearchStrategy[str] = OPTIONAL_KEYS,
) -> st.SearchStrategy[Request]:
    """Valid WSGI environs (PEP 3333: latin-1 strings, the decoded path's bytes as latin-1)."""

    @st.composite
    def build(draw: st.DrawFn) -> Request:
        request_method = draw(method)
        path_info = draw(path)
        query = draw(queries)
        extra = draw(header)
        body = draw(st.binary(max_size=64))
        environ: Environ = {
            "REQUEST_METHOD": request_method,
            "SCRIPT_NAME": draw(st.sampled_from(["", "/watch", "/a b", "/<x>", "/%22"])),
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "SERVER_NAME": draw(st.sampled_from(["watch.test", "localhost", "127.0.0.1"])),
            "SERVER_PORT": draw(st.sampled_from(["80", "8080", "443"])),
            "SERVER_PROTOCOL": draw(st.sampled_from(["HTTP/1.0", "HTTP/1.1"])),
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": draw(st.sampled_from(["http", "https"])),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": draw(st.booleans()),
            "wsgi.multiprocess": draw(st.booleans()),
            "wsgi.run_once": False,
            **extra,
        }
        inputs = [path_info, query, environ["SCRIPT_NAME"], *extra.values()]
        for key in draw(weighted((6, st.just([])), (1, st.lists(absent, max_size=2)))):
            environ.pop(key, None)  # PEP 3333: these may be absent
        remote_addr = draw(remote)
        if remote_addr is not None:
            environ["REMOTE_ADDR"] = remote_addr
        sock = draw(st.sampled_from(["none", "gone", "here"]))
        key = draw(st.sampled_from(CLIENT_SOCKET_KEYS))
        if sock == "here":
            environ[key] = served.client
        return Request(environ, inputs, key if sock == "gone" else None)

    return build()


def request_strategies(served: Served) -> dict[str, st.SearchStrategy[Request]]:
    """The requests each test sends: around its own mount point, and anywhere else."""
    anywhere = paths(served)

    def around(mount: str) -> st.SearchStrategy[str]:
        return weighted(
            (2, st.just(mount)), (1, st.sampled_from([mount + s for s in SUFFIXES])), (2, anywhere)
        )

    loopback = st.sampled_from(LOOPBACK)
    mostly_loopback = weighted((2, loopback), (1, remote_addrs))  # the Watcher's routes are many
    resets = st.sampled_from([f"/reset/{name}" for name in served.known])
    return {
        "middleware": requests(served, around(MW_PATH)),
        "last_data_recv": requests(served, around(LDR_PATH)),
        "watcher": requests(
            served, weighted((1, watcher_paths(served)), (1, anywhere)), remote=mostly_loopback
        ),
        "stack": requests(served, anywhere, remote=mostly_loopback),
        "slash": requests(
            served,
            st.just(""),
            method=st.sampled_from(["GET", "HEAD"]),
            header=hostile_host(),
            remote=loopback,
        ),
        "reset": requests(
            served,
            resets,
            method=st.just("POST"),
            header=same_origin(),
            remote=loopback,
            absent=st.sampled_from(["QUERY_STRING", "CONTENT_LENGTH", "SCRIPT_NAME"]),
        ),
    }


@st.composite
def hostile_host(draw: st.DrawFn) -> dict[str, str]:
    """A Host header that is often not a host name (what a slash redirect must not copy raw),
    with no forwarding header (which would be refused before any redirect)."""
    values = {key: value for key, value in draw(headers()).items() if key not in FORWARDING}
    return {**values, "HTTP_HOST": draw(weighted((1, st.sampled_from(HOSTS)), (2, hostile)))}


@st.composite
def same_origin(draw: st.DrawFn) -> dict[str, str]:
    """What a browser sends with the dashboard's reset form (Origin, Sec-Fetch-Site, Referer of
    this very Host), except that the Referer ends with something hostile."""
    host = draw(st.sampled_from([host for host in HOSTS if host and host != "evil.example"]))
    scheme = draw(st.sampled_from(["http", "https"]))
    return {
        "wsgi.url_scheme": scheme,
        "HTTP_HOST": host,
        "HTTP_ORIGIN": f"{scheme}://{host}",
        "HTTP_SEC_FETCH_SITE": "same-origin",
        "HTTP_REFERER": f"{scheme}://{host}/{draw(hostile)}",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
    }


# Checking one answer.


@dataclass
class Answer:
    status: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def code(self) -> int:
        return int(self.status[:3])

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(found) <= 1, f"{name} repeated: {self.headers}"
        return found[0] if found else None


def check_headers(status: Any, headers: Any) -> None:
    assert isinstance(status, str) and STATUS.fullmatch(status), f"bad status line {status!r}"
    assert isinstance(headers, list), f"headers are a {type(headers).__name__}, not a list"
    for item in headers:
        assert isinstance(item, tuple) and len(item) == 2, f"bad header {item!r}"
        name, value = item
        assert isinstance(name, str) and TOKEN.fullmatch(name), f"bad header name {name!r}"
        assert isinstance(value, str), f"header {name} value {value!r} is not a str"
        assert not set(value) & set("\r\n\x00"), f"header {name} value {value!r} breaks lines"
        value.encode("latin-1")  # PEP 3333: the server writes header values as latin-1


def read_body(body: Iterable[bytes], stream: bool, request: Request) -> bytes:
    """The whole body, except for a stream whose client is still there: not a byte of it is read
    (it would last until the Watcher closes), it is only closed. A stream whose client has left
    must end by itself, so it is read to its end."""
    chunks: list[bytes] = []
    try:
        if not stream or request.client is not None:
            started = time.monotonic()
            for chunk in body:
                assert isinstance(chunk, bytes), f"body chunk {chunk!r} is not bytes"
                chunks.append(chunk)
                assert time.monotonic() - started < STREAM_SECONDS_MAX, (
                    "a stream outlived its client"
                )
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return b"".join(chunks)


def answer(app: WSGIApp, request: Request) -> Answer:
    """Calls `app` and checks what PEP 3333 and HTTP ask of any answer."""
    calls: list[tuple[Any, Any, Any]] = []
    written: list[bytes] = []

    def start_response(status: Any, headers: Any, exc_info: Any = None) -> Callable[[bytes], Any]:
        calls.append((status, headers, exc_info))
        return written.append

    with request:
        body = app(request.environ, start_response)
        # Every complete answer says its length: one that does not is a /tail stream.
        stream = bool(calls) and not any(key == "Content-Length" for key, _ in calls[0][1])
        data = b"".join(written) + read_body(body, stream, request)
    assert len(calls) == 1, f"start_response called {len(calls)} times: {calls}"
    status, headers, exc_info = calls[0]
    assert exc_info is None, f"start_response got exc_info {exc_info!r}"
    check_headers(status, headers)
    reply = Answer(status, headers, data)
    # The one 5xx by design: a stream refused for want of a free slot, with when to come back.
    shed = reply.code == 503 and reply.header("Retry-After") is not None
    assert reply.code < 500 or shed, f"{status} for {request.environ}"
    method = request.environ["REQUEST_METHOD"]
    if method == "HEAD":
        assert data == b"", f"HEAD has a body: {data[:80]!r}"
    length = reply.header("Content-Length")
    if length is not None and method != "HEAD":
        assert length == str(len(data)), f"Content-Length {length}, body {len(data)} bytes"
    content_type = reply.header("Content-Type")
    assert content_type is not None, f"no Content-Type in {headers}"
    if method != "HEAD":
        check_body(content_type, data, request, app)
    return reply


def check_body(content_type: str, data: bytes, request: Request, app: WSGIApp) -> None:
    """The body is what its Content-Type says (every format but plain text is UTF-8), and HTML
    reflects no input unescaped."""
    media = content_type.partition(";")[0].strip()
    if media == "application/json":
        json.loads(data.decode("utf-8"))
    elif media == "application/openmetrics-text":
        parse_prometheus(data.decode("utf-8"), openmetrics=True)
    elif media == "text/plain" and "version=0.0.4" in content_type:
        check_prometheus_text(data.decode("utf-8"))
    elif media == "text/html":
        check_html(data.decode("utf-8"), request, app)


def check_html(text: str, request: Request, app: WSGIApp) -> None:
    """No generated string with markup in it, nor the hostile listener name, is in the page as
    it came. A generated string can be a piece of the page's own markup (Hypothesis also draws
    the string constants of the code under test): one that the same page holds when asked with
    none of this request's query and headers is not a reflection."""
    if HOSTILE_UNIX_NAME in text:
        raise AssertionError(f"HTML shows the listener name {HOSTILE_UNIX_NAME!r} unescaped")
    found = [value for value in request.inputs if ("<" in value or '"' in value) and value in text]
    if found:
        plain = page_without_inputs(app, request.environ)
        reflected = [value for value in found if value not in plain]
        assert not reflected, f"HTML reflects {reflected[0]!r} unescaped"


def page_without_inputs(app: WSGIApp, environ: Environ) -> str:
    """The page at the same path, asked by a plain local GET with no query and no headers."""
    keys = ("PATH_INFO", "SCRIPT_NAME", "SERVER_NAME", "SERVER_PORT", "wsgi.url_scheme")
    plain: Environ = {key: environ[key] for key in keys if key in environ}
    plain.update(REQUEST_METHOD="GET", REMOTE_ADDR="127.0.0.1", QUERY_STRING="")
    plain["wsgi.input"] = io.BytesIO()
    body = app(plain, lambda status, headers, exc_info=None: None)
    try:
        return b"".join(body).decode("utf-8")
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


# The properties.


def run(served: Served, app: WSGIApp, request: Request) -> Answer:
    reply = answer(app, request)
    method = request.environ["REQUEST_METHOD"]
    top = "/".join(request.environ.get("PATH_INFO", "").split("/")[:2])[:20]
    event(f"{method if method in ('GET', 'HEAD', 'POST') else 'other'} {top} -> {reply.code}")
    assert served.watcher.streams == 0, "a closed /tail stream is still counted"
    return reply


def idle(middleware: Middleware) -> None:
    totals = middleware.stats.totals()
    assert (totals.calling, totals.writing) == (0, 0), f"left raised after close: {totals}"


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES["middleware"])
@given(data=st.data())
def test_middleware_answers_every_request(served: Served, data: st.DataObject) -> None:
    request = data.draw(served.requests["middleware"], label="request")
    reply = run(served, served.middleware, request)
    idle(served.middleware)
    environ = request.environ
    if environ.get("PATH_INFO") != MW_PATH:
        expected = b"" if environ["REQUEST_METHOD"] == "HEAD" else b"hello"
        assert (reply.status, reply.body) == ("200 OK", expected), "not passed to the app"
    elif reply.code == 200 and reply.header("Content-Type") == "text/plain" and reply.body:
        stats = parse_text(reply.body.decode())
        assert set(stats.listeners) >= {served.tcp}, stats


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES["last_data_recv"])
@given(data=st.data())
def test_last_data_recv_answers_every_request(served: Served, data: st.DataObject) -> None:
    request = data.draw(served.requests["last_data_recv"], label="request")
    reply = run(served, served.last_data_recv, request)
    if request.environ.get("PATH_INFO") != LDR_PATH:
        assert reply.status == "200 OK", "not passed to the app"


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES["watcher"])
@given(data=st.data())
def test_watcher_answers_every_request(served: Served, data: st.DataObject) -> None:
    run(served, served.watcher, data.draw(served.requests["watcher"], label="request"))


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES["stack"])
@given(data=st.data())
def test_stacked_apps_answer_every_request(served: Served, data: st.DataObject) -> None:
    """Middleware(LastDataRecv(Watcher)): the Watcher's streams through two wrappers."""
    run(served, served.stack, data.draw(served.requests["stack"], label="request"))
    idle(served.stack)


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES["redirect"])
@given(data=st.data())
def test_watcher_slash_redirect_keeps_the_host_out_of_header_lines(
    served: Served, data: st.DataObject
) -> None:
    """A Host with CR/LF was copied into Location ("GET" of the mount point without its slash,
    Host: "\\r\\nSet-Cookie: pwned=1" gave Location "http://\\r\\nSet-Cookie: pwned=1/")."""
    run(served, served.watcher, data.draw(served.requests["slash"], label="request"))


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES["redirect"])
@given(data=st.data())
def test_watcher_reset_redirect_keeps_the_referer_out_of_header_lines(
    served: Served, data: st.DataObject
) -> None:
    """A same-origin reset's Referer was copied into Location as it came (POST /reset/ADDR,
    Host: watch.test, Referer: "http://watch.test/\\r\\nSet-Cookie: pwned=1")."""
    reply = run(served, served.watcher, data.draw(served.requests["reset"], label="request"))
    assert reply.code == 302, f"a same-origin reset from loopback was refused: {reply.status}"


def zero_filters() -> st.SearchStrategy[str]:
    """Queries whose filters every sample passes: each tail has a line at every sample."""
    zero = st.sampled_from(["active_min=0", "queued_min=0", "active_min=00", "queued_min=", "x=1"])
    return st.lists(zero, max_size=3).map("&".join)


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES["tail"])
@given(
    app=st.sampled_from(["watcher", "stack"]),
    address=st.sampled_from([0, 1]),
    query=zero_filters(),
    script_name=st.sampled_from(["", "/watch"]),
)
def test_a_tail_streams_lines_until_it_is_closed(
    served: Served, app: str, address: int, query: str, script_name: str
) -> None:
    """The first line of a /tail comes within a sample or two, is raindrops' tail line, and
    closing the body ends the stream (a thread server would hold a thread otherwise)."""
    environ: Environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": script_name,
        "PATH_INFO": f"/tail/{served.known[address]}.txt",
        "QUERY_STRING": query,
        "SERVER_NAME": "watch.test",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
    }
    calls: list[tuple[str, list[tuple[str, str]]]] = []
    body = getattr(served, app)(
        environ, lambda status, headers, exc_info=None: calls.append((status, headers))
    )
    try:
        assert [status for status, _ in calls] == ["200 OK"], calls
        check_headers(*calls[0])
        line = next(iter(body)).decode("utf-8")
        assert TAIL_LINE.fullmatch(line), f"not a tail line: {line!r}"
        assert served.watcher.streams == 1
    finally:
        body.close()
    assert served.watcher.streams == 0, "a closed /tail stream is still counted"
