"""Requests and their durations by method and status code, in a table shared by all workers.

Each entry of the table is one (method, code) pair: a key word, a request
count, a duration sum and histogram buckets. A worker that meets a new pair
claims the first free entry with one compare-and-swap on the key, so every
pair has one entry however many workers meet it at once. Cardinality is
bounded: methods outside the standard set are `other`, codes outside
100..599 are `other`, and when the table is full every new pair counts in a
last entry labelled (other, other). Entries are never freed: their counts
are the server's totals and survive worker restarts.

Keys read back from shared memory are checked before they become labels; an
entry with a key no writer makes is skipped.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from raindrops import _native
from raindrops.counters import Raindrops

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
OTHER = "other"
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""prometheus_client's default bounds, in seconds; +Inf is always added."""
BOUNDS_MAX = 32
ENTRIES_MAX = 64
_KEY, _REQUESTS, _SUM_US, _FIRST_BUCKET = 0, 1, 2, 3
ENTRY_FIELDS = _FIRST_BUCKET + BOUNDS_MAX + 1
COUNTERS = ENTRIES_MAX * ENTRY_FIELDS
_CODE_BITS = 10
_METHOD_INDEX = {method: index for index, method in enumerate(METHODS)}
_OTHER_METHOD = len(METHODS)
_OVERFLOW_KEY = (_OTHER_METHOD + 1) << _CODE_BITS  # (other, other): always the last entry
_US_PER_SECOND = 1_000_000
_STATUS_LINES_MAX = 4096


def checked_buckets(buckets: Iterable[float]) -> tuple[float, ...]:
    """Histogram bounds in seconds: finite, ascending, from 1 us, at most BOUNDS_MAX of them (a
    trailing +Inf is dropped: it is always there)."""
    try:
        bounds = tuple(float(bound) for bound in buckets)
    except (TypeError, ValueError):
        raise ValueError(f"buckets must be numbers of seconds, not {buckets!r}") from None
    if bounds and bounds[-1] == math.inf:
        bounds = bounds[:-1]
    if not 0 < len(bounds) <= BOUNDS_MAX:
        raise ValueError(f"buckets: 1 to {BOUNDS_MAX} finite bounds, not {len(bounds)}: {bounds}")
    for bound in bounds:
        if not math.isfinite(bound) or bound < 1e-6:
            raise ValueError(f"bucket bound {bound!r} is not a finite number of seconds >= 1e-06")
    micros = [_microseconds(bound) for bound in bounds]
    if any(later <= earlier for earlier, later in zip(micros, micros[1:], strict=False)):
        raise ValueError(f"buckets must ascend (at 1 us resolution): {bounds}")
    return bounds


def _microseconds(seconds: float) -> int:
    return round(seconds * _US_PER_SECOND)


def _code_of(status: str | int) -> int:
    """The code of a status line (WSGI) or status (ASGI) if it is 100..599, else 0 (`other`)."""
    if isinstance(status, int):
        return status if 100 <= status <= 599 else 0
    code = status[:3]
    if len(code) == 3 and code.isdigit() and 100 <= int(code) <= 599:
        return int(code)
    return 0


def key_of(method: str, status: str | int) -> int:
    """The table key of (method, status line); never 0, which marks a free entry."""
    method_index = _METHOD_INDEX.get(method, _OTHER_METHOD)
    return (method_index + 1) << _CODE_BITS | _code_of(status)


def labels_of(key: int) -> tuple[str, str] | None:
    """(method, code) of a key read from shared memory; None if no writer makes that key."""
    method_index, code = (key >> _CODE_BITS) - 1, key & ((1 << _CODE_BITS) - 1)
    if not 0 <= method_index <= _OTHER_METHOD or not (code == 0 or 100 <= code <= 599):
        return None
    method = METHODS[method_index] if method_index < _OTHER_METHOD else OTHER
    return method, str(code) if code else OTHER


def is_server_error(key: int) -> bool:
    return 500 <= key & ((1 << _CODE_BITS) - 1) <= 599


class SeriesTotals(NamedTuple):
    method: str
    code: str
    requests: int
    buckets: tuple[int, ...]
    """Per bound, then +Inf; not cumulative."""
    sum_seconds: float

    def cumulative(self) -> list[int]:
        """Counts at or below each bound, then the +Inf count (Prometheus' `le`)."""
        total, counts = 0, []
        for count in self.buckets:
            total += count
            counts.append(total)
        return counts


class SeriesTable:
    """The table at `first` in `counters`; `errors` is the counter of 5xx responses."""

    def __init__(
        self, counters: Raindrops, first: int, errors_index: int, buckets: tuple[float, ...]
    ) -> None:
        self.counters = counters
        self.first = first
        self.buckets = buckets
        self._errors_index = errors_index
        self._bounds_us = (ctypes.c_uint64 * len(buckets))(*map(_microseconds, buckets))
        self._prepared: dict[int, tuple[_native.Series, _native.CounterPointer]] = {}
        self._by_status: dict[tuple[str, str | int], _native.CounterPointer] = {}

    def pointer(self, method: str, status: str | int) -> _native.CounterPointer:
        """A prepared pointer to the native descriptor of (method, status) in this process."""
        pointer = self._by_status.get((method, status))
        if pointer is not None:
            return pointer
        key = key_of(method, status)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = self._prepare(key)
            self._prepared[key] = prepared  # at most ENTRIES_MAX keys
        if len(self._by_status) < _STATUS_LINES_MAX:  # status lines are the app's: bounded here
            self._by_status[(method, status)] = prepared[1]
        return prepared[1]

    def _prepare(self, key: int) -> tuple[_native.Series, _native.CounterPointer]:
        base = self._entry(key)
        counters = self.counters
        series = _native.Series(
            requests=counters.address(base + _REQUESTS),
            errors=counters.address(self._errors_index) if is_server_error(key) else None,
            sum_us=counters.address(base + _SUM_US),
            first_bucket=counters.address(base + _FIRST_BUCKET),
            stride=counters.address(base + _FIRST_BUCKET + 1)
            - counters.address(base + _FIRST_BUCKET),
            bounds_us=ctypes.addressof(self._bounds_us),
            bounds=len(self.buckets),
        )
        return series, _native.descriptor_pointer(series)  # valid while `series` lives

    def _entry(self, key: int) -> int:
        """The base index of key's entry, claimed if new; the last entry when the table is full."""
        last = self.first + (ENTRIES_MAX - 1) * ENTRY_FIELDS
        if key != _OVERFLOW_KEY:
            for base in range(self.first, last, ENTRY_FIELDS):
                pointer = _native.CounterPointer(self.counters.address(base + _KEY))
                found = _native.compare_swap(pointer, 0, key)
                if found in (0, key):
                    return base
        pointer = _native.CounterPointer(self.counters.address(last + _KEY))
        _native.compare_swap(pointer, 0, _OVERFLOW_KEY)
        return last

    def read(self, values: list[int]) -> Iterator[SeriesTotals]:
        """The entries in use in a snapshot `values`, in table order."""
        width = len(self.buckets) + 1
        for base in range(self.first, self.first + COUNTERS, ENTRY_FIELDS):
            labels = labels_of(values[base + _KEY]) if values[base + _KEY] else None
            if labels is None:
                continue
            buckets = tuple(values[base + _FIRST_BUCKET : base + _FIRST_BUCKET + width])
            yield SeriesTotals(
                *labels, values[base + _REQUESTS], buckets, values[base + _SUM_US] / _US_PER_SECOND
            )
