"""What raindrops.metrics accepts from its callers, checked once with a message naming the value.

Names follow Prometheus' classic rules (the exposition here never quotes a
name); the rest follows prometheus_client, stricter where a bad value would
stick in shared memory for every worker (a NaN or infinite counter increment
or histogram sample).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_PREFIX = "raindrops_"
"""Names of raindrops' own families on the endpoint: an app metric may not take one."""
LABEL_NAMES_MAX = 32
BUCKETS_MAX = 256
"""Upper bounds of a Histogram, +Inf included (the native limit is higher)."""
DEFAULT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    math.inf,
)
"""prometheus_client's Histogram.DEFAULT_BUCKETS."""


def text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__} {value!r}")
    return value


def full_name(kind: str, name: object, namespace: object, subsystem: object, unit: object) -> str:
    """The metric's name as prometheus_client builds it: namespace_subsystem_name[_unit], a
    counter's trailing `_total` removed (it is added back when exposed)."""
    parts = [
        text(part, what) for part, what in ((namespace, "namespace"), (subsystem, "subsystem"))
    ]
    base = text(name, "metric name")
    unit_text = text(unit, "unit")
    if not base:
        raise ValueError("metric name must not be empty")
    built = "_".join([part for part in parts if part] + [base])
    if kind == "counter" and built.endswith("_total"):
        built = built[: -len("_total")]
    if unit_text and not built.endswith("_" + unit_text):
        built += "_" + unit_text
    if not METRIC_NAME.fullmatch(built):
        raise ValueError(
            f"invalid metric name {built!r}: it must match [a-zA-Z_:][a-zA-Z0-9_:]* "
            "(a counter's _total suffix is removed first)"
        )
    if built.startswith(RESERVED_PREFIX):
        raise ValueError(
            f"invalid metric name {built!r}: the prefix {RESERVED_PREFIX!r} is reserved for "
            "raindrops' own metrics on the same endpoint"
        )
    return built


def label_names(names: object, reserved: Iterable[str], metric: str) -> tuple[str, ...]:
    """Label names: identifiers, not starting with `__`, none repeated or `reserved` (`le` of a
    histogram, `pid` of a gauge whose mode adds it)."""
    if isinstance(names, (str, bytes)):
        raise TypeError(
            f"labelnames of {metric!r} must be a list of names, not the single {names!r}"
        )
    if not isinstance(names, Iterable):
        raise TypeError(f"labelnames of {metric!r} must be a list of names, not {names!r}")
    checked = tuple(names)
    if len(checked) > LABEL_NAMES_MAX:
        raise ValueError(f"{metric!r} has {len(checked)} label names, at most {LABEL_NAMES_MAX}")
    taken = frozenset(reserved)
    for name in checked:
        label = text(name, f"a label name of {metric!r}")
        if not LABEL_NAME.fullmatch(label):
            raise ValueError(
                f"invalid label name {label!r} of {metric!r}: it must match [a-zA-Z_][a-zA-Z0-9_]*"
            )
        if label.startswith("__"):
            raise ValueError(f"invalid label name {label!r} of {metric!r}: '__' is reserved")
        if label in taken:
            raise ValueError(f"label name {label!r} of {metric!r} is reserved for this metric")
    repeated = sorted({name for name in checked if checked.count(name) > 1})
    if repeated:
        raise ValueError(f"repeated label names of {metric!r}: {', '.join(repeated)}")
    return checked


def _bound(value: object, metric: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise TypeError(f"bucket bound {value!r} of {metric!r} is not a number")
    try:
        return float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"bucket bound {value!r} of {metric!r} is not a number") from None


def buckets(values: object, metric: str) -> tuple[float, ...]:
    """Upper bounds, strictly ascending, +Inf last (added if missing), at least one finite."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"buckets of {metric!r} must be a list of numbers, not {values!r}")
    bounds = [_bound(value, metric) for value in values]
    if any(math.isnan(bound) for bound in bounds):
        raise ValueError(f"buckets of {metric!r} contain NaN: {bounds}")
    if bounds and bounds[-1] != math.inf:
        bounds.append(math.inf)
    if len(bounds) < 2:
        raise ValueError(f"{metric!r} needs at least one finite bucket bound, not {bounds}")
    if len(bounds) > BUCKETS_MAX:
        raise ValueError(f"{metric!r} has {len(bounds)} buckets, at most {BUCKETS_MAX}")
    for lower, upper in zip(bounds, bounds[1:], strict=False):
        if not lower < upper:
            raise ValueError(f"buckets of {metric!r} must ascend strictly: {lower} then {upper}")
    if bounds[0] == -math.inf:
        raise ValueError(f"buckets of {metric!r} must not start at -Inf")
    return tuple(bounds)


def amount(value: object, what: str) -> float:
    """A real number as a float: int, float, bool, fractions, numpy numbers; not str or None."""
    if value.__class__ is float:
        return value  # type: ignore[return-value]
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, not {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{what} {value!r} is too large for a float") from None


def finite(value: object, what: str) -> float:
    """An amount that may go into a shared total: a NaN or an infinity would stay there forever."""
    number = amount(value, what)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, not {value!r}: it would stick in the total")
    return number


def positive_count(value: object, what: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__} {value!r}")
    if not 1 <= value <= maximum:
        raise ValueError(f"{what} must be between 1 and {maximum}, not {value}")
    return value
