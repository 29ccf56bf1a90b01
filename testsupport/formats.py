"""Strict parsers for every format of the /_raindrops endpoint: text, JSON, Prometheus, OpenMetrics.

One set of rules for everyone who reads the endpoint: the tests (tests/),
the locust users (which validate every poll inside the load) and the load
test runner's own sampler. Pure Python with no dependency, not even on the
rest of testsupport: the locustfile imports it under gevent's
monkey-patching. Every parser raises FormatError on the first thing that is
not exactly right; the tests let it fail them like an assertion.
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
    # address -> (active, queued)
    listeners: dict[str, tuple[int, int]] = field(default_factory=dict)
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
    """Exactly "calling: N\\nwriting: N\\n", then two lines per listener.

    The listener lines are "ADDR active: N\\nADDR queued: N\\n", nothing else.
    """
    head = _TEXT_HEAD.match(body)
    if head is None:
        raise FormatError(f"not raindrops' text format: {body[:80]!r}")
    listeners: dict[str, tuple[int, int]] = {}
    position = head.end()
    while position < len(body):
        line = _TEXT_LISTENER.match(body, position)
        if line is None:
            raise FormatError(f"bad listener lines: {body[position : position + 80]!r}")
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
    """The ?format=json document: integer counters, a histogram with a count, listeners."""
    try:
        document = json.loads(body)
    except ValueError as error:
        raise FormatError(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise FormatError("JSON document is not an object")
    values = {key: _natural(document.get(key), key) for key in _JSON_INTS}
    histogram = document.get("request_duration_seconds")
    if not isinstance(histogram, dict):
        raise FormatError("request_duration_seconds is not an object")
    listeners_field = document.get("listeners")
    if not isinstance(listeners_field, dict):
        raise FormatError("listeners is not an object")
    listeners = {}
    for address, stat in listeners_field.items():
        if not isinstance(stat, dict):
            raise FormatError(f"listener {address} is not an object")
        active, queued = stat.get("active"), stat.get("queued")
        listeners[address] = (_natural(active, "active"), _natural(queued, "queued"))
    return Stats(
        calling=values["calling"],
        writing=values["writing"],
        listeners=listeners,
        workers=values["workers"],
        requests=values["requests_total"],
        errors=values["request_errors_total"],
        observed=_natural(histogram.get("count"), "request_duration_seconds.count"),
    )


# The Prometheus text exposition format (and OpenMetrics).

_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABELS = r'\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\}'
_NUMBER = r"[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN)"
_SAMPLE = re.compile(rf"({_METRIC_NAME})({_LABELS})? ({_NUMBER})")
_COMMENT = re.compile(rf"# (HELP|TYPE) ({_METRIC_NAME}) (.+)")
_KINDS = ("gauge", "counter", "histogram", "summary", "untyped", "unknown")
# No _created: the endpoint never serves it, so a sample named so is an error.
_SUFFIXES = ("", "_total", "_bucket", "_sum", "_count")


def _family_of(name: str, families: dict[str, str]) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name[: len(name) - len(suffix)] in families:
            return name[: len(name) - len(suffix)]
    raise FormatError(f"sample {name} has no TYPE line before it")


def family_total(samples: dict[str, float], name: str) -> float:
    """A family's samples (parse_prometheus' keys) summed over their labels; 0 with none."""
    return sum(value for key, value in samples.items() if key.partition("{")[0] == name)


def parse_prometheus(body: str, openmetrics: bool = False) -> dict[str, float]:
    """Samples by `name{labels}`, every line well formed.

    Every sample belongs to a family typed by a TYPE line before it, no sample
    comes twice, and OpenMetrics (only OpenMetrics) ends with "# EOF".
    """
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
    """The middleware's numbers out of parsed samples (Prometheus or OpenMetrics: same names)."""

    def get(key: str) -> int:
        if key not in samples:
            raise FormatError(f"sample {key} missing")
        return int(samples[key])

    def total(name: str) -> int:
        return int(family_total(samples, name))

    listeners = {}
    for key in samples:
        if key.startswith('raindrops_listener_active{listener="'):
            address = key[len('raindrops_listener_active{listener="') : -2]
            queued = get(f'raindrops_listener_queued{{listener="{address}"}}')
            listeners[address] = (get(key), queued)
    return Stats(
        calling=get("raindrops_calling"),
        writing=get("raindrops_writing"),
        listeners=listeners,
        workers=get("raindrops_workers"),
        requests=total("raindrops_requests_total"),
        errors=get("raindrops_request_errors_total"),
        observed=total("raindrops_request_duration_seconds_count"),
    )


# A strict check of the Prometheus text format 0.0.4, for machines without promtool.

