"""raindrops' metrics in an app's existing prometheus_client /metrics.

prometheus_client stays optional: it is imported when a collector is made.

    import prometheus_client
    import raindrops.metrics

    prometheus_client.REGISTRY.register(raindrops.metrics.RaindropsCollector())
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from raindrops.metrics.registry import REGISTRY, Registry
from raindrops.metrics.render import Family


class RaindropsCollector:
    """A prometheus_client collector of a raindrops.metrics Registry (REGISTRY by default)."""

    def __init__(self, registry: Registry | None = None) -> None:
        if registry is not None and not isinstance(registry, Registry):
            raise TypeError(
                f"registry must be a raindrops.metrics.Registry, not {type(registry).__name__}"
            )
        from prometheus_client.metrics_core import Metric  # optional: only a collector needs it

        self._metric_class = Metric
        self._registry = REGISTRY if registry is None else registry

    def _converted(self, family: Family) -> Any:
        metric = self._metric_class(family.name, family.help, family.kind)
        for sample in family.samples:
            metric.add_sample(sample.name, dict(sample.labels), sample.value)
        return metric

    def describe(self) -> Iterator[Any]:
        """The families without their samples: registering reads no shared memory."""
        for family in self._registry.describe():
            yield self._converted(family)

    def collect(self) -> Iterator[Any]:
        for family in self._registry.collect():
            yield self._converted(family)


__all__ = ["RaindropsCollector"]
