"""The framework recipes of examples/frameworks/ under a real gunicorn with two workers.

Each recipe is the few lines the README shows: Flask and Django over WSGI
(sync workers), Django over ASGI and FastAPI (uvicorn_worker.UvicornWorker),
each served by `gunicorn -w 2` on loopback. For each one, exactly:
- slow requests held in the application read `calling N` (one per sync
  worker, 20 across the async workers); after they finish, requests_total
  grew by exactly the requests sent and calling is 0;
- the endpoint answers in raindrops' text format, JSON, Prometheus and
  OpenMetrics, and they agree;
- a worker SIGKILLed while it holds k of N requests drops out of calling at
  once (N - k, read the moment the worker is dead), and only the N - k that
  were answered are counted.

While every sync worker sleeps in a request none can answer the endpoint, so
the readings there come straight from the workers' shared scoreboard (the
segment the endpoint itself reads); the endpoint is read as soon as a worker
can answer it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import Gunicorn, wait_for
from test_asgi import expected_segments

from raindrops.scoreboard import Scoreboard
from testsupport import formats, processes
from testsupport.gunicorn import SHM_DIR, STATS, launch

WORKERS = 2
UVICORN = "uvicorn_worker.UvicornWorker"
HELD_ASYNC = 20  # requests one async worker holds at once are not bounded by the worker count
HELD_SECONDS = 2  # long enough to read calling N on a loaded machine
KILL_SECONDS = 6  # the survivors stay in flight while a replacement worker boots and answers
FAST_REQUESTS = 5
WAIT_SECONDS = 20.0


@dataclass(frozen=True)
class Recipe:
    app: str  # gunicorn's APP_MODULE
    worker_class: str
    held: int  # slow requests in flight at once: one per sync worker, more for async workers
    greeting: bytes  # what / answers

    @property
    def sync(self) -> bool:
        return self.worker_class == "sync"


RECIPES = {
    "flask": Recipe("examples.frameworks.flask_app:app", "sync", WORKERS, b"hello from Flask\n"),
    "django-wsgi": Recipe(
        "examples.frameworks.django_site.wsgi:application", "sync", WORKERS, b"hello from Django\n"
    ),
    "django-asgi": Recipe(
        "examples.frameworks.django_site.asgi:application",
        UVICORN,
        HELD_ASYNC,
        b"hello from Django\n",
    ),
    "fastapi": Recipe(
        "examples.frameworks.fastapi_app:app", UVICORN, HELD_ASYNC, b"hello from FastAPI\n"
    ),
}


def owner(server: Gunicorn, client: socket.socket) -> int | None:
    """The worker that accepted `client`'s connection; None while it waits in the accept queue."""
    try:
        return server.connection_owner(client.getsockname()[1])
    except AssertionError:
        return None


def spread(server: Gunicorn, count: int, clients: list[socket.socket]) -> Counter[int]:
    """Opens `count` connections into `clients`, count / WORKERS accepted by each worker.

    No request is sent yet, so a connection accepted by a worker that has its
    share is closed unused: it reaches no application and counts nowhere. A
    sync worker blocks on its connection, so the next goes to another worker;
    async workers are evened out so that a SIGKILL takes some requests, not all.
    """
    share = count // WORKERS
    owners: Counter[int] = Counter()
    deadline = time.monotonic() + WAIT_SECONDS
    while len(clients) < count:
        assert time.monotonic() < deadline, f"workers did not take {share} connections: {owners}"
        client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        accepted = functools.partial(owner, server, client)
        pid = wait_for(accepted, bool, WAIT_SECONDS, "an accepted connection")
        if pid is not None and owners[pid] < share:
            owners[pid] += 1
            clients.append(client)
        else:
            client.close()
    return owners


@contextlib.contextmanager
def held(
    server: Gunicorn, path: str, count: int
) -> Iterator[tuple[list[socket.socket], Counter[int]]]:
    """`count` requests for `path` spread evenly over the workers, each on its own connection,
    left for the caller to read; and how many each worker (pid) holds."""
    clients: list[socket.socket] = []
    request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()  # no chunks
    try:
        owners = spread(server, count, clients)
        for client in clients:
            client.sendall(request)
        yield clients, owners
    finally:
        for client in clients:
            client.close()


