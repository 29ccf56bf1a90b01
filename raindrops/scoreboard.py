"""The middleware's shared counters: per-process slots plus server-wide totals.

Each worker process claims a slot (raindrops.slots) for its own `calling` and
`writing`; readers add up the slots of live processes only, so a worker killed
in the middle of a request stops counting at once (raindrops' `calling` stays
raised forever). Totals (5xx responses, exceptions, busy time) and the
requests and durations by method and code (raindrops.series) are shared
counters that survive worker restarts.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from raindrops import _native, segments
from raindrops._process import PROCESS, PerProcess, at_fork_in_child, start_ticks
from raindrops.counters import Raindrops
from raindrops.routes import COUNTERS as ROUTE_COUNTERS
from raindrops.routes import RouteTable
from raindrops.series import COUNTERS as SERIES_COUNTERS
from raindrops.series import (
    DEFAULT_BUCKETS,
    DESCRIPTORS_MAX,
    SeriesTable,
    SeriesTotals,
    checked_buckets,
)
from raindrops.slots import ProcessSlots

_log = logging.getLogger(__name__)
SLOTS_MAX = 256
_SLOT_CALLING, _SLOT_WRITING, _SLOT_CAPACITY = 1, 2, 3  # after the owner word
SLOT_FIELDS = 4
# Slots come first: a snapshot reads in index order, gauges before totals
# (the native side moves totals before gauges), so no read undercounts.
_FIRST_SLOT = 0
_ERRORS = SLOTS_MAX * SLOT_FIELDS
_EXCEPTIONS, _BUSY_US, _SERIES = _ERRORS + 1, _ERRORS + 2, _ERRORS + 3
_ROUTES = _SERIES + SERIES_COUNTERS
COUNTERS = _ROUTES + ROUTE_COUNTERS


# What a request does to the board, given by this module so that servers never call native code.
Board = _native.CounterPointer
"""A prepared pointer to this process's native board (slot gauges and totals)."""
Series = _native.CounterPointer
"""A prepared pointer to one (method, code) entry of the table (SeriesTable.pointer)."""
enter: Callable[[Board], None] = _native.board_enter
"""A request enters the application: calling + 1."""
respond: Callable[[Board], None] = _native.board_respond
"""The application returned before its response started: calling - 1, writing + 1."""
respond_counted: Callable[[Board, Series], None] = _native.board_respond_counted
"""The application returned and its response started: counted in its series, then calling - 1,
writing + 1."""


def _duration_update(
    small: Callable[[Board, Series, int], None], large: Callable[[Board, Series, int], None]
) -> Callable[[Board, Series, int], None]:
    """Passes durations up to SMALL_INT_MAX us (35 minutes) without a c_uint64 conversion."""
    limit = _native.SMALL_INT_MAX

    def update(board: Board, series: Series, elapsed_us: int) -> None:
        if elapsed_us <= limit:
            small(board, series, elapsed_us)
        else:
            large(board, series, elapsed_us)

    return update


leave = _duration_update(_native.board_leave, _native.board_leave_long)
"""The body is closed after respond_counted: writing - 1, the duration observed."""
SMALL_INT_MAX = _native.SMALL_INT_MAX
leave_small: Callable[[Board, Series, int], None] = _native.board_leave
"""leave() for durations up to SMALL_INT_MAX us, without the check: for hot paths that check."""
leave_counting = _duration_update(_native.board_leave_counting, _native.board_leave_counting_long)
"""The body is closed after respond (the response started late): counted, writing - 1, the
duration observed."""
fail = _duration_update(_native.board_fail, _native.board_fail_long)
"""The application raised: counted in `series` (a 500) and as an exception, calling - 1."""

# The same steps for a request that holds a slot of this process's table of requests in flight
# (zig/requests.zig), which keeps its board, series and start time natively: the middleware
# passes the request's token, not the descriptors and a duration.
NO_SLOT = _native.NO_SLOT
request_respond: Callable[[int, Series | None], None] = _native.request_respond
"""respond (series None) or respond_counted, for the request of that token."""
request_leave: Callable[[int, Series | None], None] = _native.request_leave
"""leave, or leave_counting in the given series if respond had none; the slot is freed. A
second call, or a call with a token no longer in flight, changes nothing."""
request_fail: Callable[[int, Series], None] = _native.request_fail
"""fail, for the request of that token; the slot is freed."""
request_respond_numbered: Callable[[int], None] = _native.request_respond_numbered
"""request_respond with the series by number: token | Bound.numbered(method, status)."""
request_leave_steps = _native.request_leave_steps
"""request_leave(token, None) of each token as a call without arguments, by token."""
at_fork_in_child(_native.requests_reset)  # a parent's requests in flight are not the child's


