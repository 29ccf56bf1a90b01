"""A small application wrapped in the middleware, for `make demo` and the load tests.

Endpoints: / (hello), /slow?seconds=S (sleeps, at most 30 s), /stream?chunks=N&delay=S
(a streaming body), /fail (raises), /count (increments a counter shared by all
workers and returns its new value), /_raindrops (the statistics),
/_raindrops/last_data_recv (queue time, see examples.demo_config) and
/watch/ (the Watcher's live dashboard of this host's listeners; /watch redirects there).

Every statistics endpoint answers loopback clients only. Behind a reverse proxy, list the
proxies in RAINDROPS_DEMO_TRUSTED_PROXIES (comma-separated CIDRs, "unix" for a proxy on a
unix socket): their requests are then judged by the client their X-Forwarded-For names.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from urllib.parse import parse_qs

from raindrops import LastDataRecv, Middleware, Raindrops, Watcher
from raindrops.wsgi.http import Environ, StartResponse

SLOW_SECONDS_MAX = 30.0
STREAM_CHUNKS_MAX = 10_000
COUNT_SEGMENT = os.environ.get("RAINDROPS_DEMO_COUNTER", f"/raindrops-demo-count-{os.getuid()}")
TRUSTED_PROXIES = [
    proxy.strip()
    for proxy in os.environ.get("RAINDROPS_DEMO_TRUSTED_PROXIES", "").split(",")
    if proxy.strip()
]
_counter: Raindrops | None = None


def _number(environ: Environ, name: str, default: float, maximum: float) -> float:
    values = parse_qs(environ.get("QUERY_STRING", "")).get(name)
    try:
        number = float(values[-1]) if values else default
    except ValueError:
        number = default
    return min(max(number, 0.0), maximum)


def _text(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _stream(chunks: int, delay_s: float) -> Iterator[bytes]:
    for index in range(chunks):
        if delay_s:
            time.sleep(delay_s)
        yield b"chunk %d\n" % index


def _count() -> int:
    global _counter
    if _counter is None:
        _counter = Raindrops(1, name=COUNT_SEGMENT)
    return _counter.incr(0)


def application(environ: Environ, start_response: StartResponse) -> list[bytes] | Iterator[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        return _text(start_response, "200 OK", "hello from raindrops\n")
    if path == "/slow":
        time.sleep(_number(environ, "seconds", 1.0, SLOW_SECONDS_MAX))
        return _text(start_response, "200 OK", "slept\n")
    if path == "/stream":
        chunks = int(_number(environ, "chunks", 10, STREAM_CHUNKS_MAX))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(chunks, _number(environ, "delay", 0.1, SLOW_SECONDS_MAX))
    if path == "/fail":
        raise RuntimeError("this endpoint always fails")
    if path == "/unavailable":
        return _text(start_response, "503 Service Unavailable", "try again later\n")
    if path == "/count":
        return _text(start_response, "200 OK", f"{_count()}\n")
    return _text(start_response, "404 Not Found", "not found\n")


WATCH_PREFIX = "/watch"
watcher = Watcher(trusted_proxies=TRUSTED_PROXIES)


def routes(environ: Environ, start_response: StartResponse) -> list[bytes] | Iterator[bytes]:
    """Mounts the Watcher under /watch, the demo elsewhere. "/watch" is handed over as PATH_INFO
    "", which the Watcher redirects to "/watch/": its links are relative to that."""
    path = environ.get("PATH_INFO", "/")
    if path == WATCH_PREFIX or path.startswith(WATCH_PREFIX + "/"):
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + WATCH_PREFIX
        environ["PATH_INFO"] = path[len(WATCH_PREFIX) :]
        return watcher(environ, start_response)  # type: ignore[no-any-return]
    return application(environ, start_response)


app = Middleware(
    LastDataRecv(routes, trusted_proxies=TRUSTED_PROXIES), trusted_proxies=TRUSTED_PROXIES
)
