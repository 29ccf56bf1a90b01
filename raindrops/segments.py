"""How the workers of one preforking server find the same shared memory, and who removes it.

Both wrappers that keep server-wide numbers (raindrops.Middleware and
raindrops.LastDataRecv) need the same three cases:
- built before fork (gunicorn --preload): the anonymous segment made in the
  master is inherited by every worker, nothing to do;
- built in each worker after fork (no preload) by a multi-process server: the
  workers of one master meet in a segment named after that master;
- a single-process server keeps its private segment.

A master is named by its pid, its PID namespace and its start time: two
containers sharing /dev/shm both have a master with pid 2, and a restarted
server may get its predecessor's pid, yet neither may continue the other's
numbers. /dev/shm is shared with other users, who are hostile: they can
create any name first (a squatted, corrupt or oversized file), fill the file
system, or plant names that no parser expects. None of that may fail a
request, so the first request of a worker that cannot use the server-wide
segment counts into a private one, logs one warning and lets its endpoint say
what is degraded (`ServerWide.degraded`); an endpoint that cannot read the
segment later (a process of the same user wrote over its header) answers
without the numbers and says why (`ServerWide.report`). Named segments
outlive a killed master: each start removes those of masters that are gone
(in our PID namespace, owned by us), and a server's clean exit removes its own
(raindrops.gunicorn's on_exit; under uWSGI, `raindrops cleanup --master
$PPID` run by --exec-as-user-atexit: uWSGI calls no Python exit hook in its
master).
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from raindrops import _process
from raindrops._process import PROCESS, PerProcess
from raindrops.counters import _checked_name

SHM_DIR = Path("/dev/shm")
PREFIX = "raindrops-"
KINDS = ("mw", "ldr", "watch", "metric")
"""Kinds of per-master segments: the middleware's scoreboard, LastDataRecv's histogram, the
Watcher's samples, one per raindrops.metrics metric."""
SERVER_KEY_ENV = "RAINDROPS_SERVER_KEY"
"""A secret the master hands its workers (raindrops.gunicorn sets it): part of the name's digest,
so that another user cannot compute the name and create it first."""
PID_MAX_LIMIT = 4_194_304
"""The kernel's PID_MAX_LIMIT (64-bit): no pid_max is larger, so a pid has at most 7 digits."""
SHM_SCAN_MAX = 16_384
"""Entries of /dev/shm looked at per sweep: anyone can fill it, a request must not pay for that."""
SEGMENT_ERRORS = (OSError, ValueError, MemoryError, RuntimeError)
"""What opening or preparing a segment may raise: a request falls back instead of failing."""
_DIGEST_BYTES = 6
_NAME = re.compile(
    rf"{re.escape(PREFIX)}(?P<kind>[a-z]{{1,8}})-(?P<pid>[0-9]{{1,7}})"
    rf"-(?P<namespace>[0-9]{{1,20}})-(?P<start>[0-9]{{1,20}})-[0-9a-f]{{{2 * _DIGEST_BYTES}}}"
)
_log = logging.getLogger(__name__)


class Server(NamedTuple):
    """A prefork server's master: its pid, in its PID namespace, started then (clock ticks).

    0 stands for a namespace or start time that /proc could not tell.
    """

    pid: int
    namespace: int
    start_ticks: int

    @classmethod
    def parent(cls) -> Server:
        """This process's master (a worker's parent)."""
        start = _process.parent_start_ticks() or 0
        return cls(os.getppid(), _process.pid_namespace(), start)

    @classmethod
    def running(cls, pid: int) -> Server | None:
        """The master `pid` of our PID namespace as it runs now; None when /proc cannot tell
        its start time (no such process, a zombie, /proc of another namespace)."""
        start = _process.start_ticks(pid) if _process.proc_is_ours() else None
        return None if start is None else cls(pid, _process.pid_namespace(), start)

    @classmethod
    def this_process(cls) -> Server:
        """This process as a master: what its workers name their segments after."""
        start = _process.own_start_ticks() or 0
        return cls(os.getpid(), _process.pid_namespace(), start)

    def prefix(self, kind: str) -> str:
        """The start of every file name of this master's segments of `kind`."""
        return f"{PREFIX}{kind}-{self.pid}-{self.namespace}-{self.start_ticks}-"


