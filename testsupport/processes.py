"""Every process a test or a load test starts, started and ended one way.

A child runs in a session of its own, so ending it can signal its whole
process group: nothing it started outlives it. Ending is SIGTERM, a grace
period, then SIGKILL to the group, on success, failure and timeout alike.

A shell that runs `make test &` starts make with SIGINT ignored, and an
ignored signal stays ignored across exec: the CLI under test would never see
Ctrl-C. Before starting a child, this process's SIGINT is given a handler
(handlers, unlike SIG_IGN, are reset to the default by exec), so every child
starts with the default SIGINT action.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

STOP_TIMEOUT = 10.0


def restore_default_sigint() -> None:
    """Children started after this get SIGINT's default action, even if ours was ignored."""
    if (
        signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        and threading.current_thread() is threading.main_thread()
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def spawn(
    command: Sequence[str], *, log: Path | None = None, **options: Any
) -> subprocess.Popen[Any]:
    """Starts `command` in a session of its own; with `log`, stdout and stderr go to that file."""
    restore_default_sigint()
    options.setdefault("stdin", subprocess.DEVNULL)
    if log is None:
        return subprocess.Popen(list(command), start_new_session=True, **options)
    with open(log, "wb") as log_file:
        return subprocess.Popen(
            list(command),
            start_new_session=True,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            **options,
        )


def stop(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL to the process group after `timeout`; always reaps the process.

    A process that ends on SIGTERM has stopped its children itself (gunicorn's
    master waits for its workers); the group is killed in every case, so that
    no orphan (a worker of a dead master, the tail of a pipeline) survives.
    """
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def running(
    command: Sequence[str],
    *,
    log: Path | None = None,
    stop_timeout: float = STOP_TIMEOUT,
    **options: Any,
) -> Iterator[subprocess.Popen[Any]]:
    """spawn() for the length of a `with` block; stop() when it ends, however it ends."""
    process = spawn(command, log=log, **options)
    try:
        yield process
    finally:
        stop(process, stop_timeout)


def run(
    command: Sequence[str], *, timeout: float, input: str | bytes | None = None, **options: Any
) -> subprocess.CompletedProcess[Any]:
    """subprocess.run with output captured, whose timeout ends the whole process group, not only
    the child."""
    stdin: int | IO[Any] = (
        subprocess.PIPE if input is not None else options.pop("stdin", subprocess.DEVNULL)
    )
    with running(
        command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options
    ) as process:
        stdout, stderr = process.communicate(input, timeout=timeout)
        return subprocess.CompletedProcess(list(command), process.returncode, stdout, stderr)


# Processes seen through /proc.


def stat_fields(path: str) -> list[bytes] | None:
    """Fields of a /proc stat file after the command name: [state, ppid, ...]; None when gone."""
    try:
        with open(path, "rb") as stat:
            return stat.read().rpartition(b")")[2].split()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """Pids of the live (not zombie) children of `pid`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = stat_fields(f"{entry.path}/stat")
            if fields and int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
                found.append(int(entry.name))
    return sorted(found)


def is_dead(pid: int) -> bool:
    """True once `pid` is a zombie or gone: its memory is released and it will never run again."""
    fields = stat_fields(f"/proc/{pid}/stat")
    return fields is None or fields[0] in (b"Z", b"X")


# The last line of defence: nothing a test run started outlives it.

PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> bool:
    """Makes this process the parent of any orphan among its descendants (a worker whose master
    died), so that end_leftovers() can find it. False where the kernel refuses."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def end_leftovers() -> list[str]:
    """SIGKILLs every live child of this process and reaps it; one line per process it had to
    end."""
    ended = []
    for pid in children(os.getpid()):
        ended.append(f"{pid} {_command_line(pid)}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in [int(line.split()[0]) for line in ended]:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return ended
