"""Requests and their durations by method, status code (and route), in a table shared by all
workers.

Each entry of the table is one (route, method, code): a key word, a request
count, a duration sum and histogram buckets. A worker that meets a new pair
claims the first free entry with one compare-and-swap on the key, so every
key has one entry however many workers meet it at once. Cardinality is
bounded: methods outside the standard set are `other`, codes outside
100..599 are `other`, routes are bounded by raindrops.routes, and when the
table is full every new key counts in a last entry labelled (other, other),
route `other`. Entries are never freed: their counts
are the server's totals and survive worker restarts.

Keys read back from shared memory are checked before they become labels; an
entry with a key no writer makes is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

from raindrops import _native
from raindrops.counters import Raindrops
from raindrops.routes import OTHER_ROUTE, ROUTED_OTHER

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
OTHER = "other"
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""prometheus_client's default bounds, in seconds; +Inf is always added."""
BOUNDS_MAX = 32
ENTRIES_MAX = 256
_KEY, _REQUESTS, _SUM_US, _FIRST_BUCKET = 0, 1, 2, 3
ENTRY_FIELDS = _FIRST_BUCKET + BOUNDS_MAX + 1
COUNTERS = ENTRIES_MAX * ENTRY_FIELDS
DESCRIPTORS_MAX = ENTRIES_MAX * 2
"""Native descriptors of a table: one per entry, and one more that also counts server errors."""
_CODE_BITS = 10
_ROUTE_SHIFT = 14  # above the code's 10 bits and the method's 4
_METHOD_INDEX = {method: index for index, method in enumerate(METHODS)}
_OTHER_METHOD = len(METHODS)
_OVERFLOW_KEY = (_OTHER_METHOD + 1) << _CODE_BITS  # (other, other): always the last entry
_US_PER_SECOND = 1_000_000
_STATUS_LINES_MAX = 4096
_NOTHING_CACHED: dict[str | int, _native.CounterPointer] = {}
_NO_NUMBERS: dict[str | int, int] = {}


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


def key_of(method: str, status: str | int, route: int = OTHER_ROUTE) -> int:
    """The table key of (method, status line, route index); never 0, which marks a free entry."""
    method_index = _METHOD_INDEX.get(method, _OTHER_METHOD)
    return route << _ROUTE_SHIFT | (method_index + 1) << _CODE_BITS | _code_of(status)


def labels_of(key: int) -> tuple[int, str, str] | None:
    """(route index, method, code) of a key read from shared memory; None if no writer makes
    that key."""
    route, method_index = key >> _ROUTE_SHIFT, (key >> _CODE_BITS & 0xF) - 1
    code = key & ((1 << _CODE_BITS) - 1)
    if route > ROUTED_OTHER or not 0 <= method_index <= _OTHER_METHOD:
        return None
    if not (code == 0 or 100 <= code <= 599):
        return None
    method = METHODS[method_index] if method_index < _OTHER_METHOD else OTHER
    return route, method, str(code) if code else OTHER


def is_server_error(key: int) -> bool:
    return 500 <= key & ((1 << _CODE_BITS) - 1) <= 599


