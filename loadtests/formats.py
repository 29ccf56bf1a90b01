"""Strict parsers for the three formats of the /_raindrops endpoint.

Shared by the locust users (which validate every poll inside the load) and by
the runner's own sampler, so both hold the endpoint to the same rules. Pure
Python with no dependency: locust imports it under gevent's monkey-patching.
Every parser raises FormatError on the first thing that is not exactly right.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


class FormatError(ValueError):
    """The endpoint answered something that is not the format it claims."""


@dataclass(frozen=True)
class Stats:
    """One reading of the endpoint, whatever format it came in."""

    calling: int
    writing: int
    listeners: dict[str, tuple[int, int]] = field(default_factory=dict)  # address -> (active, queued)
    workers: int | None = None
    requests: int | None = None
    errors: int | None = None
    observed: int | None = None  # requests in the duration histogram

    def listener(self, address: str) -> tuple[int, int]:
        if address not in self.listeners:
            raise FormatError(f"listener {address} missing from {sorted(self.listeners)}")
        return self.listeners[address]


def check_bounds(stats: Stats, capacity: int, workers: int) -> None:
    """0 <= calling, writing <= capacity (requests the workers can hold at once); workers <= -w."""
    for name, value in (("calling", stats.calling), ("writing", stats.writing)):
        if not 0 <= value <= capacity:
            raise FormatError(f"{name} {value} outside 0..{capacity}")
    if stats.workers is not None and not 0 <= stats.workers <= workers:
        raise FormatError(f"workers {stats.workers} outside 0..{workers}")


# raindrops' text format.

_TEXT_HEAD = re.compile(r"calling: (\d+)\nwriting: (\d+)\n")
_TEXT_LISTENER = re.compile(r"(\S+) active: (\d+)\n\1 queued: (\d+)\n")


def parse_text(body: str) -> Stats:
    """Exactly "calling: N\\nwriting: N\\n", then "ADDR active: N\\nADDR queued: N\\n" per listener."""
    head = _TEXT_HEAD.match(body)
    if head is None:
        raise FormatError(f"not raindrops' text format: {body[:80]!r}")
    listeners: dict[str, tuple[int, int]] = {}
    position = head.end()
    while position < len(body):
        line = _TEXT_LISTENER.match(body, position)
        if line is None:
            raise FormatError(f"bad listener lines: {body[position:position + 80]!r}")
        listeners[line[1]] = (int(line[2]), int(line[3]))
        position = line.end()
    return Stats(int(head[1]), int(head[2]), listeners)


# JSON.

_JSON_INTS = ("calling", "writing", "workers", "requests_total", "request_errors_total")


def _natural(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise FormatError(f"{what} is not a non-negative integer: {value!r}")
    return value


def parse_json(body: str) -> Stats:
    """The ?format=json document: integer counters, a histogram with a count, listeners by address."""
    try:
        document = json.loads(body)
    except ValueError as error:
        raise FormatError(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise FormatError("JSON document is not an object")
    values = {key: _natural(document.get(key), key) for key in _JSON_INTS}
    histogram = document.get("request_duration_us")
    if not isinstance(histogram, dict):
        raise FormatError("request_duration_us is not an object")
    listeners_field = document.get("listeners")
    if not isinstance(listeners_field, dict):
        raise FormatError("listeners is not an object")
    listeners = {}
    for address, stat in listeners_field.items():
        if not isinstance(stat, dict):
            raise FormatError(f"listener {address} is not an object")
        listeners[address] = (_natural(stat.get("active"), "active"), _natural(stat.get("queued"), "queued"))
    return Stats(
        calling=values["calling"],
        writing=values["writing"],
        listeners=listeners,
        workers=values["workers"],
        requests=values["requests_total"],
        errors=values["request_errors_total"],
        observed=_natural(histogram.get("count"), "request_duration_us.count"),
    )


# The Prometheus text exposition format (and OpenMetrics).

_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABELS = r'\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\}'
_NUMBER = r"[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN)"
_SAMPLE = re.compile(rf"({_METRIC_NAME})({_LABELS})? ({_NUMBER})")
_COMMENT = re.compile(rf"# (HELP|TYPE) ({_METRIC_NAME}) (.+)")
_KINDS = ("gauge", "counter", "histogram", "summary", "untyped", "unknown")
_SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def _family_of(name: str, families: dict[str, str]) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name[: len(name) - len(suffix)] in families:
            return name[: len(name) - len(suffix)]
    raise FormatError(f"sample {name} has no TYPE line before it")


def parse_prometheus(body: str, openmetrics: bool = False) -> dict[str, float]:
    """Samples by `name{labels}`; every line well formed, every sample typed, OpenMetrics ends in # EOF."""
    if not body.endswith("\n"):
        raise FormatError("the exposition does not end with a newline")
    lines = body.split("\n")[:-1]
    if openmetrics:
        if not lines or lines[-1] != "# EOF":
            raise FormatError("OpenMetrics does not end with # EOF")
        lines = lines[:-1]
    families: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in lines:
        comment = _COMMENT.fullmatch(line)
        if comment is not None:
            if comment[1] == "TYPE":
                if comment[3] not in _KINDS:
                    raise FormatError(f"unknown metric type: {line!r}")
                families[comment[2]] = comment[3]
            continue
        sample = _SAMPLE.fullmatch(line)
        if sample is None:
            raise FormatError(f"bad exposition line: {line!r}")
        _family_of(sample[1], families)
        key = sample[1] + (sample[2] or "")
        if key in samples:
            raise FormatError(f"duplicate sample {key}")
        samples[key] = float(sample[3])
    return samples


def prometheus_stats(samples: dict[str, float]) -> Stats:
    """The middleware's numbers out of parsed Prometheus (or OpenMetrics: same sample names) samples."""

    def get(key: str) -> int:
        if key not in samples:
            raise FormatError(f"sample {key} missing")
        return int(samples[key])

    listeners = {}
    for key in samples:
        if key.startswith('raindrops_listener_active{listener="'):
            address = key[len('raindrops_listener_active{listener="') : -2]
            listeners[address] = (get(key), get(f'raindrops_listener_queued{{listener="{address}"}}'))
    return Stats(
        calling=get("raindrops_calling"),
        writing=get("raindrops_writing"),
        listeners=listeners,
        workers=get("raindrops_workers"),
        requests=get("raindrops_requests_total"),
        errors=get("raindrops_request_errors_total"),
        observed=get("raindrops_request_duration_seconds_count"),
    )
