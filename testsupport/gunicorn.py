"""Real gunicorn masters for the tests and the load tests: started, probed and stopped one way.

tests/servers.py (under pytest) and loadtests/ (`python -m loadtests`, which
runs without pytest) both serve examples.demo:app with gunicorn and differ
only in arguments and timeouts; test_last_data_recv serves its own app the
same way. A master binds loopback addresses only and runs in a session of
its own (testsupport.processes), so stopping it ends its whole process
group. What a master leaves in /dev/shm, nothing else would ever remove: its
per-master segments (raindrops-mw-<masterpid>-* of the middleware,
raindrops-ldr-<masterpid>-* of LastDataRecv) and the demo's /count counter,
unique per server through RAINDROPS_DEMO_COUNTER. They are unlinked once the
master has stopped, whether it served, failed to start or timed out.

The small HTTP client here is the one every test server is probed with, so
readiness means the same thing for gunicorn and for Prometheus.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from testsupport import processes
from testsupport.processes import children
from testsupport.programs import ROOT

SHM_DIR = Path("/dev/shm")
STATS = "/_raindrops"
DEMO_APP = "examples.demo:app"
START_TIMEOUT = 30.0
START_ATTEMPTS = 3
GRACEFUL_TIMEOUT = 3  # seconds gunicorn gives its workers to finish their requests on SIGTERM
READY_INTERVAL = 0.05


# HTTP.


@dataclass
class Response:
    """A complete HTTP response; header names are in lower case, as HTTP compares them."""

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
    """One request on a new connection, closed afterwards: each goes through the accept queue."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, headers=dict(headers or {}))
        response = connection.getresponse()
        body = response.read()
        names = {name.lower(): value for name, value in response.getheaders()}
        return Response(response.status, names, body)
    finally:
        connection.close()


def answers(port: int, path: str, host: str = "127.0.0.1") -> bool:
    """True if GET `path` gets a 200; False while nothing (or not yet the application) answers."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        return request(port, path, host=host, timeout=5).status == 200
    return False


def wait_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    what: str,
    log: Path,
    interval: float = READY_INTERVAL,
) -> bool:
    """True once ready() holds, False if the process exits first, RuntimeError after START_TIMEOUT.

    An exit is left to the caller: gunicorn is started again (its port may
    have been taken), Prometheus is a failure. A server that neither answers
    nor exits is stuck: the error carries its log.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(interval)
    raise RuntimeError(f"{what} did not answer within {START_TIMEOUT} s:\n{log_text(log)}")


def log_text(log: Path) -> str:
    """What a server wrote so far, for a failure message; "" before it wrote anything."""
    try:
        return log.read_text(errors="replace")
    except OSError:
        return ""


# Ports, addresses, segments.


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(hosts: Sequence[str] = ("127.0.0.1",)) -> int:
    """A TCP port that nothing listens on right now on every one of `hosts` (IPv4 or IPv6)."""
    for _ in range(50):
        with socket.socket(_family(hosts[0])) as probe:
            probe.bind((hosts[0], 0))
            port: int = probe.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket(_family(host)) as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port on {hosts}")


