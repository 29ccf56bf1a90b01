"""The middleware in one process: PEP 3333 details, the endpoint, the scoreboard's healing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import wsgiref.simple_server
import wsgiref.util
from collections.abc import Callable, Iterable, Iterator
from http.client import HTTPConnection
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from raindrops import Middleware, _process
from raindrops.counters import Raindrops
from raindrops.scoreboard import SLOT_FIELDS, Scoreboard, ServerBoard
from raindrops.segments import SHM_DIR, Server, remove_stale_segments
from raindrops.slots import CLAIMING, slot_owner
from raindrops.wsgi.middleware import NAME_PREFIX

Environ = dict[str, Any]


class Response:
    def __init__(self) -> None:
        self.status = ""
        self.headers: dict[str, str] = {}

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> Callable[[bytes], None]:
        self.status = status
        self.headers = dict(headers)
        return lambda data: None


def environ(path: str = "/", **extra: str) -> Environ:
    env: Environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": BytesIO(),
        "wsgi.multiprocess": False,
    }
    env.update(extra)
    return env


def get(app: Middleware, path: str = "/_raindrops", **extra: str) -> tuple[Response, bytes]:
    response = Response()
    body = app(environ(path, **extra), response)
    data = b"".join(body)
    close = getattr(body, "close", None)
    if close:
        close()
    return response, data


def counts(app: Middleware) -> dict[str, Any]:
    return json.loads(get(app, QUERY_STRING="format=json")[1])  # type: ignore[no-any-return]


def hello(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_text_format_is_raindrops_byte_for_byte() -> None:
    app = Middleware(hello, listeners=[])
    response, body = get(app)
    assert body == b"calling: 0\nwriting: 0\n"
    assert response.status == "200 OK"
    assert response.headers == {"Content-Type": "text/plain", "Content-Length": "22"}


def test_calling_inside_the_app_and_writing_while_the_body_is_iterated() -> None:
    seen: dict[str, bytes] = {}
    app: Middleware

    def inner(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        seen["calling"] = get(app)[1]
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            seen["writing"] = get(app)[1]
            yield b"x"

        return body()

    app = Middleware(inner, listeners=[])
    response = Response()
    result = app(environ(), response)
    assert b"".join(result) == b"x"
    result.close()  # type: ignore[attr-defined]
    assert seen == {"calling": b"calling: 1\nwriting: 0\n", "writing": b"calling: 0\nwriting: 1\n"}
    assert get(app)[1] == b"calling: 0\nwriting: 0\n"


def test_body_close_is_called_exactly_once_and_a_second_close_does_not_underflow() -> None:
    closed: list[int] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"a"

        def close(self) -> None:
            closed.append(1)

    app = Middleware(lambda environ, start_response: Body(), listeners=[])  # type: ignore[arg-type,return-value]
    result = app(environ(), Response())
    list(result)
    result.close()  # type: ignore[attr-defined]
    result.close()  # type: ignore[attr-defined]
    assert closed == [1]
    assert counts(app)["writing"] == 0
    assert counts(app)["requests_total"] == 1


def test_exception_in_the_app_counts_an_error_and_leaves_nothing_raised() -> None:
    def broken(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        raise RuntimeError("boom")

    app = Middleware(broken, listeners=[])
    with pytest.raises(RuntimeError, match="boom"):
        app(environ(), Response())
    stats = counts(app)
    assert (
        stats["calling"],
        stats["writing"],
        stats["requests_total"],
        stats["request_errors_total"],
    ) == (0, 0, 1, 1)


def test_exception_while_iterating_is_ended_by_close() -> None:
    def failing_body(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        raise OSError("client went away")

    app = Middleware(failing_body, listeners=[])
    result = app(environ(), Response())
    with pytest.raises(OSError):
        list(result)
    assert counts(app)["writing"] == 1
    result.close()  # type: ignore[attr-defined]
    assert counts(app)["writing"] == 0


def test_file_wrapper_bodies_keep_their_type(tmp_path: Path) -> None:
    data = tmp_path / "file.bin"
    data.write_bytes(b"z" * 1000)

    def sendfile(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](open(data, "rb"))  # type: ignore[no-any-return]

    app = Middleware(sendfile, listeners=[])
    env = environ(**{"wsgi.file_wrapper": wsgiref.util.FileWrapper})  # type: ignore[arg-type]
    result = app(env, Response())
    assert isinstance(result, wsgiref.util.FileWrapper), (
        "servers use sendfile only for their own wrapper"
    )
    assert counts(app)["writing"] == 1
    assert b"".join(result) == b"z" * 1000
    result.close()
    result.close()
    assert counts(app)["writing"] == 0
    assert result.filelike.closed


def test_stats_requests_are_not_counted_and_a_trailing_slash_is_the_app() -> None:
    app = Middleware(hello, listeners=[])
    get(app)
    get(app, QUERY_STRING="format=prometheus")
    assert counts(app)["requests_total"] == 0
    assert get(app, "/_raindrops/")[1] == b"hello"
    assert counts(app)["requests_total"] == 1


def test_formats_by_query_and_accept_header() -> None:
    app = Middleware(hello, listeners=[])
    get(app, "/")
    response, body = get(app, QUERY_STRING="format=prometheus")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b'raindrops_requests_total{method="GET",code="200"} 1\n' in body
    assert b"# TYPE raindrops_calling gauge\n" in body
    assert b'duration_seconds_bucket{method="GET",code="200",le="+Inf"} 1\n' in body
    response, body = get(app, HTTP_ACCEPT="text/plain;version=0.0.4;q=0.9,*/*;q=0.1")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    response, body = get(
        app, HTTP_ACCEPT="application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n") and b"# TYPE raindrops_requests counter\n" in body
    response, body = get(app, QUERY_STRING="format=json")
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(body)["request_duration_seconds"]["count"] == 1
    response, body = get(app, QUERY_STRING="format=xml")
    assert response.status.startswith("400")


def test_methods_and_allowed_clients() -> None:
    app = Middleware(hello, listeners=[])
    response, body = get(app, REQUEST_METHOD="POST")
    assert response.status.startswith("405") and response.headers["Allow"] == "GET, HEAD"
    response, body = get(app, REQUEST_METHOD="HEAD")
    assert (
        response.status == "200 OK" and body == b"" and response.headers["Content-Length"] == "22"
    )
    assert get(app, REMOTE_ADDR="192.0.2.7")[0].status.startswith("403")
    assert get(app, REMOTE_ADDR="::1")[0].status == "200 OK"
    assert get(app, REMOTE_ADDR="::ffff:127.0.0.1")[0].status == "200 OK"
    assert get(app, REMOTE_ADDR="")[0].status == "200 OK", "a unix socket client is local"
    assert get(app, REMOTE_ADDR="not an address")[0].status.startswith("403")
    private = Middleware(hello, listeners=[], allow=["10.0.0.0/8"])
    assert get(private, REMOTE_ADDR="10.1.2.3")[0].status == "200 OK"
    assert get(private)[0].status.startswith("403")


def test_explicit_and_discovered_listeners() -> None:
    with socket.socket() as server, socket.socket(socket.AF_INET6) as server6:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server6.bind(("::1", 0))
        server6.listen(8)
        key = f"127.0.0.1:{server.getsockname()[1]}"
        key6 = f"[::1]:{server6.getsockname()[1]}"
        with socket.create_connection(server.getsockname()):
            explicit = get(Middleware(hello, listeners=[key]))[1].decode()
            assert explicit == f"calling: 0\nwriting: 0\n{key} active: 0\n{key} queued: 1\n"
            discovered = get(Middleware(hello))[1].decode()
            assert f"{key} queued: 1\n" in discovered and f"{key6} active: 0\n" in discovered


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match="path"):
        Middleware(hello, path="_raindrops")
    with pytest.raises(ValueError, match="'nope'"):
        Middleware(hello, listeners=["nope"])
    with pytest.raises(ValueError):
        Middleware(hello, allow=["not a network"])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4", 0.0])
def test_worker_capacity_must_be_a_positive_int(bad: object) -> None:
    from raindrops import ASGIMiddleware

    for middleware in (Middleware, ASGIMiddleware):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            middleware(hello, worker_capacity=bad, listeners=[])


def test_capacity_is_given_or_unknown_outside_a_server_that_tells_it() -> None:
    """Called directly (no gunicorn worker, no uWSGI), capacity is unknown: JSON null and no
    raindrops_capacity sample; a given worker_capacity is reported as the sum over workers."""
    unknown = Middleware(hello, listeners=[])
    get(unknown, "/")
    assert counts(unknown)["capacity"] is None
    assert b"\nraindrops_capacity " not in get(unknown, QUERY_STRING="format=prometheus")[1]
    given = Middleware(hello, listeners=[], worker_capacity=6)
    assert counts(given)["capacity"] == 6, "the worker reading the endpoint tells its own"
    get(given, "/")
    assert counts(given)["capacity"] == 6
    assert b"\nraindrops_capacity 6\n" in get(given, QUERY_STRING="format=prometheus")[1]


def test_a_server_calling_from_c_with_no_python_frame_above_is_served() -> None:
    """uWSGI's threads call the application straight from C: the capacity lookup walked two
    frames up, found none and failed the request with a 500 (ValueError from sys._getframe)."""
    import _thread

    statuses: list[str] = []
    done = threading.Event()
    app = Middleware(hello, listeners=[])

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)
        done.set()

    _thread.start_new_thread(app, (environ("/"), start_response))  # no Python caller frame
    assert done.wait(10) and statuses == ["200 OK"]
    assert counts(app)["calling"] == 0 and counts(app)["writing"] == 1


def test_a_capacity_lookup_that_raises_leaves_the_capacity_unknown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    board = ServerBoard("/_test_capacity_raises", given=Scoreboard())
    bound = board.bind({}, lambda: 1 // 0)
    assert board.totals({}, lambda: 1 // 0).capacity is None
    assert bound is board.bind({}, lambda: 1)
    assert "capacity is unknown (ZeroDivisionError" in caplog.text


def test_enter_still_counts_when_every_update_slot_is_taken() -> None:
    """Scoreboard.enter_step falls back to the pointer-passing call when no native update slot
    is free."""
    from raindrops import _native

    spare = Raindrops(1)
    taken = []
    try:
        while (slot := _native.slot_claim(_native.CounterPointer(spare.address(0)))) is not None:
            taken.append(slot)
        board = Scoreboard()
        enter = board.enter_step()
        enter()
        enter()
        assert board.totals().calling == 2
        board.close()
    finally:
        for slot in taken:
            _native.slot_release(slot)
        spare.close()


def test_the_endpoint_claims_the_readers_slot_with_its_capacity() -> None:
    """A worker that has only served the endpoint still tells its capacity, so that the
    server's capacity is known (it read null under uWSGI when such a worker was live)."""
    app = Middleware(hello, listeners=[], worker_capacity=3)
    assert counts(app)["capacity"] == 3


