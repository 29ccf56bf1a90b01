"""Route names shared by all workers, so that a request's series can carry a `route` label.

A route is whatever the middleware's `route=` callable names (a URL rule such
as "/users/<id>", not the path itself). Each worker that meets a new route
claims the first free entry of a bounded table with one compare-and-swap on
its header (state, byte length, CRC-32 of the UTF-8 name), writes the name's
words, then marks the entry ready. Two workers claiming one name at once may
each get an entry: readers merge entries of the same name. Routes past the
table's size, names too long or not text, and anything a reader cannot
validate are the route `other`.

Nothing read back is trusted: an entry counts only when its header is ready,
its length within bounds and its bytes match the CRC and decode as UTF-8.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from typing import Any

from raindrops import _native
from raindrops.counters import Raindrops

ROUTES_MAX = 64
ROUTE_BYTES_MAX = 128
OTHER_ROUTE = 0
"""The index of series without a route (no route= given, or the full table's last entry)."""
ROUTED_OTHER = ROUTES_MAX + 1
"""The index of the route `other`: route= named nothing usable, or the table is full."""
_WORD_BYTES = 8
ROUTE_FIELDS = 1 + ROUTE_BYTES_MAX // _WORD_BYTES
COUNTERS = ROUTES_MAX * ROUTE_FIELDS
_CLAIMED, _READY = 1, 2
_STATE_SHIFT, _LENGTH_SHIFT = 62, 32
_CACHE_MAX = 4096
_log = logging.getLogger(__name__)
_failures: list[str] = []


def route_name(route: Callable[[Any], object], request: Any) -> object:
    """`route(request)` (request: a WSGI environ or an ASGI scope), or None (the route
    `other`) if it raises: logged once per process, never raised into a request."""
    try:
        return route(request)
    except Exception as error:
        if not _failures:
            _failures.append(type(error).__name__)
            _log.warning(
                "raindrops: route= raised %s: %s; counted as `other`", type(error).__name__, error
            )
        return None


def _header(state: int, data: bytes) -> int:
    return state << _STATE_SHIFT | len(data) << _LENGTH_SHIFT | zlib.crc32(data)


def encoded(route: object) -> bytes | None:
    """The stored form of a route name; None for what is not a non-empty str that fits."""
    if not isinstance(route, str) or not route:
        return None
    try:
        data = route.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return data if len(data) <= ROUTE_BYTES_MAX else None


class RouteTable:
    """The table at `first` in `counters`."""

    def __init__(self, counters: Raindrops, first: int) -> None:
        self.counters = counters
        self.first = first
        self._indexes: dict[object, int] = {}

    def index(self, route: object) -> int:
        """1 + the entry of `route` (claimed if new), or ROUTED_OTHER; cached in this process."""
        try:
            found = self._indexes.get(route)
        except TypeError:  # an unhashable "route"
            return ROUTED_OTHER
        if found is not None:
            return found
        data = encoded(route)
        index = ROUTED_OTHER if data is None else self._find_or_claim(data)
        if len(self._indexes) < _CACHE_MAX:
            self._indexes[route] = index
        return index

    def _find_or_claim(self, data: bytes) -> int:
        counters = self.counters
        ready = _header(_READY, data)
        for entry in range(ROUTES_MAX):
            base = self.first + entry * ROUTE_FIELDS
            header = counters[base]
            if header == 0:
                pointer = _native.CounterPointer(counters.address(base))
                header = _native.compare_swap(pointer, 0, _header(_CLAIMED, data))
                if header == 0:
                    self._publish(base, data, ready)
                    return entry + 1
            if header == ready and self._name_bytes(base, len(data)) == data:
                return entry + 1
        return ROUTED_OTHER

    def _publish(self, base: int, data: bytes, ready: int) -> None:
        padded = data.ljust(-(-len(data) // _WORD_BYTES) * _WORD_BYTES, b"\0")
        for word in range(len(padded) // _WORD_BYTES):
            chunk = padded[word * _WORD_BYTES : (word + 1) * _WORD_BYTES]
            self.counters[base + 1 + word] = int.from_bytes(chunk, "little")
        self.counters[base] = ready

    def _name_bytes(self, base: int, length: int) -> bytes:
        words = -(-length // _WORD_BYTES)
        raw = b"".join(
            self.counters[base + 1 + word].to_bytes(_WORD_BYTES, "little") for word in range(words)
        )
        return raw[:length]

    def names(self, values: list[int]) -> dict[int, str]:
        """Index -> name of every valid entry in a snapshot `values` of the segment."""
        names = {}
        for entry in range(ROUTES_MAX):
            base = self.first + entry * ROUTE_FIELDS
            name = _valid_name(values[base : base + ROUTE_FIELDS])
            if name is not None:
                names[entry + 1] = name
        return names


def _valid_name(words: list[int]) -> str | None:
    header = words[0]
    length = header >> _LENGTH_SHIFT & ((1 << (_STATE_SHIFT - _LENGTH_SHIFT)) - 1)
    if header >> _STATE_SHIFT != _READY or not 0 < length <= ROUTE_BYTES_MAX:
        return None
    raw = b"".join(word.to_bytes(_WORD_BYTES, "little") for word in words[1:])[:length]
    if zlib.crc32(raw) != header & 0xFFFFFFFF:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
