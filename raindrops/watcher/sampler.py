"""The sampler thread of each process, and what the endpoints read through it.

Every process of a server runs one light thread per Watcher (the Watcher
holds it as a PerProcess value and starts it in each worker before any
request: raindrops.watcher.app). Each interval the thread of the process
holding the board's lease (raindrops.watcher.shared) reads `active` and
`queued` of the watched listeners through its own linux.ListenerSet and
writes the sample into the board; the threads of the other processes only
look at the lease (twice per interval), and take it over when its holder is
gone (SIGKILL included: within two intervals) or stuck. So the kernel is read once per
interval for the whole server, and every worker answers from the same
samples. A process that loses the lease closes its netlink socket and waits.

Request threads read the board's state (cached per process until the next
sample) and wait for new samples by polling the board's sequence, woken at
once in the sampling process. A request that finds the lease free, or its
holder gone and its sample overdue, takes the lease itself (claim_orphaned),
so that its answer is fresh and names a live sampler.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable

from raindrops import exposition, linux, segments
from raindrops.linux import ListenStats
from raindrops.watcher import shared
from raindrops.watcher.shared import EMPTY, KINDS, Board, Point, Slot, State, View

STALE_INTERVALS = 3
STALE_GRACE_S = 1.0
"""A holder alive but silent for STALE_INTERVALS intervals plus this long is stuck: replaced."""
_POLL_MAX_S = 0.05
_JOIN_TIMEOUT = 5.0
_EXIT_JOIN_TIMEOUT = 2.0
_BOARD_ERRORS = (*segments.SEGMENT_ERRORS, IndexError)

LOG = logging.getLogger("raindrops.watcher")
THREAD_NAME = "raindrops-watch"
"""The sampler thread's name, also the kernel's (`top -H`, `ps -L`, /proc/PID/task/TID/comm)."""


def _name_this_thread(name: str) -> None:
    """Gives the calling thread its kernel name, so that tools (and the load test, which spares
    no worker whose request threads are busy) tell it from the server's threads. Best effort:
    a kernel without /proc/thread-self keeps the process's name."""
    try:
        with open("/proc/thread-self/comm", "w", encoding="ascii") as comm:
            comm.write(name[:15])
    except OSError:
        pass


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
    """One process's sampler thread, its netlink socket (in `listeners`, used only while this
    process holds the lease), and its reads of the board.

    `changed` wakes this process's waiters when its thread wrote a sample.
    """

    def __init__(
        self, board: Board, listeners: linux.ListenerSet, delay: float, history: int
    ) -> None:
        self.board = board
        self._listeners = listeners
        self.delay = delay
        self.window = delay * history
        self.changed = threading.Condition(threading.Lock())
        self._token = shared.own_token()
        self._holding = False
        self._slots: dict[str, int] | None = None  # the listener table, loaded when sampling
        self._seen = (0, 0)  # (holder, heartbeat) at the last look
        self._seen_at = time.monotonic()
        self._sampled_at = -math.inf  # monotonic time of this process's last sample (or try)
        self._stuck = 0
        self._stale_s = STALE_INTERVALS * delay + STALE_GRACE_S
        self._poll_s = min(max(delay / 4, 0.001), _POLL_MAX_S)
        self._state = EMPTY
        self._stop = threading.Event()
        self._ticking = threading.Lock()  # the thread and a request claiming the lease
        self._thread: threading.Thread | None = None
        self._last_error = ""
        self._left_out_logged = 0

    def start(self, *, look_now: bool = True) -> None:
        """Starts the thread; with `look_now`, looks at the lease first (and samples now if it
        is free, so the first request of a server has data). A forked child's fork hook starts
        without looking: no I/O there (the child may be about to exec)."""
        if look_now:
            self._tick()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        _RUNNING.add(self)
        self._thread.start()

    def _run(self) -> None:
        """The thread owns the netlink socket and the lease: it gives both up when it ends.

        The holder samples once per interval; the others look at the lease twice per interval,
        so that a dead holder's silence is seen within one interval of its last heartbeat."""
        _name_this_thread(THREAD_NAME)
        try:
            while not self._stop.wait(self._next_look_s()):
                self._tick()
        finally:
            self._resign()
            self._listeners.close()
            with self.changed:
                self.changed.notify_all()

    def _next_look_s(self) -> float:
        """The holder samples an interval after its last sample, whether its thread or a request
        that took the lease took that one; the others look twice per interval."""
        if not self._holding:
            return self.delay / 2
        return max(0.0, self._sampled_at + self.delay - time.monotonic())

    def _tick(self) -> None:
        """Samples if this process holds the lease or may take it, and did not sample within
        the last half interval (a request took the lease and sampled while the thread waited);
        errors are logged and the next interval tries again."""
        with self._ticking:
            try:
                if self._lease() and time.monotonic() - self._sampled_at >= self.delay / 2:
                    self._sampled_at = time.monotonic()
                    self.board.beat()
                    self.sample()
            except _BOARD_ERRORS as error:
                self._slots = None  # a sample may have stopped half-way: reload the table
                self._log_error("use the Watcher's shared memory", error)

    def claim_orphaned(self) -> None:
        """A request's look at the lease (two words): free, or held by a process that missed
        its sample and is gone, it is taken now rather than at the thread's next look, so that
        this answer is fresh and names a live sampler."""
        holder, _ = self.board.lease()
        if holder == self._token or self._stop.is_set():
            return
        if holder == 0 or self._overdue():
            self._tick()

    # The lease.

    def _lease(self) -> bool:
        """Whether this process samples this interval: it holds the lease or just took it."""
        board, token = self.board, self._token
        holder, beat = board.lease()
        if holder == token:
            if not self._holding:
                if not self._first_here():
                    return False  # another Watcher of this process samples into this segment
                self._took()
            return True
        if self._holding:
            self._lost()
        if holder != 0 and not self._abandoned(holder, beat):
            return False
        if not board.take(holder, token):
            return False
        self._first_here()
        self._took()
        return True

    def _first_here(self) -> bool:
        """Whether this sampler is the one of its process that samples into its named segment
        (registering it if so). Two Watchers watching the same way in one worker meet in one
        segment and share the process's lease token: only one of them may sample."""
        name = self.board.name
        if name is None:
            return True  # an anonymous segment is one Watcher's own
        other = _SAMPLING_HERE.get(name)
        if (
            other is not None
            and other is not self
            and other._token == self._token  # not one inherited from a parent
            and other._holding
            and not other.stopped
        ):
            return False
        _SAMPLING_HERE[name] = self
        return True

    def _abandoned(self, holder: int, beat: int) -> bool:
        """The holder is gone or has been silent for too long: its heartbeat did not move since
        the last look, or (at a first look, as a request's) its latest sample is overdue."""
        now = time.monotonic()
        if (holder, beat) != self._seen:
            self._seen, self._seen_at = (holder, beat), now
            return self._overdue() and shared.holder_gone(holder)
        return shared.holder_gone(holder) or now - self._seen_at > self._stale_s

    def _overdue(self) -> bool:
        """No sample for more than an interval: its holder missed one (or none was taken)."""
        return time.time() - self.board.taken() > self.delay

    def _took(self) -> None:
        self._holding = True
        self._slots = None
        LOG.debug("raindrops.Watcher: process %d samples", shared.token_pid(self._token))

    def _lost(self) -> None:
        """Another process took the lease (this one was stuck): stop sampling, free the socket."""
        self._holding = False
        self._slots = None
        self._listeners.reset()
        LOG.warning(
            "raindrops.Watcher: process %d stopped sampling: another took over",
            shared.token_pid(self._token),
        )

    def _resign(self) -> None:
        """Hands the lease back at once, so that another process samples from its next tick."""
        if self._holding:
            self._holding = False
            with contextlib.suppress(*_BOARD_ERRORS):  # a closed board: nobody samples into it
                self.board.release(self._token)

    # Sampling.

    def _read(self) -> dict[str, ListenStats] | None:
        """A sample, or None after an error: logged once until it changes, and retried."""
        try:
            stats = read_watched(self._listeners)
        except (OSError, ValueError) as error:
            self._listeners.reset()  # a fresh socket next time, in case this one is broken
            self._log_error("read listener stats", error)
            return None
        self._last_error = ""
        return stats

    def _log_error(self, what: str, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"
        if message != self._last_error:
            LOG.error("raindrops.Watcher could not %s: %s", what, message)
        self._last_error = message

    def sample(self) -> None:
        """Reads the kernel and writes the sample, if this process still holds the lease."""
        stats = self._read()
        if stats is None:
            return
        board = self.board
        if not board.holds(self._token):
            self._lost()  # taken over while this process was reading the kernel
            return
        if self._slots is None:
            self._slots = board.writer_slots()  # read before writing: the lock would hold it up
        slots = self._slots
        writing = board.begin_write(self._stuck)
        if writing is None:
            self._stuck = board.sequence()  # the same odd number next interval: a dead writer's
            return
        self._stuck = 0
        try:
            left_out = board.record(stats, time.time(), slots)
        finally:
            board.end_write(writing)
        self._log_left_out(left_out)
        with self.changed:
            self.changed.notify_all()

    def _log_left_out(self, left_out: list[str]) -> None:
        if len(left_out) > self._left_out_logged:
            LOG.warning(
                "raindrops.Watcher keeps %d listeners at most; %d left out, such as %s",
                self.board.layout.slots,
                len(left_out),
                left_out[0],
            )
        self._left_out_logged = max(self._left_out_logged, len(left_out))

    # Reading, for request threads.

    def state(self) -> State:
        """The latest sample's state, read again only when a sample was written since."""
        state = self.board.state(self._state)
        self._state = state
        return state

    @property
    def listeners(self) -> dict[str, Slot]:
        """Every listener kept, by name."""
        return self.state().slots

    def points(self, state: State, since: float) -> list[Point]:
        try:
            return self.board.points(state, since)
        except IndexError:
            return []

    def view(self, address: str, kind: str) -> View | None:
        return self.board.view(self.state(), address, kind)

    def ask_reset(self, address: str) -> tuple[Slot, int] | None:
        """Asks the sampling process to reset `address`; None for a listener not kept."""
        slot = self.state().slots.get(address)
        if slot is None:
            return None
        return slot, self.board.ask_reset(slot)

    def wait_reset(self, ticket: tuple[Slot, int], timeout: float) -> bool:
        """Waits until the reset was applied (with the sample that follows it)."""
        slot, number = ticket
        return self._wait(lambda: self.board.reset_done(slot, number), timeout)

    @property
    def sequence(self) -> int:
        return self.board.sequence()

    def wait_next(self, sequence: int, timeout: float) -> bool:
        """Waits until a sample newer than `sequence` exists or the sampler stops;
        False on timeout."""

        def newer() -> bool:
            current = self.board.sequence()
            return current % 2 == 0 and current != sequence

        return self._wait(newer, timeout)

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Polls `done` (this process's samples wake it at once; other processes' are seen
        within a poll interval) until it holds, the sampler stops, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (self._stop.is_set() or done()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(min(remaining, self._poll_s))
        return True

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def abandon(self) -> None:
        """Tells the thread to end, without waiting or taking a lock: what a garbage collector's
        finalizer may do, in whatever thread it runs and whatever locks that thread holds."""
        self._stop.set()

    def stop(self) -> None:
        """Ends the thread (and with it the /tail streams); its socket closes and its lease is
        handed back as it ends."""
        self.abandon()
        with self.changed:
            self.changed.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
        if thread is None:
            self._resign()
            self._listeners.close()


_RUNNING: weakref.WeakSet[_Sampler] = weakref.WeakSet()
"""Samplers whose thread was started: a dropped one leaves as soon as its thread has ended."""
_SAMPLING_HERE: weakref.WeakValueDictionary[str, _Sampler] = weakref.WeakValueDictionary()
"""Per named segment, the sampler of this process that holds (or last held) its lease."""


def _stop_at_exit() -> None:
    """Ends the sampler threads before the interpreter goes away: a daemon thread still sampling
    while the rest of the program exits would log errors about its vanishing resources. Each
    hands its lease back as it ends, so a worker's clean exit leaves sampling to the others at
    their next interval."""
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
