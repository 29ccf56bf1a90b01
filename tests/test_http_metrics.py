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
from servers import Gunicorn, gunicorn, run_threads, wait_for

from raindrops import ASGIMiddleware, Middleware
from raindrops.routes import ROUTES_MAX
from raindrops.scoreboard import Scoreboard
from raindrops.series import DEFAULT_BUCKETS, ENTRIES_MAX, key_of, labels_of
from testsupport.formats import parse_prometheus
from testsupport.gunicorn import launch

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


def _routed(route: Callable[[Environ], object]) -> Middleware:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        environ["ROUTE"] = environ["PATH_INFO"].rsplit("/", 1)[0] or "/"  # as a router would
        start_response("200 OK", [])
        return [b""]

    return Middleware(app, listeners=[], route=route)


def _by_route(document: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    return {(e["route"], e["method"], e["code"]): e["count"] for e in document["requests"]}


def test_route_labels_requests_by_what_the_callable_names() -> None:
    app = _routed(lambda environ: environ.get("ROUTE"))
    for path in ("/users/1", "/users/2", "/items/9", "/"):
        _serve(app, path=path)
    assert _by_route(_json(app)) == {
        ("/users", "GET", "200"): 2,
        ("/items", "GET", "200"): 1,
        ("/", "GET", "200"): 1,
    }
    samples = _prometheus(app)
    assert samples['raindrops_requests_total{method="GET",code="200",route="/users"}'] == 2
    bucket = 'raindrops_request_duration_seconds_count{method="GET",code="200",route="/items"}'
    assert samples[bucket] == 1


@pytest.mark.parametrize(
    "named",
    [None, "", 7, ["unhashable"], "x" * 129, "\ud800", RuntimeError("raised")],
    ids=["none", "empty", "int", "unhashable", "too-long", "surrogate", "raises"],
)
def test_a_route_that_is_not_a_short_name_is_other_and_never_fails(named: object) -> None:
    def route(environ: Environ) -> object:
        if isinstance(named, Exception):
            raise named
        return named

    app = _routed(route)
    _serve(app, path="/a/b")
    assert _by_route(_json(app)) == {("other", "GET", "200"): 1}


def test_routes_are_bounded_and_names_are_escaped() -> None:
    app = _routed(lambda environ: environ["PATH_INFO"])
    for number in range(ROUTES_MAX + 5):
        _serve(app, path=f'/r{number}"\n')
    by_route = _by_route(_json(app))
    assert sum(by_route.values()) == ROUTES_MAX + 5
    assert by_route[("other", "GET", "200")] == 5
    assert len(by_route) == ROUTES_MAX + 1
    text = b"".join(app(_environ("/_raindrops", query="format=prometheus"), lambda *a: None))
    assert b'route="/r0\\"\\n"' in text
    parse_prometheus(text.decode())


def test_a_route_claimed_by_two_workers_at_once_is_one_label_set() -> None:
    """Forked workers meeting the same new routes at the same moment may claim two entries for
    one name: readers merge them, so counts stay exact and no label set repeats."""
    board = Scoreboard()
    app = Middleware(_replying("200 OK"), listeners=[], stats=board, route=lambda e: e["PATH_INFO"])
    go_reader, go_writer = os.pipe()
    children = []
    for _ in range(6):
        child = os.fork()
        if child == 0:
            os.read(go_reader, 1)
            for number in range(10):
                _serve(app, path=f"/shared/{number}")
            os._exit(0)
        children.append(child)
    os.write(go_writer, b"x" * 6)
    for child in children:
        assert os.waitpid(child, 0)[1] == 0
    by_route = _by_route(_json(app))
    assert by_route == {(f"/shared/{number}", "GET", "200"): 6 for number in range(10)}
    board.close()


def test_a_torn_route_entry_is_other() -> None:
    board = Scoreboard()
    app = Middleware(_replying("200 OK"), listeners=[], stats=board, route=lambda e: "/fine")
    _serve(app)
    first = board.routes.first
    name_word = board.counters[first + 1]
    board.counters[first + 1] = name_word ^ 1  # the CRC no longer matches
    assert _by_route(_json(app)) == {("other", "GET", "200"): 1}
    board.counters[first + 1] = name_word
    board.counters[first] = board.counters[first] | (500 << 32)  # a length past the bound
    assert _by_route(_json(app)) == {("other", "GET", "200"): 1}
    board.close()


def test_route_must_be_callable() -> None:
    for middleware in (Middleware, ASGIMiddleware):
        with pytest.raises(ValueError, match="'/users'"):
            middleware(_replying("200 OK"), listeners=[], route="/users")


def test_flask_url_rules_label_requests_under_gunicorn(tmp_path: Path) -> None:
    """The Flask recipe with route=url_rule: /slow?seconds=0 and /slow?seconds=0.01 are one
    route; an unmatched path has no rule, so `other`."""
    flask_app = "examples.frameworks.flask_app:app"
    log = tmp_path / "gunicorn.log"
    with launch(Gunicorn, ["--workers", "2"], workers=2, log=log, app=flask_app) as server:
        server.settle()
        for path in ("/", "/slow?seconds=0", "/slow?seconds=0.01", "/nowhere"):
            server.get(path)
        expected = {("/", "GET", "200"): 1, ("/slow", "GET", "200"): 2, ("other", "GET", "404"): 1}
        wait_for(lambda: _by_route(server.json()), lambda seen: seen == expected, 10, "routes")


def test_keys_read_from_shared_memory_are_checked() -> None:
    assert labels_of(key_of("PATCH", "418 Teapot")) == (0, "PATCH", "418")
    assert labels_of(key_of("GET", "200 OK", 64)) == (64, "GET", "200")
    assert labels_of(key_of("GET", "200 OK", 65)) == (65, "GET", "200")
    assert labels_of(key_of("GET", "200 OK", 66)) is None
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

    middleware = ASGIMiddleware(app, listeners=[], stats=Scoreboard())

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


def test_asgi_route_is_named_from_the_scope_once_the_response_starts() -> None:
    import asyncio

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["route"] = "/items/{id}"  # what Starlette's router leaves in the scope
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    board = Scoreboard()  # its own: another test may have loaded gunicorn, making this a "worker"
    middleware = ASGIMiddleware(
        app, listeners=[], stats=board, route=lambda scope: scope.get("route")
    )

    async def nothing(*args: Any) -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    for item in range(3):
        scope = {"type": "http", "path": f"/items/{item}", "method": "GET", "headers": []}
        asyncio.run(middleware(scope, nothing, nothing))
    [entry] = middleware.stats.totals().series
    assert (entry.route, entry.method, entry.code, entry.requests) == (
        "/items/{id}",
        "GET",
        "200",
        3,
    )


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
