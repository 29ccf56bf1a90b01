"""Requests by method and status code, 5xx errors, exceptions and duration buckets in seconds:
in one process (every rule, the invalid space), across a fork with a SIGKILL, and under a real
gunicorn with 4 workers."""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from servers import gunicorn, run_threads, wait_for

from raindrops import ASGIMiddleware, Middleware
from raindrops.scoreboard import Scoreboard
from raindrops.series import DEFAULT_BUCKETS, ENTRIES_MAX, key_of, labels_of
from testsupport.formats import parse_prometheus

Environ = dict[str, Any]


def _environ(path: str = "/", method: str = "GET", query: str = "") -> Environ:
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": BytesIO(),
    }


def _replying(status: str) -> Callable[..., list[bytes]]:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response(status, [("Content-Type", "text/plain")])
        return [b"body"]

    return app


def _serve(middleware: Middleware, method: str = "GET", path: str = "/") -> None:
    body = middleware(_environ(path, method), lambda *args: None)
    list(body)
    body.close()  # type: ignore[attr-defined]


def _json(middleware: Middleware) -> dict[str, Any]:
    body = middleware(_environ("/_raindrops", query="format=json"), lambda *args: None)
    return json.loads(b"".join(body))  # type: ignore[no-any-return]


def _prometheus(middleware: Middleware | Any) -> dict[str, float]:
    body = middleware(_environ("/_raindrops", query="format=prometheus"), lambda *args: None)
    return parse_prometheus(b"".join(body).decode())


def _by_labels(document: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(entry["method"], entry["code"]): entry["count"] for entry in document["requests"]}


def test_status_codes_and_methods_label_requests() -> None:
    app = Middleware(_replying("404 Not Found"), listeners=[])
    for method in ("GET", "GET", "POST", "BREW", "get"):
        _serve(app, method)
    document = _json(app)
    assert _by_labels(document) == {("GET", "404"): 2, ("POST", "404"): 1, ("other", "404"): 2}
    assert (document["requests_total"], document["request_errors_total"]) == (5, 0)
    samples = _prometheus(app)
    assert samples['raindrops_requests_total{method="other",code="404"}'] == 2


