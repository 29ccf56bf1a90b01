"""Rendering of statistics: raindrops' text format, Prometheus text exposition, JSON.

Kept apart from the data sources so that the middleware, LastDataRecv, the
Watcher and the command line all print the same bytes for the same numbers.
An endpoint picks a format and calls render(format, report): the report
knows its numbers, render() knows the content types and the framing (JSON's
final newline, OpenMetrics' "# EOF").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, Protocol

from raindrops.histogram import HistogramSnapshot
from raindrops.linux import ListenStats
from raindrops.scoreboard import Totals
from raindrops.series import SeriesTotals

FORMATS = ("text", "prometheus", "openmetrics", "json")
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CONTENT_TYPES = {
    "text": "text/plain",
    "prometheus": PROMETHEUS_CONTENT_TYPE,
    "openmetrics": OPENMETRICS_CONTENT_TYPE,
    "json": "application/json",
}


class Report(Protocol):
    """Numbers an endpoint serves, in each format."""

    def text(self) -> str: ...

    def prometheus(self, openmetrics: bool) -> str:
        """The metric families, without OpenMetrics' final "# EOF"."""
        ...

    def json(self) -> dict[str, object]: ...


def render(form: str, report: Report) -> tuple[str, bytes]:
    """(content type, body) of `report` in `form`, one of FORMATS."""
    if form == "json":
        body = json.dumps(report.json()) + "\n"
    elif form in ("prometheus", "openmetrics"):
        body = report.prometheus(form == "openmetrics") + (
            "# EOF\n" if form == "openmetrics" else ""
        )
    elif form == "text":
        body = report.text()
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {form!r}")
    return CONTENT_TYPES[form], body.encode("utf-8")


class Metric(NamedTuple):
    name: str
    kind: str
    help: str


LISTENER_ACTIVE = Metric(
    "raindrops_listener_active", "gauge", "Accepted connections open on a listener."
)
LISTENER_QUEUED = Metric(
    "raindrops_listener_queued", "gauge", "Connections waiting in a listener's accept queue."
)


