"""Every counter rule of the API contract, in one process."""

from __future__ import annotations

import copy
import enum
import mmap
import pickle
import platform
import sys
from collections.abc import Callable
from typing import Any

import pytest

import raindrops
from raindrops import MAX, Raindrops, _native, counters


def test_constants() -> None:
    assert MAX == 2**64 - 1
    with open("/sys/devices/system/cpu/cpu0/cache/index0/coherency_line_size") as size:
        line = size.read().strip()
    assert int(line) == raindrops.SIZE
    assert raindrops.PAGE_SIZE == mmap.PAGESIZE


def test_new_counters_start_at_zero() -> None:
    with Raindrops(5) as rd:
        assert len(rd) == 5 and rd.size == 5
        assert rd.to_list() == [0] * 5
        assert list(rd) == [0] * 5
        assert rd.name is None


def test_incr_decr_return_the_new_value() -> None:
    with Raindrops(2) as rd:
        assert rd.incr(0) == 1
        assert rd.incr(0, 10) == 11
        assert rd.decr(0) == 10
        assert rd.decr(0, 4) == 6
        assert rd.incr(1, 0) == 0
        assert rd.to_list() == [6, 0]


def test_wraps_modulo_2_64() -> None:
    with Raindrops(1) as rd:
        rd[0] = MAX
        assert rd.incr(0) == 0
        assert rd.decr(0) == MAX
        assert rd.incr(0, MAX) == MAX - 1
        rd[0] = 0
        assert rd.decr(0, MAX) == 1


def test_item_assignment_and_negative_indexes() -> None:
    with Raindrops(3) as rd:
        rd[0] = 7
        rd[-1] = 9
        assert rd[2] == 9 and rd[-3] == 7
        assert rd.incr(-2) == 1
        assert rd.to_list() == [7, 1, 9]
        rd[True] = 4
        assert rd[1] == 4


def test_counters_are_one_cache_line_apart() -> None:
    with Raindrops(3) as rd:
        addresses = [rd._pointer(index).value for index in range(3)]
        gaps = [b - a for a, b in zip(addresses, addresses[1:], strict=False)]
        assert gaps == [raindrops.SIZE] * 2
        assert all(address % raindrops.SIZE == 0 for address in addresses)


def test_capa_fills_the_pages() -> None:
    with Raindrops(1) as rd:
        assert rd.capa == raindrops.PAGE_SIZE // raindrops.SIZE - 1
    with Raindrops(100) as rd:
        assert rd.capa >= 100
        assert (rd.capa + 1) * raindrops.SIZE % raindrops.PAGE_SIZE == 0


def test_shrink_keeps_values_below_and_grow_past_capa_keeps_them() -> None:
    with Raindrops(4) as rd:
        for index in range(4):
            rd[index] = index + 10
        rd.size = 2
        assert rd.to_list() == [10, 11]
        with pytest.raises(IndexError):
            rd[2]
        capa = rd.capa
        rd.size = capa * 3
        assert rd.size == capa * 3 and rd.capa >= capa * 3
        assert rd[0] == 10 and rd[1] == 11
        assert rd[2] == 0 and rd[3] == 0, "counters dropped by the shrink start fresh"
        assert rd.incr(capa * 3 - 1, 5) == 5
        assert rd[-1] == 5


def test_large_sizes_use_the_unprepared_path() -> None:
    size = (1 << 16) + 10
    with Raindrops(size) as rd:
        assert rd.incr(size - 1) == 1
        assert rd.incr(0) == 1
        rd[-1] = 3
        assert rd[size - 1] == 3
        assert sum(rd.to_list()) == 4


def test_copy_is_a_private_anonymous_snapshot() -> None:
    with Raindrops(3, name=None) as rd:
        rd[0], rd[2] = 1, 3
        duplicate = copy.copy(rd)
        deep = copy.deepcopy(rd)
        assert duplicate.to_list() == [1, 0, 3] == deep.to_list()
        assert duplicate.name is None
        rd.incr(0)
        duplicate.incr(2)
        assert rd.to_list() == [2, 0, 3]
        assert duplicate.to_list() == [1, 0, 4]
        duplicate.close()
        deep.close()


