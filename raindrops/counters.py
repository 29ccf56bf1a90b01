"""Shared counters: `Raindrops` (an array) and `Struct` (named members).

Every counter sits on its own cache line in memory shared by processes: an
anonymous memfd inherited across fork, or a named POSIX shm segment that
unrelated processes attach to. Updates are single atomic instructions in the
native library; the Python side keeps the hot path to list lookups and one
ctypes call: without arguments for the default n (a native function bound to
the counter, see _native.slot_claim), else with a pointer prepared in advance.
Where a plain aligned 8-byte load is as good as the native one (x86_64, see
_native.PLAIN_LOADS), `rd[i]` is CPython's own read of the shared memory.
"""

from __future__ import annotations

import keyword
import mmap
import operator
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from raindrops import _native
from raindrops._process import ProcessLock

MAX: int = 2**64 - 1
"""The largest value a counter holds; arithmetic wraps modulo MAX + 1."""
SIZE: int = _native.STRIDE
"""Bytes between two counters: the CPU's cache line size, read at run time."""
PAGE_SIZE: int = mmap.PAGESIZE
"""Granularity of the shared mappings."""

# Pointer objects cost about 100 bytes each; past this size counters are
# reached through a pointer built per call instead of a prepared table.
_PREPARED_POINTERS_MAX = 1 << 16
_MODE_ALLOWED = _native.mirrored("mode_allowed", 0o744)  # zig/shm.zig
_MODE_REQUIRED = _native.mirrored("mode_required", 0o600)  # zig/shm.zig
_ONE = 1  # `n is _ONE` selects the argument-free native call for the default n.
_INCR = 0  # positions in a counter's (increment, decrement) steps
_DECR = 1
_EMPTY_WORDS = memoryview(b"").cast("Q")  # every index misses: the checked path decides

_SMALL_INT_MAX = _native.SMALL_INT_MAX
_incr = _native.incr
_decr = _native.decr
_load = _native.load
_store = _native.store
_store_small = _native.store_small
_ArgumentError = _native.ArgumentError


def _integer(value: object, what: str) -> int:
    if isinstance(value, float) or not hasattr(value, "__index__"):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return operator.index(value)


def _checked_value(value: object, what: str = "counter value") -> int:
    number = _integer(value, what)
    if not 0 <= number <= MAX:
        raise ValueError(f"{what} {number} is outside 0..{MAX}")
    return number


def _range_checker(what: str) -> Callable[[object], int]:
    """A check of a value or an increment that costs one class test and one comparison for an
    int in range; only a bad value pays for the message naming `what`."""

    def checked(value: object) -> int:
        if value.__class__ is int and 0 <= value <= MAX:  # type: ignore[operator]
            return value  # type: ignore[return-value]
        return _checked_value(value, what)

    return checked


_delta = _range_checker("increment n")
_value = _range_checker("counter value")


def _checked_size(size: object) -> int:
    number = _integer(size, "size")
    if number < 1:
        raise ValueError(f"size must be >= 1, not {number}")
    if number > _native.COUNTERS_MAX:
        raise ValueError(f"size {number} exceeds the limit of {_native.COUNTERS_MAX} counters")
    return number


def _checked_mode(mode: object) -> int:
    """A creating mode that lets no other user write: they could poison the counters."""
    number = _integer(mode, "mode")
    if not 0 <= number <= 0o777:
        raise ValueError(f"mode {number:#o} is not a permission mode (0..0o777)")
    if number & ~_MODE_ALLOWED:
        raise ValueError(
            f"mode {number:#o} gives group or others more than read permission: a segment's "
            "mode is the owner's bits plus at most read for them (0o600, 0o640, 0o644)"
        )
    if number & _MODE_REQUIRED != _MODE_REQUIRED:
        raise ValueError(
            f"mode {number:#o} does not give the owner read and write permission: the creator "
            "could not attach to the segment it creates (0o600, 0o640, 0o644)"
        )
    return number


def _checked_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"segment name must be a str, not {type(name).__name__}")
    rest = name[1:]
    if (
        not name.startswith("/")
        or not rest
        or "/" in rest
        or "\0" in rest
        or rest in (".", "..")
        or len(name.encode("utf-8", "surrogateescape")) > 256
    ):
        raise ValueError(
            f"invalid shared memory name {name!r}: "
            "it must be '/' followed by 1 to 255 bytes, no other '/'"
        )
    return name


