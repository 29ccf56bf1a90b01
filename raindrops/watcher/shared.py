"""The Watcher's shared memory: one view of the listeners for every worker of a server.

One process samples the kernel each interval and writes here; every worker
answers from here, so all of them show the same series, peaks and reset
times, and a reset asked of any worker is applied for all. The segment is
found the way the middleware's is (raindrops.segments.ServerWide, kind
"watch"): inherited across fork when the Watcher is built before it
(gunicorn --preload), named after the master when each worker builds its
own, private in a single process. This module is the Watcher's model, the
counterpart of raindrops.scoreboard for the middleware: it reaches the
native library only for compare-and-swap, as the scoreboard does.

Layout, in counters of the segment (64-bit, each on its own cache line):
- a header: the layout's fingerprint, the lease, the lease's heartbeat, the
  sequence lock, the number of samples written, the latest sample's time,
  the generation of the listener table, and how many listeners were left out;
- the times of the last `history + 1` samples, a ring;
- a slot per listener, up to the layout's `slots` (the segment grows as
  listeners appear), each with: its name (NAME_BYTES_MAX bytes at most, 8
  per counter), the first and last sample it was in, its reset requests,
  its statistics since its last reset (Listener), and a ring of its
  (active, queued) per sample.

The lease names the sampling process in one word, its start time (clock
ticks) << 22 | its pid, taken with compare-and-swap: a pid alone may be
reused. Its holder adds 1 to the heartbeat every interval. Another process
takes the lease over when the holder is gone (an unchanged heartbeat, or a
latest sample older than an interval, and a pid that /proc shows dead or
reused) or stuck (no heartbeat for several intervals); a holder that finds
the lease taken stops sampling.

Samples are written inside a sequence lock: the holder makes the sequence
odd with compare-and-swap (so two writers never interleave, even when a
stalled holder wakes up after losing the lease), writes, and makes it even
again; readers retry a read that a write overlapped, a bounded number of
times, then use what they had. A writer that died mid-write leaves the
sequence odd: the next writer, seeing the same odd number an interval later,
goes past it (that sample stands as it was left). The rings are read without
the lock: a sample's values are final once the count of samples includes it,
and a reader drops those that a later write may have overwritten meanwhile.

Nothing read here addresses memory: slot numbers and ring positions are
computed from this process's own layout, name lengths are bounded by
NAME_BYTES_MAX, counts only bound loops that have their own bounds, and an
index past the segment's real size is an IndexError from Raindrops, read as
an empty view.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, TypeVar

from raindrops import _native, _process, linux, segments
from raindrops.counters import MAX, Raindrops
from raindrops.histogram import HistogramSnapshot
from raindrops.linux import ListenStats
from raindrops.watcher.aggregate import FIELDS as AGGREGATE_FIELDS
from raindrops.watcher.aggregate import Aggregate, Store

KIND = "watch"
"""The segments' kind in raindrops.segments' names: /raindrops-watch-<master>-..."""
KINDS = ("active", "queued")
"""The two numbers kept of every listener, in ListenStats order."""
LISTENERS_MAX = 256
"""Listeners one Watcher keeps; more are left out (counted, logged, and said in series.json)."""
NAME_BYTES_MAX = 512
"""A listener's printable name, UTF-8 encoded: a unix socket path of 108 bytes, every byte
escaped as \\xNN, fits."""
READ_TRIES = 16
"""Reads overlapped by a write before a reader settles for what it had."""
VALUE_MAX = 2**32 - 2
"""Active or queued beyond this saturates in the charts' rings (the statistics keep all 64 bits)."""
ABSENT = MAX
"""A ring entry of a listener missing from that sample."""
_READ_PAUSE_S = 0.0005
_TIME_MAX_US = 32_503_680_000 * 10**6
"""3000-01-01: a time read from the segment is at most this, so that every date format can
print it (another process may have written anything)."""
_VERSION = 1
_WORD_BYTES = 8
_PID_BITS = 22  # the kernel's PID_MAX_LIMIT is 2**22
_PID_MASK = (1 << _PID_BITS) - 1
_START_MASK = (1 << (64 - _PID_BITS)) - 1
_QUEUED_MASK = (1 << 32) - 1