def test_a_returned_5xx_is_an_error_and_an_exception_is_both() -> None:
    unavailable = Middleware(_replying("503 Service Unavailable"), listeners=[])
    _serve(unavailable)
    document = _json(unavailable)
    assert (document["request_errors_total"], document["request_exceptions_total"]) == (1, 0)

    def broken(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        raise RuntimeError("no")

    raising = Middleware(broken, listeners=[])
    with pytest.raises(RuntimeError):
        raising(_environ(method="DELETE"), lambda *args: None)
    document = _json(raising)
    assert _by_labels(document) == {("DELETE", "500"): 1}
    assert (document["request_errors_total"], document["request_exceptions_total"]) == (1, 1)
    assert (document["calling"], document["writing"]) == (0, 0)


@pytest.mark.parametrize("status", ["999 Beyond", "20 Short", "abc", "", "099 Low"])
def test_codes_outside_100_to_599_are_other(status: str) -> None:
    app = Middleware(_replying(status), listeners=[])
    _serve(app)
    assert _by_labels(_json(app)) == {("GET", "other"): 1}


def test_a_response_started_while_iterating_is_counted_at_close() -> None:
    def late(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("201 Created", [])
        yield b"made"

    app = Middleware(late, listeners=[])
    body = app(_environ(method="PUT"), lambda *args: None)
    assert _json(app)["requests_total"] == 0, "nothing started yet"
    assert list(body) == [b"made"]
    body.close()  # type: ignore[attr-defined]
    body.close()  # type: ignore[attr-defined]
    assert _by_labels(_json(app)) == {("PUT", "201"): 1}


def test_exc_info_reaches_the_server_start_response() -> None:
    seen: list[Any] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        try:
            raise ValueError("x")
        except ValueError:
            import sys

            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b""]

    middleware = Middleware(app, listeners=[])
    body = middleware(_environ(), lambda *args: seen.append(args))
    body.close()  # type: ignore[attr-defined]
    assert len(seen[0]) == 3 and seen[0][2][0] is ValueError
    assert _json(middleware)["request_errors_total"] == 1


def test_durations_land_in_the_configured_buckets() -> None:
    def slow(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        time.sleep(0.03)
        start_response("200 OK", [])
        return [b""]

    app = Middleware(slow, listeners=[], buckets=[0.01, 0.02, 10.0])
    _serve(app)
    samples = _prometheus(app)
    bucket = 'raindrops_request_duration_seconds_bucket{method="GET",code="200",le="%s"}'
    assert [samples[bucket % bound] for bound in ("0.01", "0.02", "10.0", "+Inf")] == [0, 0, 1, 1]
    assert 0.03 <= samples['raindrops_request_duration_seconds_sum{method="GET",code="200"}'] < 10
    document = _json(app)["request_duration_seconds"]
    assert document["buckets"] == {"0.01": 0, "0.02": 0, "10.0": 1, "+Inf": 1}
    assert document["count"] == 1


def test_default_buckets_are_prometheus_clients() -> None:
    from prometheus_client import Histogram

    assert Histogram.DEFAULT_BUCKETS[:-1] == DEFAULT_BUCKETS


@pytest.mark.parametrize(
    ("buckets", "named"),
    [
        ([], "0"),
        ([0.1, 0.05], "ascend"),
        ([0.1, 0.1], "ascend"),
        ([math.nan], "nan"),
        ([-1.0], "-1.0"),
        ([1e-9], "1e-09"),
        (["fast"], "fast"),
        (None, "None"),
        ([float(n) for n in range(1, 34)], "33"),
    ],
)
def test_bad_buckets_are_refused_by_name(buckets: Any, named: str) -> None:
    for middleware in (Middleware, ASGIMiddleware):
        with pytest.raises(ValueError, match=named):
            middleware(_replying("200 OK"), listeners=[], buckets=buckets)


def test_a_trailing_inf_bucket_is_accepted() -> None:
    app = Middleware(_replying("200 OK"), listeners=[], buckets=[0.5, math.inf])
    _serve(app)
    assert _json(app)["request_duration_seconds"]["buckets"] == {"0.5": 1, "+Inf": 1}


def test_cardinality_is_bounded_by_an_overflow_series() -> None:
    """Every method x code is 5,010 pairs: the table keeps ENTRIES_MAX - 1 of them and counts
    the rest as (other, other), so no count is lost and no label set is repeated."""
    board = Scoreboard()
    statuses = [f"{code} X" for code in range(200, 200 + ENTRIES_MAX + 10)]
    app = Middleware(_replying("200 OK"), listeners=[], stats=board)
    for status in statuses:
        app.app = _replying(status)
        _serve(app)
    _serve(app, "BREW", "/")
    document = _json(app)
    labels = _by_labels(document)
    assert len(document["requests"]) == ENTRIES_MAX == len(labels)
    assert labels[("other", "other")] == len(statuses) + 1 - (ENTRIES_MAX - 1)
    assert document["requests_total"] == len(statuses) + 1
    board.close()


def test_keys_read_from_shared_memory_are_checked() -> None:
    assert labels_of(key_of("PATCH", "418 Teapot")) == ("PATCH", "418")
    for hostile in (1, 1 << 30, (11 << 10) | 200, (1 << 10) | 600, (1 << 10) | 99, 2**64 - 1):
        assert labels_of(hostile) is None
    board = Scoreboard()
    app = Middleware(_replying("200 OK"), listeners=[], stats=board)
    _serve(app)
    first_key = board.series.first
    board.counters[first_key + ENTRIES_MAX // 2 * 36] = (1 << 10) | 777  # a key no writer makes
    assert _by_labels(_json(app)) == {("GET", "200"): 1}
    board.close()


def test_a_response_started_is_counted_though_the_worker_dies_before_close() -> None:
    """raindrops counted a request at close(): a worker killed while writing lost it."""
    board = Scoreboard()
    app = Middleware(_replying("200 OK"), listeners=[], stats=board)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        body = app(_environ(), lambda *args: None)  # started, returned, never closed
        os.write(writer, b"x")
        signal.pause()
        os._exit(0 if body else 1)
    os.read(reader, 1)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    totals = board.totals()
    assert (totals.requests, totals.writing, totals.calling) == (1, 0, 0)
    board.close()


def test_asgi_counts_by_method_and_status() -> None:
    import asyncio

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        if scope["path"] == "/silent":
            return  # what Django's handler does when the client went away
        status = 503 if scope["path"] == "/busy" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    middleware = ASGIMiddleware(app, listeners=[])

    async def call(path: str, method: str = "GET") -> None:

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            pass

        scope = {
            "type": "http",
            "path": path,
            "method": method,
            "query_string": b"",
            "headers": [],
            "client": ("127.0.0.1", 1),
        }
        await middleware(scope, receive, send)

    async def scenario() -> None:
        await call("/", "POST")
        await call("/busy")
        with pytest.raises(RuntimeError):
            await call("/boom")
        await call("/silent")

    asyncio.run(scenario())
    stats = middleware.stats.totals()
    by_labels = {(entry.method, entry.code): entry.requests for entry in stats.series}
    expected = {("POST", "200"): 1, ("GET", "503"): 1, ("GET", "500"): 1, ("GET", "other"): 1}
    assert by_labels == expected
    assert (stats.errors, stats.exceptions, stats.calling, stats.writing) == (2, 1, 0, 0)


# A real gunicorn: 4 workers, mixed statuses from many threads, one worker killed mid-stream.

ROUTES = {"/": ("GET", "200"), "/nothing": ("GET", "404"), "/unavailable": ("GET", "503")}


def test_labelled_counts_are_exact_under_gunicorn_with_a_sigkill(tmp_path: Path) -> None:
    with gunicorn(tmp_path, ["--worker-class", "sync"], workers=4) as server:
        server.settle()
        sent: Counter[tuple[str, str]] = Counter()

        def client(index: int) -> Counter[tuple[str, str]]:
            mine: Counter[tuple[str, str]] = Counter()
            for request_number in range(30):
                path = list(ROUTES)[(index + request_number) % len(ROUTES)]
                assert server.get(path).status == int(ROUTES[path][1])
                mine[ROUTES[path]] += 1
            return mine

        for counted in run_threads(4, client):
            sent.update(counted)
        stream = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        stream.request("GET", "/stream?chunks=50&delay=0.1")
        wait_for(server.json, lambda stats: stats["writing"] == 1, 10, "a stream being written")
        client_port = stream.sock.getsockname()[1]
        os.kill(server.connection_owner(client_port), signal.SIGKILL)
        stream.close()
        sent[("GET", "200")] += 1  # its response started: counted though never closed
        stats = wait_for(
            server.json,
            lambda stats: _by_labels(stats) == dict(sent) and stats["writing"] == 0,
            10,
            f"requests by label {dict(sent)}",
        )
        assert stats["request_errors_total"] == sent[("GET", "503")]
        assert stats["request_exceptions_total"] == 0
        samples = parse_prometheus(server.stats("?format=prometheus").text)
        for (method, code), count in sent.items():
            assert samples[f'raindrops_requests_total{{method="{method}",code="{code}"}}'] == count