def bind_address(host: str, port: int) -> str:
    """host:port as gunicorn's --bind and raindrops' listener names write it: IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def segment_name(kind: str) -> str:
    """A segment name that no other test, run or server uses: /raindrops-<kind>-<pid>-<random>."""
    return f"/raindrops-{kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def remove_segments(master_pid: int, *names: str) -> None:
    """Unlinks what a stopped master leaves in /dev/shm: its per-master segments and `names`.

    raindrops names a per-master segment raindrops-<kind>-<masterpid>-*; the
    glob takes every kind (mw, ldr), so no server type needs its own clean-up.
    An empty name (a server without a demo counter) is no segment.
    """
    for entry in SHM_DIR.glob(f"raindrops-*-{master_pid}-*"):
        entry.unlink(missing_ok=True)
    for name in filter(None, names):
        (SHM_DIR / name.lstrip("/")).unlink(missing_ok=True)


# gunicorn.


def gunicorn_command(
    args: Sequence[str],
    bind: Sequence[str],
    app: str = DEMO_APP,
    graceful_timeout: int = GRACEFUL_TIMEOUT,
) -> list[str]:
    """The venv's gunicorn script (as `make demo` runs it), else `python -m gunicorn`.

    No control socket: its default path ($XDG_RUNTIME_DIR or
    ~/.gunicorn/gunicorn.ctl) is one per user, so concurrent servers would share it.
    """
    script = Path(sys.executable).parent / "gunicorn"
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "gunicorn"]
    binds = [item for address in bind for item in ("--bind", address)]
    timeout = ["--graceful-timeout", str(graceful_timeout)]
    return [*launcher, *binds, "--no-control-socket", *timeout, *args, app]


@dataclass
class Master:
    """A gunicorn master that has answered: every worker forked, the ready path served."""

    process: subprocess.Popen[bytes]
    port: int
    workers: int  # the --workers it was given: how many it must have to be ready
    log: Path
    counter: str  # the demo's /count segment (RAINDROPS_DEMO_COUNTER); "" for another app
    hosts: tuple[str, ...]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        """The first listener, as raindrops names it in every format."""
        return bind_address(self.hosts[0], self.port)

    def get(self, path: str, **kwargs: Any) -> Response:
        """One request to the first listener (request()'s keywords, host aside)."""
        kwargs.setdefault("host", self.hosts[0])
        return request(self.port, path, **kwargs)

    def worker_pids(self) -> list[int]:
        return children(self.pid)

    def log_text(self) -> str:
        return log_text(self.log)


M = TypeVar("M", bound=Master)


@contextlib.contextmanager
def launch(
    make: Callable[..., M],
    args: Sequence[str],
    *,
    workers: int,
    log: Path,
    app: str = DEMO_APP,
    counter: str = "",
    hosts: Sequence[str] = ("127.0.0.1",),
    env: Mapping[str, str] | None = None,
    ready_path: str = STATS,
    graceful_timeout: int = GRACEFUL_TIMEOUT,
    stop_timeout: float = processes.STOP_TIMEOUT,
) -> Iterator[M]:
    """Starts gunicorn on a free port of `hosts`, yields it once ready, always stops it.

    `args` hold the --workers that `workers` repeats: ready means that many
    workers forked and `ready_path` answered 200. `make` (Master or a
    subclass, with its own fields bound) builds what is yielded. A port taken
    by someone else between free_port() and gunicorn's bind makes gunicorn
    exit: it is started again on another port, START_ATTEMPTS times in all,
    writing `log` afresh each time. The child's environment has no RAINDROPS_*
    variable but those of `env` and the counter, so the caller's shell does
    not change what is tested. Stopping is SIGTERM, then SIGKILL to the group
    after `stop_timeout` (keep it above `graceful_timeout`), then
    remove_segments().
    """
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("RAINDROPS_")
    }
    environment.update(env or {})
    if counter:
        environment["RAINDROPS_DEMO_COUNTER"] = counter
    environment["PYTHONUNBUFFERED"] = "1"
    listeners = tuple(hosts)
    for _ in range(START_ATTEMPTS):
        port = free_port(listeners)
        bind = [bind_address(host, port) for host in listeners]
        command = gunicorn_command(args, bind, app, graceful_timeout)
        process = processes.spawn(command, log=log, cwd=ROOT, env=environment)
        master = make(
            process=process, port=port, workers=workers, log=log, counter=counter, hosts=listeners
        )
        serving = functools.partial(_serving, master, ready_path)
        try:
            if wait_ready(process, serving, "gunicorn", log):
                yield master
                return
        finally:
            processes.stop(process, stop_timeout)
            remove_segments(process.pid, counter)
    raise RuntimeError(f"gunicorn did not start:\n{log_text(log)}")


def _serving(master: Master, path: str) -> bool:
    """The ready path answers and every worker is forked (one answers before the last forks)."""
    if not answers(master.port, path, master.hosts[0]):
        return False
    return len(master.worker_pids()) >= master.workers