# The header.
_LAYOUT, _LEASE, _BEAT, _SEQUENCE, _POINTS, _TAKEN_US, _TABLE, _LEFT_OUT = range(8)
_HEADER = 8
# A slot: its name and bookkeeping, then its Listener's fields, then its ring.
_NAME_LENGTH = 0
_NAME = 1
_NAME_WORDS = NAME_BYTES_MAX // _WORD_BYTES
_FIRST_POINT = _NAME + _NAME_WORDS  # the number of its first sample
_LAST_POINT = _FIRST_POINT + 1  # the number of the last sample it was in, plus 1
_RESETS_ASKED = _LAST_POINT + 1  # workers add 1 to ask for a reset
_RESETS_DONE = _RESETS_ASKED + 1  # the sampler copies the requests it applied
_LISTENER = _RESETS_DONE + 1
# A Listener: its reset time and current values, then per kind its peak times and aggregate.
_RESET_AT_US = 0
_CURRENT = 1
_FIRST_KIND = _CURRENT + len(KINDS)
_FIRST_PEAK_US, _LAST_PEAK_US, _AGGREGATE = 0, 1, 2
_KIND_FIELDS = _AGGREGATE + AGGREGATE_FIELDS

T = TypeVar("T")
Point = tuple[float, dict[str, tuple[int, int]]]
"""One sample for the charts: (time, {listener: (active, queued)})."""


def _microseconds(seconds: float) -> int:
    """Times are kept as microseconds since the epoch; 0 stands for none."""
    return min(max(round(seconds * 1e6), 0), MAX)


def _seconds(microseconds: int) -> float:
    return min(microseconds, _TIME_MAX_US) / 1e6


def _time_or_none(microseconds: int) -> float | None:
    return _seconds(microseconds) if microseconds else None


class View(NamedTuple):
    """One number (active or queued) of one listener, as the endpoints report it."""

    snapshot: HistogramSnapshot
    current: int
    first_peak: float | None
    last_peak: float | None
    last_reset: float


class Listener:
    """One listener's statistics since its last reset, in `store[base : base + FIELDS]`.

    Per number (active, queued): an Aggregate, and when its maximum was first
    reached and last reached again; the current values; the reset time. The
    store is the shared segment, written by the sampling process only, or a
    private list (`Listener(now)`). `now` (seconds) resets the fields; without
    it they are read as they are.
    """

    FIELDS = _FIRST_KIND + len(KINDS) * _KIND_FIELDS
    __slots__ = ("_store", "_base", "_aggregates")

    def __init__(self, now: float | None = None, store: Store | None = None, base: int = 0) -> None:
        self._store: Store = [0] * self.FIELDS if store is None else store
        self._base = base
        self._aggregates = tuple(
            Aggregate(self._store, self._kind(index) + _AGGREGATE) for index in range(len(KINDS))
        )
        if now is not None:
            self.reset(now)

    def _kind(self, index: int) -> int:
        return self._base + _FIRST_KIND + index * _KIND_FIELDS

    def add(self, stats: ListenStats, now: float) -> None:
        stamp = _microseconds(now)
        for index, value in enumerate(stats):
            aggregate = self._aggregates[index]
            self._peak(index, value, aggregate.max, stamp)
            aggregate.add(value)
            self._store[self._base + _CURRENT + index] = value

    def _peak(self, index: int, value: int, previous_max: int | None, stamp: int) -> None:
        """0 is never a peak: an idle listener has none."""
        if value <= 0 or (previous_max is not None and value < previous_max):
            return
        kind = self._kind(index)
        if previous_max is None or value > previous_max:
            self._store[kind + _FIRST_PEAK_US] = stamp
        self._store[kind + _LAST_PEAK_US] = stamp

    def reset(self, now: float) -> None:
        """Forgets the statistics and peaks (not the current values) from `now` on."""
        for index in range(len(KINDS)):
            kind = self._kind(index)
            self._store[kind + _FIRST_PEAK_US] = 0
            self._store[kind + _LAST_PEAK_US] = 0
            self._aggregates[index].reset()
        self._store[self._base + _RESET_AT_US] = _microseconds(now)

    def view(self, kind: str) -> View:
        index = KINDS.index(kind)
        store, base = self._store, self._kind(index)
        return View(
            snapshot=self._aggregates[index].snapshot(),
            current=store[self._base + _CURRENT + index],
            first_peak=_time_or_none(store[base + _FIRST_PEAK_US]),
            last_peak=_time_or_none(store[base + _LAST_PEAK_US]),
            last_reset=_seconds(store[self._base + _RESET_AT_US]),
        )


