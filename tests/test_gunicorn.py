"""The middleware under a real gunicorn: examples.demo:app over loopback TCP.

Three set-ups share most tests: sync workers loaded after fork, sync workers
preloaded in the master (--preload), and threaded workers (gthread). Every
count is checked exactly: each test waits until nothing is in flight, takes
the totals, makes a known number of requests, and compares (requests to the
statistics endpoint itself are not counted).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from servers import ROOT, SERVER_VARIANTS, Background, Gunicorn, gunicorn, run_threads, wait_for
from test_server_segments import NOBODY, need_root, segment_bytes, squat

from examples.demo import application
from raindrops import Middleware, _process, linux
from raindrops.scoreboard import Scoreboard
from raindrops.segments import SHM_DIR, Server, segment_name
from testsupport import processes, users
from testsupport.formats import family_total, parse_prometheus, parse_text
from testsupport.gunicorn import launch, request
from testsupport.gunicorn import segment_name as unique_name
from testsupport.processes import is_dead

# name -> (gunicorn arguments, workers, requests one worker serves at once)
VARIANTS: dict[str, tuple[list[str], int, int]] = {
    "sync": (["--worker-class", "sync"], 3, 1),
    "sync-preload": (["--worker-class", "sync", "--preload"], 3, 1),
    "gthread": (["--worker-class", "gthread", "--threads", "4"], 2, 4),
}
SETTLE_TIMEOUT = 10.0


@pytest.fixture(scope="module", params=list(VARIANTS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gunicorn]:
    args, workers, _ = VARIANTS[request.param]
    with gunicorn(tmp_path_factory.mktemp(request.param), args, workers=workers) as running:
        running.label = request.param
        yield running


def in_flight_capacity(server: Gunicorn) -> int:
    """How many slow requests can be in flight while a statistics request still gets served at once.

    Sync workers serve one request each: all workers but one. A gthread worker
    queues requests beyond its threads, and any worker may accept a connection:
    one thread fewer than a worker has, whichever worker they land on.
    """
    _, workers, threads = VARIANTS[server.label]
    return workers - 1 if threads == 1 else threads - 1


def settle(server: Gunicorn) -> dict[str, Any]:
    return server.settle(SETTLE_TIMEOUT)


def totals(
    server: Gunicorn, before: dict[str, Any], requests: int, errors: int = 0
) -> dict[str, Any]:
    """Waits until exactly `requests` more requests (`errors` of them failed) than `before` are
    counted."""
    return server.wait_totals(
        before["requests_total"] + requests, before["request_errors_total"] + errors
    )


def hammer(server: Gunicorn, threads: int, per_thread: int, path: str = "/") -> int:
    """`threads` clients making `per_thread` requests each, one connection per request; returns
    how many."""

    def client(_: int) -> int:
        for _ in range(per_thread):
            response = server.get(path)
            assert response.status == 200, (response.status, response.body)
        return per_thread

    return sum(run_threads(threads, client))


def test_in_flight_requests_show_in_calling_then_return_to_zero(server: Gunicorn) -> None:
    before = settle(server)
    slow = in_flight_capacity(server)
    requests = Background()
    for _ in range(slow):
        requests.start(server.port, "/slow?seconds=3")
    seen = wait_for(server.text, lambda stats: stats.calling == slow, 10, f"calling: {slow}")
    assert seen.writing == 0
    active, queued = seen.listeners[server.address]
    assert active >= slow + 1, "the slow requests and this one are accepted connections"
    assert queued == 0
    responses = requests.join()
    assert [(r.status, r.body) for r in responses] == [(200, b"slept\n")] * slow
    after = wait_for(
        server.text,
        lambda stats: stats.calling == 0 and stats.writing == 0,
        SETTLE_TIMEOUT,
        "calling: 0",
    )
    assert set(after.listeners) == {server.address}
    totals(server, before, slow)


def test_a_streaming_body_shows_in_writing_then_returns_to_zero(server: Gunicorn) -> None:
    before = settle(server)
    stream = Background()
    stream.start(server.port, "/stream?chunks=20&delay=0.1")
    seen = wait_for(server.text, lambda stats: stats.writing == 1, 10, "writing: 1")
    assert seen.calling == 0, (
        "the application returned its iterator: only the body is left to write"
    )
    [response] = stream.join()
    assert response.status == 200
    assert response.body == b"".join(b"chunk %d\n" % index for index in range(20))
    totals(server, before, 1)


def test_json_counts_workers_and_finds_the_gunicorn_listener(server: Gunicorn) -> None:
    before = settle(server)
    hammer(server, 2, 10)
    stats = totals(server, before, 20)
    assert 0 < stats["workers"] <= server.workers
    assert set(stats["listeners"]) == {server.address}, "auto-discovered: exactly the bind address"
    listener = stats["listeners"][server.address]
    assert listener["active"] >= 1 and listener["queued"] == 0, (
        "this request's connection is active"
    )
    text = server.stats()
    assert text.headers["content-type"] == "text/plain"
    lines = text.text.splitlines()
    assert lines[:2] == ["calling: 0", "writing: 0"]
    assert (
        lines[2].startswith(f"{server.address} active: ")
        and lines[3] == f"{server.address} queued: 0"
    )
    assert len(lines) == 4


def test_capacity_is_what_every_live_worker_can_hold(server: Gunicorn) -> None:
    """Sync workers hold one request each, gthread workers their threads: the JSON `capacity`
    and the raindrops_capacity gauge are their sum over live workers, the denominator of
    utilization."""
    _, workers, per_worker = VARIANTS[server.label]

    def after_some_requests() -> dict[str, Any]:
        hammer(server, 2, 4)
        return server.json()

    stats = wait_for(after_some_requests, lambda s: s["workers"] == workers, 30, "every worker")
    assert stats["capacity"] == workers * per_worker
    prometheus = parse_prometheus(server.stats("?format=prometheus").text)
    assert prometheus["raindrops_capacity"] == workers * per_worker


def test_sigkill_of_a_busy_worker_heals_within_one_read(server: Gunicorn) -> None:
    before = settle(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(
            b"GET /slow?seconds=25 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        busy = wait_for(server.json, lambda stats: stats["calling"] == 1, 10, "calling: 1")
        owner = server.connection_owner(client.getsockname()[1])
        assert owner in server.worker_pids()
        os.kill(owner, signal.SIGKILL)
        wait_for(lambda: is_dead(owner), bool, 10, f"worker {owner} to die")
        healed = server.json()  # one read, no polling
        assert healed["calling"] == busy["calling"] - 1 == 0
        assert healed["writing"] == 0
        assert healed["requests_total"] == before["requests_total"], (
            "the killed request never finished"
        )
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(4096) == b"", "the worker died with the connection"
    # The master replaces the worker; the server keeps counting from where it was.
    wait_for(
        lambda: len(server.worker_pids()), lambda n: n == server.workers, 20, "a replacement worker"
    )
    assert hammer(server, 1, 3) == 3
    totals(server, before, 3)


def test_two_thousand_requests_are_counted_exactly(server: Gunicorn) -> None:
    before = settle(server)
    made = hammer(server, 4, 500)
    assert made == 2000
    after = totals(server, before, 2000)
    assert after["busy_seconds_total"] > before["busy_seconds_total"]


@pytest.mark.parametrize("preload", [False, True], ids=["after-fork", "preload"])
def test_totals_stay_exact_while_workers_recycle(preload: bool, tmp_path: Path) -> None:
    args = ["--max-requests", "50", "--max-requests-jitter", "10"] + (
        ["--preload"] if preload else []
    )
    with gunicorn(tmp_path, args, workers=3) as server:
        first_workers = set(server.worker_pids())
        assert hammer(server, 4, 500) == 2000
        stats = server.wait_totals(2000, 0)  # statistics requests are not counted, all others are
        assert 0 < stats["workers"] <= 3
        assert first_workers - set(server.worker_pids()), "some worker must have been recycled"


def test_an_application_exception_is_a_500_and_counts_an_error(server: Gunicorn) -> None:
    before = settle(server)
    response = server.get("/fail")
    assert response.status == 500
    totals(server, before, 1, errors=1)  # failed requests are counted too
    assert parse_text(server.stats().text).calling == 0


def test_a_client_disconnect_mid_stream_ends_writing(server: Gunicorn) -> None:
    before = settle(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        # 200 chunks 0.05 s apart: 10 s if nobody noticed the client left.
        client.sendall(b"GET /stream?chunks=200&delay=0.05 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while b"chunk 1\n" not in received:
            data = client.recv(4096)
            assert data, received
            received += data
        assert received.startswith(b"HTTP/1.1 200 ")
        wait_for(server.text, lambda stats: stats.writing == 1, 5, "writing: 1")
    # gunicorn notices on its next write; well before the stream would have ended.
    after = wait_for(
        server.json, lambda stats: stats["writing"] == 0, 5, "writing: 0 after the disconnect"
    )
    assert after["calling"] == 0
    totals(server, before, 1, errors=0)  # the application did not fail


SCRAPES: list[tuple[str, dict[str, str], str]] = [
    ("", {}, "text"),
    ("?format=text", {}, "text"),
    ("?format=json", {}, "json"),
    ("?format=prometheus", {}, "prometheus"),
    ("", {"Accept": "text/plain;version=0.0.4"}, "prometheus"),
    ("", {"Accept": "application/openmetrics-text; version=1.0.0"}, "openmetrics"),
    ("?format=openmetrics", {}, "openmetrics"),
]
CONTENT_TYPES = {
    "text": "text/plain",
    "json": "application/json",
    "prometheus": "text/plain; version=0.0.4; charset=utf-8",
    "openmetrics": "application/openmetrics-text; version=1.0.0; charset=utf-8",
}


def check_scrape(server: Gunicorn, query: str, headers: dict[str, str], form: str) -> None:
    response = server.get("/_raindrops" + query, headers=headers)
    assert response.status == 200, (query, headers, response.status, response.body)
    assert response.headers["content-type"] == CONTENT_TYPES[form]
    if form == "text":
        assert server.address in parse_text(response.text).listeners
    elif form == "json":
        stats = json.loads(response.body)
        assert (
            server.address in stats["listeners"]
            and stats["calling"] >= 0
            and stats["requests_total"] >= 0
        )
    else:
        samples = parse_prometheus(response.text, openmetrics=form == "openmetrics")
        families = {sample.partition("{")[0] for sample in samples}
        assert {"raindrops_calling", "raindrops_writing", "raindrops_requests_total"} <= families
        assert f'raindrops_listener_active{{listener="{server.address}"}}' in samples


def test_concurrent_scrapes_of_every_format_under_load(server: Gunicorn) -> None:
    before = settle(server)
    stop = threading.Event()
    made = [0, 0]

    def load(index: int) -> int:
        path = "/" if index == 0 else "/stream?chunks=3&delay=0.01"
        while not stop.is_set():
            assert server.get(path).status == 200
            made[index] += 1
        return made[index]

    loaders = Background()
    loaders.run(lambda: run_threads(2, load))
    try:

        def scraper(index: int) -> int:
            for round_ in range(25):
                check_scrape(server, *SCRAPES[(index + round_) % len(SCRAPES)])
            return 25

        assert sum(run_threads(8, scraper)) == 200
    finally:
        stop.set()
        loaders.join(30)
    assert made[0] > 0 and made[1] > 0, "the load ran during the scrapes"
    totals(server, before, sum(made))


def test_the_endpoint_refuses_post_and_answers_head(server: Gunicorn) -> None:
    before = settle(server)
    response = server.get("/_raindrops", method="POST")
    assert response.status == 405 and response.headers["allow"] == "GET, HEAD"
    response = server.get("/_raindrops", method="HEAD")
    assert response.status == 200 and response.body == b""
    assert int(response.headers["content-length"]) > len("calling: 0\nwriting: 0\n")
    assert server.get("/_raindrops?format=nope").status == 400
    assert settle(server)["requests_total"] == before["requests_total"], (
        "none of these reached the application"
    )


def test_allow_list_refuses_other_clients_in_process() -> None:
    app = Middleware(application, listeners=[], allow=["10.0.0.0/8"])

    def call(remote: str) -> tuple[str, bytes]:
        seen: list[str] = []
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/_raindrops",
            "QUERY_STRING": "",
            "REMOTE_ADDR": remote,
            "wsgi.input": BytesIO(),
            "wsgi.multiprocess": False,
        }
        body = b"".join(app(environ, lambda status, headers, exc_info=None: seen.append(status)))
        return seen[0], body

    assert call("127.0.0.1") == ("403 Forbidden", b"403 Forbidden\n")
    assert call("::1")[0] == "403 Forbidden"
    assert call("10.20.30.40") == ("200 OK", b"calling: 0\nwriting: 0\n")
    app.stats.close()


def _demo_session(server: Gunicorn) -> dict[str, Any]:
    """A fixed set of requests to the demo app, as a user of `make demo` would make them."""
    for _ in range(6):
        assert server.get("/").body == b"hello from raindrops\n"
    for _ in range(2):
        assert server.get("/fail").status == 500
    for _ in range(2):
        assert server.get("/stream?chunks=5&delay=0").body == b"".join(
            b"chunk %d\n" % i for i in range(5)
        )
    counts = [server.get("/count").body for _ in range(5)]
    assert counts == [b"%d\n" % n for n in range(1, 6)], "the demo counter is shared by all workers"
    assert server.get("/slow?seconds=0").body == b"slept\n"
    assert server.get("/nowhere").status == 404
    stats = server.wait_totals(17, 2)
    text = parse_text(server.stats().text)
    prometheus = parse_prometheus(server.stats("?format=prometheus").text)
    return {
        "calling": (stats["calling"], text.calling, prometheus["raindrops_calling"]),
        "writing": (stats["writing"], text.writing, prometheus["raindrops_writing"]),
        "requests": (stats["requests_total"], family_total(prometheus, "raindrops_requests_total")),
        "errors": (stats["request_errors_total"], prometheus["raindrops_request_errors_total"]),
        "durations": (
            stats["request_duration_seconds"]["count"],
            family_total(prometheus, "raindrops_request_duration_seconds_count"),
        ),
        "listeners": sorted(key.replace(str(server.port), "PORT") for key in stats["listeners"]),
        "text listeners": sorted(key.replace(str(server.port), "PORT") for key in text.listeners),
    }


def test_make_demo_style_start_gives_the_same_numbers_with_and_without_preload(
    tmp_path: Path,
) -> None:
    results = {}
    for preload in (False, True):
        with gunicorn(
            tmp_path / str(preload), ["--preload"] if preload else [], workers=4
        ) as server:
            results[preload] = _demo_session(server)
    expected = {
        "calling": (0, 0, 0.0),
        "writing": (0, 0, 0.0),
        "requests": (17, 17.0),
        "errors": (2, 2.0),
        "durations": (17, 17.0),
        "listeners": ["127.0.0.1:PORT"],
        "text listeners": ["127.0.0.1:PORT"],
    }
    assert results[False] == expected
    assert results[True] == expected


@pytest.mark.parametrize(("worker_class", "where"), [("sync", "kernel"), ("gthread", "worker")])
def test_where_requests_wait_for_a_busy_worker(
    worker_class: str, where: str, tmp_path: Path
) -> None:
    """One worker of 2 threads (gthread) or 1 (sync), 5 slow requests: a sync worker accepts only
    when free, so 4 wait in the kernel's queue (`queued`); gthread accepts them all into its own
    queue, so `queued` stays 0 while `active` counts the waiting connections (README)."""
    args = ["--worker-class", worker_class, "--threads", "2" if worker_class == "gthread" else "1"]
    with gunicorn(tmp_path, args, workers=1) as server:
        settle(server)
        requests = Background()
        for _ in range(5):
            requests.start(server.port, "/slow?seconds=1")

        def read() -> tuple[int, int]:
            return tuple(linux.tcp_listener_stats([server.address])[server.address])  # type: ignore[return-value]

        served_at_once = 1 if worker_class == "sync" else 2
        expected = (served_at_once, 5 - served_at_once) if where == "kernel" else (5, 0)
        wait_for(read, lambda seen: seen == expected, 10, f"(active, queued) == {expected}")
        assert all(response.status == 200 for response in requests.join())


def test_ipv4_and_ipv6_loopback_listeners(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    with gunicorn(tmp_path, [], workers=2, hosts=("127.0.0.1", "::1")) as server:
        assert request(server.port, "/", host="::1").status == 200
        assert request(server.port, "/", host="127.0.0.1").status == 200
        stats = server.wait_totals(2, 0)
        text = parse_text(request(server.port, "/_raindrops", host="::1").text)
        assert set(text.listeners) == {f"127.0.0.1:{server.port}", f"[::1]:{server.port}"}
        assert set(stats["listeners"]) == set(text.listeners)


def test_every_server_is_stopped_and_its_segments_removed(tmp_path: Path) -> None:
    with gunicorn(tmp_path, [], workers=2) as server:
        hammer(server, 1, 2)
        pid, workers = server.pid, server.worker_pids()
        segments = list(Path("/dev/shm").glob(f"raindrops-mw-{pid}-*"))
        assert len(segments) == 1, "workers loaded after fork meet in one named segment"
        assert server.get("/count").body == b"1\n"
        counter = Path("/dev/shm") / server.counter.lstrip("/")
        assert counter.exists()
    assert all(is_dead(worker) for worker in [pid, *workers])
    assert not segments[0].exists() and not counter.exists()


# Issue 11: what other users put in /dev/shm, names unique per server, clean stops.


def _pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _workers_as_nobody() -> list[str]:
    """gunicorn's --user/--group 65534; a skip where that user cannot read this Python or project.

    Workers import after switching uid, so the venv and the project must be
    readable by others (a clone in a 0700 directory is not).
    """
    needed = [Path(os.__file__).parent / "__future__.py", ROOT / "raindrops" / "__init__.py"]
    for path in needed:
        if processes.run([*users.prefix(), "test", "-r", str(path)], timeout=30).returncode != 0:
            pytest.skip(f"uid {NOBODY} cannot read {path}")
    return ["--user", str(NOBODY), "--group", str(NOBODY)]


def _dead_pid() -> int:
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    return child


@pytest.mark.parametrize("user", ["root", "nobody"], ids=["root-workers", "nobody-workers"])
def test_hostile_names_in_dev_shm_never_fail_a_request(user: str, tmp_path: Path) -> None:
    """Names anyone can create: each recycled worker sweeps them at its first request."""
    need_root()
    args = ["--max-requests", "4"] + (_workers_as_nobody() if user == "nobody" else [])
    stale_looking = f"{_dead_pid()}-{_pid_namespace()}-1-0123456789ab"
    ours = SHM_DIR / f"raindrops-mw-{_dead_pid()}-{_pid_namespace()}-1-0123456789ab"
    planted: list[Path] = []
    try:
        planted.append(squat("raindrops-mw-99999999999999999999-x"))
        planted.append(squat("raindrops-mw-\u00b2-x"))
        planted.append(squat(f"raindrops-mw-{stale_looking}", directory=True))
        planted.append(squat(f"raindrops-ldr-{stale_looking}"))
        ours.write_bytes(b"")  # root's: another user's file for workers that run as nobody
        with gunicorn(tmp_path, args, workers=2) as server:
            statuses = [server.get(path).status for path in ["/", "/stream?chunks=2&delay=0"] * 15]
            assert statuses == [200] * 30, server.log_text()
            assert server.json()["degraded"] == []
        if user == "root":
            assert all(path.lstat().st_uid == NOBODY for path in planted), "others' names stay"
        else:  # nobody planted them, the workers' own user: its stale segment goes, no other
            stale = SHM_DIR / f"raindrops-ldr-{stale_looking}"
            assert not stale.exists(), "the workers' own stale segment is swept"
            assert all(path.lstat().st_uid == NOBODY for path in planted if path != stale)
            assert ours.lstat().st_uid == 0, "root's name stays for workers that run as nobody"
    finally:
        ours.unlink(missing_ok=True)
        for path in planted:
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)


def _squatting(squatted: list[Path], data: bytes) -> Any:
    """Builds the Gunicorn of a master that was just spawned, after squatting as another user the
    name its workers will derive for the middleware (before any worker can have served)."""

    def make(**fields: Any) -> Gunicorn:
        process = fields["process"]
        try:  # launch() stops the master only once this returned
            start = _process.start_ticks(process.pid)
            assert start is not None
            master = Server(process.pid, _pid_namespace(), start)
            squatted.append(squat(segment_name("mw", "/_raindrops", master, str(ROOT))[1:], data))
        except BaseException:
            processes.stop(process)
            raise
        return Gunicorn(**fields)

    return make


@pytest.mark.parametrize("hooks", [False, True], ids=["plain", "raindrops.gunicorn"])
def test_a_squatted_segment_name_is_never_used(hooks: bool, tmp_path: Path) -> None:
    """Another user creates the derived name first (mode 0666, a valid header to tempt workers).

    Plain: every worker counts on its own, every request is answered, the
    endpoint says degraded. With the hooks the name holds the master's secret
    key, so the squatted name is not even the one the workers derive.
    """
    need_root()
    data = segment_bytes(Scoreboard)
    squatted: list[Path] = []
    args = ["--workers", "2"] + (["-c", "python:raindrops.gunicorn"] if hooks else [])
    log = tmp_path / "gunicorn.log"
    try:
        with launch(
            _squatting(squatted, data), args, workers=2, log=log, counter=unique_name("test-demo")
        ) as server:
            assert [server.get("/").status for _ in range(20)] == [200] * 20
            stats = server.json()
            prometheus = server.stats("?format=prometheus")
            text = server.stats()
            parse_text(text.text)  # raindrops' lines, exactly
            sample = 'raindrops_degraded{reason="segment_not_ours"}'
            if hooks:
                assert stats["degraded"] == []
                server.wait_totals(20, 0)  # both workers count into one segment
                assert sample not in prometheus.text
                assert "x-raindrops-degraded" not in text.headers
            else:
                assert stats["degraded"] == ["segment_not_ours"]
                assert parse_prometheus(prometheus.text)[sample] == 1
                assert text.headers["x-raindrops-degraded"] == "segment_not_ours"
                assert stats["workers"] == 1, "a worker sees its own private scoreboard"
                assert 1 <= server.log_text().count("cannot be used") <= 2, "one line per worker"
            assert [path.read_bytes() == data for path in squatted] == [True], "untouched"
            info = squatted[0].stat()
            assert (info.st_uid, info.st_mode & 0o777) == (NOBODY, 0o666)
    finally:
        for path in squatted:
            path.unlink(missing_ok=True)


def _stop(server: Gunicorn) -> None:
    """SIGTERM to the master, as a service manager stops it; waits for its exit."""
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0, server.log_text()


@pytest.mark.parametrize("variant", ["after-fork", "preload", "nobody-workers"])
def test_a_clean_stop_removes_every_segment_of_the_server(variant: str, tmp_path: Path) -> None:
    extra = _workers_as_nobody() if variant == "nobody-workers" else []
    extra += ["--preload"] if variant == "preload" else []
    args = ["-c", "python:raindrops.gunicorn", *extra]
    with gunicorn(tmp_path, args, workers=2) as server:
        hammer(server, 2, 5)
        named = sorted(
            path.name.split("-")[1] for path in SHM_DIR.glob(f"raindrops-*-{server.pid}-*")
        )
        # after fork each worker's Watcher (the demo's /watch) joins its segment as it is built
        assert named == ([] if "--preload" in extra else ["ldr", "mw", "watch"])
        _stop(server)
        assert list(SHM_DIR.glob(f"raindrops-*-{server.pid}-*")) == []
        removed = f"raindrops: removed {len(named)} segment(s) of this server"
        assert removed in server.log_text()


def test_the_demo_configuration_leaves_nothing_after_a_clean_stop(tmp_path: Path) -> None:
    """`make demo`'s configuration composes the hooks with its own; its /count starts from 1."""
    args = ["--workers", "2", "--config", "python:examples.demo_config"]
    with launch(Gunicorn, args, workers=2, log=tmp_path / "gunicorn.log") as server:
        counter = SHM_DIR / f"raindrops-demo-count-{server.pid}"
        try:
            assert [server.get("/count").body for _ in range(3)] == [b"1\n", b"2\n", b"3\n"]
            assert counter.exists()
            assert len(list(SHM_DIR.glob(f"raindrops-*-{server.pid}-*"))) == 3  # mw, ldr, watch
            _stop(server)
            assert not counter.exists()
            assert list(SHM_DIR.glob(f"raindrops-*-{server.pid}-*")) == []
        finally:
            counter.unlink(missing_ok=True)


