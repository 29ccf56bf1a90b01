"""What tests/test_metrics.py runs in processes that multiprocessing spawns: each builds its
metrics itself, as a worker without preload does, and they meet in their master's segment."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from raindrops import metrics


def spawned_metrics() -> tuple[metrics.Counter, metrics.Gauge, metrics.Histogram]:
    """The metrics a spawned worker builds itself, outside any registry."""
    counter = metrics.Counter("spawned_requests", "Spawned.", ["worker"], registry=None)
    gauge = metrics.Gauge("spawned_held", "Spawned.", registry=None)
    histogram = metrics.Histogram("spawned_seconds", "Spawned.", buckets=(1.0,), registry=None)
    return counter, gauge, histogram


def spawned_work(increments: int) -> str:
    """Counts `increments` in this spawned worker; returns the name of the segment it used."""
    counter, gauge, histogram = spawned_metrics()
    for _ in range(increments):
        counter.labels("any").inc()
        histogram.observe(0.5)
    counter.labels(str(os.getpid())).inc(0.25)
    gauge.inc()
    name = counter._shared.segment().name
    return name or ""


def spawned_read() -> str:
    """The three metrics as this spawned worker reads them, in the Prometheus format."""
    registry = metrics.Registry()
    for metric in spawned_metrics():
        registry.register(metric)
    return registry.prometheus()


def reply(connection: Any, function: Callable[..., object], arguments: tuple[object, ...]) -> None:
    """Runs in the spawned process: sends function(*arguments) back through `connection`."""
    try:
        connection.send(function(*arguments))
    finally:
        connection.close()
