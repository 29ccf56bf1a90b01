"""Gauges across processes: one value per process, combined as prometheus_client's modes say.

A Gauge's segment holds `processes` slots (raindrops.slots.ProcessSlots:
an owner word claimed by one compare-and-swap, then a `ready` word), and
each label set's entry holds one value per slot: column k is the process
that holds slot k. A process claims its slot at its first use of the
gauge. Its entries also hold a bitmap of the columns whose process has
that label set (a process joins a series by using it, as a child created
by labels() does in prometheus_client), and for the modes that keep
what dead processes left, a retained value.

Readers combine the columns of each label set:
- live modes (livesum, livemax, livemin, liveall, livemostrecent) count the
  columns of live processes only: a dead worker drops out at the next read;
- sum, max, min and all also count the columns of dead processes, as
  prometheus_client keeps their files. When a new process takes over a dead
  one's slot it first folds the dead column into the retained value (sum:
  added; max, min: kept if larger, smaller; see zig/float.zig) and clears it,
  then marks the slot ready; `all` shows a dead process's series (with its
  pid) until its slot is taken over, and then no more.
- mostrecent keeps one value and its time per label set, shared by every
  process: the last set() wins. livemostrecent keeps them per process and
  shows the most recent of the live ones.
A read while a slot is being taken over may miss or count twice what the
dead process left, once; the fold itself is exact.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from raindrops import _native
from raindrops._process import PROCESS, start_ticks
from raindrops.metrics.table import HEADER_WORDS, Layout, MetricSegment, TableFull, walk
from raindrops.slots import CLAIMING, PID_BITS, ProcessSlots

MODES = (
    "all",
    "liveall",
    "min",
    "livemin",
    "max",
    "livemax",
    "sum",
    "livesum",
    "mostrecent",
    "livemostrecent",
)
PID_MODES = ("all", "liveall")
"""Modes whose samples carry a `pid` label."""
PROCESSES_DEFAULT = 64
PROCESSES_MAX = 1024
SLOT_FIELDS = 2  # the owner word, then `ready`
_READY = 1
_BITS_PER_WORD = 64
_PID_MASK = (1 << PID_BITS) - 1
_WORD_MASK = (1 << 64) - 1
_SIGN = 1 << 63
_BIT_ATTEMPTS = 1000


@dataclass(frozen=True)
class GaugeLayout:
    """Where a gauge's words are, relative to its segment and to one entry's first value word."""

    mode: str
    processes: int

    @property
    def live(self) -> bool:
        return self.mode.startswith("live")

    @property
    def shared(self) -> bool:
        """mostrecent: one value (and its time) for every process, no columns."""
        return self.mode == "mostrecent"

    @property
    def stamped(self) -> bool:
        return self.mode in ("mostrecent", "livemostrecent")

    @property
    def slot_words(self) -> int:
        return 0 if self.shared else self.processes * SLOT_FIELDS

    @property
    def bitmap_words(self) -> int:
        return 0 if self.shared else -(-self.processes // _BITS_PER_WORD)

    @property
    def retained_words(self) -> int:
        return 1 if self.mode in ("sum", "max", "min") else 0

    @property
    def columns(self) -> int:
        return 1 if self.shared else self.processes

    @property
    def value_offset(self) -> int:
        """The first value word, counted from the entry's first value word."""
        return self.bitmap_words + self.retained_words

    @property
    def value_words(self) -> int:
        return self.value_offset + self.columns * (2 if self.stamped else 1)

    @property
    def details(self) -> str:
        return f"mode={self.mode} processes={self.processes}"


def slots(segment: MetricSegment, layout: GaugeLayout) -> ProcessSlots:
    return ProcessSlots(segment.counters, HEADER_WORDS, layout.processes, SLOT_FIELDS)


def _float(word: int) -> float:
    return array("d", word.to_bytes(8, "little"))[0]


def from_key(key: int) -> float:
    """The float of an ordered key (zig/float.zig orderedKey); key must not be 0."""
    bits = key & ~_SIGN if key & _SIGN else ~key & _WORD_MASK
    return _float(bits)