def _release(segment: _native.Segment, views: list[tuple[int, int]], slots: dict[int, int]) -> None:
    """Frees the update slots, unmaps every view, and closes the file unless close() did; runs
    once, when the Raindrops is unreachable: no thread can be inside an operation on these
    views or slots any more."""
    for slot in slots.values():
        _native.slot_release(slot)
    slots.clear()
    for base, length in views:
        _native.unmap(base, length)
    views.clear()
    if segment.fd >= 0:
        _native.close(segment)


_Step = Callable[..., int]
_Steps = tuple[_native.Step, _native.Step]
"""A counter's argument-free (increment, decrement)."""


def _index_updater(
    which: int, step_small: _Step, step: _Step, doc: str
) -> Callable[[Raindrops, int, int], int]:
    """Builds incr/decr: list lookups and a native call, without arguments for the default n
    (a counter's steps are None until its first such update binds them)."""

    def update(self: Raindrops, index: int, n: int = 1) -> int:
        try:
            if n is _ONE:
                return self._steps[index][which]()  # type: ignore[index]  # None: unbound
            if n.__class__ is int and 0 <= n <= _SMALL_INT_MAX:
                return step_small(self._pointers[index], n)
            return step(self._pointers[index], _delta(n))
        except (IndexError, TypeError, _ArgumentError):
            if n is _ONE:
                return self._bound_steps(index)[which]()
            return step(self._pointer(index), _delta(n))

    update.__doc__ = doc
    return update


