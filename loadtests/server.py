"""gunicorn serving examples.demo:app for the load test: start, probe, kill one worker, stop, clean up.

The runner's own small helpers (the test suite's tests/servers.py serves
pytest; this package must stand alone for `python -m loadtests`). The server
binds 127.0.0.1 only and runs in its own session, so stopping it can kill
its whole process group; its shared-memory segments are unlinked afterwards.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from loadtests.config import ROOT, Variant
from testsupport import processes
from testsupport.processes import children, stat_fields

SHM_DIR = Path("/dev/shm")
STATS = "/_raindrops"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 40.0  # above gunicorn's --graceful-timeout below
GRACEFUL_TIMEOUT = 30  # a recycled worker finishes every request it accepted (slow ones included)
# clock_nanosleep and nanosleep: where time.sleep() blocks, so where /slow and /stream wait.
SLEEP_SYSCALLS = {"x86_64": {35, 230}, "aarch64": {101, 115}}.get(platform.machine(), set())


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


@dataclass
class Server:
    """A running gunicorn master on 127.0.0.1:port."""

    process: subprocess.Popen[bytes]
    port: int
    variant: Variant
    counter: str  # the demo's /count segment (RAINDROPS_DEMO_COUNTER), unique per run
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 30.0) -> Response:
        return get(self.port, path, timeout)

    def worker_pids(self) -> list[int]:
        return children(self.pid)


def get(port: int, path: str, timeout: float = 30.0) -> Response:
    """One GET on a new connection, closed afterwards."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return Response(response.status, response.getheader("Content-Type") or "", response.read())
    finally:
        connection.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def gunicorn_command(variant: Variant, port: int) -> list[str]:
    script = Path(sys.executable).parent / "gunicorn"
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "gunicorn"]
    return [
        *launcher,
        "--bind", f"127.0.0.1:{port}",
        "--no-control-socket",  # its default path is one per user: concurrent servers would share it
        "--graceful-timeout", str(GRACEFUL_TIMEOUT),
        *variant.gunicorn_args(),
        "examples.demo:app",
    ]  # fmt: skip


@contextlib.contextmanager
def running(variant: Variant, log: Path) -> Iterator[Server]:
    """Starts gunicorn, waits until every worker is up and the endpoint answers; always stops it."""
    port = free_port()
    counter = f"/raindrops-loadtest-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("RAINDROPS_")}
    environment.update(RAINDROPS_DEMO_COUNTER=counter, PYTHONUNBUFFERED="1")
    process = processes.spawn(gunicorn_command(variant, port), log=log, cwd=ROOT, env=environment)
    server = Server(process, port, variant, counter, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        processes.stop(process, STOP_TIMEOUT)
        remove_segments(process.pid, counter)


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{server.log.read_text(errors='replace')}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if server.get(STATS, timeout=5).status == 200 and len(server.worker_pids()) >= server.variant.workers:
                return
        time.sleep(0.05)
    raise RuntimeError(f"gunicorn did not answer within {START_TIMEOUT} s:\n{server.log.read_text(errors='replace')}")


def remove_segments(master_pid: int, counter: str) -> None:
    """The middleware's segments of this master (no --preload) and the demo's counter."""
    for entry in SHM_DIR.glob(f"raindrops-mw-{master_pid}-*"):
        entry.unlink(missing_ok=True)
    (SHM_DIR / counter.lstrip("/")).unlink(missing_ok=True)


def read_counter(name: str) -> int:
    """The demo's /count counter, read from its segment directly (no request that would count)."""
    from raindrops import Raindrops

    with Raindrops.open(name) as counter:
        return counter[0]


# Killing a worker in the middle of a request, without making the accounting ambiguous.


def _tasks(pid: int) -> list[int]:
    try:
        return sorted(int(name) for name in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def _all_stopped(pid: int, timeout: float = 1.0) -> bool:
    """True once every thread of `pid` is in group stop (state T); False if it exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [stat_fields(f"/proc/{pid}/task/{tid}/stat") for tid in _tasks(pid)]
        if not states or any(fields is None or fields[0] in (b"Z", b"X") for fields in states):
            return False
        if all(fields is not None and fields[0] in (b"T", b"t") for fields in states):
            return True
        time.sleep(0.001)
    return False


def _syscall(pid: int, tid: int) -> int | None:
    """The system call the thread is blocked in (/proc/PID/task/TID/syscall), None if running."""
    with open(f"/proc/{pid}/task/{tid}/syscall") as syscall:
        first = syscall.read().split(" ", 1)[0]
    return int(first) if first.lstrip("-").isdigit() else None


def request_threads(pid: int, threaded: bool) -> list[int]:
    """The threads that run requests: the main thread of a sync worker, the pool threads of gthread."""
    tasks = _tasks(pid)
    return [tid for tid in tasks if tid != pid] if threaded else [pid] if pid in tasks else []


def kill_if_sleeping(pid: int, threaded: bool) -> bool:
    """SIGKILLs the worker if every request thread is asleep inside the application; else leaves it be.

    The worker is frozen (SIGSTOP) while its threads are inspected, so what is
    seen is what is killed. A thread asleep in time.sleep() is inside /slow or
    between two chunks of /stream: its request is neither counted by the
    middleware (that happens at close()) nor answered, and the client gets a
    transport error. So the kill loses requests on both sides alike and the
    totals stay exactly comparable. A thread anywhere else might be between
    counting a request and sending its response, so such a worker is spared.
    """
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    killed = False
    try:
        if _all_stopped(pid):
            threads = request_threads(pid, threaded)
            if threads and all(_syscall(pid, tid) in SLEEP_SYSCALLS for tid in threads):
                os.kill(pid, signal.SIGKILL)
                killed = True
    except (FileNotFoundError, ProcessLookupError):
        pass
    finally:
        if not killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return killed
