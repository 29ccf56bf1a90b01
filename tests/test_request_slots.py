"""The WSGI middleware's table of requests in flight (zig/requests.zig): every path a request can
take through it counts exactly, with slots free or all taken, across threads and fork; the clock
it measures durations with is the monotonic clock, read without a system call."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_http_metrics import _by_labels, _environ, _json

from raindrops import Middleware, _native
from raindrops.scoreboard import Scoreboard

Environ = dict[str, Any]
OVER = 5
"""Requests held open past the table's size."""


def _replying(status: str, delay_s: float = 0.0) -> Callable[..., list[bytes]]:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        if delay_s:
            time.sleep(delay_s)
        start_response(status, [])
        return [b"body"]

    return app


def _open(app: Middleware, method: str = "GET") -> Any:
    body = app(_environ(method=method), lambda *args: None)
    assert b"".join(body) in (b"body", b"late")
    return body


def _late(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
    start_response("202 Accepted", [])
    yield b"late"


def _broken(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
    raise LookupError("broken app")


def test_requests_past_the_tables_size_are_counted_exactly_on_every_path() -> None:
    """With every slot taken, list bodies, late statuses and failures take the path that
    counts with the board; nothing is lost or counted twice when they all end."""
    app = Middleware(_replying("200 OK"), listeners=[])
    _open(app).close()  # the status now has a number: the next ones take the common path
    held = [_open(app) for _ in range(_native.REQUESTS_MAX + OVER)]
    assert any(not isinstance(body.close, type(held[0].close)) for body in held[-OVER:])
    late_app = Middleware(_late, listeners=[], stats=app.stats)
    broken_app = Middleware(_broken, listeners=[], stats=app.stats)
    late = _open(late_app, "PUT")
    with pytest.raises(LookupError):
        broken_app(_environ(method="POST"), lambda *args: None)
    during = _json(app)
    assert (during["calling"], during["writing"]) == (0, len(held) + 1)
    for body in held:
        body.close()
        body.close()
    late.close()
    after = _json(app)
    assert (after["calling"], after["writing"]) == (0, 0)
    assert _by_labels(after) == {
        ("GET", "200"): len(held) + 1,
        ("PUT", "202"): 1,
        ("POST", "500"): 1,
    }
    assert after["request_duration_seconds"]["count"] == len(held) + 3
    assert after["request_errors_total"] == 1


def test_a_body_closed_twice_ends_its_request_once_even_after_its_slot_is_reused() -> None:
    """Its close() is its token's: the slot's next request has another token."""
    app = Middleware(_replying("200 OK"), listeners=[])
    _open(app).close()
    first = _open(app)
    first.close()
    others = [_open(app) for _ in range(_native.REQUESTS_MAX)]  # one takes first's slot again
    first.close()
    assert _json(app)["writing"] == len(others)
    for body in others:
        body.close()
    assert (_json(app)["writing"], _json(app)["requests_total"]) == (0, len(others) + 2)


def test_durations_of_the_common_path_are_measured_natively() -> None:
    app = Middleware(_replying("200 OK", delay_s=0.03), listeners=[], buckets=[0.01, 0.02, 10])
    for _ in range(3):
        _open(app).close()
    document = _json(app)["request_duration_seconds"]
    assert document["buckets"] == {"0.01": 0, "0.02": 0, "10.0": 3, "+Inf": 3}
    assert 0.09 <= document["sum"] < 30


def test_threads_serving_at_once_count_exactly() -> None:
    """gthread-style: many threads in one process take and give back slots concurrently."""
    app = Middleware(_replying("201 Created"), listeners=[])
    threads_count, requests_each = 8, 1500
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            for _ in range(requests_each):
                _open(app, "POST").close()
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=serve) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and not any(thread.is_alive() for thread in threads)
    document = _json(app)
    assert (document["calling"], document["writing"]) == (0, 0)
    assert _by_labels(document) == {("POST", "201"): threads_count * requests_each}
    assert document["request_duration_seconds"]["count"] == threads_count * requests_each


def test_a_forked_child_starts_with_every_slot_free() -> None:
    """The parent's requests in flight are not the child's: its table is reset at fork."""
    board = Scoreboard()
    pointer = board.board()
    held = []
    while (token := _native.request_enter(pointer)) != _native.NO_SLOT:
        held.append(token)
    assert len(held) <= _native.REQUESTS_MAX
    pid = os.fork()
    if pid == 0:  # the child reports by its exit status only
        token = _native.request_enter(pointer)
        os._exit(0 if token != _native.NO_SLOT else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child found no free slot"
    for token in held:
        _native.request_respond(token, None)
        _native.request_leave(token, None)
    assert _native.request_enter(pointer) != _native.NO_SLOT
    board.close()


def test_boards_past_the_argument_free_enters_count_through_their_pointer() -> None:
    """Each board binds an enter function of its own; past BOARDS_MAX of them, a middleware
    enters with its board's pointer, and counts the same."""
    boards = [Scoreboard() for _ in range(_native.BOARDS_MAX + 1)]
    steps = [_native.request_enter_step(board.board()) for board in boards]
    assert isinstance(steps[-1], functools.partial)
    for board, step in zip(boards, steps, strict=True):
        token = step()
        _native.request_respond(token, None)
        _native.request_leave(token, None)
        assert (board.totals().calling, board.totals().writing) == (0, 0)
    app = Middleware(_replying("200 OK"), listeners=[])
    for _ in range(3):
        _open(app).close()
    assert _json(app)["requests_total"] == 3
    for board in boards:
        board.close()


def test_a_request_without_path_info_goes_to_the_application() -> None:
    app = Middleware(_replying("200 OK"), listeners=[])
    for _ in range(2):
        environ = _environ()
        del environ["PATH_INFO"]
        body = app(environ, lambda *args: None)
        assert list(body) == [b"body"]
        body.close()  # type: ignore[attr-defined]
    assert _json(app)["requests_total"] == 2


def test_a_routed_middleware_sharing_a_scoreboard_still_names_routes() -> None:
    """The numbers a middleware without route= caches are not taken by one with route=."""
    plain = Middleware(_replying("200 OK"), listeners=[])
    routed = Middleware(_replying("200 OK"), listeners=[], stats=plain.stats, route=lambda e: "r")
    for app in (plain, plain, routed, routed):
        _open(app).close()
    routes = {entry.get("route") for entry in _json(plain)["requests"]}
    assert routes == {"r", "other"}


def test_steps_with_tokens_not_in_flight_or_a_null_series_change_nothing() -> None:
    """The native steps take what Python passes: a token past the table, of a slot that is
    free, or a failure without its series is ignored, never a crash or a count."""
    board = Scoreboard()
    pointer = board.board()
    token = _native.request_enter(pointer)
    assert token != _native.NO_SLOT
    _native.request_fail(token, None)  # no series: ignored, the request stays in calling
    for stray in (_native.NO_SLOT, _native.TOKENS_MAX + 7, 2**31 - 1):
        _native.request_respond(stray, None)
        _native.request_respond_numbered(stray)
        _native.request_leave(stray, None)
    assert (board.totals().calling, board.totals().writing) == (1, 0)
    _native.request_respond(token, None)
    _native.request_leave(token, None)
    _native.request_leave(token, None)
    _native.request_respond(token, None)
    assert (board.totals().calling, board.totals().writing) == (0, 0)
    board.close()


def test_the_clock_is_the_monotonic_clock_read_through_the_vdso() -> None:
    before = time.monotonic_ns()
    native = _native.clock_ns()
    after = time.monotonic_ns()
    assert before <= native <= after
    assert _native.clock_vdso(), "the kernel maps a vDSO into every Linux process"
