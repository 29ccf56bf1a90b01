"""Who may reach an endpoint: one access rule for the middleware, LastDataRecv and the Watcher.

The rule is checked in process on crafted environs (every forwarding header, trusted and
untrusted peers, unix socket peers, malformed headers) and under a real gunicorn with four
workers serving examples.demo (sync and gthread, with and without --preload): through a real
proxy (a thread that forwards bytes and adds X-Forwarded-For as nginx does) and through
gunicorn's own unix socket. The Watcher's reset, its one state-changing request, must come
from a page of the same origin.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import pytest
from load import Load
from servers import SERVER_VARIANTS, Gunicorn, gunicorn
from test_dashboard import BROWSERS, run_browser

from raindrops import LastDataRecv, Middleware, Watcher
from raindrops.watcher.server import make_server
from raindrops.wsgi.http import AccessRule
from raindrops.wsgi.last_data_recv import PATH as LDR_PATH
from raindrops.wsgi.last_data_recv import LastDataRecvStats
from testsupport import programs
from testsupport.gunicorn import Response

SPOOFED = "203.0.113.9"
"""A client on the internet, as a proxy in front of the server would name it."""
WATCH_DELAY = 0.02


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def status_of(app: Any, path: str, method: str = "GET", **extra: Any) -> int:
    """The status code `app` answers for a request to `path` with `extra` environ keys (a key
    given None is left out)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote(path, "iso-8859-1"),  # as a server decodes it
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "stats.test",
        "SERVER_PORT": "80",
        "HTTP_HOST": "stats.test",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
    }
    environ.update(extra)
    environ = {key: value for key, value in environ.items() if value is not None}
    seen: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: seen.append(status))
    b"".join(body)
    getattr(body, "close", lambda: None)()
    return int(seen[0].split()[0])


# Every endpoint, built with the same keywords: (make(**rule), path to read).
ENDPOINTS: dict[str, tuple[Callable[..., Any], str]] = {
    "middleware": (lambda **rule: Middleware(hello, listeners=[], **rule), "/_raindrops"),
    "last_data_recv": (
        lambda **rule: LastDataRecv(hello, stats=LastDataRecvStats(), **rule),
        LDR_PATH,
    ),
    "watcher": (lambda **rule: Watcher(["127.0.0.1:1"], delay=WATCH_DELAY, **rule), "/"),
}


@contextlib.contextmanager
def endpoint(kind: str, **rule: Any) -> Iterator[Callable[..., int]]:
    """The endpoint `kind` with access `rule`; yields status(**environ) of a GET of its path."""
    make, path = ENDPOINTS[kind]
    app = make(**rule)
    try:
        yield lambda **extra: status_of(app, path, **extra)
    finally:
        getattr(app, "close", lambda: None)()


XFF = "HTTP_X_FORWARDED_FOR"
UNIX_PEER: dict[str, str | None] = {"REMOTE_ADDR": ""}
NO_PEER: dict[str, str | None] = {"REMOTE_ADDR": None}
"""A server that does not say who the peer is: not a unix socket peer."""

# (environ keys, expected status) under the default rule: loopback, no trusted proxy.
DEFAULT_CASES: list[tuple[dict[str, str | None], int]] = [
    ({"REMOTE_ADDR": "127.0.0.1"}, 200),
    ({"REMOTE_ADDR": "127.9.9.9"}, 200),
    ({"REMOTE_ADDR": "::1"}, 200),
    ({"REMOTE_ADDR": "::ffff:127.0.0.1"}, 200),
    (UNIX_PEER, 200),  # a unix socket peer is on this host
    (NO_PEER, 403),
    ({"REMOTE_ADDR": "192.0.2.7"}, 403),
    ({"REMOTE_ADDR": "not an address"}, 403),
    # A local proxy forwards for anyone: not trusted unless configured.
    ({XFF: SPOOFED}, 403),
    ({XFF: "127.0.0.1"}, 403),
    ({**UNIX_PEER, XFF: SPOOFED}, 403),  # curl --unix-socket app.sock -H 'X-Forwarded-For: ...'
    ({**UNIX_PEER, "HTTP_X_REAL_IP": "127.0.0.1"}, 403),
    ({**UNIX_PEER, "HTTP_FORWARDED": "for=127.0.0.1"}, 403),
]


@pytest.mark.parametrize("kind", list(ENDPOINTS))
def test_default_rule_loopback_and_local_proxies_refused(kind: str) -> None:
    with endpoint(kind) as status:
        answers = [status(**extra) for extra, _ in DEFAULT_CASES]
    assert answers == [expected for _, expected in DEFAULT_CASES], DEFAULT_CASES


