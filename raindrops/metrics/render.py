"""Metric families as every endpoint prints them: Prometheus text, OpenMetrics and JSON.

Numbers are written as prometheus_client writes them (floatToGoString), so a
histogram's `le` labels and every value read the same as they did before a
migration from prometheus_client. JSON labels histogram buckets with the same
`le` strings as the text formats, counts cumulative.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

from raindrops.exposition import escape_label_value

Labels = tuple[tuple[str, str], ...]


class Sample(NamedTuple):
    name: str
    labels: Labels
    value: float


class Family(NamedTuple):
    """One metric as read: `name` without a counter's _total; `kind` counter, gauge or histogram."""

    name: str
    kind: str
    help: str
    samples: list[Sample]

    @property
    def exposed(self) -> str:
        """The family's name in the Prometheus text format (a counter's ends in _total)."""
        return self.name + "_total" if self.kind == "counter" else self.name


def go_float(value: float) -> str:
    """prometheus_client's floatToGoString: "1.0", "+Inf", "NaN", "1e+06"."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _labels_text(labels: Labels) -> str:
    if not labels:
        return ""
    pairs = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)
    return "{" + pairs + "}"


def _help(text: str, openmetrics: bool) -> str:
    escaped = text.replace("\\", "\\\\").replace("\n", "\\n")
    return escaped.replace('"', '\\"') if openmetrics else escaped


def _negative_buckets(family: Family) -> bool:
    """A histogram with a bucket bound below 0: it has no _sum (prometheus_client's rule)."""
    return family.kind == "histogram" and any(
        float(dict(sample.labels)["le"]) < 0
        for sample in family.samples
        if sample.name == family.name + "_bucket"
    )


def _shown(family: Family, openmetrics: bool) -> list[Sample]:
    """The samples a format has: OpenMetrics allows neither _sum nor _count beside negative
    buckets, where the Prometheus format keeps _count (as prometheus_client writes it)."""
    if openmetrics and _negative_buckets(family):
        return [sample for sample in family.samples if sample.name != family.name + "_count"]
    return family.samples


def prometheus(families: Iterable[Family], openmetrics: bool) -> str:
    """The families in the Prometheus text format, or OpenMetrics' (without its # EOF)."""
    lines = []
    for family in families:
        name = family.name if openmetrics else family.exposed
        lines.append(f"# HELP {name} {_help(family.help, openmetrics)}")
        lines.append(f"# TYPE {name} {family.kind}")
        lines.extend(
            f"{sample.name}{_labels_text(sample.labels)} {go_float(sample.value)}"
            for sample in _shown(family, openmetrics)
        )
    return "".join(line + "\n" for line in lines)


def json_number(value: float) -> float | str:
    """A number for JSON: non-finite ones as their Prometheus spelling (JSON has no NaN)."""
    return value if math.isfinite(value) else go_float(value)


def _series_json(family: Family) -> list[dict[str, object]]:
    if family.kind != "histogram":
        return [
            {"labels": dict(sample.labels), "value": json_number(sample.value)}
            for sample in family.samples
        ]
    series: dict[Labels, dict[str, object]] = {}
    for sample in family.samples:
        own = tuple(pair for pair in sample.labels if pair[0] != "le")
        entry = series.setdefault(own, {"labels": dict(own), "buckets": {}})
        suffix = sample.name[len(family.name) :]
        if suffix == "_bucket":
            le = dict(sample.labels)["le"]
            entry["buckets"][le] = int(sample.value)  # type: ignore[index]
        elif suffix == "_count":
            entry["count"] = int(sample.value)
        else:
            entry["sum"] = json_number(sample.value)
    return list(series.values())


def json(families: Iterable[Family]) -> list[dict[str, object]]:
    return [
        {
            "name": family.exposed,
            "type": family.kind,
            "help": family.help,
            "samples": _series_json(family),
        }
        for family in families
    ]
