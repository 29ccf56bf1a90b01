"""Counter, Gauge and Histogram: prometheus_client's API, values in the server's shared memory.

A metric is a family of children, one per label set (an unlabelled metric has
one, made at its first use). labels() returns this process's child for a
label set, from a dict when it met the set before (pass label values as str
for that path: other types are converted with str() first, as
prometheus_client does); otherwise it finds or claims the set's entry in the
shared table (raindrops.metrics.table) and refuses a set past
`max_label_sets` (default 1000) with CardinalityError, a ValueError naming
the metric and the values. A child's methods are one native call with
prepared arguments: an atomic f64 add or store on the child's word, or one
histogram observation (zig/float.zig). A Gauge child is in this process's
column (raindrops.metrics.gauges), claimed again after a fork.

Whatever cannot be shared (no room in /dev/shm, every gauge slot held by a
live process) never fails a call: the child counts in private memory that no
endpoint shows, logs once and flags the metric as degraded.
"""

from __future__ import annotations

import logging
import math
import os
import time
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from raindrops import _native, segments
from raindrops._process import PROCESS, PerProcess, ProcessLock
from raindrops.counters import SIZE, Raindrops
from raindrops.metrics import gauges, validation
from raindrops.metrics.binding import Shared
from raindrops.metrics.registry import REGISTRY, Reading, Registry
from raindrops.metrics.render import Family, Labels, Sample, go_float
from raindrops.metrics.table import (
    HEADER_WORDS,
    Layout,
    MetricSegment,
    Table,
    TableFull,
    encode,
    walk,
)
from raindrops.metrics.timing import ExceptionCounter, InProgress, Timer

LABEL_SETS_DEFAULT = 1000
"""Label sets a metric may have unless max_label_sets says otherwise."""
LABEL_SETS_MAX = 100_000
_ONE = 1  # `amount is _ONE` takes the no-conversion path for the default amount
_INF = math.inf
_add_one = _native.float_add_one
_sub_one = _native.float_sub_one
_add = _native.float_add
_store = _native.float_store
_observe = _native.buckets_observe
_DETACH_ERRORS = (TableFull, *segments.SEGMENT_ERRORS)
"""What sharing a child may fail with (the caller's own errors are raised before): the child
counts in private memory instead."""
_log = logging.getLogger(__name__)


class CardinalityError(ValueError):
    """A new label set past a metric's max_label_sets."""


_DUMMY: list[Raindrops] = []


def _dummy_words() -> Raindrops:
    """Private words that detached children count into; nothing ever reads them."""
    if not _DUMMY:
        _DUMMY.append(Raindrops(validation.BUCKETS_MAX + 4))
    return _DUMMY[0]


def _floats(values: list[int]) -> array[float]:
    """Every word of a snapshot read as an f64 (value words hold f64 bits)."""
    return array("d", array("Q", values).tobytes())


C = TypeVar("C", bound="_Child")


class _Child:
    """One label set of a metric in this process; keeps its segment mapped while it lives."""

    __slots__ = ("_metric", "_labels", "_segment", "_pointer")

    def __init__(self, metric: _Metric[Any], labels: tuple[str, ...]) -> None:
        self._metric = metric
        self._labels = labels
        self._segment: object = None
        self._pointer = _native.CounterPointer(0)

    def __repr__(self) -> str:
        labels = dict(zip(self._metric.labelnames, self._labels, strict=True))
        return f"<{type(self).__name__} {self._metric.name} {labels}>"


