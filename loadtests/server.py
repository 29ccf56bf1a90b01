"""gunicorn serving examples.demo:app for the load test: start it, kill one worker mid-request.

Starting, probing, stopping and the clean-up of /dev/shm are
testsupport.gunicorn's, which the test suite's servers use too (testsupport
imports nothing of pytest, so `python -m loadtests` stands alone). The
server binds 127.0.0.1 only and runs in its own session, so stopping it
kills its whole process group; its shared-memory segments are unlinked
afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loadtests.config import Variant
from raindrops.watcher.sampler import THREAD_NAME
from testsupport.gunicorn import Master, launch, segment_name
from testsupport.processes import stat_fields

STOP_TIMEOUT = 40.0  # above gunicorn's --graceful-timeout below
GRACEFUL_TIMEOUT = 30  # a recycled worker finishes every request it accepted (slow ones included)
# clock_nanosleep and nanosleep: where time.sleep() blocks, so where /slow and /stream wait.
SLEEP_SYSCALLS = {"x86_64": {35, 230}, "aarch64": {101, 115}}.get(platform.machine(), set())


@dataclass
class Server(Master):
    """A running gunicorn master on 127.0.0.1:port, serving one variant."""

    variant: Variant


@contextlib.contextmanager
def running(variant: Variant, log: Path) -> Iterator[Server]:
    """Starts gunicorn, waits until every worker is up and the endpoint answers; always stops it.

    The demo's /count segment is unique to this run: read_counter() reads it
    at the end, and nothing else counts into it.
    """
    with launch(
        functools.partial(Server, variant=variant),
        variant.gunicorn_args(),
        workers=variant.workers,
        log=log,
        counter=segment_name("loadtest"),
        graceful_timeout=GRACEFUL_TIMEOUT,
        stop_timeout=STOP_TIMEOUT,
    ) as server:
        yield server


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
    """The threads that run requests: the main thread of a sync worker, the pool threads of
    gthread (not the Watcher's sampler thread, which names itself)."""
    tasks = _tasks(pid)
    if not threaded:
        return [pid] if pid in tasks else []
    return [tid for tid in tasks if tid != pid and _name(pid, tid) != THREAD_NAME]


def _name(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm", encoding="ascii", errors="replace") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def kill_if_sleeping(pid: int, threaded: bool) -> bool:
    """SIGKILLs the worker if every request thread is asleep inside the application; else leaves
    it be.

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
