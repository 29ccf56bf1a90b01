"""Statistics of samples kept in this process: count, sum, min, max and log2 buckets.

The Watcher keeps two per listener (active and queued), fed by its sampler
thread and read by request threads. Samples are few (one per listener per
interval), so a lock is cheap here; what several processes must share lives
in raindrops.histogram instead. Both report a HistogramSnapshot with the same
buckets (bucket k holds the values of bit length k), so one renderer prints
either in raindrops' text format.
"""

from __future__ import annotations

import threading

from raindrops.counters import MAX
from raindrops.histogram import HistogramSnapshot

BUCKETS = 65
"""Bit lengths 0..64: every unsigned 64-bit value has a bucket of its own."""


class Aggregate:
    """Thread-safe statistics of non-negative integer samples."""

    __slots__ = ("_lock", "_count", "_sum", "_sum_squares", "_min", "_max", "_buckets")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = self._sum = self._sum_squares = 0
        self._min: int | None = None
        self._max: int | None = None
        self._buckets = [0] * BUCKETS

    def add(self, value: int) -> None:
        """Records one sample, an int in 0..raindrops.MAX."""
        if value.__class__ is not int or not 0 <= value <= MAX:
            raise ValueError(f"sample must be an int in 0..{MAX}, not {value!r}")
        with self._lock:
            self._count += 1
            self._sum += value
            self._sum_squares += value * value
            self._min = value if self._min is None or value < self._min else self._min
            self._max = value if self._max is None or value > self._max else self._max
            self._buckets[value.bit_length()] += 1

    def reset(self) -> None:
        """Forgets every sample."""
        with self._lock:
            self._count = self._sum = self._sum_squares = 0
            self._min = self._max = None
            self._buckets = [0] * BUCKETS

    @property
    def max(self) -> int | None:
        """The largest sample since the last reset, None before the first one."""
        return self._max

    def snapshot(self) -> HistogramSnapshot:
        """A consistent copy: all fields from the same moment."""
        with self._lock:
            return HistogramSnapshot(
                count=self._count,
                sum=self._sum,
                sum_squares=self._sum_squares,
                min=self._min,
                max=self._max,
                buckets=tuple(self._buckets),
            )


__all__ = ["BUCKETS", "Aggregate"]