class _Metric(Generic[C]):
    """What Counter, Gauge and Histogram share: names, labels, binding, registration."""

    kind: ClassVar[str] = ""
    child_class: ClassVar[type[_Child]]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        namespace: str = "",
        subsystem: str = "",
        unit: str = "",
        registry: Registry | None = REGISTRY,
        *,
        max_label_sets: int = LABEL_SETS_DEFAULT,
    ) -> None:
        self._name = validation.full_name(self.kind, name, namespace, subsystem, unit)
        self.documentation = validation.text(documentation, f"documentation of {self._name!r}")
        self.labelnames = validation.label_names(labelnames, self._reserved_labels(), self._name)
        self.max_label_sets = validation.positive_count(
            max_label_sets, f"max_label_sets of {self._name!r}", LABEL_SETS_MAX
        )
        if registry is not None and not isinstance(registry, Registry):
            raise TypeError(
                f"registry of {self._name!r} must be a raindrops.metrics.Registry or None, "
                f"not {type(registry).__name__}"
            )
        value_words, details, table_first = self._shape()
        self._layout = Layout(
            self.kind, self._name, self.labelnames, table_first, value_words, details
        )
        self._lock = ProcessLock()
        self._children: dict[tuple[str, ...], C] = {}
        self._default: C | None = None
        self._table: Table | None = None
        self._detached: str | None = None
        self._shared = Shared(self._layout)
        if registry is not None:
            registry.register(self)

    # What each kind says about itself.

    def _reserved_labels(self) -> tuple[str, ...]:
        return ()

    def _shape(self) -> tuple[int, str, int]:
        """(value words per entry, details that tell definitions apart, first table word)."""
        raise NotImplementedError

    def _bind(self, child: C, segment: MetricSegment, base: int) -> None:
        """Points `child` at entry `base` of `segment` in this process."""
        raise NotImplementedError

    def _bind_detached(self, child: C) -> None:
        """Points `child` at private words."""
        raise NotImplementedError

    def _samples(self, values: list[int], floats: array[float], reading: Reading) -> list[Sample]:
        raise NotImplementedError

    def sample_names(self) -> tuple[str, ...]:
        return (self._name,)

    # Names.

    @property
    def name(self) -> str:
        """The family name (a counter's without _total)."""
        return self._name

    def __repr__(self) -> str:
        return f"raindrops.metrics.{type(self).__name__}({self._name!r})"

    # Children.

    def labels(self, *values: object, **named: object) -> C:
        """The child of one label set, by position or by name, as prometheus_client's labels()."""
        key = self._named_values(named) if named and not values else values
        try:
            child = self._children.get(key)  # type: ignore[arg-type]
        except TypeError:  # an unhashable value: str() makes it a label below
            child = None
        if child is not None:
            return child
        labels = self._label_values(values, named)
        return self._children.get(labels) or self._child(labels)

    def _named_values(self, named: dict[str, object]) -> tuple[object, ...]:
        """The values in label name order, or () when the names are not the metric's."""
        if len(named) != len(self.labelnames):
            return ()
        try:
            return tuple([named[name] for name in self.labelnames])
        except KeyError:
            return ()

    def _label_values(
        self, values: tuple[object, ...], named: dict[str, object]
    ) -> tuple[str, ...]:
        names = self.labelnames
        if not names:
            raise ValueError(f"{self.kind} {self._name!r} has no label names: call its methods")
        if values and named:
            raise ValueError(f"labels() of {self._name!r}: give values by position or by name")
        if named:
            if set(named) != set(names):
                raise ValueError(
                    f"labels() of {self._name!r} takes the names {list(names)}, not {sorted(named)}"
                )
            values = tuple(named[name] for name in names)
        elif len(values) != len(names):
            raise ValueError(
                f"labels() of {self._name!r} takes {len(names)} values {list(names)}, "
                f"not {len(values)}: {values!r}"
            )
        return tuple(value if isinstance(value, str) else str(value) for value in values)

    def _child(self, labels: tuple[str, ...]) -> C:
        with self._lock.here():
            child = self._children.get(labels)
            if child is None:
                child = self._new_child(labels)
                self._children[labels] = child
            return child

    def _only(self) -> C:
        """The child of an unlabelled metric, made at its first use."""
        child = self._default
        if child is not None:
            return child
        if self.labelnames:
            raise ValueError(
                f"{self.kind} {self._name!r} has label names {list(self.labelnames)}: "
                "call labels(...) first"
            )
        with self._lock.here():
            if self._default is None:
                self._default = self._new_child(())
            return self._default

    def _child_object(self, labels: tuple[str, ...]) -> C:
        return self.child_class(self, labels)  # type: ignore[return-value]

    def _new_child(self, labels: tuple[str, ...]) -> C:
        encoded = encode(labels, self._name)  # a label set that cannot be stored fails here
        child = self._child_object(labels)
        try:
            segment = self._shared.segment()
            self._bind(child, segment, self._entry(segment, labels, encoded))
        except CardinalityError:
            raise
        except _DETACH_ERRORS as error:
            self._detach(error)
            self._bind_detached(child)
        return child

    def _entry(self, segment: MetricSegment, labels: tuple[str, ...], encoded: bytes) -> int:
        """The base of `labels`' entry in the shared table, claimed if nobody has it yet."""
        table = self._table
        if table is None or table.segment is not segment:
            table = self._table = Table(segment)
        base = table.entries.get(labels)
        if base is None:
            table.refresh()
            base = table.entries.get(labels)
        if base is not None:
            return base
        if len(table.entries) >= self.max_label_sets:
            shown = dict(zip(self.labelnames, labels, strict=True))
            raise CardinalityError(
                f"{self.kind} {self._name!r} has {len(table.entries)} label sets, its limit "
                f"(max_label_sets={self.max_label_sets}): refusing {shown}"
            )
        return table.claim(labels, encoded, self._name)

    def _detach(self, error: BaseException) -> None:
        reason = segments.degraded_reason(error)
        if self._detached != reason:
            _log.warning(
                "raindrops: %s %r counts in private memory in process %d (%s: %s)",
                self.kind,
                self._name,
                os.getpid(),
                type(error).__name__,
                error,
            )
        self._detached = reason

    @property
    def degraded(self) -> str | None:
        """Why this process's numbers of this metric are not all shared, or None."""
        return self._shared.degraded or self._detached

    # Reading.

    def describe(self) -> Family:
        return Family(self._name, self.kind, self.documentation, [])

    def collect(self, reading: Reading | None = None) -> Family:
        """The metric as every worker of the server counted it."""
        values = self._shared.segment().counters.to_list()
        samples = self._samples(values, _floats(values), reading or Reading())
        return Family(self._name, self.kind, self.documentation, samples)

    def _entries(self, values: list[int]) -> Iterable[tuple[tuple[str, ...], int]]:
        """(label values, first value word) of every readable entry of a snapshot."""
        layout = self._layout
        for entry in walk(values.__getitem__, layout, layout.table_first, len(values)):
            if entry.labels is not None:
                yield entry.labels, entry.base + 1

    def _labelled(self, labels: tuple[str, ...], *extra: tuple[str, str]) -> Labels:
        return (*zip(self.labelnames, labels, strict=True), *extra)


