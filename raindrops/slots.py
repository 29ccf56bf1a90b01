"""Per-process slots in a shared segment: what each live process holds for itself.

A slot starts with an owner word (pid in the low bits, start time above them,
so one compare-and-swap claims it: two processes claiming at once never share
a slot) and then the owner's own fields. Readers add up the slots of live
processes only, so a process killed in the middle of something stops counting
at once. A slot whose process is gone is taken over by the next claimer, who
sets the top "claiming" bit, zeroes the fields and then writes its owner word;
readers skip a slot being claimed, and claimers judge it by the pid in it.
"""

from __future__ import annotations

from collections.abc import Iterator

from raindrops import _native
from raindrops._process import start_ticks
from raindrops.counters import Raindrops

PID_BITS = 22  # Linux pids are below 2**22 (PID_MAX_LIMIT)
START_TICKS_MAX = (1 << (63 - PID_BITS)) - 1  # 697 years of 100 Hz ticks
CLAIMING = 1 << 63
_PID_MASK = (1 << PID_BITS) - 1


def slot_owner(pid: int, start: int) -> int:
    """The owner word of a slot held by process `pid` that started at `start` ticks."""
    if not 0 < pid <= _PID_MASK:
        raise ValueError(f"pid {pid} is outside 1..{_PID_MASK}")
    if not 0 <= start <= START_TICKS_MAX:
        raise ValueError(f"start ticks {start} is outside 0..{START_TICKS_MAX}")
    return start << PID_BITS | pid


def owner_alive(owner: int) -> bool:
    """Whether the process an owner word names (claiming or not) still runs."""
    owner &= ~CLAIMING
    return owner != 0 and start_ticks(owner & _PID_MASK) == owner >> PID_BITS


class ProcessSlots:
    """`count` slots of `fields` counters each (the owner word first) from index `first`."""

    def __init__(self, counters: Raindrops, first: int, count: int, fields: int) -> None:
        if count < 1 or fields < 2 or first < 0:
            raise ValueError(f"slots: first {first}, count {count}, fields {fields}")
        self.counters = counters
        self.first = first
        self.count = count
        self.fields = fields

    @property
    def end(self) -> int:
        """The index after the last slot."""
        return self.first + self.count * self.fields

    def claim(self, pid: int, start: int) -> int:
        """The base index of a slot for process (pid, start), its fields zeroed unless it was
        already this process's; RuntimeError when live processes hold every slot."""
        counters = self.counters
        mine = slot_owner(pid, start)
        for base in range(self.first, self.end, self.fields):
            owner_pointer = _native.CounterPointer(counters.address(base))
            owner = _native.compare_swap(owner_pointer, 0, mine | CLAIMING)
            if owner == mine:
                return base  # already ours: another object of this process
            if owner != 0:
                if owner_alive(owner):
                    continue  # a live process's slot, or one a live process is claiming
                if _native.compare_swap(owner_pointer, owner, mine | CLAIMING) != owner:
                    continue  # another claimer took this dead slot first
            for field in range(base + 1, base + self.fields):
                counters[field] = 0
            counters[base] = mine
            return base
        raise RuntimeError(f"all {self.count} process slots are held by live processes")

    def live(self, values: list[int]) -> Iterator[int]:
        """Base indexes of the slots of live processes in a snapshot `values` of the segment."""
        for base in range(self.first, self.end, self.fields):
            owner = values[base]
            if owner != 0 and not owner & CLAIMING and owner_alive(owner):
                yield base