_HELP_TEXT = re.compile(r"(?:[^\\\n]|\\[\\n])*")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_EXPOSED_SAMPLE = re.compile(rf"({_METRIC_NAME})(?:\{{(.*)\}})? ({_NUMBER})(?: (-?[0-9]+))?")
_FAMILY_SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "untyped": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def _labels(text: str | None, line: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while text and position < len(text):
        pair = _LABEL_PAIR.match(text, position)
        if pair is None:
            raise FormatError(f"bad label set: {line!r}")
        if pair[1] in labels:
            raise FormatError(f"label {pair[1]} repeated: {line!r}")
        labels[pair[1]] = pair[2]
        position = pair.end()
        if position < len(text):
            if text[position] != ",":
                raise FormatError(f"labels not separated by commas: {line!r}")
            position += 1
    return labels


def _check_histogram(name: str, samples: list[tuple[str, dict[str, str], float]]) -> None:
    """Cumulative buckets in increasing `le`, ending at +Inf, whose count is the _count sample."""
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for sample_name, labels, value in samples:
        rest = tuple(sorted((key, text) for key, text in labels.items() if key != "le"))
        if sample_name == f"{name}_bucket":
            if "le" not in labels:
                raise FormatError(f"{sample_name} without an le label")
            series.setdefault(rest, []).append((float(labels["le"]), value))
        elif sample_name == f"{name}_count":
            counts[rest] = value
    if set(series) != set(counts):
        raise FormatError(f"histogram {name}: buckets and _count do not describe the same series")
    for rest, buckets in series.items():
        bounds = [bound for bound, _ in buckets]
        values = [value for _, value in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise FormatError(f"histogram {name}{dict(rest)}: le values not strictly increasing")
        if values != sorted(values):
            raise FormatError(f"histogram {name}{dict(rest)}: bucket counts are not cumulative")
        if bounds[-1] != float("inf") or values[-1] != counts[rest]:
            raise FormatError(f"histogram {name}{dict(rest)}: no +Inf bucket equal to _count")


def _typed_family(sample_name: str, kinds: dict[str, str]) -> str | None:
    """The typed family a sample belongs to, given the suffixes its type allows."""
    for suffix in ("_bucket", "_sum", "_count", ""):
        family = sample_name[: len(sample_name) - len(suffix)]
        allowed = _FAMILY_SUFFIXES.get(kinds.get(family, ""), ())
        if sample_name.endswith(suffix) and suffix in allowed:
            return family
    return None


def check_prometheus_text(body: str) -> int:
    """Checks what `promtool check metrics` checks, and returns the number of samples.

    Every family has one HELP and one TYPE line before its samples, which are
    contiguous; counters end in _total; label sets are well formed and escaped;
    histograms are cumulative and end at +Inf with their count. Raises
    FormatError naming the first line that is wrong.
    """
    if not body.endswith("\n"):
        raise FormatError("the exposition does not end with a newline")
    kinds: dict[str, str] = {}
    helped: set[str] = set()
    finished: set[str] = set()
    current = ""
    by_family: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in body.split("\n")[:-1]:
        if line.startswith("#"):
            comment = _COMMENT.fullmatch(line)
            if comment is None:
                raise FormatError(f"bad comment line: {line!r}")
            kind, name, text = comment[1], comment[2], comment[3]
            if name in finished or name in by_family:
                raise FormatError(f"{kind} for {name} after its samples: {line!r}")
            if kind == "HELP":
                if name in helped or _HELP_TEXT.fullmatch(text) is None:
                    raise FormatError(f"repeated or badly escaped HELP: {line!r}")
                helped.add(name)
            elif name in kinds or text not in _FAMILY_SUFFIXES:
                raise FormatError(f"repeated or unknown TYPE: {line!r}")
            else:
                kinds[name] = text
            continue
        sample = _EXPOSED_SAMPLE.fullmatch(line)
        if sample is None:
            raise FormatError(f"bad sample line: {line!r}")
        family = _typed_family(sample[1], kinds)
        if family is None:
            raise FormatError(f"sample without a TYPE line before it: {line!r}")
        if family not in helped:
            raise FormatError(f"{family} has no HELP line")
        if kinds[family] == "counter" and not family.endswith("_total"):
            raise FormatError(f"counter {family} does not end in _total")
        if family != current:
            if family in finished:
                raise FormatError(f"samples of {family} are not together: {line!r}")
            if current:
                finished.add(current)
            current = family
        labels = _labels(sample[2], line)
        identity = (sample[1], tuple(sorted(labels.items())))
        if identity in seen:
            raise FormatError(f"duplicate sample: {line!r}")
        seen.add(identity)
        by_family.setdefault(family, []).append((sample[1], labels, float(sample[3])))
    for family, samples in by_family.items():
        if kinds[family] == "histogram":
            _check_histogram(family, samples)
    return len(seen)
