"""Real servers for the tests: gunicorn serving examples.demo, Prometheus, a tiny HTTP client.

Every server is started in its own session and always stopped by the test that
started it (context managers with `finally`): SIGTERM, then SIGKILL for the
whole process group after a timeout. After a gunicorn master stops, its
per-master segments (/dev/shm/raindrops-mw-<masterpid>-*, and those of any
other kind) and the demo's counter segment (unique per server through
RAINDROPS_DEMO_COUNTER) are unlinked, so nothing piles up in /dev/shm. Only
loopback addresses are used.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from testsupport import processes, programs
from testsupport.processes import children

ROOT = Path(__file__).resolve().parent.parent
SHM_DIR = Path("/dev/shm")
STATS = "/_raindrops"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.02

T = TypeVar("T")


# Ports and processes.


def free_port(hosts: Sequence[str] = ("127.0.0.1",)) -> int:
    """A TCP port that nothing listens on right now on every one of `hosts`."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6 if ":" in hosts[0] else socket.AF_INET) as probe:
            probe.bind((hosts[0], 0))
            port: int = probe.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port on {hosts}")


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
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {value!r}")
        time.sleep(interval)


# HTTP.


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
) -> Response:
    """One request on a new connection, closed afterwards."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, headers=dict(headers or {}))
        response = connection.getresponse()
        body = response.read()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        connection.close()


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
        """Any work in a thread; a Response it returns is kept, an exception is raised again by join()."""

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
        assert not any(thread.is_alive() for thread in self.threads), "background requests did not finish"
        if self.errors:
            raise self.errors[0]
        return self.responses


def run_threads(count: int, target: Callable[[int], T], timeout: float = 120.0) -> list[T]:
    """Runs target(0..count-1) in `count` threads; returns their results, re-raises their first error."""
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


# The endpoint's formats, parsed strictly.

_TEXT_HEAD = re.compile(r"calling: (\d+)\nwriting: (\d+)\n")
_TEXT_LISTENER = re.compile(r"(\S+) active: (\d+)\n\1 queued: (\d+)\n")


@dataclass
class TextStats:
    calling: int
    writing: int
    listeners: dict[str, tuple[int, int]] = field(default_factory=dict)  # address -> (active, queued)


def parse_text(body: str) -> TextStats:
    """raindrops' text format: exactly "calling: N\\nwriting: N\\n", then two lines per listener."""
    head = _TEXT_HEAD.match(body)
    assert head, f"not raindrops' text format: {body!r}"
    stats = TextStats(int(head[1]), int(head[2]))
    position = head.end()
    while position < len(body):
        line = _TEXT_LISTENER.match(body, position)
        assert line, f"bad listener lines at {body[position:]!r}"
        stats.listeners[line[1]] = (int(line[2]), int(line[3]))
        position = line.end()
    return stats


_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABELS = r'\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\}'
_NUMBER = r"[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN)"
_SAMPLE = re.compile(rf"({_METRIC_NAME})({_LABELS})? ({_NUMBER})")
_COMMENT = re.compile(rf"# (HELP|TYPE) ({_METRIC_NAME}) (.+)")


def parse_prometheus(body: str, openmetrics: bool = False) -> dict[str, float]:
    """Samples of the text exposition format by `name{labels}`; every line must be well formed.

    Also checks that every sample belongs to a family declared by a TYPE line
    before it, and for OpenMetrics that the body ends with "# EOF".
    """
    assert body.endswith("\n"), "the exposition must end with a newline"
    lines = body.split("\n")[:-1]
    if openmetrics:
        assert lines and lines[-1] == "# EOF", f"OpenMetrics must end with # EOF: {body[-80:]!r}"
        lines = lines[:-1]
    else:
        assert "# EOF" not in lines
    samples: dict[str, float] = {}
    families: dict[str, str] = {}
    for line in lines:
        comment = _COMMENT.fullmatch(line)
        if comment:
            if comment[1] == "TYPE":
                assert comment[3] in ("gauge", "counter", "histogram", "summary", "untyped", "unknown"), line
                families[comment[2]] = comment[3]
            continue
        sample = _SAMPLE.fullmatch(line)
        assert sample, f"bad exposition line: {line!r}"
        name = sample[1]
        family = next(
            (f for f in families if name == f or name in (f + "_total", f + "_bucket", f + "_sum", f + "_count")),
            None,
        )
        assert family is not None, f"sample {name} has no TYPE line before it"
        key = name + (sample[2] or "")
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(sample[3])
    return samples