def answer(client: socket.socket) -> tuple[int, bytes] | None:
    """The status and body the server sent before closing; None for a connection cut short."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := client.recv(65536):
            data += chunk
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        return None
    return int(head.split(b" ", 2)[1]), body


@contextlib.contextmanager
def scoreboard(master: int) -> Iterator[Scoreboard]:
    """The scoreboard the workers of `master` share (they made it while starting up)."""
    name = expected_segments(master)[0]
    assert (SHM_DIR / name).exists(), sorted(path.name for path in SHM_DIR.iterdir())
    board = Scoreboard(name="/" + name)
    try:
        yield board
    finally:
        board.close()


def calling(board: Scoreboard) -> int:
    return board.totals().calling


def wait_calling(board: Scoreboard, expected: int) -> None:
    wait_for(
        lambda: calling(board), lambda now: now == expected, WAIT_SECONDS, f"calling {expected}"
    )


def held_then_counted(server: Gunicorn, board: Scoreboard, recipe: Recipe) -> None:
    """N slow requests read calling N; once answered, they and the fast ones are counted."""
    before = server.settle()
    for _ in range(FAST_REQUESTS):
        response = server.get("/")
        assert (response.status, response.body) == (200, recipe.greeting)
    with held(server, f"/slow?seconds={HELD_SECONDS}", recipe.held) as (clients, owners):
        assert len(owners) == WORKERS, owners
        wait_calling(board, recipe.held)
        if not recipe.sync:  # an async worker answers the endpoint while it holds requests
            seen = server.text()
            assert (seen.calling, seen.writing) == (recipe.held, 0)
        answers = [answer(client) for client in clients]
    assert answers == [(200, b"slept\n")] * recipe.held
    requests = before["requests_total"] + FAST_REQUESTS + recipe.held
    after = server.wait_totals(requests, before["request_errors_total"])
    assert (after["calling"], after["writing"], calling(board)) == (0, 0, 0)


def every_format_agrees(server: Gunicorn) -> None:
    """Text, JSON, Prometheus and OpenMetrics give the same numbers of an idle server."""
    document = server.settle()
    json_stats = formats.parse_json(server.stats("?format=json").text)
    text = server.text()
    prometheus = server.stats("?format=prometheus")
    assert prometheus.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert formats.check_prometheus_text(prometheus.text) > 0
    from_prometheus = formats.prometheus_stats(formats.parse_prometheus(prometheus.text))
    openmetrics = server.stats(headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    from_openmetrics = formats.prometheus_stats(formats.parse_prometheus(openmetrics.text, True))
    assert (text.calling, text.writing) == (0, 0)
    assert set(text.listeners) == set(json_stats.listeners) == {server.address}
    counted = document["requests_total"]
    assert json_stats.requests == from_prometheus.requests == from_openmetrics.requests == counted
    assert from_prometheus.calling == from_openmetrics.calling == 0
    assert document["degraded"] == [], document
    assert 1 <= document["workers"] <= WORKERS


def kill_the_busiest(server: Gunicorn, board: Scoreboard, recipe: Recipe) -> None:
    """SIGKILL of the worker holding k of N requests: calling N - k at once, N - k counted."""
    before = server.settle()
    with held(server, f"/slow?seconds={KILL_SECONDS}", recipe.held) as (clients, owners):
        wait_calling(board, recipe.held)
        victim, killed = owners.most_common(1)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: processes.is_dead(victim), bool, 10, "the SIGKILLed worker gone")
        assert calling(board) == recipe.held - killed, (owners, "read the moment it died")
        seen = server.json()  # a survivor, or the worker gunicorn started in the victim's place
        assert seen["calling"] == recipe.held - killed, (owners, seen)
        answers = [answer(client) for client in clients]
    assert answers.count((200, b"slept\n")) == recipe.held - killed, (owners, answers)
    assert answers.count(None) == killed, (owners, answers)
    after = server.wait_totals(
        before["requests_total"] + recipe.held - killed, before["request_errors_total"]
    )
    assert calling(board) == after["calling"] == 0


@pytest.mark.parametrize("name", list(RECIPES))
def test_framework_recipe_under_gunicorn(name: str, tmp_path: Path) -> None:
    recipe = RECIPES[name]
    if not recipe.sync:
        pytest.importorskip("uvicorn_worker")
    args = ["--workers", str(WORKERS), "--worker-class", recipe.worker_class]
    log = tmp_path / "gunicorn.log"
    with launch(Gunicorn, args, workers=WORKERS, log=log, app=recipe.app) as server:
        with scoreboard(server.pid) as board:
            held_then_counted(server, board, recipe)
            every_format_agrees(server)
            kill_the_busiest(server, board, recipe)
        not_found = server.get("/nowhere")
        assert not_found.status == 404, "the framework routes what raindrops does not answer"
        assert server.get(STATS + "?format=xml").status == 400, "raindrops answers its path"
