"""raindrops.asgi.Middleware: in process with asyncio, then under real ASGI servers.

The servers (gunicorn with uvicorn_worker.UvicornWorker with and without
--preload, uvicorn --workers 2, hypercorn --workers 2) serve tests/asgi_app.py
on loopback; every one has two worker processes, 40 requests held in the
application across them, streams held in writing, and one worker SIGKILLed
while it holds requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from servers import wait_for

import raindrops
import raindrops.asgi
import raindrops.asgi.middleware
from raindrops import _process, segments
from raindrops.scoreboard import Scoreboard
from testsupport import processes
from testsupport.gunicorn import (
    SHM_DIR,
    STATS,
    Master,
    answers,
    free_port,
    launch,
    remove_segments,
    request,
    wait_ready,
)
from testsupport.programs import ROOT

APP = "tests.asgi_app:application"
HELD = 40
STREAMS = 4
Message = MutableMapping[str, Any]

# In process.


class Exchange:
    """Drives one ASGI call: the messages the app sent, and a client that may go away."""

    def __init__(self, fail_send: bool = False) -> None:
        self.sent: list[Message] = []
        self.fail_send = fail_send
        self.gone = asyncio.Event()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.fail_send and message["type"] == "http.response.body":
            raise OSError("client went away")
        self.sent.append(message)


def scope(path: str, method: str = "GET", **extra: Any) -> dict[str, Any]:
    base = {"type": "http", "path": path, "method": method, "query_string": b"", "headers": []}
    return {**base, "client": ("127.0.0.1", 4711), **extra}


def gauges(stats: Scoreboard) -> tuple[int, int]:
    totals = stats.totals()
    return totals.calling, totals.writing


async def _stepped_app(scope: Any, receive: Any, send: Any) -> None:
    """Stops in the app, then after the headers, then after a first chunk: a test reads between."""
    await asyncio.sleep(0.05)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.05)
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await asyncio.sleep(0.05)
    await send({"type": "http.response.body", "body": b"b"})


def test_calling_then_writing_then_nothing() -> None:
    stats = Scoreboard()
    middleware = raindrops.asgi.Middleware(_stepped_app, stats=stats, listeners=[])

    async def run() -> list[tuple[int, int]]:
        exchange = Exchange()
        task = asyncio.create_task(middleware(scope("/"), exchange.receive, exchange.send))
        seen = []
        for _ in range(3):
            await asyncio.sleep(0.03)
            seen.append(gauges(stats))
            await asyncio.sleep(0.02)
        await task
        return seen

    assert asyncio.run(run()) == [(1, 0), (0, 1), (0, 1)]
    totals = stats.totals()
    assert (totals.calling, totals.writing, totals.requests, totals.errors) == (0, 0, 1, 0)


async def _held_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
    if scope["path"] == "/raise":
        raise RuntimeError("raised")
    if scope["path"] == "/send":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a"})
    await receive()


def test_cancel_raise_and_a_client_gone_each_account_once() -> None:
    stats = Scoreboard()
    middleware = raindrops.asgi.Middleware(_held_app, stats=stats, listeners=[])

    async def run() -> tuple[int, int]:
        calls = [Exchange() for _ in range(3)] + [Exchange(fail_send=True)]
        paths = ["/hold", "/stream", "/stream", "/send"]
        tasks = [
            asyncio.create_task(middleware(scope(path), call.receive, call.send))
            for path, call in zip(paths, calls, strict=True)
        ]
        await asyncio.sleep(0.05)
        held = gauges(stats)
        tasks[0].cancel()  # the server cancels a request in the application
        tasks[1].cancel()  # ... and one in writing
        calls[2].gone.set()  # a client goes away while its response is streamed
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [type(result) for result in results] == [
            asyncio.CancelledError,
            asyncio.CancelledError,
            type(None),
            OSError,
        ]
        with pytest.raises(RuntimeError, match="raised"):
            await middleware(scope("/raise"), calls[0].receive, calls[0].send)
        return held

    assert asyncio.run(run()) == (1, 2)
    totals = stats.totals()
    # The /send request raised OSError from its last send: it had responded, so it is no error.
    assert (totals.calling, totals.writing, totals.requests, totals.errors) == (0, 0, 5, 2)


def endpoint(
    middleware: raindrops.asgi.Middleware, **request: Any
) -> tuple[int, dict[bytes, bytes], bytes]:
    exchange = Exchange()
    asyncio.run(middleware(scope(STATS, **request), exchange.receive, exchange.send))
    start, body = exchange.sent
    return start["status"], dict(start["headers"]), body["body"]


def test_the_endpoint_answers_every_format_to_allowed_clients_only() -> None:
    middleware = raindrops.asgi.Middleware(_held_app, stats=Scoreboard(), listeners=[])
    assert endpoint(middleware)[2] == b"calling: 0\nwriting: 0\n"
    status, headers, body = endpoint(middleware, query_string=b"format=json")
    assert (status, headers[b"content-type"]) == (200, b"application/json")
    assert json.loads(body)["calling"] == 0
    accept = [(b"accept", b"text/plain; version=0.0.4")]
    assert b"raindrops_calling 0" in endpoint(middleware, headers=accept)[2]
    assert endpoint(middleware, method="HEAD")[1][b"content-length"] == b"22"
    assert endpoint(middleware, method="HEAD")[2] == b""
    assert endpoint(middleware, method="POST")[:2] == (
        405,
        {
            b"content-type": b"text/plain",
            b"content-length": b"23",
            b"allow": b"GET, HEAD",
        },
    )
    assert endpoint(middleware, query_string=b"format=xml")[0] == 400
    assert endpoint(middleware, client=("10.20.30.40", 1))[0] == 403
    assert endpoint(middleware, client=None)[0] == 200  # a unix socket peer is local
    forwarded = [(b"x-forwarded-for", b"127.0.0.1"), (b"x-forwarded-for", b"10.0.0.1")]
    assert endpoint(middleware, headers=forwarded)[0] == 403  # no trusted proxy
    trusting = raindrops.asgi.Middleware(
        _held_app, stats=Scoreboard(), listeners=[], trusted_proxies=["127.0.0.1/32"]
    )
    assert endpoint(trusting, headers=forwarded[:1])[0] == 200
    # Repeated headers are joined, as a WSGI server joins them: the second names 10.0.0.1.
    assert endpoint(trusting, headers=forwarded)[0] == 403


def test_lifespan_passes_through_and_websockets_are_counted_while_open() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        if scope["type"] == "websocket":
            await receive()

    stats = Scoreboard()
    middleware = raindrops.ASGIMiddleware(app, stats=stats, listeners=[])

    def report(form: bytes) -> bytes:
        return endpoint(middleware, query_string=b"format=" + form)[2]

    async def run() -> list[bytes]:
        lifespan, socket_a, socket_b = Exchange(), Exchange(), Exchange()
        await middleware({"type": "lifespan"}, lifespan.receive, lifespan.send)
        tasks = [
            asyncio.create_task(middleware({"type": "websocket", "path": STATS}, *ends))
            for ends in ((socket_a.receive, socket_a.send), (socket_b.receive, socket_b.send))
        ]
        await asyncio.sleep(0.02)
        both = await asyncio.to_thread(report, b"prometheus")
        tasks[0].cancel()  # a cancelled connection ends its count as a closed one does
        socket_b.gone.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return [both, await asyncio.to_thread(report, b"json")]

    both, after = asyncio.run(run())
    assert seen == ["lifespan", "websocket", "websocket"]
    assert b"\nraindrops_websockets 2\n" in both
    assert (json.loads(after)["websockets"], json.loads(after)["requests_total"]) == (0, 0)
    assert stats.totals().requests == 0
    assert endpoint(middleware)[2] == b"calling: 0\nwriting: 0\n"  # raindrops' text, unchanged
    assert raindrops.ASGIMiddleware is raindrops.asgi.Middleware


def test_a_named_middleware_names_its_websockets_segment_after_it() -> None:
    """name= (or RAINDROPS_NAME) names both segments: nothing is derived from a master."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    name = f"/raindrops-test-asgi-{os.getpid()}"
    paths = [SHM_DIR / name[1:], SHM_DIR / f"{name[1:]}-websockets"]
    try:
        middleware = raindrops.ASGIMiddleware(app, name=name, listeners=[])

        async def run() -> bytes:
            socket_a = Exchange()
            task = asyncio.create_task(
                middleware({"type": "websocket", "path": "/ws"}, socket_a.receive, socket_a.send)
            )
            await asyncio.sleep(0.02)
            report = await asyncio.to_thread(endpoint, middleware, query_string=b"format=json")
            socket_a.gone.set()
            await task
            return report[2]

        assert json.loads(asyncio.run(run()))["websockets"] == 1
        assert all(path.exists() for path in paths)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def test_a_bad_path_or_network_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="'stats'"):
        raindrops.asgi.Middleware(_held_app, path="stats")
    with pytest.raises(ValueError, match="'nowhere'"):
        raindrops.asgi.Middleware(_held_app, allow=["nowhere"])