# gunicorn.


@dataclass
class Gunicorn:
    """A running gunicorn master serving examples.demo:app on 127.0.0.1:port."""

    process: subprocess.Popen[bytes]
    port: int
    workers: int
    log: Path
    counter: str
    hosts: tuple[str, ...] = ("127.0.0.1",)
    label: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def get(self, path: str, **kwargs: Any) -> Response:
        return request(self.port, path, **kwargs)

    def stats(self, query: str = "", **kwargs: Any) -> Response:
        response = self.get(STATS + query, **kwargs)
        assert response.status == 200, (response.status, response.body)
        return response

    def text(self) -> TextStats:
        response = self.stats()
        assert response.headers["content-type"] == "text/plain"
        return parse_text(response.text)

    def json(self) -> dict[str, Any]:
        response = self.stats("?format=json")
        assert response.headers["content-type"] == "application/json"
        return response.json()  # type: ignore[no-any-return]

    def settle(self, timeout: float = 10.0) -> dict[str, Any]:
        """The JSON statistics once nothing is in flight.

        A response can reach the client before the server has closed its body
        (where the request is counted): wait for calling and writing to be 0.
        """
        return wait_for(
            self.json, lambda stats: stats["calling"] == 0 and stats["writing"] == 0, timeout, "an idle server"
        )

    def wait_totals(self, requests: int, errors: int, timeout: float = 10.0) -> dict[str, Any]:
        """The JSON statistics once `requests` requests (`errors` of them failed) are counted: exactly.

        A worker decrements calling/writing and then adds to the totals: an idle
        server may still be a few instructions short of its totals, so this
        waits for them to reach the expected values, then requires equality
        (more than expected fails at once).
        """

        def reached(stats: dict[str, Any]) -> bool:
            idle: bool = stats["calling"] == 0 and stats["writing"] == 0
            counted: bool = (
                stats["requests_total"] >= requests
                and stats["request_errors_total"] >= errors
                and stats["request_duration_us"]["count"] >= requests
            )
            return idle and counted

        stats = wait_for(self.json, reached, timeout, f"{requests} requests and {errors} errors counted")
        assert stats["requests_total"] == requests, stats
        assert stats["request_errors_total"] == errors, stats
        assert stats["request_duration_us"]["count"] == requests, stats
        return stats

    def worker_pids(self) -> list[int]:
        return children(self.pid)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

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


def _server_socket_inode(server_port: int, client_port: int) -> int:
    """Inode of the ESTABLISHED socket local :server_port, remote :client_port (from /proc/net/tcp)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rpartition(":")[2], 16)
                remote_port = int(fields[2].rpartition(":")[2], 16)
                if (local_port, remote_port, fields[3]) == (server_port, client_port, "01") and fields[9] != "0":
                    return int(fields[9])
    raise AssertionError(f"no established connection :{server_port} <- :{client_port}")


def gunicorn_command(args: Sequence[str], bind: Sequence[str], app: str = "examples.demo:app") -> list[str]:
    """The venv's gunicorn script (as `make demo` runs it), else `python -m gunicorn`."""
    script = Path(sys.executable).parent / "gunicorn"
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "gunicorn"]
    binds = [item for address in bind for item in ("--bind", address)]
    # No control socket: its default path ($XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl) is one per user.
    return [*launcher, *binds, "--no-control-socket", "--graceful-timeout", "3", *args, app]