class Raindrops:
    """An array of 64-bit counters shared by processes, each on its own cache line.

    `Raindrops(size)` uses anonymous shared memory: every process forked after
    creation shares it. `Raindrops(size, name="/app")` uses a POSIX shared memory
    segment that any process of the same user can attach to by name; it is
    created (mode 0600 unless `mode` says otherwise) if it does not exist.
    A segment that another user owns or can write is refused: PermissionError.
    The size lives in the segment, so all processes agree on it; attaching with
    a larger size grows the segment, and attaching never shrinks it.
    """

    __slots__ = (
        "_segment",
        "_pointers",
        "_steps",
        "_slots",
        "_words",
        "_size",
        "_name",
        "_subject",
        "_lock",
        "_finalizer",
        "_views",
        "__weakref__",
    )

    def __init__(self, size: int, *, name: str | None = None, mode: int = 0o600) -> None:
        size = _checked_size(size)
        if name is None:
            segment = _native.anonymous_create(size)
        else:
            segment = _native.named_open(
                _checked_name(name), size, _checked_mode(mode), create=True
            )
        self._adopt(segment, name)
        if self._size < size:
            self._resize(size, grow_only=True)

    @classmethod
    def open(cls, name: str) -> Raindrops:
        """Attaches to an existing named segment; FileNotFoundError when there is none."""
        self = cls.__new__(cls)
        self._adopt(_native.named_open(_checked_name(name), 0, 0, create=False), name)
        return self

    def _adopt(self, segment: _native.Segment, name: str | None) -> None:
        self._segment: _native.Segment | None = segment
        self._name = name
        self._subject = "anonymous segment" if name is None else f"shared memory segment {name!r}"
        self._lock = ProcessLock()  # a thread holding it at fork does not lock the child out
        # Every view this object mapped, the current one included: all stay mapped until the
        # object is unreachable, so a pointer taken from any of them never dangles.
        self._views: list[tuple[int, int]] = [(segment.base, segment.bytes)]
        # Position -> the update slot bound to that counter, freed with the views: a thread may
        # still be calling the slot's steps after close().
        self._slots: dict[int, int] = {}
        self._finalizer = weakref.finalize(self, _release, segment, self._views, self._slots)
        # At exit other threads may still run: leave the unmapping to the kernel. (`atexit` is a
        # documented writable attribute that typeshed's stub lacks.)
        self._finalizer.atexit = False  # type: ignore[misc]
        self._pointers: list[_native.CounterPointer] = []
        self._steps: list[_Steps | None] = []
        self._words = _EMPTY_WORDS
        self._size = 0
        self._sync()

    def _live(self) -> _native.Segment:
        segment = self._segment
        if segment is None:
            raise ValueError("operation on a closed Raindrops")
        return segment

    def _sync(self) -> int:
        with self._lock.here():
            return self._sync_locked(self._live())

    def _sync_locked(self, segment: _native.Segment) -> int:
        """Adopts the segment's shared size, mapping more of it if another process grew it.

        The native side bounds the size by this process's view and the file's real size, so
        the pointers prepared here never point past a mapping, whatever the header says."""
        size: int = self._remapping(segment, _native.sync, segment, self._subject)
        if size != self._size:
            self._prepare(segment, size)
        return size

    def _remapping(self, segment: _native.Segment, call: Callable[..., Any], *args: Any) -> Any:
        """Runs a native call that may map a new view into `segment`; keeps that view for
        _release, even when the call fails after mapping it."""
        base = segment.base
        try:
            return call(*args)
        finally:
            if segment.base != base:
                self._views.append((segment.base, segment.bytes))

    def _prepare(self, segment: _native.Segment, size: int) -> None:
        """Makes the prepared pointers and steps cover exactly the `size` counters (none past
        the prepared maximum: the hot path's negative indexes must count from the real end),
        changing the lists in place: the lock-free hot path indexes them meanwhile, and a growth
        costs only its new pointers. A pointer into an older view stays valid, and so does a
        slot bound to one: every view maps the same file. The words for `rd[i]` are rebuilt
        over the current view, which always maps `size` counters."""
        pointers, steps = self._pointers, self._steps
        prepared = size if size <= _PREPARED_POINTERS_MAX else 0
        if prepared < len(pointers):
            del pointers[prepared:]
            del steps[prepared:]
        elif prepared > len(pointers):
            first = len(pointers)
            pointers.extend(_native.counter_pointers(segment, first, prepared - first))
            steps.extend([None] * (prepared - first))
        if _native.PLAIN_LOADS:
            self._words = _native.counter_words(segment, size)
        self._size = size

    def _pointer(self, index: object) -> _native.CounterPointer:
        """The checked slow path behind every indexed operation."""
        self._live()
        with self._lock.here():
            return self._located(index)[1]

    def _located(self, index: object) -> tuple[int, _native.CounterPointer]:
        """The position that `index` names, checked against the shared size, and a pointer to
        its counter; the caller holds the lock."""
        segment = self._live()
        position = _integer(index, "counter index")
        size = self._sync_locked(segment)
        if position < 0:
            position += size
        if not 0 <= position < size:
            raise IndexError(f"counter index {index} out of range for {size} counters")
        pointers = self._pointers
        if position < len(pointers):
            return position, pointers[position]
        return position, _native.counter_pointer(segment, position)

    def _bound_steps(self, index: object) -> _Steps:
        """The checked slow path of incr/decr for the default n: the counter's steps, bound to
        an update slot at the first use and kept for the hot path. An index that the prepared
        lists cover is taken as the hot path takes it, without a sync (as a prepared pointer
        would be); without a free slot, or past the prepared maximum, the steps pass the
        counter's pointer."""
        self._live()
        with self._lock.here():
            steps = self._steps
            prepared = len(steps)
            if type(index) is int and -prepared <= index < prepared:
                position = index % prepared
                pointer = self._pointers[position]
            else:
                position, pointer = self._located(index)
                if position >= len(steps):
                    return _native.pointer_steps(pointer)
            bound = steps[position]
            if bound is None:
                bound = steps[position] = self._bind(position, pointer)
            return bound

    def _bind(self, position: int, pointer: _native.CounterPointer) -> _Steps:
        slot = self._slots.get(position)  # bound before a shrink dropped the counter: reuse
        if slot is None:
            slot = _native.slot_claim(pointer)
            if slot is None:
                return _native.pointer_steps(pointer)
            self._slots[position] = slot
        return _native.slot_steps(slot)

    def address(self, index: int) -> int:
        """Where counter `index` is in this process's mapping, for native descriptors built on it
        (a shared histogram, the scoreboard's board); valid while this object lives, close()
        included (see close())."""
        address = self._pointer(index).value
        assert address is not None, "a mapped counter has an address"
        return address

    if TYPE_CHECKING:  # the signatures that the generated methods below implement

        def incr(self, index: int, n: int = 1) -> int: ...

        def decr(self, index: int, n: int = 1) -> int: ...

    else:
        incr = _index_updater(
            _INCR,
            _native.incr_small,
            _incr,
            "Atomically adds `n` (default 1) to counter `index`; returns the new value.",
        )
        decr = _index_updater(
            _DECR,
            _native.decr_small,
            _decr,
            "Atomically subtracts `n` (default 1) from counter `index`; returns the new value.",
        )

    def _plain_item(self, index: int) -> int:
        """`rd[i]` by CPython's own aligned 8-byte read of the counter: no native call. Only an
        int goes this way: a memoryview also answers a slice or a tuple."""
        if index.__class__ is int:
            try:
                return self._words[index]
            except IndexError:
                pass
        return _load(self._pointer(index))  # type: ignore[no-any-return]

    def _native_item(self, index: int) -> int:
        try:
            return _load(self._pointers[index])  # type: ignore[no-any-return]
        except (IndexError, TypeError, _ArgumentError):
            return _load(self._pointer(index))  # type: ignore[no-any-return]

    __getitem__ = _plain_item if _native.PLAIN_LOADS else _native_item

    def __setitem__(self, index: int, value: int) -> None:
        try:
            if value.__class__ is int and 0 <= value <= _SMALL_INT_MAX:
                _store_small(self._pointers[index], value)
            else:
                _store(self._pointers[index], _value(value))
        except (IndexError, TypeError, _ArgumentError):
            _store(self._pointer(index), _value(value))

    def __len__(self) -> int:
        return self._sync()

    def __iter__(self) -> Iterator[int]:
        return iter(self.to_list())

    def to_list(self) -> list[int]:
        """A snapshot of every counter, each read atomically."""
        with self._lock.here():
            segment = self._live()
            return _native.snapshot(segment, self._sync_locked(segment))

    @property
    def size(self) -> int:
        """How many counters there are; assigning grows or shrinks the segment for every process.

        Values below the new size are kept; counters dropped by a shrink are
        zeroed, and zeroed again when a growth brings them back, so they start
        at 0 whatever a process still counting through an old size did.
        """
        return self._sync()

    @size.setter
    def size(self, size: int) -> None:
        self._resize(_checked_size(size), grow_only=False)

    def _resize(self, size: int, *, grow_only: bool) -> None:
        with self._lock.here():
            segment = self._live()
            self._remapping(segment, _native.resize, segment, size, grow_only, self._subject)
            self._sync_locked(segment)

    @property
    def capa(self) -> int:
        """How many counters fit in this process's mapping without remapping."""
        with self._lock.here():
            segment = self._live()
            self._sync_locked(segment)
            return int(segment.capacity)

    @property
    def name(self) -> str | None:
        """The shm name, or None for anonymous memory."""
        return self._name

    @property
    def closed(self) -> bool:
        return self._segment is None

    def close(self) -> None:
        """Ends this object's use of the counters (raindrops' evaporate!); idempotent.

        Every later operation raises ValueError, and the file descriptor is
        closed at once. The memory is unmapped, and the native update slots
        are freed, when this object becomes unreachable (at once in CPython
        when its last reference goes): another thread may be inside an
        operation on it right now, and unmapping under it would crash the
        process (a slot freed and bound again would update another object's
        counter). The counters live on in other processes and, for a named
        segment, in the system until unlink().
        """
        with self._lock.here():
            segment = self._segment
            if segment is None:
                return
            self._segment = None
            self._pointers.clear()  # in place: a Struct's methods index these very lists
            self._steps.clear()
            self._words = _EMPTY_WORDS
            _native.close(segment)

    def unlink(self) -> None:
        """Removes the named segment from the system; processes that mapped it keep their view."""
        if self._name is None:
            raise ValueError("an anonymous Raindrops has no name to unlink")
        _native.named_unlink(self._name)

    def __enter__(self) -> Raindrops:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __copy__(self) -> Raindrops:
        """A new private anonymous segment holding the same values."""
        values = self.to_list()
        duplicate = Raindrops(len(values))
        _native.restore(duplicate._live(), values)
        return duplicate

    def __deepcopy__(self, memo: dict[int, Any]) -> Raindrops:
        return self.__copy__()

    def __reduce__(self) -> Any:
        raise TypeError("a Raindrops cannot be pickled: share it through fork or by name")

    def __repr__(self) -> str:
        if self._segment is None:
            return "<Raindrops closed>"
        where = "anonymous" if self._name is None else f"name={self._name!r}"
        return f"<Raindrops size={self._size} {where}>"