# Real servers.


def stats_json(port: int) -> dict[str, Any]:
    response = request(port, f"{STATS}?format=json", timeout=10)
    assert response.status == 200, response.body
    result: dict[str, Any] = response.json()
    return result


def both_workers_counted(port: int) -> bool:
    """Both workers have served a request into one scoreboard (workers counts claimed slots)."""
    if not answers(port, "/fast"):
        return False
    return int(stats_json(port)["workers"]) >= 2


@contextlib.contextmanager
def connections(port: int, path: str | None, count: int) -> Iterator[list[socket.socket]]:
    """`count` requests for `path` (None: none yet) left open; closed (the client goes away) at
    the end."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            opened.append(client)
            if path is not None:
                client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        yield opened
    finally:
        for client in opened:
            client.close()


def holders(log: Path) -> Counter[int]:
    return Counter(int(pid) for pid in re.findall(r"^holding (\d+)$", log.read_text(), re.M))


Reading = Callable[[], dict[str, Any]]


def stream_and_raise(reading: Reading, port: int) -> None:
    """Streams in progress read writing, not calling; an exception is a 500 and an error."""
    with connections(port, "/stream", STREAMS) as streams:
        for stream in streams:
            assert stream.recv(4096).startswith(b"HTTP/1.1 200")
        stats = wait_for(reading, lambda stats: stats["writing"] == STREAMS, 10, "writing")
        assert stats["calling"] == 0
    wait_for(reading, lambda stats: stats["writing"] == 0, 20, "writing: 0")
    assert request(port, "/raise").status == 500
    errors = wait_for(reading, lambda stats: stats["calling"] == 0, 10, "calling: 0")
    assert errors["request_errors_total"] == 1


def hold_and_kill(
    reading: Reading, port: int, log: Path, after_kill: Callable[[int], Reading]
) -> None:
    """40 held requests read calling 40; then the worker holding most (k) is SIGKILLed, and
    after_kill(k) checks the numbers and says how to read on; calling returns to 0 when the
    clients go away."""
    with connections(port, "/hold", HELD):
        wait_for(reading, lambda stats: stats["calling"] == HELD, 20, f"calling: {HELD}")
        held = wait_for(lambda: holders(log), lambda seen: seen.total() == HELD, 10, "holders")
        victim, killed = held.most_common(1)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: processes.is_dead(victim), bool, 10, "the SIGKILLed worker gone")
        reading = after_kill(killed)
    wait_for(reading, lambda stats: stats["calling"] == 0, 20, "calling: 0")


def drops_by(reading: Reading) -> Callable[[int], Reading]:
    """The server keeps serving: calling drops by exactly the killed worker's requests."""

    def check(killed: int) -> Reading:
        healed = wait_for(reading, lambda stats: stats["calling"] != HELD, 10, "calling drop")
        assert healed["calling"] == HELD - killed, (killed, healed)
        return reading

    return check