TRUSTED = ["127.0.0.1/32", "unix"]
# (environ keys, expected status) with trusted_proxies=TRUSTED and the default allow.
TRUSTED_CASES: list[tuple[dict[str, str | None], int]] = [
    ({}, 200),  # no forwarding header: the peer asks for itself
    ({XFF: "127.0.0.1"}, 200),  # a local client through the proxy
    ({XFF: "::1"}, 200),
    ({XFF: SPOOFED}, 403),
    ({XFF: f"127.0.0.1, {SPOOFED}"}, 403),  # the client's own X-Forwarded-For, then the proxy's
    ({XFF: f"127.0.0.1,{SPOOFED},127.0.0.1"}, 403),  # two trusted proxies, the client between
    ({XFF: "127.0.0.1", "HTTP_X_REAL_IP": SPOOFED}, 403),  # every header must name an allowed one
    ({"HTTP_X_REAL_IP": "127.0.0.2"}, 200),
    ({"HTTP_FORWARDED": 'for="[::1]:4711";proto=https'}, 200),
    ({"HTTP_FORWARDED": "For=127.0.0.1, for=127.0.0.1:8080"}, 200),
    ({"HTTP_FORWARDED": f"for={SPOOFED};proto=https"}, 403),
    ({"HTTP_FORWARDED": "for=unknown"}, 403),
    ({"HTTP_FORWARDED": "for=_hidden"}, 403),
    ({"HTTP_FORWARDED": "proto=https"}, 403),  # says nothing of the client
    ({XFF: "garbage"}, 403),
    ({XFF: ""}, 403),
    ({XFF: "127.0.0.1,,127.0.0.1"}, 403),
    ({XFF: "localhost"}, 403),
    ({XFF: ",".join(["127.0.0.1"] * 40)}, 403),  # longer than any real chain: not walked
    ({**UNIX_PEER, XFF: "127.0.0.1"}, 200),
    ({**UNIX_PEER, XFF: SPOOFED}, 403),
    (NO_PEER, 403),
    ({**NO_PEER, XFF: "127.0.0.1"}, 403),  # no peer: not the trusted "unix" proxy either
    ({"REMOTE_ADDR": "127.0.0.2", XFF: "127.0.0.1"}, 403),  # loopback, but not a trusted proxy
    ({"REMOTE_ADDR": "192.0.2.7", XFF: "127.0.0.1"}, 403),
]


@pytest.mark.parametrize("kind", list(ENDPOINTS))
def test_trusted_proxies_are_walked_from_the_right(kind: str) -> None:
    with endpoint(kind, trusted_proxies=TRUSTED) as status:
        answers = [status(**extra) for extra, _ in TRUSTED_CASES]
    assert answers == [expected for _, expected in TRUSTED_CASES], TRUSTED_CASES


def test_a_proxy_network_in_front_of_a_private_network() -> None:
    rule = AccessRule(allow=["10.0.0.0/8"], trusted_proxies=["192.0.2.0/24", "2001:db8::/32"])

    def allows(remote: str, **headers: str) -> bool:
        return rule.allows({"REMOTE_ADDR": remote, **headers})

    assert allows("192.0.2.5", HTTP_X_FORWARDED_FOR="10.1.1.1, 192.0.2.9")
    assert allows("2001:db8::1", HTTP_X_FORWARDED_FOR="[10.1.1.1]:1234, 2001:db8::7")
    assert allows("::ffff:192.0.2.5", HTTP_X_FORWARDED_FOR="10.1.1.1:1234")
    assert not allows("192.0.2.5")  # the proxy itself is not in allow
    assert not allows("192.0.2.5", HTTP_X_FORWARDED_FOR="192.0.2.9")  # only proxies: the leftmost
    assert not allows("127.0.0.1")  # allow replaces the loopback default
    assert allows("")  # a unix socket peer is local
    assert not allows("", HTTP_X_FORWARDED_FOR="10.1.1.1")  # "unix" is not a trusted proxy here
    assert not rule.allows({})  # no REMOTE_ADDR at all: nobody to judge, refused
    assert not AccessRule(trusted_proxies=["unix"]).allows({"HTTP_X_FORWARDED_FOR": "127.0.0.1"})