class SeriesTotals(NamedTuple):
    method: str
    code: str
    requests: int
    buckets: tuple[int, ...]
    """Per bound, then +Inf; not cumulative."""
    sum_seconds: float
    route: str | None = None
    """None when no request of the server had a route; else the route name or `other`."""

    def merged(self, other: SeriesTotals) -> SeriesTotals:
        """The sum of two entries with the same labels (two workers claimed one name)."""
        buckets = tuple(
            mine + theirs for mine, theirs in zip(self.buckets, other.buckets, strict=True)
        )
        return self._replace(
            requests=self.requests + other.requests,
            buckets=buckets,
            sum_seconds=self.sum_seconds + other.sum_seconds,
        )

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
        self._bounds_us = _native.u64_array([_microseconds(bound) for bound in buckets])
        self.descriptors = _native.series_array(DESCRIPTORS_MAX)
        """The prepared descriptors by number (see _prepare), for a Board's `numbered`."""
        self._prepared: dict[int, tuple[int, _native.CounterPointer]] = {}
        self.by_status: dict[str, dict[str | int, _native.CounterPointer]] = {}
        """method -> status -> what pointer() answered: two lookups of interned strings, cheaper
        on the hot path than one of a (method, status) tuple made per request."""
        self.numbered_by_status: dict[str, dict[str | int, int]] = {}
        """method -> status -> what numbered() answered, for the same hot paths."""
        self._cached = 0

    def pointer(
        self, method: str, status: str | int, route: int = OTHER_ROUTE
    ) -> _native.CounterPointer:
        """A prepared pointer to the native descriptor of (method, status) in this process; with
        a route index (raindrops.routes), of (route, method, status)."""
        if route != OTHER_ROUTE:
            return self._prepared_of(key_of(method, status, route))[1]
        pointer = self.by_status.get(method, _NOTHING_CACHED).get(status)
        if pointer is not None:
            return pointer
        pointer = self._prepared_of(key_of(method, status))[1]
        self._cache(self.by_status, method, status, pointer)
        return pointer

    def numbered(self, method: str, status: str | int) -> int:
        """The number of (method, status)'s descriptor, as a request slot's respond takes it
        (_native.request_respond_numbered): (number + 1) << SERIES_NUMBER_SHIFT."""
        numbered = self.numbered_by_status.get(method, _NO_NUMBERS).get(status)
        if numbered is not None:
            return numbered
        number = self._prepared_of(key_of(method, status))[0]
        numbered = (number + 1) << _native.SERIES_NUMBER_SHIFT
        self._cache(self.numbered_by_status, method, status, numbered)
        return numbered

    def _cache(
        self, cache: dict[str, dict[str | int, Any]], method: str, status: str | int, value: Any
    ) -> None:
        if self._cached < _STATUS_LINES_MAX:  # methods and status lines come from outside
            cache.setdefault(method, {})[status] = value
            self._cached += 1

    def _prepared_of(self, key: int) -> tuple[int, _native.CounterPointer]:
        """The number and prepared pointer of key's descriptor; keys that share an entry (the
        overflow entry) share a descriptor unless one counts server errors and one does not."""
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = self._prepare(key)
            self._prepared[key] = prepared  # bounded: routes x methods x codes
        return prepared

    def _prepare(self, key: int) -> tuple[int, _native.CounterPointer]:
        base = self._entry(key)
        server_error = is_server_error(key)
        number = (base - self.first) // ENTRY_FIELDS * 2 + server_error
        if not self.descriptors[number].requests:
            counters = self.counters
            self.descriptors[number] = _native.Series(
                requests=counters.address(base + _REQUESTS),
                errors=counters.address(self._errors_index) if server_error else None,
                sum_us=counters.address(base + _SUM_US),
                first_bucket=counters.address(base + _FIRST_BUCKET),
                stride=counters.address(base + _FIRST_BUCKET + 1)
                - counters.address(base + _FIRST_BUCKET),
                bounds_us=_native.address_of(self._bounds_us),
                bounds=len(self.buckets),
            )
        return number, _native.series_at(self.descriptors, number)  # valid while the table lives

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

    def read(self, values: list[int], routes: dict[int, str]) -> list[SeriesTotals]:
        """The entries in use in a snapshot `values`, in table order, entries with the same
        labels merged; `routes` names the route indexes (raindrops.routes)."""
        width = len(self.buckets) + 1
        found: dict[tuple[int, str, str], SeriesTotals] = {}
        routed = False
        for base in range(self.first, self.first + COUNTERS, ENTRY_FIELDS):
            labels = labels_of(values[base + _KEY]) if values[base + _KEY] else None
            if labels is None:
                continue
            routed = routed or labels[0] != OTHER_ROUTE
            buckets = tuple(values[base + _FIRST_BUCKET : base + _FIRST_BUCKET + width])
            entry = SeriesTotals(
                labels[1],
                labels[2],
                values[base + _REQUESTS],
                buckets,
                values[base + _SUM_US] / _US_PER_SECOND,
            )
            previous = found.get(labels)
            found[labels] = entry if previous is None else previous.merged(entry)
        if not routed:
            return list(found.values())
        named: dict[tuple[str, str, str], SeriesTotals] = {}
        for (route, _, _), entry in found.items():
            name = routes.get(route, OTHER)
            key = (name, entry.method, entry.code)
            previous = named.get(key)
            entry = entry._replace(route=name)
            named[key] = entry if previous is None else previous.merged(entry)
        return list(named.values())