def all_gone(process: subprocess.Popen[bytes], segment: Reading) -> Callable[[int], Reading]:
    """hypercorn ends the whole server when a worker dies: nothing stays counted after it."""

    def check(killed: int) -> Reading:
        process.wait(processes.STOP_TIMEOUT)
        assert segment() == {"calling": 0, "writing": 0}, killed
        return segment

    return check


WEBSOCKETS = 6
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def websocket_pid(client: socket.socket) -> int:
    """Opens a websocket on a connected socket; the app's first text frame is its pid."""
    client.sendall(HANDSHAKE)
    data = b""
    while True:
        head, _, frame = data.partition(b"\r\n\r\n")
        if len(frame) >= 2 and len(frame) >= 2 + frame[1]:
            assert head.startswith(b"HTTP/1.1 101"), head
            assert frame[0] == 0x81, frame  # one unmasked text frame, shorter than 126 bytes
            return int(frame[2 : 2 + frame[1]])
        chunk = client.recv(4096)
        assert chunk, data
        data += chunk


def websockets_and_kill(reading: Reading, port: int) -> None:
    """Open websockets read `websockets`; a SIGKILL of a worker with k of them drops it by k."""
    with connections(port, None, WEBSOCKETS) as clients:
        pids = Counter(websocket_pid(client) for client in clients)
        wait_for(reading, lambda stats: stats["websockets"] == WEBSOCKETS, 10, "websockets")
        victim, killed = pids.most_common(1)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: processes.is_dead(victim), bool, 10, "the SIGKILLed worker gone")
        healed = wait_for(reading, lambda stats: stats["websockets"] != WEBSOCKETS, 10, "drop")
        assert healed["websockets"] == WEBSOCKETS - killed, (pids, healed)
    wait_for(reading, lambda stats: stats["websockets"] == 0, 20, "websockets: 0")


