"""What a load test run does: the gunicorn variants, the load, and the timeline of phases.

Everything the locust process needs travels to it in LOADTEST_* environment
variables (see `Plan.locust_environment`): the locustfile runs in its own
process, under gevent, and reads them at import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from testsupport.programs import ROOT

RESULTS = ROOT / "loadtests" / "results"
DEFAULT_DURATION = 60.0
SHORT_DURATION = 12.0
STOP_TIMEOUT = (
    30  # locust lets users finish the request in flight when the time is up: none is abandoned
)


@dataclass(frozen=True)
class Variant:
    """One gunicorn configuration under test."""

    name: str
    workers: int
    threads: int  # requests one worker serves at once (1 for sync workers)
    max_requests: int
    max_requests_jitter: int
    extra_args: tuple[str, ...]

    @property
    def capacity(self) -> int:
        """Requests the server can hold inside the application at once: the bound for `calling`."""
        return self.workers * self.threads

    def gunicorn_args(self) -> list[str]:
        return [
            "--workers", str(self.workers),
            "--max-requests", str(self.max_requests),
            "--max-requests-jitter", str(self.max_requests_jitter),
            *self.extra_args,
        ]  # fmt: skip


VARIANTS = {
    # Sync workers, app imported in each worker: they meet in a named segment.
    "sync": Variant(
        "sync", workers=4, threads=1, max_requests=80, max_requests_jitter=40, extra_args=()
    ),
    # gthread workers with --preload: the segment is made in the master and inherited.
    # --worker-connections caps what a worker accepts, so overload shows in the listen queue
    # (gthread would otherwise accept every connection into its thread pool's queue).
    "gthread": Variant(
        "gthread",
        workers=2,
        threads=4,
        max_requests=100,
        max_requests_jitter=50,
        extra_args=(
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            "--worker-connections",
            "8",
            "--preload",
        ),
    ),
}


@dataclass(frozen=True)
class Plan:
    """The load: bounded users and spawn rate, the duration, and when the overload phase runs."""

    variant: Variant
    duration: float
    users: (
        int  # users of the steady mix (fast, slow, streaming, failing); the fixed users come on top
    )
    spawn_rate: float
    slow_seconds: float = 0.25
    overload_slow_seconds: float = 1.0

    @property
    def overload_users(self) -> int:
        """Concurrent slow requests during the overload phase: twice what the server can hold."""
        return 2 * self.variant.capacity

    @property
    def total_users(self) -> int:
        return self.users + 1 + self.overload_users  # + the /_raindrops poller

    @property
    def overload_start(self) -> float:
        """Seconds after locust's start: 40 % into the run, so steady load comes before and
        after."""
        return round(0.4 * self.duration, 2)

    @property
    def overload_seconds(self) -> float:
        return round(min(10.0, max(3.0, 0.2 * self.duration)), 2)

    @property
    def drain_seconds(self) -> float:
        """After the phase, how long its backlog takes to drain: the queued slow requests still
        run."""
        return self.overload_slow_seconds * (self.overload_users // self.variant.capacity) + 1.0

    def locust_environment(self, tally: Path, window: Path) -> dict[str, str]:
        return {
            "LOADTEST_CAPACITY": str(self.variant.capacity),
            "LOADTEST_WORKERS": str(self.variant.workers),
            "LOADTEST_OVERLOAD_USERS": str(self.overload_users),
            "LOADTEST_OVERLOAD_START": str(self.overload_start),
            "LOADTEST_OVERLOAD_SECONDS": str(self.overload_seconds),
            "LOADTEST_OVERLOAD_SLOW": str(self.overload_slow_seconds),
            "LOADTEST_SLOW": str(self.slow_seconds),
            "LOADTEST_TALLY": str(tally),
            "LOADTEST_WINDOW": str(window),
        }


def duration_from_environment(default: float) -> float:
    """DURATION= (seconds per variant) overrides; empty means the default."""
    text = os.environ.get("DURATION", "").strip().removesuffix("s")
    if not text:
        return default
    duration = float(text)
    if not 5 <= duration <= 3600:
        raise ValueError(f"DURATION must be between 5 and 3600 seconds, not {text}")
    return duration
