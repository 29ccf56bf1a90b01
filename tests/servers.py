"""Real servers for the tests: gunicorn serving examples.demo, Prometheus, threads of clients.

Starting, probing and stopping gunicorn, the HTTP client and the clean-up of
/dev/shm after a master are testsupport.gunicorn's, shared with the load
tests; the strict parsers of the endpoint's formats are testsupport.formats'.
What is here is what only the tests need: a Gunicorn with the endpoint's
readings and waits, threads of clients, and Prometheus. Every server is
always stopped by the test that started it (context managers with `finally`):
SIGTERM, then SIGKILL for the whole process group after a timeout. Only
loopback addresses are used.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from testsupport import formats, processes, programs
from testsupport.gunicorn import (
    STATS,
    Master,
    Response,
    answers,
    free_port,
    launch,
    log_text,
    request,
    segment_name,
    wait_ready,
)
from testsupport.programs import ROOT as ROOT  # re-exported: tests start programs from the root

POLL_INTERVAL = 0.02

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
) -> T:
    """Calls probe() until done(value) holds; fails with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout} s waiting for {what}; last value: {value!r}"
            raise AssertionError(message)
        time.sleep(interval)


# Clients in threads.


class Background:
    """Requests run in threads; their responses (or exceptions) are kept for the test to check."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.responses: list[Response] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()

    def start(self, port: int, path: str, **kwargs: Any) -> None:
        """One request to 127.0.0.1:port; its Response is kept in `responses`."""
        self.run(lambda: request(port, path, **kwargs))

    def run(self, work: Callable[[], Any]) -> None:
        """Any work in a thread; a Response it returns is kept, an exception is raised by join()."""

        def thread_main() -> None:
            try:
                result = work()
            except BaseException as error:  # noqa: BLE001 - reported by join()
                with self._lock:
                    self.errors.append(error)
            else:
                if isinstance(result, Response):
                    with self._lock:
                        self.responses.append(result)

        thread = threading.Thread(target=thread_main, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self, timeout: float = 60.0) -> list[Response]:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = any(thread.is_alive() for thread in self.threads)
        assert not alive, "background requests did not finish"
        if self.errors:
            raise self.errors[0]
        return self.responses


def run_threads(count: int, target: Callable[[int], T], timeout: float = 120.0) -> list[T]:
    """Runs target(0..count-1) in `count` threads; their results, or the first error raised."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = target(index)
        except BaseException as error:  # noqa: BLE001 - re-raised below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "client threads did not finish"
    if errors:
        raise errors[0]
    return results


# gunicorn.

SERVER_VARIANTS: dict[str, list[str]] = {
    "sync": ["--worker-class", "sync"],
    "sync-preload": ["--worker-class", "sync", "--preload"],
    "gthread": ["--worker-class", "gthread", "--threads", "4"],
    "gthread-preload": ["--worker-class", "gthread", "--threads", "4", "--preload"],
}
"""The set-ups issue 12's endpoints are checked under (each with 4 workers): the Watcher and
the middleware built in each worker after fork, or once before fork; one thread or four."""


@dataclass
class Gunicorn(Master):
    """A running gunicorn master serving examples.demo:app, with the endpoint's readings."""

    label: str = ""  # the set-up a parametrized fixture started it with

    def stats(self, query: str = "", **kwargs: Any) -> Response:
        response = self.get(STATS + query, **kwargs)
        assert response.status == 200, (response.status, response.body)
        return response

    def text(self) -> formats.Stats:
        response = self.stats()
        assert response.headers["content-type"] == "text/plain"
        return formats.parse_text(response.text)

    def json(self) -> dict[str, Any]:
        response = self.stats("?format=json")
        assert response.headers["content-type"] == "application/json"
        return response.json()  # type: ignore[no-any-return]

    def settle(self, timeout: float = 10.0) -> dict[str, Any]:
        """The JSON statistics once nothing is in flight.

        A response can reach the client before the server has closed its body
        (where the request is counted): wait for calling and writing to be 0.
        """
        return wait_for(self.json, _idle, timeout, "an idle server")

    def wait_totals(self, requests: int, errors: int, timeout: float = 10.0) -> dict[str, Any]:
        """The JSON statistics once exactly `requests` requests (`errors` failed) are counted.

        A worker decrements calling/writing and then adds to the totals: an idle
        server may still be a few instructions short of its totals, so this
        waits for them to reach the expected values, then requires equality
        (more than expected fails at once).
        """

        def reached(stats: dict[str, Any]) -> bool:
            counted: bool = (
                stats["requests_total"] >= requests
                and stats["request_errors_total"] >= errors
                and stats["request_duration_seconds"]["count"] >= requests
            )
            return _idle(stats) and counted

        what = f"{requests} requests and {errors} errors counted"
        stats = wait_for(self.json, reached, timeout, what)
        assert stats["requests_total"] == requests, stats
        assert stats["request_errors_total"] == errors, stats
        assert stats["request_duration_seconds"]["count"] == requests, stats
        return stats

    def connection_owner(self, client_port: int) -> int:
        """The worker holding the accepted end of the client connection from `client_port`."""
        inode = _server_socket_inode(self.port, client_port)
        target = f"socket:[{inode}]"
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                for entry in os.scandir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(entry.path) == target:
                            return pid
        raise AssertionError(f"no worker holds the connection from port {client_port}")