def _exception_types(
    exception: object,
) -> type[BaseException] | tuple[type[BaseException], ...]:
    members = exception if isinstance(exception, tuple) else (exception,)
    if not members or not all(
        isinstance(member, type) and issubclass(member, BaseException) for member in members
    ):
        raise TypeError(f"count_exceptions() takes exception classes, not {exception!r}")
    return exception  # type: ignore[return-value]


# Counter.


class CounterChild(_Child):
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        """Adds `amount` (>= 0, finite; default 1) to the counter, atomically for every process."""
        if amount is _ONE:
            _add_one(self._pointer)
        elif amount.__class__ is float and 0.0 <= amount < _INF:
            _add(self._pointer, amount)
        else:
            _add(self._pointer, self._metric._increment(amount))  # type: ignore[attr-defined]

    def count_exceptions(
        self, exception: type[BaseException] | tuple[type[BaseException], ...] = Exception
    ) -> ExceptionCounter:
        """Counts the exceptions of `exception` leaving a block or a decorated function."""
        return ExceptionCounter(self.inc, _exception_types(exception))


class Counter(_Metric[CounterChild]):
    """A total that only goes up, shared by every process; exposed as `<name>_total`."""

    kind = "counter"
    child_class = CounterChild

    def _shape(self) -> tuple[int, str, int]:
        return 1, "", HEADER_WORDS

    def _bind(self, child: CounterChild, segment: MetricSegment, base: int) -> None:
        child._segment = segment
        child._pointer = segment.pointer(base + 1)

    def _bind_detached(self, child: CounterChild) -> None:
        child._segment = _dummy_words()
        child._pointer = _native.CounterPointer(child._segment.address(0))

    def _increment(self, amount: object) -> float:
        what = f"the increment of counter {self._name!r}"
        number = validation.finite(amount, what)
        if number < 0:
            raise ValueError(f"{what} must not be negative: counters only go up, not {amount!r}")
        return number

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    def count_exceptions(
        self, exception: type[BaseException] | tuple[type[BaseException], ...] = Exception
    ) -> ExceptionCounter:
        return self._only().count_exceptions(exception)

    def sample_names(self) -> tuple[str, ...]:
        return (self._name, self._name + "_total")

    def _samples(self, values: list[int], floats: array[float], reading: Reading) -> list[Sample]:
        totals: dict[tuple[str, ...], float] = {}
        for labels, first in self._entries(values):
            totals[labels] = totals.get(labels, 0.0) + floats[first]
        if not totals and not self.labelnames:
            totals[()] = 0.0  # shown from its creation, as prometheus_client shows it
        name = self._name + "_total"
        return [Sample(name, self._labelled(labels), total) for labels, total in totals.items()]


