"""How the workers of one preforking server find the same shared memory.

Both WSGI wrappers that keep server-wide numbers (raindrops.Middleware and
raindrops.LastDataRecv) need the same three cases:
- built before fork (gunicorn --preload): the anonymous segment made in the
  master is inherited by every worker, nothing to do;
- built in each worker after fork (no preload) by a multi-process server: the
  workers of one master meet in a segment named after the master's pid;
- a single-process server keeps its private segment.
The named segments outlive a killed master, so each start also removes the
segments of masters that are gone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from raindrops.scoreboard import PROCESS

SHM_DIR = Path("/dev/shm")
PREFIX = "raindrops-"
KINDS = ("mw", "ldr")
"""Kinds of per-master segments: the middleware's scoreboard, LastDataRecv's histogram."""
_SHM_SCAN_MAX = 4096

T = TypeVar("T")


def master_segment_name(kind: str, path: str) -> str:
    """The segment the workers of this process's master share for `kind` mounted at `path`.

    The working directory and the mount path go into the name so that two
    applications, or two mounts, under one master do not share numbers.
    """
    digest = hashlib.blake2s(f"{os.getcwd()}\0{path}".encode(), digest_size=6).hexdigest()
    return f"/{PREFIX}{kind}-{os.getppid()}-{digest}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(file_name: str, kinds: Iterable[str]) -> int | None:
    """The master pid in "raindrops-<kind>-<pid>-<digest>", or None for any other file."""
    for kind in kinds:
        prefix = f"{PREFIX}{kind}-"
        if file_name.startswith(prefix):
            owner = file_name[len(prefix) :].partition("-")[0]
            return int(owner) if owner.isdigit() else None
    return None


def remove_stale_segments(kinds: Iterable[str] = KINDS) -> list[str]:
    """Unlinks the per-master segments of masters that are gone; returns their names.

    Each server start makes a new name (the master's pid is in it), so without
    this /dev/shm would collect one segment per restart.
    """
    kinds = tuple(kinds)
    removed = []
    for entry in list(os.scandir(SHM_DIR))[:_SHM_SCAN_MAX]:
        owner = _owner(entry.name, kinds)
        if owner is None or _pid_alive(owner):
            continue
        try:
            os.unlink(entry.path)
            removed.append("/" + entry.name)
        except FileNotFoundError:
            pass
    return removed


def shared_for_process(
    current: T,
    environ: Mapping[str, Any],
    *,
    creator_pid: int,
    explicit: bool,
    kind: str,
    path: str,
    open_named: Callable[[str], T],
    close: Callable[[T], None],
) -> T:
    """The object this process must count into: `current`, or its sibling workers' named one.

    Switches only in the process that built `current` (so it was not
    inherited across fork), when the caller named no segment itself and the
    server says it runs several processes. The private object is closed.
    """
    if explicit or PROCESS.pid != creator_pid or not environ.get("wsgi.multiprocess"):
        return current
    remove_stale_segments()
    shared = open_named(master_segment_name(kind, path))
    close(current)
    return shared


__all__ = ["KINDS", "SHM_DIR", "master_segment_name", "remove_stale_segments", "shared_for_process"]
