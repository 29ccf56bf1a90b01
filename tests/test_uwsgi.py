"""The middleware under a real uWSGI (pyuwsgi): examples.demo:app over loopback HTTP.

uWSGI forks its workers in C unless --lazy-apps, so os.register_at_fork never
runs in them: these tests fail when raindrops misses uWSGI's post-fork hook
(every worker would count as the master, and a killed worker's requests would
stay in `calling`). Without --master, the first worker is the process the
others fork from, and the server's segment is named after it.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import ROOT, Background, Gunicorn, wait_for

from testsupport import processes
from testsupport.gunicorn import SHM_DIR, free_port, remove_segments, segment_name, wait_ready
from testsupport.processes import children, is_dead

UWSGI = str(Path(sys.executable).parent / "uwsgi")
# name -> (uWSGI arguments, worker processes, slow requests that leave the endpoint served)
MODES: dict[str, tuple[list[str], int, int]] = {
    "default": (["--processes", "3"], 3, 2),
    "lazy-apps": (["--master", "--processes", "3", "--lazy-apps"], 3, 2),
    "lazy-apps-no-master": (["--processes", "3", "--lazy-apps"], 3, 2),
    "threads": (["--master", "--processes", "2", "--threads", "4"], 2, 3),
    "master": (["--master", "--processes", "4"], 4, 3),
}
SETTLE_TIMEOUT = 10.0

pytestmark = pytest.mark.skipif(not os.path.exists(UWSGI), reason="pyuwsgi is not installed")


@dataclass
class UWsgi(Gunicorn):
    """A running uWSGI; without --master its first process is itself a worker."""

    has_master: bool = True

    def worker_pids(self) -> list[int]:
        own = [] if self.has_master else [self.pid]
        return sorted(own + children(self.pid))


def _command(args: list[str], port: int) -> list[str]:
    bind = ["--http-socket", f"127.0.0.1:{port}", "--module", "examples.demo:app"]
    return [UWSGI, *bind, "--die-on-term", "--need-app", "--disable-logging", *args]


CLEANUP_AT_EXIT = ["--exec-as-user-atexit", f"{sys.executable} -m raindrops cleanup --master $PPID"]
"""What the README tells uWSGI users to add: the master, at its exit, runs the command (through
/bin/sh, so $PPID is the master), which removes the segments its workers named after it."""


@contextlib.contextmanager
def uwsgi(log_dir: Path, mode: str, extra: tuple[str, ...] = ()) -> Iterator[UWsgi]:
    """uWSGI in `mode` (plus `extra` arguments) on a free loopback port, once every worker runs
    and the endpoint answers."""
    args, workers, _ = MODES[mode]
    args = [*args, *extra]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "uwsgi.log"
    counter = segment_name("test-demo")
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAINDROPS_")}
    env.update(RAINDROPS_DEMO_COUNTER=counter, PYTHONUNBUFFERED="1")
    port = free_port()
    process = processes.spawn(_command(args, port), log=log, cwd=ROOT, env=env)
    server = UWsgi(process, port, workers, log, counter, ("127.0.0.1",), mode, "--master" in args)
    try:
        ready = wait_ready(process, lambda: _serving(server), "uWSGI", log)
        assert ready, server.log_text()
        yield server
    finally:
        processes.stop(process)
        remove_segments(process.pid, counter)


def _serving(server: UWsgi) -> bool:
    try:
        answered = server.get("/_raindrops", timeout=5).status == 200
    except (OSError, http.client.HTTPException):
        return False
    return answered and len(server.worker_pids()) >= server.workers


@pytest.fixture(scope="module", params=list(MODES))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UWsgi]:
    with uwsgi(tmp_path_factory.mktemp(request.param), request.param) as running:
        yield running


def _read(connection: http.client.HTTPConnection) -> bytes:
    try:
        return connection.getresponse().read()
    finally:
        connection.close()


def _slow(server: UWsgi, count: int, seconds: int) -> tuple[Background, dict[int, int]]:
    """`count` slow requests in flight; returns them and each one's client port -> its worker."""
    requests = Background()
    client_ports = []
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", f"/slow?seconds={seconds}")
        client_ports.append(connection.sock.getsockname()[1])
        requests.run(functools.partial(_read, connection))
    wait_for(server.text, lambda stats: stats.calling == count, 10, f"calling: {count}")
    return requests, {port: server.connection_owner(port) for port in client_ports}


