"""Registries of metrics, what an endpoint adds from one, and reading them without failing.

A metric made with the defaults joins REGISTRY, which every raindrops
middleware endpoint (WSGI and ASGI) prints after its own numbers, in the
Prometheus and OpenMetrics formats and in JSON (under "metrics"). raindrops'
own text format stays Ruby raindrops' lines, byte for byte. A metric that
cannot be read (or counts in this process only) never fails the endpoint: it
is left out or flagged in `raindrops_metric_degraded{metric,reason}`, and
logged once.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Protocol

from raindrops import exposition
from raindrops._process import ProcessLock
from raindrops.metrics import render
from raindrops.metrics.render import Family, Sample
from raindrops.slots import owner_alive

_log = logging.getLogger(__name__)
DEGRADED = Family(
    "raindrops_metric_degraded",
    "gauge",
    "1 per app metric that this process cannot share with the server's other workers, and why.",
    [],
)
UNREADABLE = "metric_unreadable"


_DEAD: set[int] = set()
"""Owner words (pid and start time) found dead: a process that ended never runs again, so a read
after 1,000 dead workers does not ask /proc about them again."""
_DEAD_MAX = 4096


class Reading:
    """One collection: the liveness of each process slot owner, asked once across metrics."""

    def __init__(self) -> None:
        self._alive: dict[int, bool] = {}

    def alive(self, owner: int) -> bool:
        if owner in _DEAD:
            return False
        known = self._alive.get(owner)
        if known is None:
            known = self._alive[owner] = owner_alive(owner)
            if not known:
                if len(_DEAD) >= _DEAD_MAX:
                    _DEAD.clear()
                _DEAD.add(owner)
        return known


class Collectable(Protocol):
    """What a registry holds: raindrops.metrics' Counter, Gauge and Histogram."""

    @property
    def name(self) -> str: ...

    @property
    def degraded(self) -> str | None: ...

    def sample_names(self) -> tuple[str, ...]: ...

    def describe(self) -> Family: ...

    def collect(self, reading: Reading) -> Family: ...


class Registry:
    """Metrics by name; a name (or one of the sample names it makes) is taken only once."""

    def __init__(self) -> None:
        self._metrics: dict[str, Collectable] = {}
        self._owners: dict[str, str] = {}
        self._lock = ProcessLock()
        self._failed: dict[str, str] = {}

    def register(self, metric: Collectable) -> None:
        names = metric.sample_names()
        with self._lock.here():
            taken = sorted(name for name in names if name in self._owners)
            if taken:
                owner = self._owners[taken[0]]
                raise ValueError(
                    f"duplicated timeseries in the registry: {', '.join(taken)} "
                    f"(already made by {owner!r})"
                )
            self._metrics[metric.name] = metric
            for name in names:
                self._owners[name] = metric.name

    def unregister(self, metric: Collectable) -> None:
        with self._lock.here():
            if self._metrics.get(metric.name) is not metric:
                raise KeyError(f"{metric.name!r} is not in this registry")
            del self._metrics[metric.name]
            for name in metric.sample_names():
                self._owners.pop(name, None)

    def metrics(self) -> list[Collectable]:
        with self._lock.here():
            return list(self._metrics.values())

    def describe(self) -> list[Family]:
        """Every metric's family without samples, without reading shared memory."""
        return [metric.describe() for metric in self.metrics()]

    def collect(self) -> list[Family]:
        """Every metric's family as the server's workers share it, then the degraded ones."""
        reading = Reading()
        families = []
        degraded = []
        for metric in self.metrics():
            try:
                families.append(metric.collect(reading))
            except Exception as error:  # noqa: BLE001 - an endpoint must answer whatever a metric does
                self._unreadable(metric.name, error)
                degraded.append((metric.name, UNREADABLE))
                continue
            if metric.degraded is not None:
                degraded.append((metric.name, metric.degraded))
        if degraded:
            samples = [
                Sample(DEGRADED.name, (("metric", name), ("reason", reason)), 1.0)
                for name, reason in degraded
            ]
            families.append(DEGRADED._replace(samples=samples))
        return families

    def _unreadable(self, name: str, error: BaseException) -> None:
        if self._failed.get(name) != type(error).__name__:
            self._failed[name] = type(error).__name__
            _log.warning("raindrops: metric %r cannot be read", name, exc_info=error)

    def prometheus(self, openmetrics: bool = False) -> str:
        return render.prometheus(self.collect(), openmetrics)

    def json(self) -> list[dict[str, object]]:
        return render.json(self.collect())


REGISTRY = Registry()
"""Where metrics go unless given `registry=`; every middleware endpoint shows it."""


class WithMetrics(NamedTuple):
    """An endpoint's report followed by a registry's metrics (not in raindrops' text format)."""

    report: exposition.Report
    registry: Registry

    def text(self) -> str:
        return self.report.text()

    def prometheus(self, openmetrics: bool) -> str:
        return self.report.prometheus(openmetrics) + self.registry.prometheus(openmetrics)

    def json(self) -> dict[str, object]:
        return {**self.report.json(), "metrics": self.registry.json()}


def with_metrics(report: exposition.Report, registry: Registry | None = None) -> WithMetrics:
    """`report` with REGISTRY's metrics (or `registry`'s) after its own numbers."""
    return WithMetrics(report, REGISTRY if registry is None else registry)