@pytest.mark.parametrize("kind", list(ENDPOINTS))
def test_bad_settings_fail_at_construction_naming_them(kind: str) -> None:
    make, _ = ENDPOINTS[kind]
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"allow": "127.0.0.1/32"}, TypeError, "allow must be a list.*'127.0.0.1/32'"),
        ({"trusted_proxies": "unix"}, TypeError, "trusted_proxies must be a list.*'unix'"),
        ({"trusted_proxies": 5}, TypeError, "trusted_proxies must be a list.*int"),
        ({"allow": [5]}, TypeError, "allow: 5 is not a str"),
        ({"allow": ["nope"]}, ValueError, "allow: 'nope' is not a network"),
        ({"trusted_proxies": ["10.0.0.1/8"]}, ValueError, "trusted_proxies: '10.0.0.1/8'"),
        ({"trusted_proxies": ["unix", "nope"]}, ValueError, "trusted_proxies: 'nope'"),
        ({"allow": ["unix"]}, ValueError, "allow: 'unix'"),
    ]
    for settings, error, message in bad:
        with pytest.raises(error, match=message):
            make(**settings)


# The Watcher's reset: a POST from a page of the same origin only.


@pytest.fixture
def watcher(load: Load) -> Iterator[Watcher]:
    with Watcher([load.address], delay=WATCH_DELAY) as app:
        app.start()
        yield app


# (headers, expected status) of POST /reset/ADDR from a client of http://stats.test (port 80).
RESET_CASES: list[tuple[dict[str, str], int]] = [
    ({"HTTP_ORIGIN": "http://stats.test"}, 302),
    ({"HTTP_ORIGIN": "http://STATS.test:80"}, 302),
    ({"HTTP_REFERER": "http://stats.test/active/x.html"}, 302),  # a browser that hides Origin
    ({}, 403),  # neither: refused
    ({"HTTP_ORIGIN": "http://evil.test"}, 403),
    ({"HTTP_ORIGIN": "null"}, 403),  # a sandboxed page, or a redirect chain that hid it
    ({"HTTP_ORIGIN": "https://stats.test"}, 403),
    ({"HTTP_ORIGIN": "http://stats.test:8080"}, 403),
    ({"HTTP_ORIGIN": "http://stats.test.evil.test"}, 403),
    ({"HTTP_ORIGIN": "http://evil.test", "HTTP_REFERER": "http://stats.test/"}, 403),
    ({"HTTP_REFERER": "http://evil.test/?http://stats.test/"}, 403),
    ({"HTTP_REFERER": "http://stats.test:99999/"}, 403),
    ({"HTTP_ORIGIN": "http://stats.test", "HTTP_HOST": "[::1]:8080"}, 403),
    ({"HTTP_ORIGIN": "http://[::1]:8080", "HTTP_HOST": "[::1]:8080"}, 302),
    ({"HTTP_ORIGIN": "https://stats.test", "wsgi.url_scheme": "https"}, 302),
]


def test_reset_only_from_the_same_origin(watcher: Watcher, load: Load) -> None:
    path = f"/reset/{quote(load.address, safe='')}"
    answers = [status_of(watcher, path, "POST", **extra) for extra, _ in RESET_CASES]
    assert answers == [expected for _, expected in RESET_CASES], RESET_CASES


def test_a_refused_reset_changes_nothing(watcher: Watcher, load: Load) -> None:
    view = watcher.view(load.address, "active")
    assert view is not None
    path = f"/reset/{quote(load.address, safe='')}"
    assert status_of(watcher, path, "POST", HTTP_ORIGIN="http://evil.test") == 403
    after = watcher.view(load.address, "active")
    assert after is not None and after.last_reset == view.last_reset
    # The access rule comes first: a remote client is refused whatever its Origin.
    remote = {"REMOTE_ADDR": "192.0.2.7", "HTTP_ORIGIN": "http://stats.test"}
    assert status_of(watcher, path, "POST", **remote) == 403


# Under a real gunicorn: examples.demo with four workers of each variant, a real proxy, a real
# unix socket. One server per variant and fixture for the whole module.

DEMO_ENDPOINTS = ("/_raindrops", "/_raindrops/last_data_recv", "/watch/", "/watch/series.json")


def exchange(connect: Callable[[], socket.socket], head: str) -> Response:
    """One HTTP/1.0 request (its head as text) on a new connection; the whole response."""
    with connect() as client:
        client.settimeout(30)
        client.sendall(head.encode("latin-1"))
        data = b"".join(iter(lambda: client.recv(65536), b""))
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    return Response(int(status_line.split()[1]), headers, body)