class Columns:
    """This process's column in one gauge segment, claimed (and cleared of a dead process's
    values) at its first use here."""

    def __init__(self, segment: MetricSegment, layout: GaugeLayout) -> None:
        self.segment = segment
        self.layout = layout
        self.slots = slots(segment, layout)

    def join(self) -> int:
        """This process's column; RuntimeError when live processes hold every slot."""
        pid = PROCESS.pid
        base = self.slots.claim(pid, start_ticks(pid) or 0)
        counters = self.segment.counters
        if counters[base + 1] != _READY:  # a new slot, or a dead process's: clear it first
            self._fold((base - HEADER_WORDS) // SLOT_FIELDS)
            counters[base + 1] = _READY
        return (base - HEADER_WORDS) // SLOT_FIELDS

    def _fold(self, column: int) -> None:
        counters = self.segment.counters
        table = self.segment.layout
        word, bit = divmod(column, _BITS_PER_WORD)
        for entry in walk(counters.__getitem__, table, table.table_first, len(counters)):
            bitmap = entry.base + 1 + word
            if entry.ready and counters[bitmap] >> bit & 1:
                self._fold_value(entry.base + 1, column)
                change_bits(self.segment, bitmap, lambda bits: bits & ~(1 << bit))

    def _fold_value(self, first: int, column: int) -> None:
        """Moves a dead process's value of one entry into the retained one, then clears it."""
        layout = self.layout
        value = self.segment.pointer(first + layout.value_offset + column)
        if layout.retained_words:
            retained = self.segment.pointer(first + layout.bitmap_words)
            fold = {"sum": _native.float_add, "max": _native.float_fold_max}.get(
                layout.mode, _native.float_fold_min
            )
            fold(retained, _native.float_load(value))
        _native.float_store(value, 0.0)
        if layout.stamped:
            stamp = first + layout.value_offset + layout.processes + column
            _native.float_store(self.segment.pointer(stamp), 0.0)


def change_bits(segment: MetricSegment, index: int, change: Callable[[int], int]) -> None:
    """Applies `change` to a bitmap word with compare-and-swap: other processes change their own
    bits of the same word meanwhile."""
    counters = segment.counters
    pointer = segment.pointer(index)
    for _ in range(_BIT_ATTEMPTS):
        old = counters[index]
        new = change(old)
        if new == old or _native.compare_swap(pointer, old, new) == old:
            return
    raise TableFull(f"bitmap word {index} of {segment.layout.name!r} kept changing")


def mark_present(segment: MetricSegment, layout: GaugeLayout, entry: int, column: int) -> None:
    """Column `column` has entry `entry`'s label set from now on."""
    word, bit = divmod(column, _BITS_PER_WORD)
    change_bits(segment, entry + 1 + word, lambda bits: bits | 1 << bit)


# Reading.

LIVE, DEAD, LEFTOVER = 1, 2, 3
"""A column's process runs; is gone; is being replaced (its values a gone one's, not yet folded)."""


def column_states(
    values: list[int], layout: GaugeLayout, alive: Callable[[int], bool]
) -> dict[int, tuple[int, int]]:
    """column -> (state, pid) for every slot ever claimed."""
    states = {}
    for column in range(layout.processes):
        owner = values[HEADER_WORDS + column * SLOT_FIELDS]
        if owner == 0:
            continue
        ready = values[HEADER_WORDS + column * SLOT_FIELDS + 1] == _READY
        states[column] = (_state(owner, ready, alive), owner & _PID_MASK)
    return states


def _state(owner: int, ready: bool, alive: Callable[[int], bool]) -> int:
    if owner & CLAIMING or not ready:
        return LEFTOVER
    return LIVE if alive(owner) else DEAD


def _columns_of(bitmap: list[int]) -> Iterator[int]:
    for word, bits in enumerate(bitmap):
        while bits:
            low = bits & -bits
            yield word * _BITS_PER_WORD + low.bit_length() - 1
            bits ^= low


class _Series:
    """What one label set's columns add up to, over every entry that holds it."""

    __slots__ = ("contributions", "retained", "stamp", "present")

    def __init__(self) -> None:
        self.contributions: list[tuple[float, float, int]] = []  # value, time, pid
        self.retained: list[float] = []
        self.stamp = 0.0
        self.present = False


def _counts(state: int, layout: GaugeLayout) -> bool:
    if layout.live:
        return state == LIVE
    return state != LEFTOVER or layout.mode not in PID_MODES


def _gather(
    series: _Series,
    first: int,
    values: list[int],
    floats: array[float],
    layout: GaugeLayout,
    states: dict[int, tuple[int, int]],
) -> None:
    series.present = True
    if layout.shared:
        series.contributions.append((floats[first], floats[first + 1], 0))
        return
    if layout.retained_words:
        retained = values[first + layout.bitmap_words]
        if layout.mode == "sum":
            series.retained.append(floats[first + layout.bitmap_words])
        elif retained:
            key = retained if layout.mode == "max" else ~retained & _WORD_MASK
            series.retained.append(from_key(key))
    bitmap = values[first : first + layout.bitmap_words]
    start = first + layout.value_offset
    for column in _columns_of(bitmap):
        state, pid = states.get(column, (0, 0))
        if state and _counts(state, layout):
            stamp = floats[start + layout.processes + column] if layout.stamped else 0.0
            series.contributions.append((floats[start + column], stamp, pid))


def _combined(series: _Series, layout: GaugeLayout) -> Iterator[tuple[float, int | None]]:
    """(value, pid or None) samples of one label set."""
    mode = layout.mode.removeprefix("live")
    if mode == "all":
        for value, _, pid in series.contributions:
            yield value, pid
        return
    if mode == "mostrecent":
        stamped = [(stamp, value) for value, stamp, _ in series.contributions if stamp > 0]
        if stamped:
            yield max(stamped, key=lambda pair: pair[0])[1], None
        return
    values = [value for value, _, _ in series.contributions] + series.retained
    if mode == "sum":
        if values or layout.mode == "sum":
            yield math.fsum(values), None
    elif values:
        yield (max(values) if mode == "max" else min(values)), None


def samples(
    values: list[int],
    floats: array[float],
    layout: GaugeLayout,
    table: Layout,
    alive: Callable[[int], bool],
) -> Iterator[tuple[tuple[str, ...], float, int | None]]:
    """(label values, value, pid or None) of every series in a snapshot of a gauge's segment."""
    states = {} if layout.shared else column_states(values, layout, alive)
    combined: dict[tuple[str, ...], _Series] = {}
    for entry in walk(values.__getitem__, table, table.table_first, len(values)):
        if entry.labels is not None:
            series = combined.setdefault(entry.labels, _Series())
            _gather(series, entry.base + 1, values, floats, layout, states)
    for labels, series in combined.items():
        for value, pid in _combined(series, layout):
            yield labels, value, pid