def test_close_is_idempotent_and_everything_after_it_raises() -> None:
    rd = Raindrops(2)
    rd.close()
    rd.close()
    assert rd.closed
    assert "closed" in repr(rd)
    for operation in (
        lambda: rd.incr(0),
        lambda: rd.decr(0, 2),
        lambda: rd[0],
        lambda: rd.__setitem__(0, 1),
        lambda: len(rd),
        lambda: rd.to_list(),
        lambda: rd.size,
        lambda: rd.capa,
        lambda: setattr(rd, "size", 3),
    ):
        with pytest.raises(ValueError, match="closed"):
            operation()


def test_pickle_is_refused() -> None:
    with Raindrops(1) as rd, pytest.raises(TypeError, match="pickled"):
        pickle.dumps(rd)


def test_unlink_of_anonymous_is_refused() -> None:
    with Raindrops(1) as rd, pytest.raises(ValueError, match="anonymous"):
        rd.unlink()


# The invalid space: (description, action, expected exception, text the message must contain).
BAD_INPUTS: list[tuple[str, Callable[[Raindrops], Any], type[BaseException], str]] = [
    ("index == size", lambda rd: rd.incr(3), IndexError, "3"),
    ("index past size", lambda rd: rd.incr(1000), IndexError, "1000"),
    ("index below -size", lambda rd: rd.incr(-4), IndexError, "-4"),
    ("huge index", lambda rd: rd.incr(2**70), IndexError, str(2**70)),
    ("get past size", lambda rd: rd[3], IndexError, "3"),
    ("get below -size", lambda rd: rd[-4], IndexError, "-4"),
    ("huge get", lambda rd: rd[2**70], IndexError, str(2**70)),
    ("tuple get", lambda rd: rd[(0,)], TypeError, "tuple"),
    ("list get", lambda rd: rd[[0]], TypeError, "list"),
    ("set past size", lambda rd: rd.__setitem__(5, 1), IndexError, "5"),
    ("decr past size", lambda rd: rd.decr(3), IndexError, "3"),
    ("float index", lambda rd: rd.incr(1.0), TypeError, "float"),
    ("str index", lambda rd: rd.incr("0"), TypeError, "str"),
    ("None index", lambda rd: rd.incr(None), TypeError, "NoneType"),
    ("slice index", lambda rd: rd[0:1], TypeError, "slice"),
    ("list index", lambda rd: rd.decr([0]), TypeError, "list"),
    ("float get", lambda rd: rd[0.0], TypeError, "float"),
    ("negative n", lambda rd: rd.incr(0, -1), ValueError, "-1"),
    ("negative n decr", lambda rd: rd.decr(0, -5), ValueError, "-5"),
    ("n above MAX", lambda rd: rd.incr(0, 2**64), ValueError, str(2**64)),
    ("huge n", lambda rd: rd.decr(0, 2**100), ValueError, str(2**100)),
    ("float n", lambda rd: rd.incr(0, 1.0), TypeError, "float"),
    ("float n 2.5", lambda rd: rd.incr(0, 2.5), TypeError, "float"),
    ("str n", lambda rd: rd.incr(0, "1"), TypeError, "str"),
    ("None n", lambda rd: rd.decr(0, None), TypeError, "NoneType"),
    ("negative value", lambda rd: rd.__setitem__(0, -5), ValueError, "counter value -5 is outside"),
    ("minus one", lambda rd: rd.__setitem__(0, -1), ValueError, "counter value -1 is outside"),
    ("value above MAX", lambda rd: rd.__setitem__(0, MAX + 1), ValueError, f"value {MAX + 1} is"),
    ("float value", lambda rd: rd.__setitem__(0, 1.5), TypeError, "float"),
    ("str value", lambda rd: rd.__setitem__(0, "7"), TypeError, "str"),
    ("None value", lambda rd: rd.__setitem__(0, None), TypeError, "NoneType"),
    ("size 0", lambda rd: setattr(rd, "size", 0), ValueError, "0"),
    ("negative size", lambda rd: setattr(rd, "size", -1), ValueError, "-1"),
    ("absurd size", lambda rd: setattr(rd, "size", 2**62), ValueError, str(2**62)),
    ("float size", lambda rd: setattr(rd, "size", 2.0), TypeError, "float"),
    ("str size", lambda rd: setattr(rd, "size", "3"), TypeError, "str"),
    ("after close", lambda rd: (rd.close(), rd.incr(0)), ValueError, "closed"),
    ("get after close", lambda rd: (rd.close(), rd[0]), ValueError, "closed"),
    ("set after close", lambda rd: (rd.close(), rd.__setitem__(0, 1)), ValueError, "closed"),
    ("bad n after close", lambda rd: (rd.close(), rd.incr(0, 2)), ValueError, "closed"),
]