def request_head(path: str, method: str = "GET", headers: dict[str, str] | None = None) -> str:
    lines = [
        f"{method} {path} HTTP/1.0",
        "Host: app.test",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def over_unix(path: Path, target: str, headers: dict[str, str] | None = None) -> Response:
    """GET `target` through gunicorn's unix socket, as a proxy on that socket would send it."""

    def connect() -> socket.socket:
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        return client

    return exchange(connect, request_head(target, headers=headers))


class Proxy:
    """A reverse proxy on 127.0.0.1, in a thread: forwards each request to 127.0.0.1:upstream
    with `X-Forwarded-For` as nginx's $proxy_add_x_forwarded_for writes it (the client's own
    header, then `client`, the address the proxy says it accepted the connection from)."""

    def __init__(self, upstream: int, client: str) -> None:
        self.upstream, self.client = upstream, client
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def __enter__(self) -> Proxy:
        self._threads[0].start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(10)
        self.listener.close()
        assert not any(thread.is_alive() for thread in self._threads), "proxy threads left"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._forward, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _forward(self, connection: socket.socket) -> None:
        with connection, socket.create_connection(("127.0.0.1", self.upstream), 30) as upstream:
            connection.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            upstream.sendall(self._rewrite(head.decode("latin-1")).encode("latin-1") + rest)
            for chunk in iter(lambda: upstream.recv(65536), b""):
                connection.sendall(chunk)

    def _rewrite(self, head: str) -> str:
        request_line, *lines = head.split("\r\n")
        forwarded = [line for line in lines if line.lower().startswith("x-forwarded-for:")]
        kept = [line for line in lines if line not in forwarded]
        chain = [line.partition(":")[2].strip() for line in forwarded] + [self.client]
        header = "X-Forwarded-For: " + ", ".join(chain)
        return "\r\n".join([request_line, *kept, header, "Connection: close"]) + "\r\n\r\n"


def through(proxy: Proxy, path: str, headers: dict[str, str] | None = None) -> Response:
    return exchange(
        lambda: socket.create_connection(("127.0.0.1", proxy.port), 30),
        request_head(path, headers=headers),
    )


def demo_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[Gunicorn, Path]]:
    """examples.demo under gunicorn, 4 workers of the variant `request.param` (servers'
    SERVER_VARIANTS), on loopback TCP and on a unix socket."""
    variant = request.param
    work = tmp_path_factory.mktemp(variant)
    unix = work / "app.sock"
    args = ["--bind", f"unix:{unix}", *SERVER_VARIANTS[variant]]
    with gunicorn(work, args, workers=4, env=env) as server:
        server.label = variant
        yield server, unix


@pytest.fixture(scope="module", params=list(SERVER_VARIANTS))
def demo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gunicorn, Path]]:
    yield from demo_server(request, tmp_path_factory)


def test_gunicorn_a_local_proxy_does_not_make_its_clients_local(
    demo: tuple[Gunicorn, Path],
) -> None:
    server, unix = demo
    with Proxy(server.port, SPOOFED) as internet, Proxy(server.port, "127.0.0.1") as local:
        for path in DEMO_ENDPOINTS:
            assert server.get(path).status == 200, path
            assert over_unix(unix, path).status == 200, path  # a unix socket peer is local
            spoofed = over_unix(unix, path, {"X-Forwarded-For": SPOOFED})
            assert (spoofed.status, spoofed.body) == (403, b"403 Forbidden\n"), path
            assert through(internet, path).status == 403, path
            assert through(local, path).status == 403, path  # the proxy is not trusted
        assert through(internet, "/").status == 200, "the application itself is not guarded"


@pytest.fixture(scope="module", params=list(SERVER_VARIANTS))
def trusting(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gunicorn, Path]]:
    """The demo told that 127.0.0.1 and its unix socket are its proxies."""
    env = {"RAINDROPS_DEMO_TRUSTED_PROXIES": "127.0.0.1/32,unix"}
    yield from demo_server(request, tmp_path_factory, env)


def test_gunicorn_trusted_proxies_are_judged_by_their_client(
    trusting: tuple[Gunicorn, Path],
) -> None:
    server, unix = trusting
    with Proxy(server.port, SPOOFED) as internet, Proxy(server.port, "127.0.0.1") as local:
        for path in DEMO_ENDPOINTS:
            assert through(local, path).status == 200, path
            assert through(internet, path).status == 403, path
            faked = through(internet, path, {"X-Forwarded-For": "127.0.0.1"})
            assert faked.status == 403, path  # the proxy appends the real client
            assert over_unix(unix, path, {"X-Forwarded-For": "127.0.0.1"}).status == 200, path
            assert over_unix(unix, path, {"X-Forwarded-For": SPOOFED}).status == 403, path
            assert server.get(path).status == 200, path  # no header: the peer asks itself


def reset_path(server: Gunicorn) -> str:
    return f"/watch/reset/{quote(server.address, safe='')}"