def _idle(stats: dict[str, Any]) -> bool:
    return bool(stats["calling"] == 0 and stats["writing"] == 0)


def _server_socket_inode(server_port: int, client_port: int) -> int:
    """Inode of the ESTABLISHED socket :server_port <- :client_port (from /proc/net/tcp)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                ports = tuple(int(address.rpartition(":")[2], 16) for address in fields[1:3])
                established = fields[3] == "01"
                if ports == (server_port, client_port) and established and fields[9] != "0":
                    return int(fields[9])
    raise AssertionError(f"no established connection :{server_port} <- :{client_port}")


@contextlib.contextmanager
def gunicorn(
    log_dir: Path,
    args: Sequence[str] = (),
    *,
    workers: int,
    hosts: Sequence[str] = ("127.0.0.1",),
    env: Mapping[str, str] | None = None,
) -> Iterator[Gunicorn]:
    """examples.demo:app with `args` on a free port of `hosts`, once it answers; always stopped.

    `workers` is the -w given to gunicorn (added to the command here). The
    demo's counter segment is unique to this server, so tests never share a
    count.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    with launch(
        Gunicorn,
        ["--workers", str(workers), *args],
        workers=workers,
        log=log_dir / "gunicorn.log",
        counter=segment_name("test-demo"),
        hosts=hosts,
        env=env,
    ) as server:
        yield server


# Prometheus.


def prometheus_binaries() -> tuple[str, str]:
    """Paths of `prometheus` and `promtool`; MissingProgram if absent (a failure when CI=true)."""
    return programs.require("prometheus"), programs.require("promtool")


JOB = "raindrops"
NEGOTIATED_JOB = "raindrops-negotiated"


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def query(self, expression: str) -> list[dict[str, Any]]:
        path = "/api/v1/query?" + urlencode({"query": expression})
        response = request(self.port, path, timeout=10)
        assert response.status == 200, (response.status, response.body)
        answer = response.json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]  # type: ignore[no-any-return]

    def log_text(self) -> str:
        return log_text(self.log)


def _prometheus_config(
    ports: Sequence[int], scrape_interval: str, negotiated: bool, rule_files: Sequence[Path]
) -> str:
    targets = ", ".join(f"'127.0.0.1:{port}'" for port in ports)
    config = (
        "global:\n"
        f"  scrape_interval: {scrape_interval}\n"
        f"  scrape_timeout: {scrape_interval}\n"
        f"  evaluation_interval: {scrape_interval}\n"
        f"rule_files: [{', '.join(repr(str(path)) for path in rule_files)}]\n"
        "scrape_configs:\n"
        # Asks for the Prometheus text format by query parameter, as the README shows.
        f"  - job_name: {JOB}\n"
        f"    metrics_path: {STATS}\n"
        "    params:\n"
        "      format: [prometheus]\n"
        "    static_configs:\n"
        f"      - targets: [{targets}]\n"
    )
    if not negotiated:
        return config
    # Leaves the format to content negotiation (Prometheus' Accept header).
    return config + (
        f"  - job_name: {NEGOTIATED_JOB}\n"
        f"    metrics_path: {STATS}\n"
        "    static_configs:\n"
        f"      - targets: [{targets}]\n"
    )


@contextlib.contextmanager
def prometheus(
    binary: str,
    work_dir: Path,
    target_port: int,
    scrape_interval: str = "1s",
    *,
    other_ports: Sequence[int] = (),
    negotiated: bool = True,
    rule_files: Sequence[Path] = (),
) -> Iterator[Prometheus]:
    """A Prometheus server on 127.0.0.1 scraping 127.0.0.1:target_port/_raindrops in two jobs.

    Job JOB asks for ?format=prometheus; job NEGOTIATED_JOB (left out when
    `negotiated` is false) sends no parameter and gets whatever its Accept
    header negotiates. Each job scrapes `other_ports` too; `rule_files` are
    loaded and evaluated every scrape interval.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / "prometheus.yml"
    ports = (target_port, *other_ports)
    config.write_text(_prometheus_config(ports, scrape_interval, negotiated, rule_files))
    port = free_port()
    log = work_dir / "prometheus.log"
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={work_dir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = processes.spawn(command, log=log, cwd=work_dir)
    server = Prometheus(process, port, log)
    try:
        ready = wait_ready(process, lambda: answers(port, "/-/ready"), "prometheus", log, 0.1)
        assert ready, f"prometheus exited:\n{server.log_text()}"
        yield server
    finally:
        processes.stop(process)