def test_capacity_sums_live_workers_and_is_unknown_if_one_is() -> None:
    board = Scoreboard()
    board.declare_capacity(4)
    assert board.totals().capacity == 4
    pid = os.fork()
    if pid == 0:
        board.declare_capacity(8)
        os._exit(0 if board.totals().capacity == 12 else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert board.totals().capacity == 4, "the dead worker's capacity is gone"
    pid = os.fork()
    if pid == 0:
        board.board()  # claimed, capacity never told
        os._exit(0 if board.totals().capacity is None else 1)
    assert os.waitpid(pid, 0)[1] == 0
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            board.declare_capacity(bad)  # type: ignore[arg-type]
    board.close()


def test_wsgiref_single_process_server() -> None:
    app = Middleware(hello)
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_port
        for _ in range(5):
            connection = HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/")
            assert connection.getresponse().read() == b"hello"
            connection.close()
        connection = HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/_raindrops?format=json")
        stats = json.loads(connection.getresponse().read())
        connection.close()
        assert stats["requests_total"] == 5 and stats["calling"] == 0 and stats["writing"] == 0
        assert stats["listeners"][f"127.0.0.1:{port}"]["queued"] == 0
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_a_killed_worker_stops_counting_at_once() -> None:
    board = Scoreboard()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        from raindrops import _native

        pointer = board.board()
        _native.board_enter(pointer)
        _native.board_enter(pointer)
        os.write(writer, b"x")
        signal.pause()
        os._exit(0)
    os.read(reader, 1)
    totals = board.totals()
    assert (totals.calling, totals.workers) == (2, 1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    totals = board.totals()
    assert (totals.calling, totals.workers) == (0, 0)
    board.close()


def _claim_together(board: Scoreboard, workers: int) -> list[int]:
    """Forks `workers` processes that claim their slots at the same moment, enter once each and
    wait; returns their pids once all have entered."""
    go_reader, go_writer = os.pipe()
    ready_reader, ready_writer = os.pipe()
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            from raindrops import _native

            os.read(go_reader, 1)
            _native.board_enter(board.board())
            os.write(ready_writer, b"x")
            signal.pause()
            os._exit(0)
        pids.append(pid)
    os.write(go_writer, b"x" * workers)
    for _ in range(workers):
        os.read(ready_reader, 1)
    for descriptor in (go_reader, go_writer, ready_reader, ready_writer):
        os.close(descriptor)
    return pids


@pytest.mark.parametrize("round_number", range(12))
def test_workers_claiming_at_once_each_get_their_own_slot(round_number: int) -> None:
    """Slot ownership is one compare-and-swap of pid and start time: with a separate start field
    two claimers could share a slot, and a killed one's request would stay counted."""
    board = Scoreboard()
    workers = 16
    pids = _claim_together(board, workers)
    try:
        totals = board.totals()
        assert (totals.calling, totals.workers) == (workers, workers)
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        os.waitpid(victim, 0)
        totals = board.totals()
        assert (totals.calling, totals.workers) == (workers - 1, workers - 1)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert board.totals().workers == 0
    board.close()


def test_a_slot_being_claimed_is_skipped_by_readers_and_taken_only_from_the_dead() -> None:
    """A claimer stopped between taking a slot and zeroing it: while it lives, readers skip its
    slot and other claimers leave it alone; once it is dead, the slot is taken over."""
    board = Scoreboard()
    claimer = os.fork()
    if claimer == 0:
        signal.pause()
        os._exit(0)
    try:
        start = _process.start_ticks(claimer)
        assert start is not None
        board.counters[0] = slot_owner(claimer, start) | CLAIMING
        board.counters[1] = 5  # the previous owner's calling, not yet zeroed
        board.board()
        assert board.counters[0] == slot_owner(claimer, start) | CLAIMING
        assert board.counters[SLOT_FIELDS] == slot_owner(os.getpid(), _own_start())
        assert (board.totals().calling, board.totals().workers) == (0, 1)
    finally:
        os.kill(claimer, signal.SIGKILL)
        os.waitpid(claimer, 0)
    pid = os.fork()
    if pid == 0:
        board.board()
        taken = board.counters[0] == slot_owner(os.getpid(), _own_start())
        os._exit(0 if taken and board.counters[1] == 0 else 1)
    assert os.waitpid(pid, 0)[1] == 0, "the dead claimer's slot goes to the next claimer"
    board.close()


def _own_start() -> int:
    start = _process.start_ticks(os.getpid())
    assert start is not None
    return start


def test_a_dead_workers_slot_is_reused_and_zeroed() -> None:
    board = Scoreboard()
    pid = os.fork()
    if pid == 0:
        from raindrops import _native

        _native.board_enter(board.board())
        os._exit(0)
    os.waitpid(pid, 0)
    board.board()
    totals = board.totals()
    assert (totals.calling, totals.workers) == (0, 1)
    board.close()


def test_stale_segments_of_dead_masters_are_removed() -> None:
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    me = Server.this_process()
    stale = SHM_DIR / (me._replace(pid=child).prefix("mw") + "0123456789ab")
    live = SHM_DIR / (me.prefix("mw") + "0123456789ab")
    assert stale.name.startswith(NAME_PREFIX)
    stale.write_bytes(b"")
    live.write_bytes(b"")
    try:
        assert f"/{stale.name}" in remove_stale_segments()
        assert not stale.exists() and live.exists()
    finally:
        stale.unlink(missing_ok=True)
        live.unlink()