def test_gunicorn_reset_needs_the_same_origin(demo: tuple[Gunicorn, Path]) -> None:
    server, _ = demo
    origin = f"http://127.0.0.1:{server.port}"
    path = reset_path(server)
    for headers in ({"Origin": "http://evil.test"}, {"Referer": "http://evil.test/"}, {}):
        refused = server.get(path, method="POST", headers=headers)
        assert refused.status == 403, (headers, refused.status, refused.body)
    same = server.get(path, method="POST", headers={"Origin": origin})
    assert (same.status, same.headers["location"]) == (302, f"{origin}/watch/")
    page = f"{origin}/watch/active/{quote(server.address, safe='')}.html"
    back = server.get(path, method="POST", headers={"Origin": origin, "Referer": page})
    assert (back.status, back.headers["location"]) == (302, page)


LINK = re.compile(r"""(?:href|action)=['"]([^'"]*)['"]""")


@pytest.mark.parametrize("demo", ["sync"], indirect=True)  # links do not depend on the workers
def test_gunicorn_watch_redirects_to_its_slash_and_every_link_resolves(
    demo: tuple[Gunicorn, Path],
) -> None:
    server, _ = demo
    base = f"http://127.0.0.1:{server.port}"
    for query in ("", "?x=1"):
        redirect = server.get("/watch" + query)
        assert (redirect.status, redirect.headers["location"]) == (302, f"{base}/watch/{query}")
    index = server.get("/watch/")
    assert index.status == 200
    address = quote(server.address, safe="")
    assert f"href='active/{address}.html'" in index.text
    pages = [f"{base}/watch/", f"{base}/watch/active/{address}.html"]
    for page in pages:
        html = server.get(urlsplit(page).path).text
        links = LINK.findall(html)
        assert links, page
        for link in links:
            url = urljoin(page, link.replace("&amp;", "&").replace("{link}", address))
            target = urlsplit(url)
            assert target.netloc == f"127.0.0.1:{server.port}", (page, link)
            assert target.path.startswith("/watch/"), (page, link, url)
            method = "POST" if "/reset/" in target.path else "GET"
            headers = {"Origin": base} if method == "POST" else {}
            answer = server.get(target.path, method=method, headers=headers)
            # sync workers refuse /tail streams (503): routed, not missing
            assert answer.status in (200, 302, 503), (page, link, url, answer.status)


# A real browser: a form on a page of the Watcher's origin resets, one on another site cannot.


def _submitting_page(action: str) -> bytes:
    """The dashboard's reset form, submitted by the page itself as soon as it loads."""
    return (
        "<!DOCTYPE html><html><body>"
        f"<form action='{action}' method='post'>"
        "<input type='submit' name='x' value='x'></form>"
        "<script>document.forms[0].submit()</script></body></html>"
    ).encode()


class _Site:
    """A threaded wsgiref server on 127.0.0.1: serves a page that submits a form once, and hands
    every other request to `app`, recording the Origin and status of each reset."""

    def __init__(self, app: Any = None) -> None:
        self.app = app
        self.action = ""
        self.resets: list[tuple[str | None, str]] = []
        self.server = make_server("127.0.0.1", 0, self)
        self.port = self.server.server_port
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["PATH_INFO"] == "/submit.html":
            body, self.action = (_submitting_page(self.action) if self.action else b"done"), ""
            start_response("200 OK", [("Content-Type", "text/html")])
            return [body]
        if self.app is None or not environ["PATH_INFO"].startswith("/reset/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not Found"]

        def recording(status: str, headers: Any, exc_info: Any = None) -> Any:
            self.resets.append((environ.get("HTTP_ORIGIN"), status))
            return start_response(status, headers, exc_info)

        return self.app(environ, recording)

    def __enter__(self) -> _Site:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_a_browser_resets_from_the_same_origin_only(
    watcher: Watcher, load: Load, tmp_path: Path
) -> None:
    browser = programs.require(*BROWSERS)
    target = f"reset/{quote(load.address, safe='')}"
    with _Site(watcher) as own, _Site() as other:
        own.action = target
        run = run_browser(browser, tmp_path / "same", f"http://127.0.0.1:{own.port}/submit.html")
        assert run.returncode == 0, run.stderr[-2000:]
        assert own.resets == [(f"http://127.0.0.1:{own.port}", "302 Found")]

        other.action = f"http://127.0.0.1:{own.port}/{target}"
        run = run_browser(browser, tmp_path / "cross", f"http://127.0.0.1:{other.port}/submit.html")
        assert run.returncode == 0, run.stderr[-2000:]
        assert own.resets[1:] == [(f"http://127.0.0.1:{other.port}", "403 Forbidden")]