def escape_label_value(value: str) -> str:
    """Escapes a Prometheus label value: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _printable_character(character: str) -> str:
    if character == "\\":
        return "\\\\"
    if character.isprintable() and character != " ":
        return character
    try:
        encoded = character.encode("utf-8", "surrogateescape")  # an undecodable byte: itself
    except UnicodeEncodeError:
        encoded = character.encode("utf-8", "surrogatepass")  # a lone surrogate from a caller
    return "".join(f"\\x{byte:02x}" for byte in encoded)


def printable_name(name: str) -> str:
    """A listener name as every output prints it: one word of valid UTF-8 that reads as the name.

    Anyone may name a unix socket with any bytes: newlines would forge lines, undecodable bytes
    (os.fsdecode's surrogates) cannot be written as UTF-8, spaces would split the CLI's and the
    tail's columns. A backslash is doubled, and every byte of a space or of an undecodable or
    non-printable character (controls, line separators, format characters) is written \\xNN;
    the rest is kept. Distinct names stay distinct, and the original bytes can be recovered.
    """
    if name.isprintable() and "\\" not in name and " " not in name:
        return name
    return "".join(map(_printable_character, name))


def _header(family: str, metric: Metric) -> str:
    return f"# HELP {family} {metric.help}\n# TYPE {family} {metric.kind}\n"


def prometheus_family(metric: Metric, samples: Mapping[str, int], label: str) -> str:
    """One metric family: HELP and TYPE lines, then one sample per label value."""
    lines = [_header(metric.name, metric).rstrip("\n")]
    lines.extend(
        f'{metric.name}{{{label}="{escape_label_value(key)}"}} {value}'
        for key, value in samples.items()
    )
    return "\n".join(lines) + "\n"


def printed(stats: Mapping[str, ListenStats]) -> dict[str, ListenStats]:
    """`stats` under printable names: what every format below prints, so one listener has one
    name in all of them."""
    return {printable_name(address): stat for address, stat in stats.items()}


def listeners_text(stats: Mapping[str, ListenStats]) -> str:
    """raindrops' middleware lines: "ADDR active: N" then "ADDR queued: N" per listener."""
    return "".join(
        f"{address} active: {stat.active}\n{address} queued: {stat.queued}\n"
        for address, stat in printed(stats).items()
    )


def listeners_prometheus(stats: Mapping[str, ListenStats]) -> str:
    shown = printed(stats)
    return prometheus_family(
        LISTENER_ACTIVE, {address: stat.active for address, stat in shown.items()}, "listener"
    ) + prometheus_family(
        LISTENER_QUEUED, {address: stat.queued for address, stat in shown.items()}, "listener"
    )


def listeners_json(stats: Mapping[str, ListenStats]) -> dict[str, dict[str, int]]:
    return {
        address: {"active": stat.active, "queued": stat.queued}
        for address, stat in printed(stats).items()
    }


def tail_line(stamp: str, address: str, active: int | str, queued: int | str, width: int) -> str:
    """One row of raindrops' linux-listener-stats and Watcher tail output (also its header row);
    `address` is already a printable_name()."""
    return f"{stamp:>20} {address:>{width}} {active:>10} {queued:>10}\n"


DEGRADED = Metric(
    "raindrops_degraded",
    "gauge",
    "1 per reason why the server-wide segment is not used: numbers may cover one process only.",
)


def degraded_prometheus(reasons: tuple[str, ...]) -> str:
    """The raindrops_degraded family, or nothing at all while every number is server-wide."""
    return prometheus_family(DEGRADED, dict.fromkeys(reasons, 1), "reason") if reasons else ""


# The middleware's endpoint.

_US_PER_SECOND = 1_000_000

CALLING = Metric(
    "raindrops_calling", "gauge", "Requests inside the application now, across all workers."
)
WRITING = Metric("raindrops_writing", "gauge", "Responses being written now, across all workers.")
WORKERS = Metric("raindrops_workers", "gauge", "Live worker processes that have served a request.")
REQUESTS = Metric(
    "raindrops_requests",
    "counter",
    "Requests by method and status code, counted when the response starts.",
)
ERRORS = Metric(
    "raindrops_request_errors", "counter", "Responses with a 5xx status code (exceptions included)."
)
EXCEPTIONS = Metric(
    "raindrops_request_exceptions",
    "counter",
    "Requests whose application raised an exception (each also a 500).",
)
BUSY = Metric(
    "raindrops_busy_seconds",
    "counter",
    "Time spent serving requests; its rate divided by raindrops_capacity is utilization.",
)
CAPACITY = Metric(
    "raindrops_capacity",
    "gauge",
    "Requests the live workers can hold at once (threads or connections); utilization is "
    "rate(busy_seconds) over it.",
)
DURATION = Metric(
    "raindrops_request_duration_seconds",
    "histogram",
    "Time from the application call to the end of the response, by method and status code.",
)


def middleware_text(totals: Totals, listeners: Mapping[str, ListenStats]) -> str:
    """raindrops' body, byte for byte: calling, writing, then two lines per listener."""
    return f"calling: {totals.calling}\nwriting: {totals.writing}\n" + listeners_text(listeners)


def scalar(metric: Metric, value: float, openmetrics: bool) -> str:
    """One sample; a counter's sample ends in _total, and so does its family but in OpenMetrics."""
    sample = f"{metric.name}_total" if metric.kind == "counter" else metric.name
    return _header(metric.name if openmetrics else sample, metric) + f"{sample} {value}\n"


def _seconds(microseconds: int) -> str:
    return repr(microseconds / _US_PER_SECOND)


def histogram_prometheus(
    metric: Metric, snapshot: HistogramSnapshot, to_unit: Callable[[int], str]
) -> str:
    """A Prometheus histogram from a log2 snapshot; `to_unit` turns a bound into its unit."""
    lines = [_header(metric.name, metric).rstrip("\n")]
    lines.extend(
        f'{metric.name}_bucket{{le="{to_unit(bound)}"}} {count}'
        for bound, count in snapshot.cumulative()
    )
    lines.append(f'{metric.name}_bucket{{le="+Inf"}} {snapshot.count}')
    lines.append(f"{metric.name}_sum {to_unit(snapshot.sum)}")
    lines.append(f"{metric.name}_count {snapshot.count}")
    return "\n".join(lines) + "\n"


def middleware_prometheus(
    totals: Totals, listeners: Mapping[str, ListenStats], openmetrics: bool = False
) -> str:
    """The Prometheus text exposition format, or OpenMetrics' families (render() adds its # EOF)."""
    parts = [
        scalar(CALLING, totals.calling, openmetrics),
        scalar(WRITING, totals.writing, openmetrics),
        scalar(WORKERS, totals.workers, openmetrics),
        requests_prometheus(totals.series, openmetrics),
        scalar(ERRORS, totals.errors, openmetrics),
        scalar(EXCEPTIONS, totals.exceptions, openmetrics),
        scalar(BUSY, totals.busy_seconds, openmetrics),
        *([] if totals.capacity is None else [scalar(CAPACITY, totals.capacity, openmetrics)]),
        durations_prometheus(totals.series, totals.buckets),
    ]
    if listeners:
        parts.append(listeners_prometheus(listeners))
    return "".join(parts)


def _series_labels(entry: SeriesTotals) -> str:
    """method and code labels (raindrops.series' fixed sets), then the route if there is one:
    the application's text, read back from shared memory, so escaped."""
    method, code = escape_label_value(entry.method), escape_label_value(entry.code)
    if entry.route is None:
        return f'method="{method}",code="{code}"'
    return f'method="{method}",code="{code}",route="{escape_label_value(entry.route)}"'


def requests_prometheus(series: Iterable[SeriesTotals], openmetrics: bool) -> str:
    sample = f"{REQUESTS.name}_total"
    lines = [_header(REQUESTS.name if openmetrics else sample, REQUESTS)]
    lines.extend(f"{sample}{{{_series_labels(entry)}}} {entry.requests}\n" for entry in series)
    return "".join(lines)


def durations_prometheus(series: Iterable[SeriesTotals], buckets: tuple[float, ...]) -> str:
    """The duration histogram by method and code; bucket `le` is an inclusive upper bound."""
    name = DURATION.name
    lines = [_header(name, DURATION)]
    bounds = [repr(bound) for bound in buckets] + ["+Inf"]
    for entry in series:
        labels = _series_labels(entry)
        cumulative = entry.cumulative()
        lines.extend(
            f'{name}_bucket{{{labels},le="{bound}"}} {count}\n'
            for bound, count in zip(bounds, cumulative, strict=True)
        )
        lines.append(f"{name}_sum{{{labels}}} {entry.sum_seconds!r}\n")
        lines.append(f"{name}_count{{{labels}}} {cumulative[-1]}\n")
    return "".join(lines)


def _series_json(entry: SeriesTotals) -> dict[str, object]:
    labels: dict[str, object] = {"method": entry.method, "code": entry.code}
    if entry.route is not None:
        labels["route"] = entry.route
    return {**labels, "count": entry.requests}


def durations_json(series: Iterable[SeriesTotals], buckets: tuple[float, ...]) -> dict[str, object]:
    """All series' durations together: cumulative counts keyed by upper bound, as Prometheus'
    `le`; sum and count."""
    bounds = [repr(bound) for bound in buckets] + ["+Inf"]
    counts = [0] * len(bounds)
    total_seconds = 0.0
    for entry in series:
        counts = [mine + theirs for mine, theirs in zip(counts, entry.cumulative(), strict=True)]
        total_seconds += entry.sum_seconds
    buckets_json = dict(zip(bounds, counts, strict=True))
    return {"buckets": buckets_json, "sum": total_seconds, "count": counts[-1]}


def histogram_json(snapshot: HistogramSnapshot) -> dict[str, object]:
    return {
        "count": snapshot.count,
        "sum": snapshot.sum,
        "min": snapshot.min,
        "max": snapshot.max,
        "mean": snapshot.mean,
        "std_dev": snapshot.std_dev,
        "buckets": {
            str(snapshot.upper_bound(bucket)): count
            for bucket, count in enumerate(snapshot.buckets)
            if count
        },
    }


def middleware_json(totals: Totals, listeners: Mapping[str, ListenStats]) -> dict[str, object]:
    return {
        "calling": totals.calling,
        "writing": totals.writing,
        "workers": totals.workers,
        "capacity": totals.capacity,
        "requests_total": totals.requests,
        "request_errors_total": totals.errors,
        "request_exceptions_total": totals.exceptions,
        "busy_seconds_total": totals.busy_seconds,
        "requests": [_series_json(entry) for entry in totals.series],
        "request_duration_seconds": durations_json(totals.series, totals.buckets),
        "listeners": listeners_json(listeners),
    }


class MiddlewareReport(NamedTuple):
    """The middleware endpoint's numbers: the scoreboard's totals and the listeners."""

    totals: Totals
    listeners: Mapping[str, ListenStats]
    degraded: tuple[str, ...] = ()  # why the numbers are partial (raindrops.segments)

    def text(self) -> str:
        return middleware_text(self.totals, self.listeners)

    def prometheus(self, openmetrics: bool) -> str:
        families = middleware_prometheus(self.totals, self.listeners, openmetrics)
        return families + degraded_prometheus(self.degraded)

    def json(self) -> dict[str, object]:
        return {**middleware_json(self.totals, self.listeners), "degraded": list(self.degraded)}


# LastDataRecv's endpoint.

LAST_DATA_RECV = Metric(
    "raindrops_last_data_recv_seconds",
    "histogram",
    "Time from a request's arrival (TCP_INFO last_data_recv) to the application call: "
    "the listen queue wait "
    "when the listener has TCP_DEFER_ACCEPT.",
)
LAST_DATA_RECV_SKIPPED = Metric(
    "raindrops_last_data_recv_skipped",
    "counter",
    "Requests not measured: their socket gave no TCP_INFO.",
)


def _milliseconds_in_seconds(milliseconds: int) -> str:
    return repr(milliseconds / 1000)


class LastDataRecvReport(NamedTuple):
    """LastDataRecv's histogram of milliseconds, and the requests it could not measure."""

    snapshot: HistogramSnapshot
    skipped: int
    degraded: tuple[str, ...] = ()  # why the numbers are partial (raindrops.segments)

    def text(self) -> str:
        return histogram_text(self.snapshot)

    def prometheus(self, openmetrics: bool) -> str:
        """The histogram in seconds (bounds are whole milliseconds), and the skipped requests."""
        histogram = histogram_prometheus(LAST_DATA_RECV, self.snapshot, _milliseconds_in_seconds)
        skipped = scalar(LAST_DATA_RECV_SKIPPED, self.skipped, openmetrics)
        return histogram + skipped + degraded_prometheus(self.degraded)

    def json(self) -> dict[str, object]:
        numbers = {**histogram_json(self.snapshot), "unit": "ms", "skipped": self.skipped}
        return {**numbers, "degraded": list(self.degraded)}


# raindrops' aggregates: the Watcher's and LastDataRecv's text histograms and X-* headers.

HISTOGRAM_COLUMNS = 80
EMPTY_HISTOGRAM = "Empty histogram"


def ruby_float(value: float) -> str:
    """A float as Ruby's Float#to_s spells it ("1.0", "NaN", "1.0e+16"), as raindrops sends it."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    text = repr(value)
    mantissa, marker, exponent = text.partition("e")
    if marker and "." not in mantissa:
        return f"{mantissa}.0e{exponent}"
    return text


def _round_half_up(value: float) -> int:
    """Ruby's Float#round for the non-negative numbers used here (Python's round() goes to even)."""
    return math.floor(value + 0.5)


def outliers(snapshot: HistogramSnapshot) -> tuple[int, int]:
    """Samples below and above the drawn buckets: zeros (raindrops' buckets start at 1), and none
    above,
    because the last bucket of these histograms takes every larger value and is drawn."""
    return (snapshot.buckets[0] if snapshot.buckets else 0), 0


def histogram_text(snapshot: HistogramSnapshot, columns: int = HISTOGRAM_COLUMNS) -> str:
    """raindrops' ASCII histogram (the aggregate gem's to_s), byte for byte.

    One row per non-empty bucket, labelled with its lower bound (1, 2, 4, ...),
    with a bar of "@" scaled to the fullest bucket, "~" for each run of empty
    buckets and after the last row unless it is the last bucket, and a Total of
    the drawn samples. Zeros are outliers and not drawn. "Empty histogram" when
    nothing is drawn.
    """
    if columns < HISTOGRAM_COLUMNS:
        raise ValueError(f"columns must be at least {HISTOGRAM_COLUMNS}, not {columns}")
    rows = [
        (bucket, 1 << (bucket - 1), count)
        for bucket, count in enumerate(snapshot.buckets)
        if bucket and count
    ]
    if not rows:
        return EMPTY_HISTOGRAM
    total = sum(count for _, _, count in rows)
    value_width = max(len(str(rows[-1][1])), len("value"), len("Total"))
    count_width = max(len(str(total)), len("count"))
    bar_width = columns - (value_width + len(" |") + len("| ") + count_width)
    weight = max(max(count for _, _, count in rows) / bar_width, 1.0)
    rule = "-" * bar_width
    skipped = f"{'':>{value_width}} ~"
    lines = [f"{'value':>{value_width}} |{rule}| {'count':>{count_width}}"]
    previous = rows[0][0] - 1
    for bucket, value, count in rows:
        if bucket != previous + 1:
            lines.append(skipped)
        previous = bucket
        bar = int(count / weight)
        lines.append(
            f"{value:>{value_width}} |{'@' * bar}{' ' * (bar_width - bar)}| {count:>{count_width}}"
        )
    if rows[-1][0] != len(snapshot.buckets) - 1:
        lines.append(skipped)
    lines.append(f"{'Total':>{value_width}} |{rule}| {total:>{count_width}}")
    return "\n".join(lines) + "\n"


def watcher_headers(snapshot: HistogramSnapshot) -> list[tuple[str, str]]:
    """The Watcher's X-Count .. X-Outliers-High: always all of them, "" or "NaN" where undefined."""
    low, high = outliers(snapshot)
    return [
        ("X-Count", str(snapshot.count)),
        ("X-Min", "" if snapshot.min is None else str(snapshot.min)),
        ("X-Max", "" if snapshot.max is None else str(snapshot.max)),
        ("X-Mean", ruby_float(snapshot.mean) if snapshot.count else "NaN"),
        ("X-Std-Dev", ruby_float(snapshot.std_dev) if snapshot.count > 1 else "NaN"),
        ("X-Outliers-Low", str(low)),
        ("X-Outliers-High", str(high)),
    ]


def last_data_recv_headers(snapshot: HistogramSnapshot) -> list[tuple[str, str]]:
    """raindrops' LastDataRecv headers: X-Count, and only past one sample the rest, mean and
    standard deviation rounded to whole milliseconds."""
    headers = [("X-Count", str(snapshot.count))]
    if snapshot.count > 1:
        low, high = outliers(snapshot)
        headers += [
            ("X-Min", str(snapshot.min)),
            ("X-Max", str(snapshot.max)),
            ("X-Mean", str(_round_half_up(snapshot.mean))),
            ("X-Std-Dev", str(_round_half_up(snapshot.std_dev))),
            ("X-Outliers-Low", str(low)),
            ("X-Outliers-High", str(high)),
        ]
    return headers
