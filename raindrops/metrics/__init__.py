"""raindrops.metrics: prometheus_client's Counter, Gauge and Histogram for prefork servers.

Values live in raindrops' shared memory, one segment per metric, found by
every worker of the server the way raindrops.Middleware's counters are (with
or without --preload, spawned workers too): no directory, no environment
variable, no child_exit hook, and reading them costs the same however many
workers have died. Metrics made with the defaults join REGISTRY, which every
raindrops middleware endpoint shows (Prometheus, OpenMetrics, JSON);
RaindropsCollector puts them in prometheus_client's /metrics as well.

    from raindrops.metrics import Counter, Gauge, Histogram

    REQUESTS = Counter("app_requests", "Requests handled", ["method", "code"])
    IN_FLIGHT = Gauge("app_in_flight", "Requests in progress")  # livesum by default
    LATENCY = Histogram("app_latency_seconds", "Time to answer")

    REQUESTS.labels("GET", "200").inc()
    with IN_FLIGHT.track_inprogress(), LATENCY.time():
        ...
"""

from raindrops.metrics.collector import RaindropsCollector
from raindrops.metrics.family import (
    LABEL_SETS_DEFAULT,
    CardinalityError,
    Counter,
    CounterChild,
    Gauge,
    GaugeChild,
    Histogram,
    HistogramChild,
)
from raindrops.metrics.gauges import MODES, PROCESSES_DEFAULT
from raindrops.metrics.registry import REGISTRY, Registry, WithMetrics, with_metrics
from raindrops.metrics.table import LABEL_BYTES_MAX
from raindrops.metrics.validation import DEFAULT_BUCKETS

__all__ = [
    "DEFAULT_BUCKETS",
    "LABEL_BYTES_MAX",
    "LABEL_SETS_DEFAULT",
    "MODES",
    "PROCESSES_DEFAULT",
    "REGISTRY",
    "CardinalityError",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "RaindropsCollector",
    "Registry",
    "WithMetrics",
    "with_metrics",
]
