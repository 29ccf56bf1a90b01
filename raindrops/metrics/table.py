"""A metric's segment: a stamp of its definition, then the table of its label sets.

Every word is a counter of a raindrops segment (its own cache line). Word 0
holds the definition's fingerprint (set by the first process that binds the
segment, checked by the others); word 1 is reserved; a Gauge keeps its
process slots next; the label table follows. Each entry of the table is

    header | value words (the metric kind's) | label words

The header holds a state (claimed or ready), the byte length of the label
values and their CRC-32. A process that meets a label set nobody has yet
claims the first free header with one compare-and-swap (putting the length
in it, so that readers can step over an entry still being written), writes
the label words (8 bytes each), then marks the header ready. Entries are
never freed: their values are the server's totals.

Nothing read back is trusted: a header must have a known state and a length
within LABEL_BYTES_MAX, an entry must end inside the segment, and the label
bytes must match their CRC, parse as length-prefixed UTF-8 values and count
as many values as the metric has label names; an entry that fails is skipped
(a bad header ends the walk, since what follows it cannot be found).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from raindrops import _native
from raindrops.counters import Raindrops

LAYOUT_VERSION = 1
FINGERPRINT = 0
HEADER_WORDS = 2
LABEL_BYTES_MAX = 1024
"""Bytes of one label set as stored: each value's UTF-8 plus 2 bytes of length."""
WORD_BYTES = 8
CLAIMED, READY = 1, 2
_STATE_SHIFT = 62
_LENGTH_SHIFT = 32
_LENGTH_MASK = (1 << 30) - 1
_CRC_MASK = (1 << 32) - 1
_VALUE_LENGTH_BYTES = 2
_GROWTH_WORDS = 64
"""Segments grow by at least this many words (a page at a 64-byte stride)."""
_CLAIM_ATTEMPTS = 64
_PENDING_MAX = 1024
"""Claimed entries this process waits to see ready; one a claimer died in stays claimed."""


class TableFull(RuntimeError):
    """No entry could be claimed (the table is corrupt, or every attempt lost a race)."""


def words_of(length: int) -> int:
    return -(-length // WORD_BYTES)


def header(state: int, length: int, crc: int) -> int:
    return state << _STATE_SHIFT | length << _LENGTH_SHIFT | crc


def encode(values: tuple[str, ...], metric: str) -> bytes:
    """Label values as stored: each one's UTF-8 after its length (2 bytes, little-endian)."""
    parts = []
    for value in values:
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"label value {value!r} of {metric!r} cannot be written as UTF-8"
            ) from None
        parts.append(len(data).to_bytes(_VALUE_LENGTH_BYTES, "little") + data)
    encoded = b"".join(parts)
    if len(encoded) > LABEL_BYTES_MAX:
        shown = values if len(repr(values)) <= 200 else repr(values)[:200] + "..."
        raise ValueError(
            f"label values of {metric!r} take {len(encoded)} bytes, at most {LABEL_BYTES_MAX}: "
            f"{shown}"
        )
    return encoded


def decode(data: bytes, count: int) -> tuple[str, ...] | None:
    """The label values in `data` if it holds exactly `count` well-formed ones, else None."""
    values = []
    position = 0
    for _ in range(count):
        start = position + _VALUE_LENGTH_BYTES
        if start > len(data):
            return None
        end = start + int.from_bytes(data[position:start], "little")
        if end > len(data):
            return None
        try:
            values.append(data[start:end].decode("utf-8"))
        except UnicodeDecodeError:
            return None
        position = end
    return tuple(values) if position == len(data) else None


def label_words(data: bytes) -> list[int]:
    padded = data + bytes(-len(data) % WORD_BYTES)
    return [
        int.from_bytes(padded[index : index + WORD_BYTES], "little")
        for index in range(0, len(padded), WORD_BYTES)
    ]


@dataclass(frozen=True)
class Layout:
    """Where things are in one metric's segment; `details` tells apart metrics of one name and
    kind with other buckets, modes or limits."""

    kind: str
    name: str
    labelnames: tuple[str, ...]
    table_first: int
    value_words: int
    details: str

    def entry_words(self, length: int) -> int:
        return 1 + self.value_words + words_of(length)

    @property
    def definition(self) -> str:
        """What names the segment (with the master and the working directory)."""
        fields = (str(LAYOUT_VERSION), self.kind, self.name, ",".join(self.labelnames))
        return "\0".join((*fields, self.details))

    @property
    def fingerprint(self) -> int:
        digest = hashlib.blake2b(self.definition.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "little") | 1 << 63


class Entry(NamedTuple):
    base: int
    end: int
    ready: bool
    labels: tuple[str, ...] | None
    """None while claimed, or when the label bytes fail validation."""


