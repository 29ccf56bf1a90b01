"""Locust users for the raindrops load test (run by `python -m loadtests`, or by hand).

Users: FastUser (/ and /count), SlowUser (/slow), StreamUser (/stream),
FailUser (/fail, which must answer 500), StatsUser (polls /_raindrops in every
format and validates each answer strictly) and OverloadUser (idle except
during the overload phase, when it keeps twice as many slow requests in flight
as the server can hold).

Every request is judged here, with catch_response: the expected status and
body count as a success (a 500 from /fail included, because the application
did serve it), anything else is a failure whose message starts with its kind:
"transport" (no complete HTTP response: the request may never have reached
the application), "status" or "body". The runner relies on that split for the
exact accounting. The users also keep a tally (every value /count returned),
written at exit to $LOADTEST_TALLY.

By hand: `locust -f loadtests/locustfile.py --host http://127.0.0.1:8080` against `make demo`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
from locust import HttpUser, between, constant, events, task
from locust.env import Environment
from locust.stats import CSV_STATS_INTERVAL_SEC

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testsupport import formats  # noqa: E402 - needs the path above when run by hand

CAPACITY = int(os.environ.get("LOADTEST_CAPACITY", "1000"))
WORKERS = int(os.environ.get("LOADTEST_WORKERS", "1000"))
OVERLOAD_USERS = int(os.environ.get("LOADTEST_OVERLOAD_USERS", "8"))
OVERLOAD_START = float(os.environ.get("LOADTEST_OVERLOAD_START", "20"))
OVERLOAD_SECONDS = float(os.environ.get("LOADTEST_OVERLOAD_SECONDS", "10"))
OVERLOAD_SLOW = float(os.environ.get("LOADTEST_OVERLOAD_SLOW", "1.0"))
SLOW = float(os.environ.get("LOADTEST_SLOW", "0.25"))
STREAM_CHUNKS, STREAM_DELAY = 5, 0.04
STREAM_BODY = "".join(f"chunk {index}\n" for index in range(STREAM_CHUNKS))
STATS = "/_raindrops"

Check = Callable[[str], str | None]


class Tally:
    """What the users saw, by request name: outcomes, and every value /count returned."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Counter[str]] = {}
        self.count_values: list[int] = []
        self.started = 0.0

    def record(self, name: str, outcome: str) -> None:
        self.outcomes.setdefault(name, Counter())[outcome] += 1

    def in_overload(self) -> bool:
        elapsed = time.time() - self.started
        return self.started > 0 and OVERLOAD_START <= elapsed < OVERLOAD_START + OVERLOAD_SECONDS

    def to_json(self) -> dict[str, Any]:
        return {
            "outcomes": {name: dict(counts) for name, counts in self.outcomes.items()},
            "count_values": self.count_values,
        }


TALLY = Tally()


def _write_json(variable: str, document: dict[str, Any]) -> None:
    path = os.environ.get(variable)
    if path:
        Path(path).write_text(json.dumps(document))


def _started(**_: Any) -> None:
    """Marks time zero; tells the runner exactly when the overload phase runs (wall clock)."""
    TALLY.started = time.time()
    start = TALLY.started + OVERLOAD_START
    _write_json(
        "LOADTEST_WINDOW", {"started": TALLY.started, "overload": [start, start + OVERLOAD_SECONDS]}
    )


def _quitting(environment: Environment, **_: Any) -> None:
    """Writes the tally, then lets locust's CSV writer (every CSV_STATS_INTERVAL_SEC) catch up.

    The users have all stopped by now, but the CSV on disk can be a second
    old; one more round of the writer makes it final, and the runner checks
    that it agrees with the tally.
    """
    _write_json("LOADTEST_TALLY", TALLY.to_json())
    if getattr(environment.parsed_options, "csv_prefix", None):
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.25)


events.test_start.add_listener(_started)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_quitting)  # type: ignore[no-untyped-call]


def get(
    user: HttpUser,
    path: str,
    name: str,
    expect: int = 200,
    check: Check | None = None,
    **kwargs: Any,
) -> str | None:
    """GET `path`, judged: the body text on success, None (and a failure of a known kind)
    otherwise."""
    with user.client.get(path, name=name, catch_response=True, **kwargs) as response:
        if response.status_code == 0:
            outcome, message = "transport", f"transport: {type(response.error).__name__}"
        elif response.status_code != expect:
            outcome, message = "status", f"status: {response.status_code}, expected {expect}"
        else:
            problem = check(response.text) if check is not None else None
            outcome, message = ("body", f"body: {problem}") if problem else ("ok", "")
        TALLY.record(name, outcome)
        if outcome != "ok":
            response.failure(message)
            return None
        response.success()
        return response.text  # type: ignore[no-any-return]


