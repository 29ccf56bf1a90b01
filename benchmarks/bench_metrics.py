"""raindrops.metrics against prometheus_client in multiprocess mode, measured in the same run.

1. Latency (ns/op, best of several timeit runs) of the calls an app makes on
   every request: a labelled Counter.labels(...).inc(), the child's inc()
   alone, and Histogram.observe(), next to prometheus_client's (values in
   per-process mmap files under PROMETHEUS_MULTIPROC_DIR, a temporary
   directory made and removed here).
2. Scrape time (collect + render in the Prometheus text format) of the same
   four metrics, with no dead worker and then after 1,000 real ones: forked
   processes that each count, observe and hold a livesum gauge, then exit
   (no mark_process_dead, no child_exit hook). prometheus_client reads a
   file per metric kind per dead pid; raindrops reads the same words
   whatever died (a dead worker's gauge slot is taken over by the next).
3. Exact totals: 4 forked processes incrementing one labelled counter at once.

Exits 1 if any total is not exact, else 0.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
import time
import timeit
import traceback
from collections.abc import Callable
from typing import Any

from _bench import prometheus_multiprocess_dir

_PROMETHEUS_DIR = prometheus_multiprocess_dir("metrics")  # before prometheus_client

import prometheus_client  # noqa: E402
from _bench import REPEATS, ns_per_op, table  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from raindrops import metrics  # noqa: E402

LATENCY_RATIO_MAX = 0.5
SCRAPE_GROWTH_MAX = 1.2
DEAD_WORKERS = 1000
CONTENTION_PROCESSES = 4
CONTENTION_N = 100_000
SCRAPE_REPEATS = 7


class Stack:
    """The same four metrics in raindrops or in prometheus_client, and how to scrape them."""

    def __init__(self, module: Any, scrape: Callable[[], bytes | str], **registry: Any) -> None:
        self.requests = module.Counter(
            "bench_requests", "Requests.", ["method", "code"], **registry
        )
        self.latency = module.Histogram("bench_latency_seconds", "Latency.", **registry)
        self.in_flight = module.Gauge(
            "bench_in_flight", "In flight.", multiprocess_mode="livesum", **registry
        )
        self.jobs = module.Counter("bench_jobs", "Jobs.", **registry)
        self.scrape = scrape

    def touch(self) -> None:
        """What each worker does: count, observe, hold the gauge."""
        self.requests.labels("GET", "200").inc()
        self.requests.labels("POST", "201").inc()
        self.latency.observe(0.042)
        self.in_flight.inc()
        self.jobs.inc()


def raindrops_stack() -> Stack:
    registry = metrics.Registry()
    return Stack(metrics, registry.prometheus, registry=registry)


def prometheus_stack() -> Stack:
    registry = prometheus_client.CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    reading = prometheus_client.CollectorRegistry()  # the metrics live in files, not here
    return Stack(
        prometheus_client, lambda: prometheus_client.generate_latest(registry), registry=reading
    )


_OPERATIONS = {
    "requests.labels('GET', '200').inc()": "labelled Counter.labels(...).inc()",
    "child.inc()": "the child's inc() alone",
    "latency.observe(0.042)": "Histogram.observe()",
}


def latencies(stack: Stack) -> dict[str, float]:
    namespace = {
        "requests": stack.requests,
        "child": stack.requests.labels("GET", "200"),
        "latency": stack.latency,
    }
    return {stmt: ns_per_op(stmt, namespace) for stmt in _OPERATIONS}


def scrape_ms(stack: Stack) -> float:
    timer = timeit.Timer(stack.scrape)
    number, _ = timer.autorange()
    return min(timer.repeat(SCRAPE_REPEATS, number)) / number * 1e3


def fork_and_wait(work: Callable[[int], None], index: int, gate: int | None = None) -> int:
    """Forks one process running work(index) (after reading a byte from `gate` if given)."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            if gate is not None:
                os.read(gate, 1)
            work(index)
            status = 0
        except BaseException:  # the child must never return into the parent's code
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(status)
    return pid


def kill_workers(stack: Stack, count: int) -> float:
    """`count` real workers, one after the other: each touches the metrics and exits. Seconds."""
    started = time.perf_counter()
    for index in range(count):
        pid = fork_and_wait(lambda _: stack.touch(), index)
        _, status = os.waitpid(pid, 0)
        if status:
            raise RuntimeError(f"a dead worker failed (wait status {status})")
    return time.perf_counter() - started


def scrapes(stack: Stack) -> tuple[float, float, float]:
    """(ms with no dead worker, ms after DEAD_WORKERS, seconds to make them)."""
    stack.touch()
    before = scrape_ms(stack)
    making = kill_workers(stack, DEAD_WORKERS)
    return before, scrape_ms(stack), making