def segment_name(kind: str, path: str, server: Server, cwd: str, key: str = "") -> str:
    """The segment of `server`'s workers for `kind` mounted at `path`, in working directory `cwd`.

    The working directory and the mount path go into the digest so that two
    applications, or two mounts, under one master do not share numbers; so
    does the master's secret `key`, when it gave one.
    """
    material = b"\0".join(
        (os.fsencode(cwd), path.encode("utf-8", "surrogatepass"), key.encode("utf-8", "replace"))
    )
    digest = hashlib.blake2s(material, digest_size=_DIGEST_BYTES).hexdigest()
    return f"/{server.prefix(kind)}{digest}"


def master_segment_name(kind: str, path: str) -> str:
    """The segment the workers of this process's master share for `kind` mounted at `path`."""
    key = os.environ.get(SERVER_KEY_ENV, "")
    server = Server.this_process() if _uwsgi_without_master() else Server.parent()
    return segment_name(kind, path, server, os.getcwd(), key)


def _uwsgi_without_master() -> bool:
    """uWSGI without --master: its first worker is the process the others fork from.

    That worker keeps what it built before forking the others (memory they
    share) rather than naming a segment they would not see.
    """
    uwsgi = sys.modules.get("uwsgi")
    return uwsgi is not None and uwsgi.masterpid() == 0 and uwsgi.worker_id() == 1


def _uwsgi_worker_id() -> int | None:
    """uWSGI's number of this worker (0 before it forks its workers); None outside uWSGI."""
    uwsgi = sys.modules.get("uwsgi")
    return None if uwsgi is None else int(uwsgi.worker_id())


def parse_segment_name(file_name: str, pid_max: int = PID_MAX_LIMIT) -> tuple[str, Server] | None:
    """(kind, master) of a per-master segment's file name, or None for anything else.

    The name is anyone's to choose, so this only accepts what
    segment_name() writes: ASCII digits of bounded length, a pid the kernel
    could hand out.
    """
    match = _NAME.fullmatch(file_name)
    if match is None:
        return None
    pid = int(match["pid"])
    if not 0 < pid <= pid_max:
        return None
    return match["kind"], Server(pid, int(match["namespace"]), int(match["start"]))


class _Host(NamedTuple):
    """What a sweep compares names with, read once per sweep."""

    namespace: int
    proc_is_ours: bool
    pid_max: int
    euid: int

    @classmethod
    def now(cls) -> _Host:
        return cls(_process.pid_namespace(), _process.proc_is_ours(), _pid_max(), os.geteuid())


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as source:
            text = source.read(16).strip()
    except OSError:
        return PID_MAX_LIMIT
    return min(int(text), PID_MAX_LIMIT) if text.isdigit() else PID_MAX_LIMIT


def _master_gone(server: Server, host: _Host) -> bool:
    """True when `server` is certainly not running: only decidable in our own PID namespace."""
    if server.namespace != host.namespace:
        return False
    if not _process.pid_alive(server.pid):
        return True
    if not host.proc_is_ours or server.start_ticks == 0:
        return False  # /proc cannot tell this pid's start time: assume it is the master
    return _process.start_ticks(server.pid) != server.start_ticks  # a reused pid, or a zombie