# Gauge.


class GaugeChild(_Child):
    """A gauge's label set. Its value word is in this process's column, so a forked child binds
    it again at its first use: `_pid`, the process that bound `_pointer`, is checked against
    PROCESS.pid as PerProcess's hot path checks its own (a PerProcess here would cost an
    attribute load per call, 11 ns of a 150 ns inc()), and rebinding takes the metric's
    ProcessLock."""

    __slots__ = ("_entry", "_pid", "_stamp")

    def __init__(self, metric: _Metric[Any], labels: tuple[str, ...]) -> None:
        super().__init__(metric, labels)
        self._entry = -1
        self._pid = 0
        self._stamp = _native.CounterPointer(0)

    def _here(self) -> None:
        """Claims this process's column after a fork (a forked child starts with nothing)."""
        self._metric._rebind(self)  # type: ignore[attr-defined]

    def inc(self, amount: float = 1) -> None:
        """Adds `amount` (default 1) to this process's value."""
        if self._pid != PROCESS.pid:
            self._here()
        if amount is _ONE:
            _add_one(self._pointer)
        elif amount.__class__ is float:
            _add(self._pointer, amount)
        else:
            _add(self._pointer, self._metric._amount(amount, "increment"))  # type: ignore[attr-defined]

    def dec(self, amount: float = 1) -> None:
        """Subtracts `amount` (default 1) from this process's value."""
        if self._pid != PROCESS.pid:
            self._here()
        if amount is _ONE:
            _sub_one(self._pointer)
        elif amount.__class__ is float:
            _add(self._pointer, -amount)
        else:
            _add(self._pointer, -self._metric._amount(amount, "decrement"))  # type: ignore[attr-defined]

    def set(self, value: float) -> None:
        """Sets this process's value."""
        if self._pid != PROCESS.pid:
            self._here()
        if value.__class__ is not float:
            value = self._metric._amount(value, "value")  # type: ignore[attr-defined]
        _store(self._pointer, value)

    def set_to_current_time(self) -> None:
        self.set(time.time())

    def track_inprogress(self) -> InProgress:
        """inc() when a block or a decorated call starts, dec() when it ends."""
        return InProgress(self.inc, self.dec)

    def time(self) -> Timer:
        """Sets the gauge to the seconds a block or a decorated call took."""
        return Timer(self.set)