def segment_reader(master: int) -> Reading:
    """Reads the named scoreboard of `master`'s workers directly, without asking a worker."""
    board = Scoreboard(name="/" + expected_segments(master)[0])

    def read() -> dict[str, Any]:
        totals = board.totals()
        return {"calling": totals.calling, "writing": totals.writing}

    return read


def named_segments(master: int) -> set[str]:
    return {path.name for path in SHM_DIR.glob(f"raindrops-mw-{master}-*")}


def expected_segments(master: int) -> tuple[str, str]:
    """The names every worker of `master` must derive (requests, websockets): one per server."""
    fields = processes.stat_fields(f"/proc/{master}/stat")
    assert fields is not None
    server = segments.Server(master, _process.pid_namespace(), int(fields[19]))
    cwd = os.path.realpath(ROOT)
    paths = (STATS, STATS + raindrops.asgi.middleware.WEBSOCKETS_PATH_SUFFIX)
    return (
        segments.segment_name("mw", paths[0], server, cwd).lstrip("/"),
        segments.segment_name("mw", paths[1], server, cwd).lstrip("/"),
    )


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_with_uvicorn_workers(preload: bool, tmp_path: Path) -> None:
    pytest.importorskip("uvicorn_worker")
    args = ["--workers", "2", "-k", "uvicorn_worker.UvicornWorker"]
    log = tmp_path / "gunicorn.log"
    with launch(
        Master, [*args, *(["--preload"] if preload else [])], workers=2, log=log, app=APP
    ) as master:
        wait_for(lambda: both_workers_counted(master.port), bool, 20, "both workers counted")
        # Without preload each worker built its own middleware: they meet in the master's segment.
        expected = set() if preload else set(expected_segments(master.pid))
        assert named_segments(master.pid) == expected
        reading = functools.partial(stats_json, master.port)
        stream_and_raise(reading, master.port)
        hold_and_kill(reading, master.port, log, drops_by(reading))
        websockets_and_kill(reading, master.port)


def child_environment() -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("RAINDROPS_")
    }
    environment.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return environment


@contextlib.contextmanager
def server(command: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An ASGI server with two spawned workers, both counted; stopped and cleaned after."""
    with processes.running(command, log=log, cwd=ROOT, env=child_environment()) as process:
        try:
            if not wait_ready(process, lambda: both_workers_counted(port), command[2], log):
                raise RuntimeError(f"{command[2]} exited:\n{log.read_text()}")
            yield process
        finally:
            processes.stop(process)
            remove_segments(process.pid)


SERVERS = {
    "uvicorn": lambda port: ["--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
    "hypercorn": lambda port: ["--workers", "2", "--bind", f"127.0.0.1:{port}"],
}


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_spawned_workers_share_the_supervisors_segment(name: str, tmp_path: Path) -> None:
    """uvicorn and hypercorn spawn workers: each builds the middleware, they meet by name."""
    pytest.importorskip(name)
    port = free_port()
    log = tmp_path / f"{name}.log"
    command = [sys.executable, "-m", name, *SERVERS[name](port), APP]
    with server(command, port, log) as process:
        assert named_segments(process.pid) == set(expected_segments(process.pid))
        reading = functools.partial(stats_json, port)
        stream_and_raise(reading, port)
        if name == "hypercorn":
            after_kill = all_gone(process, segment_reader(process.pid))
        else:
            after_kill = drops_by(reading)
        hold_and_kill(reading, port, log, after_kill)
        if name != "hypercorn":
            websockets_and_kill(reading, port)


def test_a_single_uvicorn_process_keeps_its_scoreboard_private(tmp_path: Path) -> None:
    """No workers: the process is not one of several, so no segment is named after its parent."""
    pytest.importorskip("uvicorn")
    port = free_port()
    log = tmp_path / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "--port", str(port), APP]
    with processes.running(command, log=log, cwd=ROOT, env=child_environment()) as process:
        assert wait_ready(process, lambda: answers(port, "/fast"), "uvicorn", log)
        stats = stats_json(port)
        assert (stats["workers"], stats["requests_total"], stats["degraded"]) == (1, 1, [])
        assert named_segments(os.getpid()) == named_segments(process.pid) == set()