def _ours(entry: os.DirEntry[str], owners: frozenset[int]) -> bool:
    """Whether `entry` is a regular file of `owners` (lstat: a link or directory is not)."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid in owners


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def _sweep(
    select: Callable[[Server, _Host], bool], kinds: Iterable[str], owners: Iterable[int] = ()
) -> list[str]:
    """Unlinks per-master segments of `kinds` whose master `select` picks; never raises OSError.

    Only regular files owned by this process's euid (or one of `owners`) go,
    and a file's owner is checked before its master is judged: names that
    others plant cost one lstat each, not a kill() and a /proc read, and each
    master is judged once per sweep however many names carry it.

    At most SHM_SCAN_MAX entries are looked at: a directory that others fill
    leaves some segments for a later sweep rather than slowing a request.
    """
    wanted = frozenset(kinds)
    host = _Host.now()
    uids = frozenset((host.euid, *owners))
    verdicts: dict[Server, bool] = {}
    removed = []
    try:
        with os.scandir(SHM_DIR) as entries:
            for entry in itertools.islice(entries, SHM_SCAN_MAX):
                parsed = parse_segment_name(entry.name, host.pid_max)
                if parsed is None or parsed[0] not in wanted or not _ours(entry, uids):
                    continue
                master = parsed[1]
                selected = verdicts.get(master)
                if selected is None:
                    selected = verdicts[master] = select(master, host)
                if selected and _unlink(entry.path):
                    removed.append("/" + entry.name)
    except OSError:
        pass  # no /dev/shm, or it went away while being read: nothing (more) to sweep
    return removed


def remove_stale_segments(kinds: Iterable[str] = KINDS) -> list[str]:
    """Unlinks the per-master segments of masters that are gone; returns their names.

    Each server start makes a new name, so without this /dev/shm would
    collect one segment per crash. Only segments of our PID namespace can be
    judged (a pid means nothing in another one) and only our own files are
    touched.
    """
    return _sweep(_master_gone, kinds)


def remove_server_segments(
    server: Server | None = None, kinds: Iterable[str] = KINDS, owners: Iterable[int] = ()
) -> list[str]:
    """Unlinks every per-master segment of `server` (default: this process as the master).

    For a master's clean exit, once its workers are gone; returns the names.
    `owners` adds the uids its workers run as when they are not the master's
    (gunicorn --user).
    """
    master = Server.this_process() if server is None else server
    return _sweep(lambda found, _host: _same_master(found, master), kinds, owners)


def _same_master(found: Server, master: Server) -> bool:
    """A start time of 0 is a worker that could not read its master's (/proc mounted hidepid)."""
    same_process = found.pid == master.pid and found.namespace == master.namespace
    return same_process and found.start_ticks in (master.start_ticks, 0)


def degraded_reason(error: BaseException) -> str:
    """The endpoint's word for why a process counts alone (a Prometheus label value)."""
    if isinstance(error, PermissionError):
        return "segment_not_ours"
    if isinstance(error, MemoryError) or (
        isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG)
    ):
        return "segment_no_space"
    if isinstance(error, ValueError):
        return "segment_invalid"
    if isinstance(error, RuntimeError):
        return "segment_full"
    return "segment_error"


DEGRADED_HEADER = "X-Raindrops-Degraded"
"""The response header of every endpoint format that names why its numbers are partial."""


class Notice(NamedTuple):
    """What an endpoint says about degradation: reasons for its report, headers for its reply."""

    reasons: tuple[str, ...]
    headers: list[tuple[str, str]]


def _notice(reasons: tuple[str, ...]) -> Notice:
    """The notice of `reasons` (each once); the header lists them, comma-separated."""
    unique = tuple(dict.fromkeys(reasons))
    return Notice(unique, [(DEGRADED_HEADER, ", ".join(unique))] if unique else [])


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)
R = TypeVar("R")


def _nothing(_: object) -> None:
    return None