class Totals(NamedTuple):
    calling: int
    writing: int
    workers: int
    requests: int
    errors: int
    """Responses with a 5xx status (an exception out of the application is a 500)."""
    exceptions: int
    busy_seconds: float
    series: tuple[SeriesTotals, ...]
    buckets: tuple[float, ...]
    """The series' histogram bounds in seconds (+Inf follows)."""
    capacity: int | None = None
    """Requests the live workers can hold at once (raindrops.capacity); None if one is unknown."""


class Scoreboard:
    """Counters of one server (or one mount of the middleware), shared by its workers."""

    def __init__(
        self,
        *,
        name: str | None = None,
        mode: int = 0o600,
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        self.counters = Raindrops(COUNTERS, name=name, mode=mode)
        self.series = SeriesTable(self.counters, _SERIES, _ERRORS, checked_buckets(buckets))
        self.routes = RouteTable(self.counters, _ROUTES)
        self.slots = ProcessSlots(self.counters, _FIRST_SLOT, SLOTS_MAX, SLOT_FIELDS)
        self._board: PerProcess[tuple[_native.Board, Board, int]] = PerProcess()

    @property
    def name(self) -> str | None:
        return self.counters.name

    def board(self) -> Board:
        """This process's board for enter/respond/leave/fail; claims a slot first after a fork."""
        return self._board.get(self._claim)[1]

    def declare_capacity(self, requests: int) -> None:
        """Records how many requests this process can hold at once (0: unknown) in its slot."""
        if not isinstance(requests, int) or requests < 0:
            raise ValueError(f"capacity must be an int >= 0, not {requests!r}")
        base = self._board.get(self._claim)[2]
        self.counters[base + _SLOT_CAPACITY] = requests

    def _claim(self) -> tuple[_native.Board, Board, int]:
        pid = PROCESS.pid
        start = start_ticks(pid) or 0
        base = self.slots.claim(pid, start)
        counters = self.counters
        board = _native.Board(
            calling=counters.address(base + _SLOT_CALLING),
            writing=counters.address(base + _SLOT_WRITING),
            errors=counters.address(_ERRORS),
            exceptions=counters.address(_EXCEPTIONS),
            busy_us=counters.address(_BUSY_US),
            numbered=_native.address_of(self.series.descriptors),
            numbered_count=DESCRIPTORS_MAX,
        )
        # the pointer is valid while `board` lives
        return board, _native.descriptor_pointer(board), base

    def enter_step(self) -> Callable[[], object]:
        """enter() of this process's board as a call without arguments: a native update slot
        bound to its `calling` counter (or the pointer-passing call when no slot is free). The
        caller keeps this scoreboard alive while it uses the step."""
        base = self._board.get(self._claim)[2]
        slot = _native.slot_claim(
            _native.CounterPointer(self.counters.address(base + _SLOT_CALLING))
        )
        if slot is None:
            return functools.partial(enter, self.board())
        return _native.slot_steps(slot)[0]

    def routed_series(self, route: object, method: str, status: str | int) -> Series:
        """The series of a request whose route the middleware's `route=` callable named."""
        return self.series.pointer(method, status, self.routes.index(route))

    def totals(self) -> Totals:
        values = self.counters.to_list()
        calling = writing = workers = capacity = 0
        capacity_known = True
        for base in self.slots.live(values):
            workers += 1
            calling += values[base + _SLOT_CALLING]
            writing += values[base + _SLOT_WRITING]
            capacity += values[base + _SLOT_CAPACITY]
            capacity_known = capacity_known and values[base + _SLOT_CAPACITY] > 0
        series = tuple(self.series.read(values, self.routes.names(values)))
        return Totals(
            calling=calling,
            writing=writing,
            workers=workers,
            requests=sum(entry.requests for entry in series),
            errors=values[_ERRORS],
            exceptions=values[_EXCEPTIONS],
            busy_seconds=values[_BUSY_US] / 1e6,
            series=series,
            buckets=self.series.buckets,
            capacity=capacity if capacity_known and workers else None,
        )

    def close(self) -> None:
        self.counters.close()


class Bound:
    """What a middleware counts with in this process: its board, its series' pointers and
    numbers, and its argument-free enter steps. A plain class with slots: hot paths read its
    attributes, which costs less than a NamedTuple's."""

    __slots__ = (
        "scoreboard",
        "board",
        "series",
        "routed",
        "by_status",
        "enter",
        "request_enter",
        "numbered",
        "numbered_by_status",
    )

    def __init__(self, scoreboard: Scoreboard, *, numbered: bool = True) -> None:
        self.scoreboard = scoreboard
        """Kept alive by each request that counts with this Bound: the native slot of a request
        in flight points into its board and series descriptors."""
        self.board: Board = scoreboard.board()
        table = scoreboard.series
        self.series: Callable[[str, str | int], Series] = table.pointer
        """(method, status line) -> the prepared pointer of its entry."""
        self.routed: Callable[[object, str, str | int], Series] = scoreboard.routed_series
        """(route name, method, status line) -> the prepared pointer of its entry."""
        self.by_status: dict[str, dict[str | int, Series]] = table.by_status
        """What `series` has already answered (method -> status -> pointer), read by hot paths
        without a call."""
        self.enter: Callable[[], object] = scoreboard.enter_step()
        """enter(board) without arguments (Scoreboard.enter_step)."""
        self.request_enter: Callable[[], int] = _native.request_enter_step(self.board)
        """calling + 1, and a slot of this process's table of requests in flight: its token, or
        NO_SLOT when every slot is taken (then the steps above count the request). Without
        arguments where a board slot was free."""
        self.numbered: Callable[[str, str | int], int] = table.numbered
        """(method, status line) -> its series' number for request_respond_numbered."""
        self.numbered_by_status: dict[str, dict[str | int, int]] = (
            table.numbered_by_status if numbered else {}
        )
        """What `numbered` has already answered (method -> status -> number), read by the WSGI
        middleware's per-request path; always empty for a middleware that counts by route."""


class ServerBoard:
    """A server's scoreboard, found as segments.ServerWide finds it, and this process's board in
    it: what a middleware (WSGI or ASGI) counts requests with.

    `bound` is public so that a per-request path can read `bound.value` when `bound.pid` is
    this process's, without a call.
    """

    def __init__(
        self,
        path: str,
        *,
        given: Scoreboard | None = None,
        name: str | None = None,
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
        routed: bool = False,
    ) -> None:
        self.routed = routed
        """Whether its requests are counted by route: then no series is reached by number."""
        self.name = name
        """The segment's name when one was given (name= or RAINDROPS_NAME), else None."""
        self.found = segments.ServerWide(
            functools.partial(Scoreboard, buckets=buckets),
            given=given,
            name=name,
            kind="mw",
            path=path,
            prepare=Scoreboard.board,
        )
        self.bound: PerProcess[Bound] = PerProcess()

    @classmethod
    def configured(
        cls,
        path: str,
        given: Scoreboard | None,
        name: str | None,
        buckets: Iterable[float],
        routed: bool,
    ) -> ServerBoard:
        """The middleware's own: `name`, else RAINDROPS_NAME, else found by itself."""
        name = name or os.environ.get("RAINDROPS_NAME") or None
        return cls(path, given=given, name=name, buckets=checked_buckets(buckets), routed=routed)

    def totals(self, server: Mapping[str, Any], capacity: Callable[[], int]) -> Totals:
        """The server's totals, read by one of its workers: the reader claims its own slot (with
        its capacity) first, as its first request would, so that a worker serving only the
        endpoint still tells its capacity. `server` says whether it runs several processes."""
        self.bind(server, capacity)
        return self.found.get(server).totals()

    def bind(self, server: Mapping[str, Any], capacity: Callable[[], int]) -> Bound:
        """This process's board, claimed on its first request with this worker's capacity."""
        return self.bound.get(lambda: self._claim(server, capacity))

    def _claim(self, server: Mapping[str, Any], capacity: Callable[[], int]) -> Bound:
        scoreboard = self.found.get(server)
        bound = Bound(scoreboard, numbered=not self.routed)
        scoreboard.declare_capacity(_capacity_or_unknown(capacity))
        return bound


def _capacity_or_unknown(capacity: Callable[[], int]) -> int:
    """The worker's capacity; unknown (0) if finding it fails: a request never fails for it."""
    try:
        return capacity()
    except Exception as error:
        _log.warning(
            "raindrops: this worker's capacity is unknown (%s: %s)", type(error).__name__, error
        )
        return 0