def _remove_segments(master_pid: int, counter: str) -> None:
    """Every per-master segment of the stopped master (raindrops-<kind>-<pid>-*) and the demo counter."""
    for entry in SHM_DIR.glob(f"raindrops-*-{master_pid}-*"):
        entry.unlink(missing_ok=True)
    (SHM_DIR / counter.lstrip("/")).unlink(missing_ok=True)


@contextlib.contextmanager
def gunicorn(
    log_dir: Path,
    args: Sequence[str] = (),
    *,
    workers: int,
    hosts: Sequence[str] = ("127.0.0.1",),
    env: Mapping[str, str] | None = None,
) -> Iterator[Gunicorn]:
    """Starts gunicorn with `args` on a free port of `hosts`, waits until it answers, always stops it.

    `workers` is the -w given to gunicorn (added to the command here). A port
    taken by someone else between the probe and gunicorn's bind makes gunicorn
    exit; it is then started again on another port.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    last_log = ""
    for attempt in range(3):
        port = free_port(hosts)
        counter = f"/raindrops-test-demo-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        environment = {key: value for key, value in os.environ.items() if not key.startswith("RAINDROPS_")}
        environment.update(env or {})
        environment["RAINDROPS_DEMO_COUNTER"] = counter
        environment["PYTHONUNBUFFERED"] = "1"
        log = log_dir / f"gunicorn-{port}-{attempt}.log"
        bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host in hosts]
        process = processes.spawn(
            gunicorn_command(["--workers", str(workers), *args], bind), log=log, cwd=ROOT, env=environment
        )
        server = Gunicorn(process, port, workers, log, counter, tuple(hosts))
        try:
            if _wait_ready(server):
                yield server
                return
            last_log = server.log_text()
        finally:
            processes.stop(process)
            _remove_segments(process.pid, counter)
    raise RuntimeError(f"gunicorn did not start:\n{last_log}")


def _wait_ready(server: Gunicorn) -> bool:
    """True once every worker is forked and the endpoint answers; False if gunicorn exited."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        with contextlib.suppress(OSError, http.client.HTTPException):
            if server.get(STATS, timeout=5).status == 200 and len(server.worker_pids()) >= server.workers:
                return True
        time.sleep(0.05)
    raise AssertionError(f"gunicorn did not answer within {START_TIMEOUT} s:\n{server.log_text()}")


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
        from urllib.parse import urlencode

        response = request(self.port, "/api/v1/query?" + urlencode({"query": expression}), timeout=10)
        assert response.status == 200, (response.status, response.body)
        answer = response.json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]  # type: ignore[no-any-return]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def prometheus(binary: str, work_dir: Path, target_port: int, scrape_interval: str = "1s") -> Iterator[Prometheus]:
    """A Prometheus server on 127.0.0.1 scraping 127.0.0.1:target_port/_raindrops in two jobs.

    Job JOB asks for ?format=prometheus; job NEGOTIATED_JOB sends no parameter
    and gets whatever its Accept header negotiates.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / "prometheus.yml"
    config.write_text(
        "global:\n"
        f"  scrape_interval: {scrape_interval}\n"
        f"  scrape_timeout: {scrape_interval}\n"
        "scrape_configs:\n"
        # Asks for the Prometheus text format by query parameter, as the README shows.
        f"  - job_name: {JOB}\n"
        f"    metrics_path: {STATS}\n"
        "    params:\n"
        "      format: [prometheus]\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
        # Leaves the format to content negotiation (Prometheus' Accept header).
        f"  - job_name: {NEGOTIATED_JOB}\n"
        f"    metrics_path: {STATS}\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
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
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"prometheus exited:\n{server.log_text()}"
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(port, "/-/ready", timeout=5).status == 200:
                    break
            assert time.monotonic() < deadline, f"prometheus not ready:\n{server.log_text()}"
            time.sleep(0.1)
        yield server
    finally:
        processes.stop(process)