class Layout(NamedTuple):
    """Where everything is in a segment of `slots` listeners and `history` samples."""

    slots: int
    history: int

    @classmethod
    def of(cls, listeners: Sequence[str] | None, history: int) -> Layout:
        """The configured listeners, each with a slot, or LISTENERS_MAX for the whole host."""
        if listeners is None:
            return cls(LISTENERS_MAX, history)
        if len(listeners) > LISTENERS_MAX:
            raise ValueError(
                f"a Watcher watches at most {LISTENERS_MAX} listeners, not {len(listeners)}"
            )
        return cls(len(listeners), history)

    @property
    def ring(self) -> int:
        """One more sample than the charts show: the one a writer overwrites is never read."""
        return self.history + 1

    @property
    def slot_counters(self) -> int:
        return _LISTENER + Listener.FIELDS + self.ring

    @property
    def counters(self) -> int:
        """The header and the ring of times: the segment before its first slot."""
        return _HEADER + self.ring

    def slot(self, index: int) -> int:
        return self.counters + index * self.slot_counters

    def fingerprint(self) -> int:
        """Names this layout in the segment, so that a Watcher of another version or other
        settings never reads it as its own; never 0, the mark of a segment nobody claimed."""
        text = f"raindrops-watch/{_VERSION}/{self.slots}/{self.history}/{self.slot_counters}"
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") | 1


# The lease.


def own_token() -> int:
    """This process as a lease holder: its start time and pid in one word."""
    pid = _process.PROCESS.pid
    assert 0 < pid <= _PID_MASK, f"pid {pid} beyond the kernel's PID_MAX_LIMIT"
    start = _process.own_start_ticks() or 0
    return (start & _START_MASK) << _PID_BITS | pid


def token_pid(token: int) -> int:
    return token & _PID_MASK


def holder_gone(token: int) -> bool:
    """True when the lease's holder is certainly not running here: its pid is free, a zombie,
    or another process's (a start time that differs). A pid of another PID namespace may look
    free: callers only ask when its heartbeat also stopped, or its latest sample is overdue."""
    pid, start = token & _PID_MASK, token >> _PID_BITS
    if start and _process.proc_is_ours():
        now = _process.start_ticks(pid)
        return now is None or now & _START_MASK != start
    return not _process.pid_alive(pid)


# What readers get.


class Slot(NamedTuple):
    number: int  # its place in the segment
    first_point: int  # the number of the first sample of its listener


class State(NamedTuple):
    """What every endpoint starts from, read consistently (or the previous one)."""

    sequence: int
    points: int  # samples written so far: the next sample's number
    taken: float  # the latest sample's time, 0.0 before the first
    table: int  # the listener table's generation
    slots: dict[str, Slot]  # every listener kept, by printable name
    latest: dict[str, ListenStats]  # those in the latest sample, sorted by name
    sampler: int  # the pid holding the lease, 0 when none
    left_out: int  # listeners of the latest sample that have no slot


EMPTY = State(-1, 0, 0.0, -1, {}, {}, 0, 0)


def _packed(stats: ListenStats) -> int:
    return min(stats.active, VALUE_MAX) << 32 | min(stats.queued, _QUEUED_MASK)


def _kept_first(name: str) -> tuple[bool, str]:
    """When listeners outnumber the slots, TCP ones are kept before unix ones."""
    return linux.is_unix_name(name), name


