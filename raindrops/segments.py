"""How the workers of one preforking server find the same shared memory.

Both wrappers that keep server-wide numbers (raindrops.Middleware and
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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from raindrops._process import PROCESS, PerProcess

SHM_DIR = Path("/dev/shm")
PREFIX = "raindrops-"
KINDS = ("mw", "ldr")
"""Kinds of per-master segments: the middleware's scoreboard, LastDataRecv's histogram."""
_SHM_SCAN_MAX = 4096


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


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


class ServerWide(Generic[C]):
    """The object (a scoreboard, a histogram) that this process counts into, found once per process.

    `make(name=None)` builds it where the wrapper is built, unless the caller
    gave one (`given`) or named a segment (`name`). That object is kept when it
    was inherited across fork, when the caller chose it, or when the server
    runs one process; else each worker that built its own closes it for the
    named segment of its master's workers (`kind` and `path` make the name).
    """

    def __init__(
        self, make: Callable[..., C], *, given: C | None, name: str | None, kind: str, path: str
    ) -> None:
        self.current = given if given is not None else make(name=name)
        self._make = make
        self._explicit = given is not None or name is not None
        self._creator_pid = PROCESS.pid
        self._kind = kind
        self._path = path
        self._bound: PerProcess[C] = PerProcess()

    def get(self, environ: Mapping[str, Any]) -> C:
        """This process's object; `environ` tells whether the server runs several processes."""
        bound = self._bound.current()
        return bound if bound is not None else self._bound.get(lambda: self._find(environ))

    def _find(self, environ: Mapping[str, Any]) -> C:
        if (
            self._explicit
            or PROCESS.pid != self._creator_pid
            or not environ.get("wsgi.multiprocess")
        ):
            return self.current
        remove_stale_segments()
        shared = self._make(name=master_segment_name(self._kind, self._path))
        self.current.close()
        self.current = shared
        return shared


__all__ = ["KINDS", "SHM_DIR", "ServerWide", "master_segment_name", "remove_stale_segments"]
