"""Statistics of one number: count, sum, sum of squares, min, max and log2 buckets.

The Watcher keeps two per listener (active and queued). They live in a
store of 64-bit counters: the Watcher's shared segment (raindrops.watcher.
shared), where the one process that samples writes them and every worker
reads them, or a private list. A single writer is what lets a sample update
several fields without atomic read-modify-write instructions (which
raindrops.histogram needs, since every worker of the middleware observes
into one histogram); readers get a consistent copy from the segment's
sequence lock. Both report a HistogramSnapshot with the same buckets (bucket
k holds the values of bit length k), so one renderer prints either in
raindrops' text format.
"""

from __future__ import annotations

import threading
from typing import Protocol

from raindrops.counters import MAX
from raindrops.histogram import HistogramSnapshot

BUCKETS = 65
"""Bit lengths 0..64: every unsigned 64-bit value has a bucket of its own."""
_COUNT, _SUM, _SUM_SQUARES, _MIN, _MAX = range(5)
_FIRST_BUCKET = 5
FIELDS = _FIRST_BUCKET + BUCKETS
"""Counters an Aggregate takes in its store."""


class Store(Protocol):
    """Where statistics live: a Raindrops, or a list for private ones."""

    def __getitem__(self, index: int, /) -> int: ...

    def __setitem__(self, index: int, value: int, /) -> None: ...


class Aggregate:
    """Statistics of non-negative integer samples, in `store[first : first + FIELDS]`.

    One thread of one process writes (add, reset); the lock serializes the
    threads of this process only. Sums wrap modulo 2**64 as the store's
    counters do (raindrops.histogram's do too): a private store wraps the
    same way, so where the numbers live never changes them.
    """

    __slots__ = ("_store", "_first", "_lock")

    def __init__(self, store: Store | None = None, first: int = 0) -> None:
        self._store: Store = [0] * FIELDS if store is None else store
        self._first = first
        self._lock = threading.Lock()

    def add(self, value: int) -> None:
        """Records one sample, an int in 0..raindrops.MAX."""
        if value.__class__ is not int or not 0 <= value <= MAX:
            raise ValueError(f"sample must be an int in 0..{MAX}, not {value!r}")
        store, first = self._store, self._first
        with self._lock:
            count = store[first + _COUNT]
            store[first + _SUM] = (store[first + _SUM] + value) & MAX
            store[first + _SUM_SQUARES] = (store[first + _SUM_SQUARES] + value * value) & MAX
            if count == 0 or value < store[first + _MIN]:
                store[first + _MIN] = value
            if count == 0 or value > store[first + _MAX]:
                store[first + _MAX] = value
            bucket = first + _FIRST_BUCKET + value.bit_length()
            store[bucket] = (store[bucket] + 1) & MAX
            store[first + _COUNT] = (count + 1) & MAX

    def reset(self) -> None:
        """Forgets every sample."""
        store, first = self._store, self._first
        with self._lock:
            for index in range(first, first + FIELDS):
                store[index] = 0

    @property
    def max(self) -> int | None:
        """The largest sample since the last reset, None before the first one."""
        store, first = self._store, self._first
        return store[first + _MAX] if store[first + _COUNT] else None

    def snapshot(self) -> HistogramSnapshot:
        """A copy of every field (consistent across processes under the segment's sequence
        lock, across this process's threads under the lock)."""
        store, first = self._store, self._first
        with self._lock:
            values = [store[index] for index in range(first, first + FIELDS)]
        count = values[_COUNT]
        return HistogramSnapshot(
            count=count,
            sum=values[_SUM],
            sum_squares=values[_SUM_SQUARES],
            min=values[_MIN] if count else None,
            max=values[_MAX] if count else None,
            buckets=tuple(values[_FIRST_BUCKET:]),
        )


__all__ = ["BUCKETS", "FIELDS", "Aggregate", "Store"]
