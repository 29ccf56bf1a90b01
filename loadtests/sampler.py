"""The runner's own view of the run: /_raindrops?format=json every quarter second, from a thread.

Each sample is parsed strictly and checked against the server's bounds on
the spot; problems are kept, not raised, so the run goes on and the report
lists them all. A few Prometheus expositions are saved along the way for
`promtool check metrics`. The worker pids are read too, to see workers
recycle.

A request to the endpoint waits in the listen queue like any other: while
sync workers are all busy, samples come late and few. So a second thread
reads the listener's active and queued straight from the kernel
(raindrops.linux over netlink, no worker involved) every 0.1 s; the plot
shows both, the checks use only what the endpoint answered.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loadtests.server import Server
from raindrops import linux
from testsupport import formats
from testsupport.gunicorn import STATS, Response

INTERVAL = 0.25
PROMETHEUS_EVERY = 2.5  # seconds between two saved Prometheus expositions
PROMETHEUS_KEEP = 6


@dataclass(frozen=True)
class Sample:
    """One reading: when it was answered (seconds since time zero), the endpoint's numbers, the
    worker pids."""

    t: float
    calling: int
    writing: int
    workers: int
    requests: int
    errors: int
    observed: int
    active: int
    queued: int
    pids: tuple[int, ...]


@dataclass(frozen=True)
class Lost:
    """A sample that got no answer, and when it was asked (to match it with a killed worker)."""

    asked: float
    failed: float
    error: str


class _Reader(threading.Thread):
    """A thread that reads until stop(), timing what it reads from the run's time zero."""

    def __init__(self, name: str, origin: float) -> None:
        super().__init__(name=name, daemon=True)  # never keeps the runner alive
        self.origin = origin  # time.monotonic() of the run's time zero
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)

    def now(self) -> float:
        return time.monotonic() - self.origin


class Sampler(_Reader):
    def __init__(self, server: Server, origin: float, prometheus_prefix: Path) -> None:
        super().__init__("raindrops-sampler", origin)
        self.server = server
        self.prometheus_prefix = prometheus_prefix  # saved as <prefix>1.prom, <prefix>2.prom, ...
        self.samples: list[Sample] = []
        self.problems: list[str] = []
        self.lost: list[Lost] = []
        self.prometheus_files: list[Path] = []
        self._next_prometheus = 0.0

    def run(self) -> None:
        while not self._stop_event.is_set():
            began = time.monotonic()
            self.sample()
            if self.now() >= self._next_prometheus and len(self.prometheus_files) < PROMETHEUS_KEEP:
                self._next_prometheus = self.now() + PROMETHEUS_EVERY
                self.save_prometheus()
            self._stop_event.wait(max(0.0, INTERVAL - (time.monotonic() - began)))

    def _get(self, query: str, asked: float) -> Response | None:
        """The endpoint's answer; None, recorded as lost, when none came (a killed worker's)."""
        try:
            return self.server.get(f"{STATS}{query}", timeout=30)
        except (OSError, http.client.HTTPException) as error:
            self.lost.append(Lost(asked, self.now(), f"{type(error).__name__}: {error}"))
            return None

    def sample(self) -> Sample | None:
        asked = self.now()
        response = self._get("?format=json", asked)
        if response is None:
            return None
        pids = tuple(self.server.worker_pids())
        try:
            content_type = response.headers.get("content-type", "")
            if response.status != 200 or content_type != "application/json":
                raise formats.FormatError(f"status {response.status}, {content_type}")
            stats = formats.parse_json(response.body.decode())
            formats.check_bounds(stats, self.server.variant.capacity, self.server.variant.workers)
            active, queued = stats.listener(self.server.address)
        except (formats.FormatError, UnicodeDecodeError) as error:
            self.problems.append(f"t={asked:.2f}s: {error}")
            return None
        assert stats.requests is not None and stats.errors is not None and stats.workers is not None
        assert stats.observed is not None
        sample = Sample(
            self.now(),
            stats.calling,
            stats.writing,
            stats.workers,
            stats.requests,
            stats.errors,
            stats.observed,
            active,
            queued,
            pids,
        )
        self.samples.append(sample)
        return sample

    def save_prometheus(self) -> None:
        """Keeps one exposition for promtool; it must also pass this package's own strict parser."""
        asked = self.now()
        response = self._get("?format=prometheus", asked)
        if response is None:
            return
        path = Path(f"{self.prometheus_prefix}{len(self.prometheus_files) + 1}.prom")
        path.write_bytes(response.body)
        self.prometheus_files.append(path)
        try:
            stats = formats.prometheus_stats(formats.parse_prometheus(response.body.decode()))
            formats.check_bounds(stats, self.server.variant.capacity, self.server.variant.workers)
        except (formats.FormatError, UnicodeDecodeError) as error:
            self.problems.append(f"t={asked:.2f}s prometheus: {error}")


class ListenerSampler(_Reader):
    """The listener's (t, active, queued) from the kernel directly, for the plot."""

    def __init__(self, address: str, origin: float, interval: float = 0.1) -> None:
        super().__init__("raindrops-listener-sampler", origin)
        self.address = address
        self.interval = interval
        self.readings: list[tuple[float, int, int]] = []

    def run(self) -> None:
        with linux.InetDiagSocket() as sock:
            while not self._stop_event.wait(self.interval):
                stats = linux.tcp_listener_stats([self.address], sock).get(self.address)
                if stats is not None:
                    self.readings.append((self.now(), stats.active, stats.queued))