class ServerWide(Generic[C]):
    """The object (a scoreboard, a histogram) that this process counts into, found once per process.

    `make(name=None)` builds it where the wrapper is built, unless the caller
    gave one (`given`) or named a segment (`name`). That object is kept when it
    was inherited across fork, when the caller chose it, or when the server
    runs one process; else each worker that built its own closes it for the
    named segment of its master's workers (`kind` and `path` make the name).
    `prepare` readies the chosen object for this process (claims a slot);
    whatever fails on the way leaves this process counting into a private
    object, with the reason in `degraded` (this process's own attribute: a
    forked child keeps its own copy).
    """

    def __init__(
        self,
        make: Callable[..., C],
        *,
        given: C | None,
        name: str | None,
        kind: str,
        path: str,
        prepare: Callable[[C], object] = _nothing,
    ) -> None:
        self._make = make
        self._prepare = prepare
        self._explicit = given is not None or name is not None
        self._creator_pid = PROCESS.pid
        self._before_uwsgi_workers = _uwsgi_worker_id() == 0
        self._kind = kind
        self._path = path
        self._bound: PerProcess[C] = PerProcess()
        self.degraded: str | None = None
        self._unreadable_logged: set[tuple[int, str]] = set()  # (pid, reason) already logged
        if given is not None:
            self.current = given
        elif name is not None:
            self.current = self._named_or_anonymous(_checked_name(name))
        else:
            self.current = make(name=None)

    def get(self, environ: Mapping[str, Any]) -> C:
        """This process's object; `environ` tells whether the server runs several processes."""
        bound = self._bound.current()
        return bound if bound is not None else self._bound.get(lambda: self._find(environ))

    def notice(self) -> Notice:
        """Why this process's numbers may not be the server's, for its endpoint (or nothing)."""
        return _notice(() if self.degraded is None else (self.degraded,))

    def report(self, read: Callable[[], R], unreadable: Callable[[C], R]) -> tuple[R, Notice]:
        """What `read()` finds, and this process's notice, for an endpoint.

        When reading fails (a process of the same user wrote over the header
        of the segment after this process attached it), the endpoint answers
        anyway: `unreadable(current)` is what it can say without the numbers,
        and the notice names the reason. Logged once per process and reason:
        an endpoint that is scraped every few seconds must not flood the log.
        """
        try:
            return read(), self.notice()
        except SEGMENT_ERRORS as error:
            reason = degraded_reason(error)
            self._log_unreadable(error, reason)
            return unreadable(self.current), _notice((*self.notice().reasons, reason))

    def _log_unreadable(self, error: BaseException, reason: str) -> None:
        key = (PROCESS.pid, reason)
        if key in self._unreadable_logged:
            return
        self._unreadable_logged.add(key)
        _log.warning(
            "raindrops: the numbers of process %d cannot be read (%s: %s); its endpoint "
            "reports without them (%s)",
            PROCESS.pid,
            type(error).__name__,
            error,
            reason,
        )

    def _named_or_anonymous(self, name: str) -> C:
        """The caller's named segment; anonymous memory (shared with later forks) if it is unusable.

        A worker that cannot start is a server that cannot start, so even a
        name chosen by the user must not fail here when someone else owns it.
        """
        try:
            return self._make(name=name)
        except SEGMENT_ERRORS as error:
            self._degrade(error, name)
        return self._make(name=None)

    def _find(self, environ: Mapping[str, Any]) -> C:
        found: C | None = None
        try:
            found = self._server_wide(environ)
            self._prepare(found)
        except SEGMENT_ERRORS as error:
            if found is not None and found is not self.current:
                found.close()
            return self._private(error)
        if found is not self.current:
            self.current.close()
            self.current = found
        return found

    def _server_wide(self, environ: Mapping[str, Any]) -> C:
        if (
            self._explicit
            or PROCESS.pid != self._creator_pid
            or (self._before_uwsgi_workers and _uwsgi_without_master())
            or not environ.get("wsgi.multiprocess")
        ):
            return self.current
        remove_stale_segments()
        return self._make(name=master_segment_name(self._kind, self._path))

    def _private(self, error: BaseException) -> C:
        """This process's own object after `error`: the one built here, or a new anonymous one."""
        self._degrade(error, "the server-wide segment")
        built_here = not self._explicit and PROCESS.pid == self._creator_pid
        private = self.current if built_here else self._make(name=None)
        self._prepare(private)
        self.current = private
        return private

    def _degrade(self, error: BaseException, what: str) -> None:
        self.degraded = degraded_reason(error)
        _log.warning(
            "raindrops: %s cannot be used (%s: %s); process %d counts in private memory (%s)",
            what,
            type(error).__name__,
            error,
            PROCESS.pid,
            self.degraded,
        )


__all__ = [
    "DEGRADED_HEADER",
    "KINDS",
    "Notice",
    "SERVER_KEY_ENV",
    "SHM_DIR",
    "Server",
    "ServerWide",
    "degraded_reason",
    "master_segment_name",
    "parse_segment_name",
    "remove_server_segments",
    "remove_stale_segments",
    "segment_name",
]