def contention(stack: Stack, total: Callable[[], float]) -> tuple[float, float]:
    """(best wall seconds of 4 processes x CONTENTION_N increments, increments missing)."""
    child = stack.requests.labels("PUT", "204")

    def work(_: int) -> None:
        for _ in range(CONTENTION_N):
            child.inc()

    gate, release = os.pipe()
    pids = [fork_and_wait(work, index, gate) for index in range(CONTENTION_PROCESSES)]
    started = time.perf_counter()
    os.write(release, b"x" * CONTENTION_PROCESSES)
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    seconds = time.perf_counter() - started
    os.close(gate)
    os.close(release)
    if any(statuses):
        raise RuntimeError(f"a contention worker failed (wait statuses {statuses})")
    return seconds, CONTENTION_PROCESSES * CONTENTION_N - total()


def _sample(stack: Stack, name: str, labels: dict[str, str]) -> float:
    text = stack.scrape()
    body = text.decode() if isinstance(text, bytes) else text
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def verdict(passed: bool) -> str:
    return "pass" if passed else "FAIL"


STACKS = ("raindrops.metrics", "prometheus_client multiprocess")


def latency_table(ours: dict[str, float], theirs: dict[str, float]) -> str:
    rows = [
        [label, f"{ours[stmt]:.0f}", f"{theirs[stmt]:.0f}", f"{ours[stmt] / theirs[stmt]:.2f}x"]
        for stmt, label in _OPERATIONS.items()
    ]
    return table(["operation", "raindrops ns", "prometheus_client ns", "ratio"], rows)


def scrape_table(results: dict[str, tuple[float, float, float]]) -> str:
    rows = [
        [name, f"{before:.3f}", f"{after:.3f}", f"{after / before:.2f}x", f"{making:.1f}"]
        for name, (before, after, making) in results.items()
    ]
    headers = ["stack", "ms, none dead", f"ms, {DEAD_WORKERS} dead", "growth", "s to make them"]
    return table(headers, rows)


def contention_table(results: dict[str, tuple[float, float]]) -> str:
    operations = CONTENTION_PROCESSES * CONTENTION_N
    rows = [
        [
            name,
            f"{seconds:.2f}",
            f"{operations / seconds / 1e6:.2f}",
            "exact" if lost == 0 else f"LOST {lost:g}",
        ]
        for name, (seconds, lost) in results.items()
    ]
    return table(["stack", "wall s", "Mops/s", "total"], rows)


def targets_table(
    latency: tuple[dict[str, float], dict[str, float]],
    scrape: dict[str, tuple[float, float, float]],
    lost: float,
) -> str:
    ours, theirs = latency
    checks = [
        (f"{label}: raindrops / prometheus_client", ours[stmt] / theirs[stmt], LATENCY_RATIO_MAX)
        for stmt, label in _OPERATIONS.items()
    ]
    before, after, _ = scrape[STACKS[0]]
    checks.append(
        (f"raindrops scrape, {DEAD_WORKERS} dead / none", after / before, SCRAPE_GROWTH_MAX)
    )
    rows = [
        [name, f"{ratio:.2f}x", f"<= {goal:g}x", verdict(ratio <= goal)]
        for name, ratio, goal in checks
    ]
    their_before, their_after, _ = scrape[STACKS[1]]
    growth = f"{their_after / their_before:.2f}x"
    rows.append(
        [f"context: prometheus_client scrape, {DEAD_WORKERS} dead / none", growth, "-", "info"]
    )
    total = "exact" if lost == 0 else f"LOST {lost:g}"
    rows.append(
        [f"{CONTENTION_PROCESSES}-process total (raindrops)", total, "exact", verdict(lost == 0)]
    )
    return table(["target", "measured", "goal", "result"], rows)


def main() -> int:
    version = importlib.metadata.version("prometheus_client")
    print(f"raindrops.metrics benchmark: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"peer: prometheus_client {version} in multiprocess mode (PROMETHEUS_MULTIPROC_DIR)\n")
    stacks = dict(zip(STACKS, (raindrops_stack(), prometheus_stack()), strict=True))
    print(f"1. latency (best of {REPEATS} timeit runs)")
    latency = (latencies(stacks[STACKS[0]]), latencies(stacks[STACKS[1]]))
    print(latency_table(*latency), end="\n\n", flush=True)
    print(f"2. scrape (collect + render) before and after {DEAD_WORKERS:,} dead workers")
    scrape = {name: scrapes(stack) for name, stack in stacks.items()}
    print(scrape_table(scrape), end="\n\n", flush=True)
    print(f"3. {CONTENTION_PROCESSES} processes x {CONTENTION_N:,} child.inc() at once")
    labels = {"method": "PUT", "code": "204"}
    contended = {
        name: contention(stack, functools.partial(_sample, stack, "bench_requests_total", labels))
        for name, stack in stacks.items()
    }
    print(contention_table(contended), end="\n\n")
    print("targets")
    print(targets_table(latency, scrape, contended[STACKS[0]][1]))
    return 0 if all(lost == 0 for _, lost in contended.values()) else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    finally:
        _PROMETHEUS_DIR.cleanup()