class StampedGaugeChild(GaugeChild):
    """A child of a mostrecent or livemostrecent gauge: set() only, each set with its time."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        raise RuntimeError(f"inc must not be used with the mostrecent mode ({self._metric.name!r})")

    def dec(self, amount: float = 1) -> None:
        raise RuntimeError(f"dec must not be used with the mostrecent mode ({self._metric.name!r})")

    def set(self, value: float) -> None:
        super().set(value)
        _store(self._stamp, time.time())


class Gauge(_Metric[GaugeChild]):
    """A value per process, combined across processes as `multiprocess_mode` says.

    Modes are prometheus_client's (raindrops.metrics.gauges); `all` and
    `liveall` add a `pid` label. `max_processes` bounds the processes that
    hold a value at once (slots of dead processes are taken over).
    """

    kind = "gauge"
    child_class = GaugeChild

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        namespace: str = "",
        subsystem: str = "",
        unit: str = "",
        registry: Registry | None = REGISTRY,
        multiprocess_mode: str = "livesum",
        *,
        max_label_sets: int = LABEL_SETS_DEFAULT,
        max_processes: int = gauges.PROCESSES_DEFAULT,
    ) -> None:
        if multiprocess_mode not in gauges.MODES:
            raise ValueError(
                f"invalid multiprocess_mode {multiprocess_mode!r} of gauge {name!r}: "
                f"one of {', '.join(gauges.MODES)}"
            )
        processes = validation.positive_count(
            max_processes, f"max_processes of gauge {name!r}", gauges.PROCESSES_MAX
        )
        self.multiprocess_mode = multiprocess_mode
        self._gauge = gauges.GaugeLayout(multiprocess_mode, processes)
        self._column: PerProcess[int] = PerProcess()
        super().__init__(
            name,
            documentation,
            labelnames,
            namespace,
            subsystem,
            unit,
            registry,
            max_label_sets=max_label_sets,
        )

    def _reserved_labels(self) -> tuple[str, ...]:
        return ("pid",) if self.multiprocess_mode in gauges.PID_MODES else ()

    def _shape(self) -> tuple[int, str, int]:
        gauge = self._gauge
        return gauge.value_words, gauge.details, HEADER_WORDS + gauge.slot_words

    def _child_object(self, labels: tuple[str, ...]) -> GaugeChild:
        if self._gauge.stamped:
            return StampedGaugeChild(self, labels)
        return GaugeChild(self, labels)

    def _amount(self, value: object, what: str) -> float:
        return validation.amount(value, f"the {what} of gauge {self._name!r}")

    def _bind(self, child: GaugeChild, segment: MetricSegment, base: int) -> None:
        gauge = self._gauge
        column = 0
        if not gauge.shared:
            column = self._column.get(lambda: gauges.Columns(segment, gauge).join())
            gauges.mark_present(segment, gauge, base, column)
        value = base + 1 + gauge.value_offset + column
        child._segment = segment
        child._entry = base
        child._pointer = segment.pointer(value)
        child._stamp = segment.pointer(value + gauge.columns) if gauge.stamped else child._stamp
        child._pid = PROCESS.pid

    def _bind_detached(self, child: GaugeChild) -> None:
        words = _dummy_words()
        child._segment = words
        child._pointer = _native.CounterPointer(words.address(0))
        child._stamp = _native.CounterPointer(words.address(1))
        child._pid = PROCESS.pid

    def _rebind(self, child: GaugeChild) -> None:
        with self._lock.here():
            if child._pid == PROCESS.pid:
                return
            try:
                segment = self._shared.segment()
                if child._entry < 0 or child._segment is not segment:
                    raise TableFull(f"gauge {self._name!r} lost its entry in a fork")
                self._bind(child, segment, child._entry)
            except _DETACH_ERRORS as error:
                self._detach(error)
                self._bind_detached(child)

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._only().dec(amount)

    def set(self, value: float) -> None:
        self._only().set(value)

    def set_to_current_time(self) -> None:
        self._only().set_to_current_time()

    def track_inprogress(self) -> InProgress:
        return self._only().track_inprogress()

    def time(self) -> Timer:
        return self._only().time()

    def _samples(self, values: list[int], floats: array[float], reading: Reading) -> list[Sample]:
        series = gauges.samples(values, floats, self._gauge, self._layout, reading.alive)
        return [
            Sample(self._name, self._labelled(labels, *_pid_label(pid)), value)
            for labels, value, pid in series
        ]


def _pid_label(pid: int | None) -> tuple[tuple[str, str], ...]:
    return () if pid is None else (("pid", str(pid)),)


# Histogram.


class HistogramChild(_Child):
    __slots__ = ("_buckets",)
    _buckets: _native.Buckets

    def observe(self, amount: float) -> None:
        """Counts one sample (finite) in its bucket and adds it to the sum."""
        if amount.__class__ is float and -_INF < amount < _INF:
            _observe(self._pointer, amount)
        else:
            _observe(self._pointer, self._metric._sample(amount))  # type: ignore[attr-defined]

    def time(self) -> Timer:
        """Observes the seconds a block or a decorated call took."""
        return Timer(self.observe)


class Histogram(_Metric[HistogramChild]):
    """Samples counted in buckets by upper bound (prometheus_client's default buckets unless
    `buckets` says), with their count and sum, shared by every process."""

    kind = "histogram"
    child_class = HistogramChild
    DEFAULT_BUCKETS = validation.DEFAULT_BUCKETS

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        namespace: str = "",
        subsystem: str = "",
        unit: str = "",
        registry: Registry | None = REGISTRY,
        buckets: Sequence[float | str] = validation.DEFAULT_BUCKETS,
        *,
        max_label_sets: int = LABEL_SETS_DEFAULT,
    ) -> None:
        self.upper_bounds = validation.buckets(buckets, name)
        finite = self.upper_bounds[:-1]
        self._bounds = _native.f64_array(finite)
        self._le = tuple(go_float(bound) for bound in self.upper_bounds)
        super().__init__(
            name,
            documentation,
            labelnames,
            namespace,
            subsystem,
            unit,
            registry,
            max_label_sets=max_label_sets,
        )

    def _reserved_labels(self) -> tuple[str, ...]:
        return ("le",)

    def _shape(self) -> tuple[int, str, int]:
        bounds = ",".join(repr(bound) for bound in self.upper_bounds)
        return len(self.upper_bounds) + 1, f"buckets={bounds}", HEADER_WORDS

    def _sample(self, amount: object) -> float:
        return validation.finite(amount, f"a sample of histogram {self._name!r}")

    def _descriptor(self, child: HistogramChild, counts: int, total: int) -> None:
        buckets = _native.Buckets(
            first=counts,
            stride=SIZE,
            buckets=len(self.upper_bounds),
            bounds=_native.address_of(self._bounds),
            sum=total,
        )
        child._buckets = buckets
        child._pointer = _native.buckets_pointer(buckets)  # valid while `buckets` lives

    def _bind(self, child: HistogramChild, segment: MetricSegment, base: int) -> None:
        child._segment = segment
        first = base + 1
        self._descriptor(
            child,
            segment.counters.address(first),
            segment.counters.address(first + len(self.upper_bounds)),
        )

    def _bind_detached(self, child: HistogramChild) -> None:
        words = _dummy_words()
        child._segment = words
        self._descriptor(child, words.address(0), words.address(len(self.upper_bounds)))

    def observe(self, amount: float) -> None:
        self._only().observe(amount)

    def time(self) -> Timer:
        return self._only().time()

    def sample_names(self) -> tuple[str, ...]:
        return tuple(self._name + suffix for suffix in ("", "_bucket", "_count", "_sum"))

    def _samples(self, values: list[int], floats: array[float], reading: Reading) -> list[Sample]:
        buckets = len(self.upper_bounds)
        series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        for labels, first in self._entries(values):
            counts, sums = series.setdefault(labels, ([0] * buckets, []))
            for index in range(buckets):
                counts[index] += values[first + index]
            sums.append(floats[first + buckets])
        if not series and not self.labelnames:
            series[()] = ([0] * buckets, [])  # shown from its creation, as prometheus_client does
        samples: list[Sample] = []
        for labels, (counts, sums) in series.items():
            samples.extend(self._series(self._labelled(labels), counts, math.fsum(sums)))
        return samples

    def _series(self, labels: Labels, counts: list[int], total: float) -> list[Sample]:
        name = self._name
        cumulative = 0
        samples = []
        for le, count in zip(self._le, counts, strict=True):
            cumulative += count
            samples.append(Sample(name + "_bucket", (*labels, ("le", le)), float(cumulative)))
        samples.append(Sample(name + "_count", labels, float(cumulative)))
        if self.upper_bounds[0] >= 0:
            samples.append(Sample(name + "_sum", labels, total))
        return samples