def test_in_flight_requests_count_across_workers(server: UWsgi) -> None:
    before = server.settle(SETTLE_TIMEOUT)
    _, workers, slow = MODES[server.label]
    requests, owners = _slow(server, slow, 3)
    assert len(set(owners.values())) >= (1 if server.label == "threads" else slow)
    requests.join()
    after = server.wait_totals(before["requests_total"] + slow, before["request_errors_total"])
    assert len(set(owners.values())) <= after["workers"] <= workers
    assert set(server.worker_pids()) >= set(owners.values())


def test_capacity_is_the_cores_of_every_live_worker(server: UWsgi) -> None:
    """uWSGI tells each worker its cores (threads): capacity is their sum over live workers."""
    args, workers, _ = MODES[server.label]
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 1

    def after_some_requests() -> dict[str, Any]:
        for _ in range(8):
            assert server.get("/").status == 200
        return server.json()

    stats = wait_for(after_some_requests, lambda s: s["workers"] == workers, 30, "every worker")
    assert stats["capacity"] == workers * threads


def test_a_killed_worker_leaves_calling_exact(server: UWsgi) -> None:
    before = server.settle(SETTLE_TIMEOUT)
    _, _, slow = MODES[server.label]
    requests, owners = _slow(server, slow, 4)
    victim = next(pid for pid in owners.values() if pid != server.pid)
    lost = sum(1 for pid in owners.values() if pid == victim)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: is_dead(victim), bool, 10, f"worker {victim} dead")
    wait_for(server.text, lambda s: s.calling == slow - lost, 10, f"calling: {slow - lost}")
    for thread in requests.threads:
        thread.join(30)
    server.wait_totals(
        before["requests_total"] + slow - lost, before["request_errors_total"], SETTLE_TIMEOUT
    )
    assert server.settle(SETTLE_TIMEOUT)["calling"] == 0


@pytest.mark.parametrize("mode", ["default", "master", "threads"])
def test_a_graceful_stop_leaves_no_segment_of_the_server(tmp_path: Path, mode: str) -> None:
    """Workers forked from the process that built the app share its memory: nothing is named."""
    with uwsgi(tmp_path, mode) as server:
        server.settle(SETTLE_TIMEOUT)
        server.process.send_signal(signal.SIGINT)
        server.process.wait(30)
        assert list(SHM_DIR.glob(f"raindrops-*-{server.pid}-*")) == [], server.log_text()


def test_lazy_apps_segments_of_a_stopped_master_go_at_the_next_start(tmp_path: Path) -> None:
    """A --lazy-apps master never imports the app, and uWSGI 2.0.30 calls uwsgi.atexit only in
    workers: without `raindrops cleanup` at exit (below), what its workers named after it stays
    until a later server sweeps stale segments."""
    with uwsgi(tmp_path / "first", "lazy-apps") as first:
        first.settle(SETTLE_TIMEOUT)
        assert list(SHM_DIR.glob(f"raindrops-*-{first.pid}-*")), "the workers' shared segment"
        first.process.send_signal(signal.SIGINT)
        first.process.wait(30)
        with uwsgi(tmp_path / "second", "lazy-apps") as second:
            second.settle(SETTLE_TIMEOUT)
            assert list(SHM_DIR.glob(f"raindrops-*-{first.pid}-*")) == []


@pytest.mark.parametrize("mode", ["lazy-apps", "lazy-apps-no-master"])
def test_lazy_apps_with_the_cleanup_at_exit_leave_nothing_after_a_clean_stop(
    tmp_path: Path, mode: str
) -> None:
    """`raindrops cleanup --master $PPID` in --exec-as-user-atexit: uWSGI runs it once, in the
    master (without --master: the first worker, which the segments are named after), after
    its workers are gone."""
    with uwsgi(tmp_path, mode, tuple(CLEANUP_AT_EXIT)) as server:
        server.settle(SETTLE_TIMEOUT)
        assert list(SHM_DIR.glob(f"raindrops-*-{server.pid}-*")), "the workers' shared segment"
        server.process.send_signal(signal.SIGINT)
        server.process.wait(30)
        assert list(SHM_DIR.glob(f"raindrops-*-{server.pid}-*")) == [], server.log_text()