class Board:
    """The Watcher's segment (see the module's docstring); closable, as ServerWide needs."""

    def __init__(self, layout: Layout, *, name: str | None = None, mode: int = 0o600) -> None:
        counters = Raindrops(layout.counters, name=name, mode=mode)
        try:
            self._claim(counters, layout)
            self._lease = _native.CounterPointer(counters.address(_LEASE))
            self._sequence = _native.CounterPointer(counters.address(_SEQUENCE))
        except BaseException:
            counters.close()
            raise
        self.layout = layout
        self.counters = counters
        self._listeners: dict[int, Listener] = {}
        self._views: dict[tuple[int, str], View] = {}  # the last consistent ones, for fallback
        self._views_table = -1

    @staticmethod
    def _claim(counters: Raindrops, layout: Layout) -> None:
        """Marks a new segment as this layout's, or checks that an existing one is (one atomic
        word: a process attaching meanwhile never sees half a header)."""
        fingerprint = layout.fingerprint()
        pointer = _native.CounterPointer(counters.address(_LAYOUT))
        found = int(_native.compare_swap(pointer, 0, fingerprint))
        if found not in (0, fingerprint):
            where = "anonymous segment" if counters.name is None else repr(counters.name)
            raise ValueError(
                f"Watcher segment {where} holds another layout ({found:#x}, not {fingerprint:#x}): "
                "another raindrops version or other Watcher settings"
            )

    @property
    def name(self) -> str | None:
        return self.counters.name

    def close(self) -> None:
        self.counters.close()

    def _listener(self, index: int) -> Listener:
        listener = self._listeners.get(index)
        if listener is None:
            base = self.layout.slot(index) + _LISTENER
            listener = self._listeners[index] = Listener(store=self.counters, base=base)
        return listener

    # The lease.

    def lease(self) -> tuple[int, int]:
        """(holder's token or 0, heartbeat)."""
        return self.counters[_LEASE], self.counters[_BEAT]

    def take(self, expected: int, token: int) -> bool:
        return int(_native.compare_swap(self._lease, expected, token)) == expected

    def holds(self, token: int) -> bool:
        return self.counters[_LEASE] == token

    def release(self, token: int) -> None:
        _native.compare_swap(self._lease, token, 0)

    def beat(self) -> None:
        self.counters.incr(_BEAT)

    def taken(self) -> float:
        """When the latest sample was taken (seconds since the epoch), 0.0 before the first."""
        return _seconds(self.counters[_TAKEN_US])

    # The sequence lock.

    def sequence(self) -> int:
        return self.counters[_SEQUENCE]

    def begin_write(self, stuck: int) -> int | None:
        """Starts writing a sample: the odd number to hand to end_write, or None while another
        writer is at it. `stuck` is an odd number this writer saw an interval ago: a writer
        that left it for that long is dead."""
        sequence = self.counters[_SEQUENCE]
        if sequence % 2 and sequence != stuck:
            return None
        writing = (sequence + 1 + sequence % 2) & MAX
        if int(_native.compare_swap(self._sequence, sequence, writing)) != sequence:
            return None
        return writing

    def end_write(self, writing: int) -> None:
        _native.compare_swap(self._sequence, writing, (writing + 1) & MAX)

    def consistent(self, read: Callable[[], T]) -> tuple[T, bool]:
        """read() with no sample written meanwhile: (value, True); after READ_TRIES overlapping
        writes (value, False), the last value read."""
        value: T | None = None
        for _ in range(READ_TRIES):
            before = self.counters[_SEQUENCE]
            if before % 2:
                time.sleep(_READ_PAUSE_S)
                continue
            value = read()
            if self.counters[_SEQUENCE] == before:
                return value, True
        return (read() if value is None else value), False

    # Reading.

    def state(self, previous: State) -> State:
        """The current state; `previous` when no sample was written since, or when a consistent
        read failed (an empty `previous` then gets the inconsistent read: values, never
        addresses)."""
        if self.counters[_SEQUENCE] == previous.sequence:
            return previous
        try:
            state, consistent = self.consistent(lambda: self._read_state(previous))
        except IndexError:  # a segment shrunk by a buggy process: nothing to show
            return previous
        return state if consistent or previous is EMPTY else previous

    def _read_state(self, previous: State) -> State:
        counters = self.counters
        sequence, points, table = counters[_SEQUENCE], counters[_POINTS], counters[_TABLE]
        slots = previous.slots if table == previous.table else self._slots()
        latest = {}
        for name, slot in sorted(slots.items()):
            base = self.layout.slot(slot.number)
            if points and counters[base + _LAST_POINT] == points:
                latest[name] = ListenStats(
                    counters[base + _LISTENER + _CURRENT],
                    counters[base + _LISTENER + _CURRENT + 1],
                )
        return State(
            sequence=sequence,
            points=points,
            taken=_seconds(counters[_TAKEN_US]),
            table=table,
            slots=slots,
            latest=latest,
            sampler=token_pid(counters[_LEASE]),
            left_out=counters[_LEFT_OUT],
        )

    def _slots(self) -> dict[str, Slot]:
        found: dict[str, Slot] = {}
        for index in range(self._slots_mapped()):
            base = self.layout.slot(index)
            name = self._name(base)
            if name is not None and name not in found:
                found[name] = Slot(index, self.counters[base + _FIRST_POINT])
        return found

    def _slots_mapped(self) -> int:
        layout = self.layout
        room = (len(self.counters) - layout.counters) // layout.slot_counters
        return max(0, min(layout.slots, room))

    def _name(self, base: int) -> str | None:
        length = self.counters[base + _NAME_LENGTH]
        if not 0 < length <= NAME_BYTES_MAX:
            return None  # a free slot (or a corrupt length)
        words = (length + _WORD_BYTES - 1) // _WORD_BYTES
        raw = b"".join(
            self.counters[base + _NAME + word].to_bytes(_WORD_BYTES, "little")
            for word in range(words)
        )
        return raw[:length].decode("utf-8", "replace")

    def points(self, state: State, since: float) -> list[Point]:
        """The samples of `state` taken after `since`, of the last `history`, oldest first."""
        counters, layout = self.counters, self.layout
        numbers: list[tuple[int, float]] = []
        number, oldest = state.points - 1, max(0, state.points - layout.history)
        while number >= oldest:
            when = _seconds(counters[_HEADER + number % layout.ring])
            if when <= since:
                break
            numbers.append((number, when))
            number -= 1
        points = [(when, self._values(state, number)) for number, when in reversed(numbers)]
        intact = counters[_POINTS] - layout.history  # older ones may be overwritten by now
        first = sum(1 for number, _ in numbers if number < intact)
        return points[first:]

    def _values(self, state: State, number: int) -> dict[str, tuple[int, int]]:
        layout, counters = self.layout, self.counters
        position = _LISTENER + Listener.FIELDS + number % layout.ring
        values = {}
        for name, slot in state.slots.items():
            if number < slot.first_point:
                continue
            entry = counters[layout.slot(slot.number) + position]
            if entry != ABSENT:
                values[name] = (entry >> 32, entry & _QUEUED_MASK)
        return values

    def view(self, state: State, address: str, kind: str) -> View | None:
        slot = state.slots.get(address)
        if slot is None:
            return None
        listener = self._listener(slot.number)
        try:
            view, consistent = self.consistent(lambda: listener.view(kind))
        except IndexError:
            return None
        if self._views_table != state.table:
            self._views, self._views_table = {}, state.table
        key = (slot.number, kind)
        if consistent:
            self._views[key] = view
            return view
        return self._views.get(key, view)

    def ask_reset(self, slot: Slot) -> int:
        """Asks the sampler to reset a listener's statistics; the ticket for reset_done."""
        return self.counters.incr(self.layout.slot(slot.number) + _RESETS_ASKED)

    def reset_done(self, slot: Slot, ticket: int) -> bool:
        return self.counters[self.layout.slot(slot.number) + _RESETS_DONE] >= ticket

    # Writing: the lease holder only, inside begin_write/end_write.

    def writer_slots(self) -> dict[str, int]:
        """The listener table as a new holder takes it over: name -> slot."""
        return {name: slot.number for name, slot in self.state(EMPTY).slots.items()}

    def record(
        self, stats: Mapping[str, ListenStats], now: float, slots: dict[str, int]
    ) -> list[str]:
        """Writes one sample; `slots` is the holder's table, kept up to date. Returns the names
        left out for want of a slot."""
        counters, layout = self.counters, self.layout
        number = counters[_POINTS]
        position = _LISTENER + Listener.FIELDS + number % layout.ring
        self._apply_resets(slots, now)
        left_out = self._add_new(stats, slots, number, now)
        for name, index in list(slots.items()):
            base = layout.slot(index)
            stat = stats.get(name)
            if stat is not None:
                self._listener(index).add(stat, now)
                counters[base + _LAST_POINT] = (number + 1) & MAX
                counters[base + position] = _packed(stat)
            elif number + 1 - counters[base + _LAST_POINT] > layout.history:
                self._free(slots, name, base)  # gone for longer than the charts show
            else:
                counters[base + position] = ABSENT
        stamp = _microseconds(now)
        counters[_HEADER + number % layout.ring] = stamp
        counters[_TAKEN_US] = stamp
        counters[_LEFT_OUT] = len(left_out)
        counters[_POINTS] = (number + 1) & MAX
        return left_out

    def _apply_resets(self, slots: dict[str, int], now: float) -> None:
        counters = self.counters
        for index in slots.values():
            base = self.layout.slot(index)
            asked = counters[base + _RESETS_ASKED]
            if asked != counters[base + _RESETS_DONE]:
                self._listener(index).reset(now)
                counters[base + _RESETS_DONE] = asked

    def _add_new(
        self, stats: Mapping[str, ListenStats], slots: dict[str, int], number: int, now: float
    ) -> list[str]:
        left_out = []
        for name in sorted((name for name in stats if name not in slots), key=_kept_first):
            encoded = name.encode("utf-8", "surrogateescape")
            index = self._free_slot(slots)
            if index is None or len(encoded) > NAME_BYTES_MAX or not self._fits(index):
                left_out.append(name)
                continue
            self._assign(index, encoded, number, now)
            slots[name] = index
        return left_out

    def _free_slot(self, slots: dict[str, int]) -> int | None:
        used = set(slots.values())
        return next((index for index in range(self.layout.slots) if index not in used), None)

    def _fits(self, index: int) -> bool:
        """Grows the segment to hold slot `index`; False when it cannot (no room, too large)."""
        needed = self.layout.slot(index + 1)
        try:
            if len(self.counters) < needed:
                self.counters.size = needed
        except segments.SEGMENT_ERRORS:
            return False
        return True

    def _assign(self, index: int, encoded: bytes, number: int, now: float) -> None:
        counters, base = self.counters, self.layout.slot(index)
        for word in range((len(encoded) + _WORD_BYTES - 1) // _WORD_BYTES):
            chunk = encoded[word * _WORD_BYTES : (word + 1) * _WORD_BYTES]
            counters[base + _NAME + word] = int.from_bytes(
                chunk.ljust(_WORD_BYTES, b"\0"), "little"
            )
        self._listener(index).reset(now)
        for kind in range(len(KINDS)):
            counters[base + _LISTENER + _CURRENT + kind] = 0
        counters[base + _FIRST_POINT] = number
        counters[base + _LAST_POINT] = number
        counters[base + _RESETS_DONE] = counters[base + _RESETS_ASKED]
        counters[base + _NAME_LENGTH] = len(encoded)
        counters.incr(_TABLE)

    def _free(self, slots: dict[str, int], name: str, base: int) -> None:
        self.counters[base + _NAME_LENGTH] = 0
        self.counters.incr(_TABLE)
        del slots[name]


def board_maker(layout: Layout) -> Callable[..., Board]:
    """What ServerWide builds Boards with: `make(name=None)`. Before making a server's named
    segment, those of stopped servers go (raindrops.segments sweeps the middleware's kinds)."""

    def make(name: str | None = None, mode: int = 0o600) -> Board:
        if name is not None and name.startswith(f"/{segments.PREFIX}{KIND}-"):
            segments.remove_stale_segments((KIND,))
        return Board(layout, name=name, mode=mode)

    return make


__all__ = [
    "EMPTY",
    "KIND",
    "KINDS",
    "LISTENERS_MAX",
    "NAME_BYTES_MAX",
    "Board",
    "Layout",
    "Listener",
    "Point",
    "Slot",
    "State",
    "View",
    "board_maker",
    "holder_gone",
    "own_token",
]