class StructBase:
    """Base of the classes made by `Struct`: named counters over one Raindrops."""

    MEMBERS: ClassVar[tuple[str, ...]] = ()
    __slots__ = ("_raindrops", "_pointers", "_steps")

    def __init__(self, *values: int, name: str | None = None, mode: int = 0o600) -> None:
        members = type(self).MEMBERS
        if len(values) > len(members):
            raise TypeError(
                f"{type(self).__name__} takes at most {len(members)} values, got {len(values)}"
            )
        self._raindrops = Raindrops(len(members), name=name, mode=mode)
        for index in range(len(members)):
            self._raindrops._bound_steps(index)
        # The Raindrops' own prepared lists, not copies: whatever empties them (close(), a
        # shrink by another process) sends the generated methods to the checked path.
        self._pointers = self._raindrops._pointers
        self._steps = self._raindrops._steps
        for index, value in enumerate(values):
            self._raindrops[index] = value

    @property
    def raindrops(self) -> Raindrops:
        """The underlying counter array."""
        return self._raindrops

    def __getitem__(self, index: int) -> int:
        return self._raindrops[index]

    def __setitem__(self, index: int, value: int) -> None:
        self._raindrops[index] = value

    def to_dict(self) -> dict[str, int]:
        """Member name to value, in member order."""
        values = self._raindrops.to_list()
        return dict(zip(type(self).MEMBERS, values, strict=True))

    def close(self) -> None:
        self._raindrops.close()

    def unlink(self) -> None:
        self._raindrops.unlink()

    def __enter__(self) -> StructBase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __copy__(self) -> StructBase:
        duplicate = type(self)()
        _native.restore(
            duplicate._raindrops._live(), self._raindrops.to_list()[: len(type(self).MEMBERS)]
        )
        return duplicate

    def __deepcopy__(self, memo: dict[int, Any]) -> StructBase:
        return self.__copy__()

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a {type(self).__name__} cannot be pickled: share it through fork or by name"
        )

    def __repr__(self) -> str:
        if self._raindrops.closed:
            return f"<{type(self).__name__} closed>"
        fields = " ".join(f"{key}={value}" for key, value in self.to_dict().items())
        return f"<{type(self).__name__} {fields}>"


