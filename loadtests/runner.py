"""Runs one variant: gunicorn, the sampler, locust headless, a SIGKILL mid-run, then the checks.

Order matters for exactness: locust is given --stop-timeout, so when the time
is up every user finishes the request it has in flight instead of dropping
it (a dropped request would still be served, and counted, by the server).
Only after locust has exited are the totals read, at rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.config import STOP_TIMEOUT, Plan
from loadtests.sampler import ListenerSampler, Lost, Sample, Sampler
from loadtests.server import Server, kill_if_sleeping, read_counter, running
from testsupport import formats, processes, programs
from testsupport.gunicorn import STATS
from testsupport.programs import ROOT

REST_TIMEOUT = 5.0
WINDOW_TIMEOUT = 60.0  # locust's start (imports, spawning) until it reports the overload window


@dataclass(frozen=True)
class Kill:
    t: float  # seconds since the run's time zero
    pid: int


@dataclass
class Measured:
    """Everything one variant's run produced; the checks and the report read only this."""

    plan: Plan
    results: Path
    address: str = ""
    locust_returncode: int | None = None
    locust_log: str = ""
    samples: list[Sample] = field(default_factory=list)
    kernel: list[tuple[float, int, int]] = field(
        default_factory=list
    )  # (t, active, queued) read directly
    problems: list[str] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)
    overload: tuple[float, float] | None = None  # seconds since time zero
    kills: list[Kill] = field(default_factory=list)
    kill_error: str = ""
    rest: formats.Stats | None = None
    rest_seconds: float | None = None  # how long after locust exited the counters were at rest
    counter: int | None = None  # the demo's /count counter at the end
    promtool: list[tuple[str, int, str]] = field(default_factory=list)  # file, exit code, output
    recycled: int = 0  # workers gunicorn restarted after --max-requests
    tally: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # the run itself went wrong

    def path(self, suffix: str) -> Path:
        return self.results / f"{self.plan.variant.name}{suffix}"


def locust_command(plan: Plan, server: Server, measured: Measured) -> list[str]:
    return [
        sys.executable, "-m", "locust",
        "-f", str(ROOT / "loadtests" / "locustfile.py"),
        "--headless",
        "--users", str(plan.total_users),
        "--spawn-rate", str(plan.spawn_rate),
        "--run-time", f"{round(plan.duration)}s",
        "--stop-timeout", str(STOP_TIMEOUT),
        "--host", f"http://{server.address}",
        "--csv", str(measured.results / plan.variant.name),
        "--html", str(measured.path(".html")),
        "--only-summary",
        # failures are judged by the checks, which know which ones are expected
        "--exit-code-on-error", "0",
    ]  # fmt: skip


def run_variant(plan: Plan, results: Path) -> Measured:
    """One variant from start to finish; whatever happens, every process it started is stopped."""
    results.mkdir(parents=True, exist_ok=True)
    measured = Measured(plan, results)
    for stale in results.glob(f"{plan.variant.name}[-_.]*"):
        stale.unlink()
    try:
        with running(plan.variant, measured.path("-gunicorn.log")) as server:
            measured.address = server.address
            _load(plan, server, measured)
            _at_rest(server, measured)
    except Exception as error:  # noqa: BLE001 - reported as a failed check, the other variants still run
        measured.errors.append(f"{type(error).__name__}: {error}")
    measured.recycled = _recycled(measured.path("-gunicorn.log"))
    with contextlib.suppress(OSError, ValueError):
        measured.tally = json.loads(measured.path("-tally.json").read_text())
    return measured