def _labels(
    read: Callable[[int], int], first: int, length: int, crc: int, count: int
) -> tuple[str, ...] | None:
    data = b"".join(
        read(first + index).to_bytes(WORD_BYTES, "little") for index in range(words_of(length))
    )[:length]
    if zlib.crc32(data) != crc:
        return None
    return decode(data, count)


def walk(read: Callable[[int], int], layout: Layout, start: int, size: int) -> Iterator[Entry]:
    """The entries from `start` on, in a segment of `size` words read through `read`."""
    position = start
    while position < size:  # bounded by size: every entry takes at least one word
        word = read(position)
        if word == 0:
            return
        state, length = word >> _STATE_SHIFT, word >> _LENGTH_SHIFT & _LENGTH_MASK
        if state not in (CLAIMED, READY) or length > LABEL_BYTES_MAX:
            return
        end = position + layout.entry_words(length)
        if end > size:
            return
        labels = None
        if state == READY:
            first_label = position + 1 + layout.value_words
            count = len(layout.labelnames)
            labels = _labels(read, first_label, length, word & _CRC_MASK, count)
        yield Entry(position, end, state == READY, labels)
        position = end


class MetricSegment:
    """One metric's shared memory: what segments.ServerWide makes (`name=None`: anonymous)."""

    def __init__(self, layout: Layout, *, name: str | None = None) -> None:
        self.layout = layout
        self.counters = Raindrops(layout.table_first + _GROWTH_WORDS, name=name)

    @property
    def name(self) -> str | None:
        return self.counters.name

    def stamp(self) -> None:
        """Puts the definition's fingerprint in a new segment, or checks the one there."""
        fingerprint = self.layout.fingerprint
        found = _native.compare_swap(self.pointer(FINGERPRINT), 0, fingerprint)
        if found not in (0, fingerprint):
            raise ValueError(
                f"segment {self.name!r} holds another definition than {self.layout.name!r}"
            )

    def pointer(self, index: int) -> _native.CounterPointer:
        return _native.CounterPointer(self.counters.address(index))

    def grow(self, size: int) -> None:
        """Makes the segment at least `size` words long, for every process (never shrinks it)."""
        if len(self.counters) < size:
            target = size + _GROWTH_WORDS - size % _GROWTH_WORDS
            self.counters._resize(target, grow_only=True)

    def close(self) -> None:
        self.counters.close()


class Table:
    """This process's index of a segment's label table: label values -> entry base.

    Two processes that meet a new label set at once may each claim an entry
    for it; both count, and readers add them up. The first ready entry is the
    one this process uses.
    """

    def __init__(self, segment: MetricSegment) -> None:
        self.segment = segment
        self.layout = segment.layout
        self.entries: dict[tuple[str, ...], int] = {}
        self._next = segment.layout.table_first
        self._pending: list[int] = []

    def refresh(self) -> int:
        """Indexes the entries that became ready; returns where the table ends."""
        counters = self.segment.counters
        size = len(counters)
        read = counters.__getitem__
        waiting = self._pending
        self._pending = []
        for base in waiting:
            self._note(next(walk(read, self.layout, base, size), None), base)
        for entry in walk(read, self.layout, self._next, size):
            self._note(entry, entry.base)
            self._next = entry.end
        return self._next

    def _note(self, entry: Entry | None, base: int) -> None:
        if entry is None:
            return
        if entry.labels is not None:
            self.entries.setdefault(entry.labels, entry.base)
        elif not entry.ready and len(self._pending) < _PENDING_MAX:
            self._pending.append(base)

    def claim(self, labels: tuple[str, ...], encoded: bytes, metric: str) -> int:
        """The base of `labels`' entry (`encoded` as encode() made it): found, or claimed at the
        end of the table."""
        words = self.layout.entry_words(len(encoded))
        claimed = header(CLAIMED, len(encoded), 0)
        for _ in range(_CLAIM_ATTEMPTS):  # a failed attempt means another process claimed there
            end = self.refresh()
            found = self.entries.get(labels)
            if found is not None:
                return found
            self.segment.grow(end + words)
            if _native.compare_swap(self.segment.pointer(end), 0, claimed) == 0:
                self._publish(end, encoded)
                self.entries[labels] = end
                self._next = end + words
                return end
        raise TableFull(f"no entry of {metric!r} could be claimed for {labels!r}")

    def _publish(self, base: int, encoded: bytes) -> None:
        counters = self.segment.counters
        first = base + 1 + self.layout.value_words
        for index, word in enumerate(label_words(encoded)):
            counters[first + index] = word
        counters[base] = header(READY, len(encoded), zlib.crc32(encoded))