@pytest.mark.parametrize(
    ("action", "expected", "mentions"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_raises_and_changes_nothing(
    action: Callable[[Raindrops], Any], expected: type[BaseException], mentions: str
) -> None:
    rd = Raindrops(3)
    rd[0] = 42
    with pytest.raises(expected) as caught:
        action(rd)
    assert mentions in str(caught.value)
    if not rd.closed:
        assert rd.to_list() == [42, 0, 0]
        assert rd.size == 3
    rd.close()


BAD_CONSTRUCTORS: list[tuple[str, Callable[[], Any], type[BaseException], str]] = [
    ("size 0", lambda: Raindrops(0), ValueError, "0"),
    ("negative size", lambda: Raindrops(-3), ValueError, "-3"),
    ("absurd size", lambda: Raindrops(2**64), ValueError, str(2**64)),
    ("just past the limit", lambda: Raindrops((1 << 24) + 1), ValueError, str((1 << 24) + 1)),
    ("float size", lambda: Raindrops(2.9), TypeError, "float"),
    ("None size", lambda: Raindrops(None), TypeError, "NoneType"),
    ("str size", lambda: Raindrops("4"), TypeError, "str"),
    ("name without slash", lambda: Raindrops(1, name="app"), ValueError, "'app'"),
    ("name with two slashes", lambda: Raindrops(1, name="/a/b"), ValueError, "'/a/b'"),
    ("bare slash", lambda: Raindrops(1, name="/"), ValueError, "'/'"),
    ("dot name", lambda: Raindrops(1, name="/.."), ValueError, "'/..'"),
    ("name with NUL", lambda: Raindrops(1, name="/a\0b"), ValueError, "a\\x00b"),
    ("name too long", lambda: Raindrops(1, name="/" + "x" * 256), ValueError, "xxx"),
    ("bytes name", lambda: Raindrops(1, name=b"/x"), TypeError, "bytes"),
    (
        "mode too wide",
        lambda: Raindrops(1, name="/raindrops-never", mode=0o4777),
        ValueError,
        "0o4777",
    ),
    ("negative mode", lambda: Raindrops(1, name="/raindrops-never", mode=-1), ValueError, "-0o1"),
    (
        "open missing",
        lambda: Raindrops.open("/raindrops-does-not-exist"),
        FileNotFoundError,
        "does-not-exist",
    ),
    ("open bad name", lambda: Raindrops.open("nope"), ValueError, "'nope'"),
]


@pytest.mark.parametrize(
    ("action", "expected", "mentions"),
    [case[1:] for case in BAD_CONSTRUCTORS],
    ids=[case[0] for case in BAD_CONSTRUCTORS],
)
def test_bad_construction_raises(
    action: Callable[[], Any], expected: type[BaseException], mentions: str
) -> None:
    with pytest.raises(expected) as caught:
        action()
    assert mentions in str(caught.value)


def test_struct_members_and_methods() -> None:
    Stats = raindrops.Struct("Stats", ["calling", "writing"])
    assert Stats.MEMBERS == ("calling", "writing")
    assert raindrops.Struct("Other", "a, b c").MEMBERS == ("a", "b", "c")
    with Stats() as stats:
        assert stats.incr_calling() == 1
        assert stats.incr_calling(n=4) == 5
        assert stats.decr_calling() == 4
        assert stats.incr_writing(2) == 2
        assert stats.decr_writing(n=2) == 0
        stats.writing = 3
        assert stats.calling == 4 and stats.writing == 3
        assert stats.to_dict() == {"calling": 4, "writing": 3}
        assert stats[0] == 4
        stats[1] = 8
        assert stats.writing == 8
        assert repr(stats) == "<Stats calling=4 writing=8>"
        duplicate = copy.copy(stats)
        stats.incr_calling()
        assert duplicate.to_dict() == {"calling": 4, "writing": 8}
        duplicate.close()
    with pytest.raises(ValueError, match="closed"):
        stats.incr_calling()
    with pytest.raises(ValueError, match="closed"):
        _ = stats.calling


def test_a_struct_whose_raindrops_was_closed_refuses_updates_like_raindrops() -> None:
    """Closing `struct.raindrops` closes the struct: its generated methods must not go on
    counting through pointers of their own."""
    Stats = raindrops.Struct("Stats", "calling writing")
    stats = Stats()
    assert stats.incr_calling() == 1 and stats.incr_writing(3) == 3
    stats.raindrops.close()
    for operation in (
        stats.incr_calling,
        stats.decr_calling,
        lambda: stats.incr_writing(2),
        lambda: stats.decr_writing(n=2**40),
        lambda: stats.calling,
        stats.to_dict,
    ):
        with pytest.raises(ValueError, match="closed"):
            operation()
    stats.close()  # idempotent, as Raindrops.close() is


def test_struct_initial_values_and_named_segment(shm_name: Callable[[], str]) -> None:
    Stats = raindrops.Struct("Stats", "calling writing")
    name = shm_name()
    with Stats(3, name=name) as stats:
        assert stats.to_dict() == {"calling": 3, "writing": 0}
        with Raindrops.open(name) as raw:
            raw.incr(1)
        assert stats.writing == 1
        assert stats.raindrops.name == name
    with pytest.raises(TypeError, match="at most 2"):
        Stats(1, 2, 3)


BAD_STRUCTS: list[tuple[str, Any, type[BaseException]]] = [
    ("empty", [], ValueError),
    ("empty string", "", ValueError),
    ("not identifier", ["a-b"], ValueError),
    ("keyword", ["class"], ValueError),
    ("private", ["_x"], ValueError),
    ("clashes with a method", ["to_dict"], ValueError),
    ("clashes with generated", ["x", "incr_x"], ValueError),
    ("duplicate", ["a", "a"], ValueError),
    ("non-str member", [1], TypeError),
]


@pytest.mark.parametrize(
    ("members", "expected"), [c[1:] for c in BAD_STRUCTS], ids=[c[0] for c in BAD_STRUCTS]
)
def test_bad_struct_definitions(members: Any, expected: type[BaseException]) -> None:
    with pytest.raises(expected):
        raindrops.Struct("Bad", members)


def test_struct_bad_increments() -> None:
    Stats = raindrops.Struct("Stats", "calling")
    with Stats() as stats:
        with pytest.raises(ValueError, match="-1"):
            stats.incr_calling(-1)
        with pytest.raises(TypeError, match="float"):
            stats.decr_calling(0.5)
        with pytest.raises(ValueError, match="counter value -1 is outside"):
            stats.calling = -1
        assert stats.calling == 0
    with pytest.raises(ValueError, match="counter value -1 is outside"):
        Stats(-1)


@pytest.mark.parametrize(
    "value", [0, 1, 2**31 - 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, MAX - 1, MAX]
)
def test_values_around_the_small_int_fast_path_are_exact(value: int) -> None:
    """Small values skip ctypes' c_uint64 conversion; both sides of the boundary must be exact."""
    with Raindrops(2) as rd:
        rd[0] = value
        assert rd[0] == value
        assert rd.incr(1, value) == value
        assert rd.decr(1, value) == 0
        assert rd.incr(1, 5) == 5 and rd.decr(1, value) == (5 - value) % 2**64


class Position(enum.IntEnum):
    LAST = 2


def test_reads_take_any_int_index_as_a_list_does() -> None:
    with Raindrops(3) as rd:
        rd[1], rd[2] = 4, 9
        assert rd[True] == 4 and rd[Position.LAST] == 9 and rd[-1] == 9 and rd[-3] == 0


def test_reads_are_plain_loads_exactly_on_x86_64(monkeypatch: pytest.MonkeyPatch) -> None:
    """rd[i] makes no native call where an aligned 8-byte load is atomic and as ordered as the
    native sequentially consistent load (x86_64); elsewhere (aarch64's LDR may be reordered
    with other loads, where the native load is LDAR) it keeps the native call."""
    x86_64 = platform.machine().lower() in ("x86_64", "amd64") and sys.maxsize > 2**32
    assert x86_64 == _native.PLAIN_LOADS
    with Raindrops(3) as rd:
        rd[2] = 7
        native_reads: list[object] = []

        def load(pointer: object) -> int:
            native_reads.append(pointer)
            return 7

        monkeypatch.setattr(counters, "_load", load)
        assert rd[2] == 7 and rd[-1] == 7
        assert len(native_reads) == (0 if x86_64 else 2)


def test_default_updates_bind_a_native_slot_at_a_counters_first_use() -> None:
    """incr/decr with the default n call an argument-free native function bound to the counter
    (half the cost of a call passing a pointer); an explicit n passes the pointer."""
    with Raindrops(3) as rd:
        assert rd.incr(1) == 1 and rd.decr(-2) == 0 and rd.incr(1) == 1
        assert list(rd._slots) == [1]
        assert rd._steps[0] is None and rd._steps[2] is None
        assert rd.incr(0, 5) == 5 and rd.decr(0, 2) == 3
        assert list(rd._slots) == [1]
        assert rd.to_list() == [3, 1, 0]


def test_update_slots_are_freed_with_their_raindrops() -> None:
    """More Raindrops than slots, one after another: each gets a slot that the finalizer frees."""
    for _ in range(_native.SLOTS_MAX + 10):
        rd = Raindrops(1)
        assert rd.incr(0) == 1 and rd.decr(0) == 0
        assert len(rd._slots) == 1, "no free slot: an unreachable Raindrops kept its slot"
        del rd


def test_counters_beyond_the_free_slots_count_exactly() -> None:
    """Once every slot is bound, default updates pass the counter's pointer instead."""
    size = _native.SLOTS_MAX + 40
    with Raindrops(size) as rd:
        for index in range(size):
            assert rd.incr(index) == 1
        for index in range(0, size, 2):
            assert rd.decr(index) == 0
        assert rd.to_list() == [index % 2 for index in range(size)]
        assert 0 < len(rd._slots) <= _native.SLOTS_MAX
        with Raindrops(1) as other:
            assert other.incr(0) == 1 and other.decr(0) == 0 and other.incr(0) == 1
            assert not other._slots
    del rd  # close() keeps the slots (a thread may still be calling them): unreachable frees them
    with Raindrops(1) as after:
        assert after.incr(0) == 1 and len(after._slots) == 1, "the big one freed its slots"


def test_a_counter_dropped_by_a_shrink_keeps_its_slot_when_it_returns() -> None:
    with Raindrops(4) as rd:
        assert rd.incr(3) == 1
        slots = dict(rd._slots)
        rd.size = 2
        with pytest.raises(IndexError):
            rd.incr(3)
        rd.size = rd.capa * 2
        assert rd.incr(3) == 1, "a counter dropped by a shrink starts at 0"
        assert rd._slots == slots
