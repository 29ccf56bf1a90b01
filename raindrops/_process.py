"""This process's identity, and the one rule for what each process must make for itself.

A prefork server builds the middleware (or the Watcher) once and forks: a
worker inherits objects that belong to its parent (a scoreboard slot, a
netlink socket, a sampler thread). Each such thing is a PerProcess value,
made again on first use in every process. `PROCESS.pid` is kept current by a
fork hook, so checking costs an attribute read, not a getpid() system call.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Process:
    """This process's pid, kept current across fork."""

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid = os.getpid()

    def refresh(self) -> None:
        self.pid = os.getpid()


PROCESS = _Process()


class PerProcess(Generic[T]):
    """A value made by the process that uses it; a forked child makes its own on first use.

    Hot paths read `value` directly when `pid == PROCESS.pid`; everything else
    calls get(). Making is serialized by a lock that a child gets anew, so a
    fork while another thread was making cannot leave the child locked out.
    """

    __slots__ = ("value", "pid", "_lock", "__weakref__")

    def __init__(self) -> None:
        self.value: T | None = None
        self.pid = 0
        self._lock = threading.Lock()
        _EVERY.add(self)

    def get(self, make: Callable[[], T]) -> T:
        """This process's value, made by `make` if this process has none yet."""
        value = self.value
        if self.pid == PROCESS.pid and value is not None:
            return value
        with self._lock:
            if self.pid != PROCESS.pid or self.value is None:
                self.value = make()
                self.pid = PROCESS.pid
            return self.value

    def current(self) -> T | None:
        """This process's value if it made one, else None (an inherited one does not count)."""
        return self.value if self.pid == PROCESS.pid else None

    def take(self) -> T | None:
        """Removes and returns this process's value, for closing it; None if there is none."""
        with self._lock:
            value = self.current()
            self.value, self.pid = None, 0
            return value


_EVERY: weakref.WeakSet[PerProcess[Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    PROCESS.refresh()
    for holder in list(_EVERY):
        holder._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
