"""This process's identity, and the one rule for what each process must make for itself.

A prefork server builds the middleware (or the Watcher) once and forks: a
worker inherits objects that belong to its parent (a scoreboard slot, a
netlink socket, a sampler thread). Each such thing is a PerProcess value,
made again on first use in every process. `PROCESS.pid` is kept current by a
fork hook, so checking costs an attribute read, not a getpid() system call.

A pid alone does not name a process: it is reused, and two PID namespaces
(containers sharing /dev/shm) hand out the same pids. A pid plus its start
time (clock ticks after boot, /proc/PID/stat field 22) does, within one PID
namespace, which is named by the inode of /proc/self/ns/pid.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_STAT_STATE, _STAT_PPID, _STAT_START = 0, 1, 19  # fields after the ")" that ends the command
_DEAD_STATES = (b"Z", b"X")


class _Process:
    """This process's pid, kept current across fork."""

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid = os.getpid()

    def refresh(self) -> None:
        self.pid = os.getpid()


PROCESS = _Process()


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read(4096).rpartition(b")")[2].split()
    except OSError:
        return None
    return fields if len(fields) > _STAT_START else None


def _ticks(fields: list[bytes] | None) -> int | None:
    if fields is None or fields[_STAT_STATE] in _DEAD_STATES:
        return None
    start = fields[_STAT_START]
    return int(start) if start.isdigit() else None


def start_ticks(pid: int) -> int | None:
    """The start time of process `pid` as /proc sees it, or None when it is gone or a zombie.

    Compared with a recorded start time it tells a live process from a new one
    that reuses a dead one's pid.
    """
    return _ticks(_stat_fields(pid))


def own_start_ticks() -> int | None:
    """The start time of this process, read through /proc/self (right in any PID namespace)."""
    return _ticks(_stat_fields("self"))


def parent_start_ticks() -> int | None:
    """The start time of this process's parent (a prefork server's master), None if unknown.

    The parent's pid is read from /proc/self/stat rather than getppid(), so
    that both numbers come from the same PID namespace even when /proc was
    mounted for another one (`unshare --pid` without --mount-proc).
    """
    fields = _stat_fields("self")
    if fields is None or not fields[_STAT_PPID].isdigit():
        return None
    return _ticks(_stat_fields(int(fields[_STAT_PPID])))


def pid_alive(pid: int) -> bool:
    """Whether a process has `pid` now (in this PID namespace); another user's counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: someone else's live process
    return True


def pid_namespace() -> int:
    """The inode of this process's PID namespace; 0 without /proc."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def proc_is_ours() -> bool:
    """Whether /proc shows this PID namespace's pids, so /proc/PID is the process `PID` here."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


class ProcessLock:
    """A lock of this process only: a forked child gets a new one at its first use here.

    A lock that another thread held at fork stays held in the child, where
    that thread does not exist: the child would wait for it for good. Use it
    as `with lock.here():`, so the lock released is the one taken even when
    the block forks.
    """

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        self._lock: threading.Lock | None = None
        _LOCKS.add(self)

    def here(self) -> threading.Lock:
        """This process's lock, made at first use: made in the fork hook, before gevent patches
        threading (gunicorn --preload), a real lock would block every greenlet of the worker
        while its holder yields."""
        lock = self._lock
        if lock is None:
            with _LOCKS_LOCK[0]:
                lock = self._lock
                if lock is None:
                    lock = self._lock = threading.Lock()
        return lock


class PerProcess(Generic[T]):
    """A value made by the process that uses it; a forked child makes its own on first use.

    Hot paths read `value` directly when `pid == PROCESS.pid`; everything else
    calls get(). Making is serialized by a ProcessLock, so a fork while
    another thread was making cannot leave the child locked out.
    """

    __slots__ = ("value", "pid", "_lock")

    def __init__(self) -> None:
        self.value: T | None = None
        self.pid = 0
        self._lock = ProcessLock()

    def get(self, make: Callable[[], T]) -> T:
        """This process's value, made by `make` if this process has none yet."""
        value = self.value
        if self.pid == PROCESS.pid and value is not None:
            return value
        with self._lock.here():
            if self.pid != PROCESS.pid or self.value is None:
                self.value = make()
                self.pid = PROCESS.pid
            return self.value

    def current(self) -> T | None:
        """This process's value if it made one, else None (an inherited one does not count)."""
        return self.value if self.pid == PROCESS.pid else None

    def take(self) -> T | None:
        """Removes and returns this process's value, for closing it; None if there is none."""
        with self._lock.here():
            value = self.current()
            self.value, self.pid = None, 0
            return value


_LOCKS: weakref.WeakSet[ProcessLock] = weakref.WeakSet()
_LOCKS_LOCK = [threading.Lock()]  # held only while a lock is made, never while waiting


_CHILD_HOOKS: list[Callable[[], object]] = []


def at_fork_in_child(hook: Callable[[], object]) -> None:
    """Runs `hook` in every forked child, after this module's own fork logic, whichever way the
    child was forked: for what a child must do at once rather than on first use (the Watcher
    starts its sampler thread there). Hooks are kept for good: register a module's function
    once, at import; it must not raise."""
    _CHILD_HOOKS.append(hook)


def _after_fork_in_child() -> None:
    """What every forked child does first, whichever way it was forked (os.fork or C)."""
    PROCESS.refresh()
    _LOCKS_LOCK[0] = threading.Lock()
    for lock in list(_LOCKS):
        lock._lock = None
    for hook in list(_CHILD_HOOKS):
        hook()


def _chain_uwsgi_post_fork() -> None:
    """Runs the child's fork logic in uWSGI's workers too, before any post-fork hook already set.

    uWSGI forks its workers in C (unless --lazy-apps), so os.register_at_fork
    never runs there; it calls uwsgi.post_fork_hook in each worker instead,
    also in the master-less first worker, which did not fork: that one keeps
    its locks. Outside uWSGI the import fails once, at import of raindrops.
    """
    try:
        import uwsgi  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return
    previous = getattr(uwsgi, "post_fork_hook", None)

    def post_fork_hook() -> None:
        if os.getpid() != PROCESS.pid:
            _after_fork_in_child()
        if callable(previous):
            previous()

    uwsgi.post_fork_hook = post_fork_hook


os.register_at_fork(after_in_child=_after_fork_in_child)
_chain_uwsgi_post_fork()