def _exactly(expected: str) -> Check:
    return lambda text: None if text == expected else f"unexpected body {text[:40]!r}"


def _integer(text: str) -> str | None:
    return None if re.fullmatch(r"[1-9][0-9]*\n", text) else f"not a counter value: {text[:40]!r}"


class FastUser(HttpUser):
    """Quick requests, most of them to /count: the exactness check's numbers come from here."""

    weight = 4
    wait_time = between(0.02, 0.1)

    @task(1)
    def hello(self) -> None:
        get(self, "/", "/", check=_exactly("hello from raindrops\n"))

    @task(3)
    def count(self) -> None:
        text = get(self, "/count", "/count", check=_integer)
        if text is not None:
            TALLY.count_values.append(int(text))


class SlowUser(HttpUser):
    """Requests that stay inside the application a while: `calling` rises."""

    weight = 1
    wait_time = between(0.05, 0.2)

    @task
    def slow(self) -> None:
        get(self, f"/slow?seconds={SLOW}", "/slow", check=_exactly("slept\n"))


class StreamUser(HttpUser):
    """Bodies sent chunk by chunk: `writing` rises until the server closes the body."""

    weight = 1
    wait_time = between(0.05, 0.2)

    @task
    def stream(self) -> None:
        get(
            self,
            f"/stream?chunks={STREAM_CHUNKS}&delay={STREAM_DELAY}",
            "/stream",
            check=_exactly(STREAM_BODY),
        )


class FailUser(HttpUser):
    """An application that raises: gunicorn answers 500 and the middleware counts an error."""

    weight = 1
    wait_time = between(0.05, 0.2)

    @task
    def fail(self) -> None:
        get(self, "/fail", "/fail", expect=500)


def _check_stats(parse: Callable[[str], formats.Stats]) -> Check:
    """A body check: the format parses strictly and its numbers are within the server's bounds."""

    def check(text: str) -> str | None:
        try:
            formats.check_bounds(parse(text), CAPACITY, WORKERS)
        except formats.FormatError as error:
            return str(error)[:120]
        return None

    return check


def _prometheus(openmetrics: bool) -> Callable[[str], formats.Stats]:
    return lambda text: formats.prometheus_stats(formats.parse_prometheus(text, openmetrics))


class StatsUser(HttpUser):
    """Polls /_raindrops in every format during the run, as a dashboard or Prometheus would."""

    fixed_count = 1
    wait_time = constant(0.25)

    @task
    def text(self) -> None:
        get(self, STATS, f"{STATS} text", check=_check_stats(formats.parse_text))

    @task
    def json_format(self) -> None:
        get(self, f"{STATS}?format=json", f"{STATS} json", check=_check_stats(formats.parse_json))

    @task
    def prometheus(self) -> None:
        get(
            self,
            f"{STATS}?format=prometheus",
            f"{STATS} prometheus",
            check=_check_stats(_prometheus(False)),
        )

    @task
    def prometheus_accept(self) -> None:
        headers = {"Accept": "text/plain;version=0.0.4"}
        get(
            self,
            STATS,
            f"{STATS} prometheus (Accept)",
            check=_check_stats(_prometheus(False)),
            headers=headers,
        )

    @task
    def openmetrics(self) -> None:
        headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
        get(
            self,
            STATS,
            f"{STATS} openmetrics",
            check=_check_stats(_prometheus(True)),
            headers=headers,
        )


class OverloadUser(HttpUser):
    """Idle, except in the overload phase: then slow requests back to back, more than the
    workers hold."""

    fixed_count = OVERLOAD_USERS

    def wait_time(self) -> float:
        return 0.0 if TALLY.in_overload() else 0.1

    @task
    def overload(self) -> None:
        """A new connection per request ("Connection: close"), as many distinct clients would make.

        Kept-alive connections would be served again and again by the gthread
        worker holding them, while new connections (the /_raindrops readers
        among them) starve in the listen queue until the phase ends.
        """
        if TALLY.in_overload():
            path, headers = f"/slow?seconds={OVERLOAD_SLOW}", {"Connection": "close"}
            get(self, path, "/slow (overload)", check=_exactly("slept\n"), headers=headers)
