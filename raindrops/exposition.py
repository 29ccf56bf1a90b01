"""Rendering of statistics: raindrops' text format, Prometheus text exposition, JSON.

Kept apart from the data sources so that the middleware, the Watcher and the
command line all print the same bytes for the same numbers.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Protocol


class Listen(Protocol):
    """What a listener statistic offers (raindrops.linux.ListenStats)."""

    @property
    def active(self) -> int: ...

    @property
    def queued(self) -> int: ...


class Metric(NamedTuple):
    name: str
    kind: str
    help: str


LISTENER_ACTIVE = Metric("raindrops_listener_active", "gauge", "Accepted connections open on a listener.")
LISTENER_QUEUED = Metric("raindrops_listener_queued", "gauge", "Connections waiting in a listener's accept queue.")


def escape_label_value(value: str) -> str:
    """Escapes a Prometheus label value: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_family(metric: Metric, samples: Mapping[str, int], label: str) -> str:
    """One metric family: HELP and TYPE lines, then one sample per label value."""
    lines = [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}"]
    lines.extend(f'{metric.name}{{{label}="{escape_label_value(key)}"}} {value}' for key, value in samples.items())
    return "\n".join(lines) + "\n"


def listeners_text(stats: Mapping[str, Listen]) -> str:
    """raindrops' middleware lines: "ADDR active: N" then "ADDR queued: N" per listener."""
    return "".join(f"{address} active: {stat.active}\n{address} queued: {stat.queued}\n" for address, stat in stats.items())


def listeners_prometheus(stats: Mapping[str, Listen]) -> str:
    return prometheus_family(
        LISTENER_ACTIVE, {address: stat.active for address, stat in stats.items()}, "listener"
    ) + prometheus_family(LISTENER_QUEUED, {address: stat.queued for address, stat in stats.items()}, "listener")


def listeners_json(stats: Mapping[str, Listen]) -> dict[str, dict[str, int]]:
    return {address: {"active": stat.active, "queued": stat.queued} for address, stat in stats.items()}