def _load(plan: Plan, server: Server, measured: Measured) -> None:
    origin, origin_wall = time.monotonic(), time.time()
    window_file = measured.path("-window.json")
    environment = {
        **os.environ,
        **plan.locust_environment(measured.path("-tally.json"), window_file),
    }
    sampler = Sampler(server, origin, measured.path("-metrics-"))
    listener = ListenerSampler(server.address, origin)
    log = measured.path("-locust.log")
    sampler.start()
    listener.start()
    try:
        locust = processes.spawn(
            locust_command(plan, server, measured), log=log, cwd=ROOT, env=environment
        )
        try:
            measured.overload = _overload_window(window_file, locust, origin_wall)
            if measured.overload is not None:
                _kill_during(measured.overload, server, sampler, locust, measured)
            measured.locust_returncode = locust.wait(plan.duration + STOP_TIMEOUT + 120)
        finally:
            processes.stop(locust)
    finally:
        sampler.stop()
        listener.stop()
        measured.kernel = listener.readings
        measured.samples, measured.problems, measured.lost = (
            sampler.samples,
            sampler.problems,
            sampler.lost,
        )
        measured.locust_log = log.read_text(errors="replace") if log.exists() else ""
        measured.promtool = [
            (str(path), -1, "not checked yet") for path in sampler.prometheus_files
        ]


def _overload_window(
    window_file: Path, locust: subprocess.Popen[bytes], origin_wall: float
) -> tuple[float, float] | None:
    """Waits for the locustfile to say when its overload phase runs; in seconds since time zero."""
    deadline = time.monotonic() + WINDOW_TIMEOUT
    while time.monotonic() < deadline and locust.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            start, end = json.loads(window_file.read_text())["overload"]
            return start - origin_wall, end - origin_wall
        time.sleep(0.05)
    return None


def _kill_during(
    window: tuple[float, float],
    server: Server,
    sampler: Sampler,
    locust: subprocess.Popen[bytes],
    measured: Measured,
) -> None:
    """Once the overload has built up, SIGKILLs one worker caught asleep inside a request."""
    start, end = window
    threaded = server.variant.threads > 1
    kill_at = start + min(1.5, (end - start) / 3)
    while locust.poll() is None and sampler.now() < end - 0.2:
        if sampler.now() < kill_at:
            time.sleep(0.05)
            continue
        for pid in server.worker_pids():
            try:
                if kill_if_sleeping(pid, threaded):
                    measured.kills.append(Kill(sampler.now(), pid))
                    return
            except OSError as error:
                measured.kill_error = f"cannot inspect worker {pid}: {error}"
                return
        time.sleep(0.02)
    measured.kill_error = "no worker was caught asleep inside a request during the overload phase"


def _at_rest(server: Server, measured: Measured) -> None:
    """The counters once the load is gone: calling and writing must drop to 0, the totals must
    stop."""
    began = time.monotonic()
    while True:
        response = server.get(f"{STATS}?format=json", timeout=10)
        stats = formats.parse_json(response.body.decode())
        if (stats.calling, stats.writing) == (0, 0) or time.monotonic() - began > REST_TIMEOUT:
            break
        time.sleep(0.05)
    measured.rest, measured.rest_seconds = stats, time.monotonic() - began
    measured.counter = read_counter(server.counter)
    final = measured.path("-metrics-rest.prom")
    final.write_bytes(server.get(f"{STATS}?format=prometheus", timeout=10).body)
    measured.promtool.append((str(final), -1, "not checked yet"))
    measured.promtool = [_check_exposition(Path(name)) for name, _, _ in measured.promtool]


def _check_exposition(path: Path) -> tuple[str, int, str]:
    """`promtool check metrics` on one saved exposition: Prometheus' own verdict on the format.

    Without promtool (and CI unset), the strict parser in formats checks the
    same rules, and the output says that promtool was not used.
    """
    try:
        promtool = programs.require("promtool")
    except programs.MissingProgram as missing:
        try:
            samples = formats.check_prometheus_text(path.read_text(encoding="utf-8"))
        except (formats.FormatError, UnicodeDecodeError) as error:
            return str(path), 1, f"strict parser: {error}"
        return str(path), 0, f"{missing}: {samples} samples checked by the strict parser instead"
    except AssertionError as required:
        return str(path), 127, str(required)
    with open(path, "rb") as exposition:
        result = processes.run([promtool, "check", "metrics"], stdin=exposition, timeout=60)
    return (
        str(path),
        result.returncode,
        (result.stdout + result.stderr).decode(errors="replace").strip(),
    )


def _recycled(log: Path) -> int:
    """Workers that restarted after --max-requests, as gunicorn logs it."""
    try:
        return log.read_text(errors="replace").count("Autorestarting worker after current request")
    except OSError:
        return 0
