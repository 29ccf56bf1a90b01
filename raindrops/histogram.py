"""Histograms in shared memory, updated lock-free by every process.

Buckets are powers of two (bucket k holds the values whose bit length is k:
0, 1, 2..3, 4..7, ...), which is what raindrops' aggregates print and what a
Prometheus histogram needs; alongside them the count, sum, sum of squares,
min and max are kept, so no sample is lost or approximated away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from raindrops import _native
from raindrops.counters import MAX, SIZE, Raindrops

# count, sum, sum of squares, ~min, max (zig/histogram.zig)
FIELDS_BEFORE_BUCKETS = _native.mirrored("fields_before_buckets", 5)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    count: int
    sum: int
    sum_squares: int
    min: int | None
    max: int | None
    buckets: tuple[int, ...]

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @property
    def std_dev(self) -> float:
        """Sample standard deviation (n - 1), as raindrops' aggregates report it."""
        if self.count < 2:
            return 0.0
        variance = (self.sum_squares - self.sum * self.sum / self.count) / (self.count - 1)
        return math.sqrt(max(variance, 0.0))

    @staticmethod
    def upper_bound(bucket: int) -> int:
        """The largest value bucket `bucket` holds."""
        return (1 << bucket) - 1

    def cumulative(self) -> list[tuple[int, int]]:
        """(upper bound, samples <= it) per bucket but the last, which is +Inf."""
        running = 0
        pairs = []
        for bucket, count in enumerate(self.buckets[:-1]):
            running += count
            pairs.append((self.upper_bound(bucket), running))
        return pairs


class SharedHistogram:
    """A histogram living in `counters[first : first + slots(buckets)]`."""

    def __init__(self, counters: Raindrops, first: int, buckets: int) -> None:
        if not 2 <= buckets <= 65:
            raise ValueError(f"buckets must be between 2 and 65, not {buckets}")
        if first < 0 or first + self.slots(buckets) > counters.size:
            raise ValueError(f"a histogram of {buckets} buckets does not fit at counter {first}")
        self._counters = counters
        self._first = first
        self._buckets = buckets
        self._descriptor = _native.Histogram(counters.address(first), SIZE, buckets)
        self._pointer = _native.descriptor_pointer(self._descriptor)

    @staticmethod
    def slots(buckets: int) -> int:
        return FIELDS_BEFORE_BUCKETS + buckets

    @property
    def descriptor(self) -> _native.Histogram:
        return self._descriptor

    def observe(self, value: int) -> None:
        """Records one sample (a non-negative int) atomically."""
        if value.__class__ is not int or not 0 <= value <= MAX:
            raise ValueError(f"histogram sample must be an int in 0..{MAX}, not {value!r}")
        _native.histogram_observe(self._pointer, value)

    def snapshot(self, counters: list[int] | None = None) -> HistogramSnapshot:
        """Reads the histogram, from `counters` (a to_list() already taken) when given."""
        every = self._counters.to_list() if counters is None else counters
        values = every[self._first : self._first + self.slots(self._buckets)]
        count, total, squares, min_complement, maximum = values[:FIELDS_BEFORE_BUCKETS]
        return HistogramSnapshot(
            count=count,
            sum=total,
            sum_squares=squares,
            min=(MAX - min_complement) if count else None,
            max=maximum if count else None,
            buckets=tuple(values[FIELDS_BEFORE_BUCKETS:]),
        )
