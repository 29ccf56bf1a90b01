"""The sampler thread, and the statistics it keeps per listener.

One thread per process (the Watcher holds it as a PerProcess value) reads
`active` and `queued` of the watched listeners each `delay` seconds through
its own linux.ListenerSet, and keeps, per listener and since its last reset:
an Aggregate of each number, when its peak was first and last reached, and
the current values; the last `history` samples feed the dashboard's charts.
The thread is the only writer; request threads read under `lock`.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from typing import NamedTuple

from raindrops import exposition, linux
from raindrops.histogram import HistogramSnapshot
from raindrops.linux import ListenStats
from raindrops.watcher.aggregate import Aggregate

KINDS = ("active", "queued")
"""The two numbers kept of every listener, in ListenStats order."""
_JOIN_TIMEOUT = 5.0
_EXIT_JOIN_TIMEOUT = 2.0

LOG = logging.getLogger("raindrops.watcher")

Point = tuple[float, dict[str, tuple[int, int]]]
"""One sample for the charts: (time, {listener: (active, queued)})."""


class _Peak:
    """When the maximum since the last reset was first reached, and last reached again."""

    __slots__ = ("first", "last")

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None

    def update(self, value: int, previous_max: int | None, now: float) -> None:
        """0 is never a peak: an idle listener has none."""
        if value <= 0 or (previous_max is not None and value < previous_max):
            return
        if previous_max is None or value > previous_max:
            self.first = now
        self.last = now


class View(NamedTuple):
    """One number (active or queued) of one listener, as the endpoints report it."""

    snapshot: HistogramSnapshot
    current: int
    first_peak: float | None
    last_peak: float | None
    last_reset: float


class _Listener:
    """Everything kept about one listener since its last reset."""

    __slots__ = ("aggregates", "peaks", "reset_at", "current", "seen_at")

    def __init__(self, now: float) -> None:
        self.aggregates = {kind: Aggregate() for kind in KINDS}
        self.peaks = {kind: _Peak() for kind in KINDS}
        self.reset_at = now
        self.current = ListenStats(0, 0)
        self.seen_at = now

    def add(self, stats: ListenStats, now: float) -> None:
        for kind, value in zip(KINDS, stats, strict=True):
            self.peaks[kind].update(value, self.aggregates[kind].max, now)
            self.aggregates[kind].add(value)
        self.current = stats
        self.seen_at = now

    def reset(self, now: float) -> None:
        for kind in KINDS:
            self.aggregates[kind].reset()
            self.peaks[kind] = _Peak()
        self.reset_at = now

    def view(self, kind: str) -> View:
        peak = self.peaks[kind]
        current: int = getattr(self.current, kind)
        snapshot = self.aggregates[kind].snapshot()
        return View(snapshot, current, peak.first, peak.last, self.reset_at)


def read_watched(listeners: linux.ListenerSet) -> dict[str, ListenStats]:
    """What the Watcher samples: every listener of the host as found, or the configured ones,
    absent ones reading 0/0 so that their charts, pages and tails go on. Keyed by printable
    names (exposition.printable_name), which is how the Watcher names listeners everywhere: in
    its JSON, its links (valid UTF-8, as the dashboard's encodeURIComponent needs), its pages
    and its tail lines."""
    stats = listeners.read()
    if not listeners.everything:
        stats = {key: stats.get(key, ListenStats(0, 0)) for key in listeners.keys}
    return exposition.printed(stats)


class _Sampler:
    """One process's sampler thread, its netlink socket (in `listeners`), and its statistics.

    The thread is the only writer; request threads read under `lock` and wait
    on `changed` for the next sample.
    """

    def __init__(self, listeners: linux.ListenerSet, delay: float, history: int) -> None:
        self._listeners = listeners
        self.delay = delay
        self.window = delay * history
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.listeners: dict[str, _Listener] = {}
        self.points: deque[Point] = deque(maxlen=history)
        self.latest: dict[str, ListenStats] = {}
        self.taken = time.time()
        self.sequence = 0
        self.streams = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""

    def start(self) -> None:
        """Takes the first sample now (so the first request has data) and starts the thread."""
        self.sample()
        self._thread = threading.Thread(target=self._run, name="raindrops-watcher", daemon=True)
        _RUNNING.add(self)
        self._thread.start()

    def _run(self) -> None:
        """The thread owns the netlink socket: it closes it when it ends, so no one closes it
        under a sample in progress."""
        try:
            while not self._stop.wait(self.delay):
                self.sample()
        finally:
            self._listeners.close()
            with self.changed:
                self.changed.notify_all()

    def _read(self) -> dict[str, ListenStats] | None:
        """A sample, or None after an error: logged once until it changes, and retried."""
        try:
            stats = read_watched(self._listeners)
        except (OSError, ValueError) as error:
            self._listeners.reset()  # a fresh socket next time, in case this one is broken
            message = f"{type(error).__name__}: {error}"
            if message != self._last_error:
                LOG.error("raindrops.Watcher could not read listener stats: %s", message)
            self._last_error = message
            return None
        self._last_error = ""
        return stats

    def sample(self) -> None:
        stats = self._read()
        if stats is None:
            return
        now = time.time()
        with self.lock:
            self._record(stats, now)
            self.taken = now
            self.sequence += 1
            self.changed.notify_all()

    def _record(self, stats: dict[str, ListenStats], now: float) -> None:
        """Adds a sample to every listener's statistics and to the charts' points (under lock)."""
        for address, stat in stats.items():
            listener = self.listeners.get(address)
            if listener is None:
                listener = self.listeners[address] = _Listener(now)
            listener.add(stat, now)
        self._forget_gone(stats, now)
        values = {address: (stat.active, stat.queued) for address, stat in stats.items()}
        self.points.append((now, values))
        self.latest = dict(sorted(stats.items()))

    def _forget_gone(self, stats: dict[str, ListenStats], now: float) -> None:
        """Drops listeners gone for longer than the chart shows: a host where servers come and go
        on new ports would otherwise grow this dict forever."""
        for address, listener in list(self.listeners.items()):
            if address not in stats and now - listener.seen_at > self.window:
                del self.listeners[address]

    def wait_next(self, sequence: int, timeout: float) -> bool:
        """Waits until a sample newer than `sequence` exists or the sampler stops;
        False on timeout."""
        with self.changed:
            return self.changed.wait_for(
                lambda: self.sequence != sequence or self._stop.is_set(), timeout
            )

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def abandon(self) -> None:
        """Tells the thread to end, without waiting or taking a lock: what a garbage collector's
        finalizer may do, in whatever thread it runs and whatever locks that thread holds."""
        self._stop.set()

    def stop(self) -> None:
        """Ends the thread (and with it the /tail streams); its socket closes as it ends."""
        self.abandon()
        with self.changed:
            self.changed.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
        if thread is None:
            self._listeners.close()


_RUNNING: weakref.WeakSet[_Sampler] = weakref.WeakSet()
"""Samplers whose thread was started: a dropped one leaves as soon as its thread has ended."""


def _stop_at_exit() -> None:
    """Ends the sampler threads before the interpreter goes away: a daemon thread still sampling
    while the rest of the program exits would log errors about its vanishing resources."""
    samplers = list(_RUNNING)
    for sampler in samplers:
        sampler.abandon()
    deadline = time.monotonic() + _EXIT_JOIN_TIMEOUT
    for sampler in samplers:
        thread = sampler._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(_stop_at_exit)


__all__ = ["KINDS", "LOG", "Point", "View", "read_watched"]
