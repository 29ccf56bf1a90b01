"""The middleware's shared counters: per-process slots plus server-wide totals.

Each worker process claims a slot (its pid and start time, then its own
`calling` and `writing`) with a compare-and-swap on the pid, lock-free.
Readers add up the slots of live processes only, so a worker killed in the
middle of a request stops counting at once (raindrops' `calling` stays raised
forever). A slot whose process is gone is taken over by the next claimer, who
zeroes it first. Totals (requests, errors, busy time) and the request-duration
histogram are shared counters that survive worker restarts.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from raindrops import _native
from raindrops.counters import Raindrops
from raindrops.histogram import HistogramSnapshot, SharedHistogram

SLOTS_MAX = 256
DURATION_BUCKETS = 32  # microseconds: the last finite bound is 2**31 us, about 36 minutes
_SLOT_PID, _SLOT_START, _SLOT_CALLING, _SLOT_WRITING = 0, 1, 2, 3
_SLOT_FIELDS = 4
# Slots come first: a snapshot reads in index order, gauges before totals
# (the native side moves totals before gauges), so no read undercounts.
_FIRST_SLOT = 0
_REQUESTS = SLOTS_MAX * _SLOT_FIELDS
_ERRORS, _BUSY_US, _HISTOGRAM = _REQUESTS + 1, _REQUESTS + 2, _REQUESTS + 3
COUNTERS = _HISTOGRAM + SharedHistogram.slots(DURATION_BUCKETS)


class _Process:
    """This process's pid, kept current across fork without a getpid() syscall per request."""

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid = os.getpid()

    def refresh(self) -> None:
        self.pid = os.getpid()


PROCESS = _Process()
os.register_at_fork(after_in_child=PROCESS.refresh)


class Totals(NamedTuple):
    calling: int
    writing: int
    workers: int
    requests: int
    errors: int
    busy_seconds: float
    durations_us: HistogramSnapshot


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks, or None when it is gone or a zombie.

    Comparing it with the value recorded in a slot tells a live worker from a
    new process that happens to reuse a dead worker's pid.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


class Scoreboard:
    """Counters of one server (or one mount of the middleware), shared by its workers."""

    def __init__(self, *, name: str | None = None, mode: int = 0o600) -> None:
        self.counters = Raindrops(COUNTERS, name=name, mode=mode)
        self.durations_us = SharedHistogram(self.counters, _HISTOGRAM, DURATION_BUCKETS)
        self._board: _native.Board | None = None
        self._board_pointer: _native.CounterPointer | None = None
        self._board_pid = 0

    @property
    def name(self) -> str | None:
        return self.counters.name

    def board(self) -> _native.CounterPointer:
        """This process's prepared Board pointer; claims a slot on first use after a fork."""
        pointer = self._board_pointer
        if self._board_pid == PROCESS.pid and pointer is not None:
            return pointer
        return self._claim()

    def _claim(self) -> _native.CounterPointer:
        pid = PROCESS.pid
        start = _start_ticks(pid) or 0
        slot = self._claim_slot(pid, start)
        counters = self.counters
        base = _FIRST_SLOT + slot * _SLOT_FIELDS
        board = _native.Board(
            calling=counters._pointer(base + _SLOT_CALLING).value,
            writing=counters._pointer(base + _SLOT_WRITING).value,
            requests=counters._pointer(_REQUESTS).value,
            errors=counters._pointer(_ERRORS).value,
            busy_us=counters._pointer(_BUSY_US).value,
            durations_us=self.durations_us.descriptor,
        )
        self._board, self._board_pointer, self._board_pid = board, _native.descriptor_pointer(board), pid
        return self._board_pointer

    def _claim_slot(self, pid: int, start: int) -> int:
        counters = self.counters
        for slot in range(SLOTS_MAX):
            base = _FIRST_SLOT + slot * _SLOT_FIELDS
            owner_pointer = counters._pointer(base + _SLOT_PID)
            owner = _native.compare_swap(owner_pointer, 0, pid)
            if owner == pid and counters[base + _SLOT_START] == start:
                return slot  # already ours: another scoreboard object of this process
            if owner not in (0, pid):
                if _start_ticks(owner) == counters[base + _SLOT_START]:
                    continue  # a live worker's slot
                if _native.compare_swap(owner_pointer, owner, pid) != owner:
                    continue  # another claimer took this dead slot first
            counters[base + _SLOT_CALLING] = 0
            counters[base + _SLOT_WRITING] = 0
            counters[base + _SLOT_START] = start
            return slot
        raise RuntimeError(f"all {SLOTS_MAX} worker slots of the scoreboard are held by live processes")

    def totals(self) -> Totals:
        values = self.counters.to_list()
        calling = writing = workers = 0
        for slot in range(SLOTS_MAX):
            base = _FIRST_SLOT + slot * _SLOT_FIELDS
            pid = values[base + _SLOT_PID]
            if pid == 0 or _start_ticks(pid) != values[base + _SLOT_START]:
                continue
            workers += 1
            calling += values[base + _SLOT_CALLING]
            writing += values[base + _SLOT_WRITING]
        return Totals(
            calling=calling,
            writing=writing,
            workers=workers,
            requests=values[_REQUESTS],
            errors=values[_ERRORS],
            busy_seconds=values[_BUSY_US] / 1e6,
            durations_us=self.durations_us.snapshot(values),
        )

    def close(self) -> None:
        self.counters.close()