# Issue 12: /tail streams of the Watcher (mounted at /watch by the demo) are bounded per worker.

TAIL_WORKERS = 4
# name -> (gunicorn arguments, /tail requests made, streams the 4 workers may hold). By default
# a worker runs (threads - 1) // 2 streams: none with one or two threads, one with four.
TAIL_VARIANTS: dict[str, tuple[list[str], int, int]] = {
    "sync": (SERVER_VARIANTS["sync"], 4, 0),
    "sync-preload": (SERVER_VARIANTS["sync-preload"], 4, 0),
    "gthread": (SERVER_VARIANTS["gthread"], 8, TAIL_WORKERS),
    "gthread-preload": (SERVER_VARIANTS["gthread-preload"], 8, TAIL_WORKERS),
    "gthread-1-thread": (["--worker-class", "gthread", "--threads", "1"], 4, 0),
}
TAIL_STATUS_TIMEOUT = 10.0  # a stream's status line comes with its first line (one per second)
APP_ANSWER_SECONDS = 2.0


def _tail(port: int, address: str, opened: list[socket.socket]) -> tuple[int, str]:
    """Asks for a /tail stream: its status code and head; its socket goes into `opened`.

    A refused client closes its socket at once, as any client does after a response with
    "Connection: close": gunicorn's gthread worker lingers on the main thread (accepting
    nothing) for up to two seconds until the client has closed.
    """
    client = socket.create_connection(("127.0.0.1", port), timeout=TAIL_STATUS_TIMEOUT)
    opened.append(client)
    path = f"/watch/tail/{quote(address, safe='')}.txt"
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    client.sendall(head.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(4096)
        assert chunk, data
        data += chunk
    text = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    code = int(text.split()[1])
    if code != 200:
        client.close()
    return code, text.lower()


@pytest.mark.parametrize("variant", list(TAIL_VARIANTS))
def test_tail_streams_are_bounded_and_the_app_keeps_answering(variant: str, tmp_path: Path) -> None:
    args, tails, streams_max = TAIL_VARIANTS[variant]
    with gunicorn(tmp_path, args, workers=TAIL_WORKERS) as server:
        opened: list[socket.socket] = []
        try:
            # The server-wide sampler has seen the listener (a fresh server may not have yet).
            wait_for(
                lambda: server.get("/watch/series.json").json()["listeners"],
                lambda listeners: server.address in listeners,
                10,
                "the Watcher's first sample of the listener",
            )
            answers = run_threads(tails, lambda _: _tail(server.port, server.address, opened), 60)
            streaming = [code for code, _ in answers if code == 200]
            refused = [head for code, head in answers if code == 503]
            assert min(1, streams_max) <= len(streaming) <= streams_max, answers
            assert len(streaming) + len(refused) == tails, answers
            assert all("\r\nretry-after: " in head for head in refused), refused
            for _ in range(10):  # the application answers at once while the streams run
                started = time.monotonic()
                assert server.get("/", timeout=APP_ANSWER_SECONDS).status == 200
                assert time.monotonic() - started < APP_ANSWER_SECONDS
        finally:
            for client in opened:
                client.close()