_RESERVED = frozenset(dir(StructBase)) | {"MEMBERS"}


def _member_updater(
    index: int, which: int, step: _Step, slow: str
) -> Callable[[StructBase, int], int]:
    def update(self: StructBase, n: int = 1) -> int:
        try:
            if n is _ONE:
                return self._steps[index][which]()  # type: ignore[index]  # None: unbound
            return step(self._pointers[index], _delta(n))
        except (IndexError, TypeError):
            return getattr(self._raindrops, slow)(index, n)  # type: ignore[no-any-return]

    return update


def _member_property(index: int, member: str) -> property:
    def get(self: StructBase) -> int:
        return self._raindrops[index]

    def set(self: StructBase, value: int) -> None:
        self._raindrops[index] = value

    return property(get, set, doc=f"The {member} counter.")


def _checked_members(members: str | Iterable[str]) -> tuple[str, ...]:
    names = tuple(members.replace(",", " ").split() if isinstance(members, str) else members)
    if not names:
        raise ValueError("a Struct needs at least one member")
    for member in names:
        if not isinstance(member, str):
            raise TypeError(f"member names must be str, not {type(member).__name__}")
        if not member.isidentifier() or keyword.iskeyword(member) or member.startswith("_"):
            raise ValueError(f"invalid member name {member!r}: use a public Python identifier")
        if member in _RESERVED:
            raise ValueError(f"member name {member!r} clashes with a Struct method")
    duplicates = sorted({member for member in names if names.count(member) > 1})
    if duplicates:
        raise ValueError(f"duplicate member names: {', '.join(duplicates)}")
    generated = {f"{verb}_{member}" for member in names for verb in ("incr", "decr")}
    clashes = sorted(generated.intersection(names))
    if clashes:
        raise ValueError(f"member names clash with generated methods: {', '.join(clashes)}")
    return names


def Struct(class_name: str, members: str | Iterable[str]) -> type[StructBase]:
    """Makes a class whose instances hold one shared counter per member.

    `Stats = Struct("Stats", "calling writing")` gives `Stats()` with
    `incr_calling(n=1)`, `decr_calling(n=1)`, a `calling` property (settable) and
    `to_dict()`; `Stats(name="/x")` puts the counters in a named segment.
    """
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise ValueError(f"invalid class name {class_name!r}")
    names = _checked_members(members)
    namespace: dict[str, Any] = {"MEMBERS": names, "__slots__": (), "__module__": __name__}
    for index, member in enumerate(names):
        for verb, which, step in (("incr", _INCR, _incr), ("decr", _DECR, _decr)):
            method = _member_updater(index, which, step, verb)
            method.__name__ = f"{verb}_{member}"
            method.__doc__ = (
                f"Atomically {verb}ements {member} by n (default 1); returns the new value."
            )
            namespace[method.__name__] = method
        namespace[member] = _member_property(index, member)
    return type(class_name, (StructBase,), namespace)
