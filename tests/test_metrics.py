"""raindrops.metrics: prometheus_client's API over shared memory, in process and across real forks.

The invalid space first (every refusal names the bad value), then what a
single process sees (checked against prometheus_client itself), what hostile
or torn bytes in a segment do to a read, and then real processes: forked
(as under --preload), spawned by multiprocessing (each building its own
metrics, as workers without --preload do), killed, and replaced. Real
servers are in tests/test_metrics_gunicorn.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import multiprocessing
import os
import re
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

import raindrops
from raindrops import metrics, segments
from raindrops.metrics import gauges, table
from raindrops.metrics.binding import KIND
from raindrops.metrics.family import CardinalityError
from raindrops.metrics.table import MetricSegment
from testsupport import formats, processes
from testsupport.programs import ROOT

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def registry() -> metrics.Registry:
    return metrics.Registry()


def samples_of(text: str) -> Samples:
    """Every sample of a Prometheus exposition, parsed by prometheus_client, without _created."""
    parsed: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                parsed[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


def read(registry: metrics.Registry) -> Samples:
    text = registry.prometheus()
    formats.check_prometheus_text(text)
    return samples_of(text)


# The invalid space.

BAD_NAMES = ("1abc", "a-b", "a b", "é", "a\nb", "a{b}", "a.b")


@pytest.mark.parametrize(
    ("kind", "arguments", "built"),
    [
        ("counter", {"name": "requests"}, "requests"),
        ("counter", {"name": "requests_total"}, "requests"),
        ("gauge", {"name": "requests_total"}, "requests_total"),
        ("gauge", {"name": "a:b_c9"}, "a:b_c9"),
        ("gauge", {"name": "size", "namespace": "app", "subsystem": "db"}, "app_db_size"),
        ("gauge", {"name": "size", "unit": "bytes"}, "size_bytes"),
        ("gauge", {"name": "size_bytes", "unit": "bytes"}, "size_bytes"),
        ("histogram", {"name": "latency", "unit": "seconds"}, "latency_seconds"),
    ],
)
def test_names_are_built_as_prometheus_client_builds_them(
    kind: str, arguments: dict[str, str], built: str, registry: metrics.Registry
) -> None:
    make = {"counter": metrics.Counter, "gauge": metrics.Gauge, "histogram": metrics.Histogram}
    name = arguments.pop("name")
    metric = make[kind](name, "help", registry=registry, **arguments)  # type: ignore[operator]
    assert metric.name == built


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "metric name must not be empty"),
        ("_total", "invalid metric name '': it must match"),
        ("raindrops_mine", "'raindrops_mine': the prefix 'raindrops_' is reserved"),
        *((name, f"invalid metric name {re.escape(repr(name))}") for name in BAD_NAMES),
    ],
)
def test_bad_metric_names_are_refused_by_name(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.Counter(name, "help", registry=None)


@pytest.mark.parametrize("name", [None, 3, b"bytes", ["a"]])
def test_a_metric_name_that_is_not_a_str_is_a_type_error(name: object) -> None:
    with pytest.raises(TypeError, match="metric name must be a str"):
        metrics.Gauge(name, "help", registry=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("labelnames", "error", "message"),
    [
        (["__reserved"], ValueError, "'__reserved'"),
        (["1a"], ValueError, "'1a'"),
        (["a-b"], ValueError, "'a-b'"),
        ([""], ValueError, "''"),
        (["ok", "ok"], ValueError, "repeated label names .*: ok"),
        ([3], TypeError, "must be a str, not int 3"),
        ("method", TypeError, "not the single 'method'"),
        (5, TypeError, "list of names, not 5"),
        ([f"l{index}" for index in range(33)], ValueError, "33 label names, at most 32"),
    ],
)
def test_bad_label_names_are_refused_by_name(labelnames: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        metrics.Counter("named", "help", labelnames, registry=None)


def test_reserved_label_names_depend_on_the_metric() -> None:
    with pytest.raises(ValueError, match="label name 'le' of 'h' is reserved"):
        metrics.Histogram("h", "help", ["le"], registry=None)
    for mode in gauges.PID_MODES:
        with pytest.raises(ValueError, match="label name 'pid' of 'g' is reserved"):
            metrics.Gauge("g", "help", ["pid"], multiprocess_mode=mode, registry=None)
    assert metrics.Gauge("g", "help", ["pid"], registry=None).labelnames == ("pid",)
    assert metrics.Counter("c", "help", ["le"], registry=None).labelnames == ("le",)


@pytest.mark.parametrize(
    ("buckets", "error", "message"),
    [
        ([1.0, 0.5], ValueError, "must ascend strictly: 1.0 then 0.5"),
        ([0.5, 0.5, 1.0], ValueError, "must ascend strictly: 0.5 then 0.5"),
        ([0.1, math.nan], ValueError, "contain NaN"),
        ([], ValueError, "at least one finite bucket bound"),
        ([math.inf], ValueError, "at least one finite bucket bound"),
        ([-math.inf, 1.0], ValueError, "must not start at -Inf"),
        (["fast"], ValueError, "bucket bound 'fast'"),
        ([True, 2.0], TypeError, "bucket bound True"),
        ([None], TypeError, "bucket bound None"),
        ("0.5", TypeError, "must be a list of numbers"),
        (3.0, TypeError, "must be a list of numbers"),
        (list(range(300)), ValueError, "has 301 buckets, at most 256"),
    ],
)
def test_bad_buckets_are_refused_by_value(buckets: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        metrics.Histogram("h", "help", buckets=buckets, registry=None)


def test_buckets_default_to_prometheus_clients_and_end_at_inf() -> None:
    assert metrics.Histogram("h", "help", registry=None).upper_bounds == tuple(
        prometheus_client.Histogram.DEFAULT_BUCKETS
    )
    custom = metrics.Histogram("h", "help", buckets=[1, "2.5", fractions.Fraction(7, 2)])
    metrics.REGISTRY.unregister(custom)
    assert custom.upper_bounds == (1.0, 2.5, 3.5, math.inf)
    assert metrics.Histogram("h", "help", buckets=[-1, math.inf], registry=None).upper_bounds == (
        -1.0,
        math.inf,
    )


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"multiprocess_mode": "average"}, ValueError, "invalid multiprocess_mode 'average'"),
        ({"multiprocess_mode": None}, ValueError, "invalid multiprocess_mode None"),
        ({"max_processes": 0}, ValueError, "between 1 and 1024, not 0"),
        ({"max_processes": 4096}, ValueError, "between 1 and 1024, not 4096"),
        ({"max_processes": True}, TypeError, "max_processes of gauge 'g' must be an int"),
        ({"max_label_sets": 0}, ValueError, "max_label_sets of 'g' must be between 1"),
        ({"max_label_sets": "10"}, TypeError, "max_label_sets of 'g' must be an int"),
        ({"documentation": 3}, TypeError, "documentation of 'g' must be a str, not int 3"),
        ({"registry": prometheus_client.REGISTRY}, TypeError, "raindrops.metrics.Registry"),
    ],
)
def test_bad_options_are_refused_by_value(
    arguments: dict[str, Any], error: type, message: str
) -> None:
    settings = {"documentation": "help", "registry": None, **arguments}
    with pytest.raises(error, match=message):
        metrics.Gauge("g", **settings)


def test_labels_calls_are_checked_like_prometheus_clients(registry: metrics.Registry) -> None:
    labelled = metrics.Counter("calls", "help", ["method", "code"], registry=registry)
    plain = metrics.Counter("plain", "help", registry=registry)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: plain.labels("x"), "counter 'plain' has no label names"),
        (lambda: labelled.inc(), r"label names \['method', 'code'\]: call labels\(...\) first"),
        (lambda: labelled.labels("GET"), r"takes 2 values \['method', 'code'\], not 1: \('GET',\)"),
        (lambda: labelled.labels("GET", "200", "x"), "not 3"),
        (lambda: labelled.labels(method="GET"), r"takes the names \['method', 'code'\]"),
        (
            lambda: labelled.labels(method="GET", code=1, verb=2),
            r"not \['code', 'method', 'verb'\]",
        ),
        (lambda: labelled.labels("GET", code="200"), "give values by position or by name"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert labelled.labels(method="GET", code=200) is labelled.labels("GET", "200")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c, g, h: c.inc(-1), ValueError, "must not be negative: counters only go up"),
        (lambda c, g, h: c.inc(-0.5), ValueError, "not -0.5"),
        (lambda c, g, h: c.inc(math.nan), ValueError, "must be finite, not nan"),
        (lambda c, g, h: c.inc(math.inf), ValueError, "must be finite, not inf"),
        (lambda c, g, h: c.inc("1"), TypeError, "must be a real number, not str '1'"),
        (lambda c, g, h: c.inc(None), TypeError, "not NoneType None"),
        (lambda c, g, h: c.inc(Decimal("1.5")), TypeError, "not Decimal"),
        (lambda c, g, h: c.inc(10**400), ValueError, "too large for a float"),
        (lambda c, g, h: c.inc(b"1"), TypeError, "not bytes"),
        (lambda c, g, h: h.observe(math.nan), ValueError, "a sample of histogram 'h'"),
        (lambda c, g, h: h.observe(-math.inf), ValueError, "must be finite, not -inf"),
        (lambda c, g, h: h.observe("0.5"), TypeError, "not str '0.5'"),
        (lambda c, g, h: g.set("5"), TypeError, "the value of gauge 'g' must be a real number"),
        (lambda c, g, h: g.inc([1]), TypeError, "the increment of gauge 'g'"),
        (lambda c, g, h: g.dec(None), TypeError, "the decrement of gauge 'g'"),
        (lambda c, g, h: c.count_exceptions(KeyboardInterrupt()), TypeError, "exception classes"),
        (lambda c, g, h: c.count_exceptions(()), TypeError, "exception classes"),
    ],
)
def test_bad_amounts_are_refused_by_value(
    call: Callable[..., object], error: type, message: str, registry: metrics.Registry
) -> None:
    counter = metrics.Counter("c", "help", registry=registry)
    gauge = metrics.Gauge("g", "help", registry=registry)
    histogram = metrics.Histogram("h", "help", registry=registry)
    with pytest.raises(error, match=message):
        call(counter, gauge, histogram)
    counted = {key: value for key, value in read(registry).items() if value}
    assert counted == {}, "a refused amount counts nothing"


def test_good_amounts_of_every_real_type(registry: metrics.Registry) -> None:
    counter = metrics.Counter("c", "help", registry=registry)
    gauge = metrics.Gauge("g", "help", registry=registry)
    for amount in (1, 2.5, True, fractions.Fraction(1, 4), 0, -0.0):
        counter.inc(amount)
    gauge.set(math.nan)
    assert math.isnan(read(registry)[("g", ())])
    gauge.set(-math.inf)
    gauge.inc(10**300)
    assert read(registry)[("c_total", ())] == 4.75
    assert read(registry)[("g", ())] == -math.inf


def test_label_values_that_cannot_be_stored_are_refused(registry: metrics.Registry) -> None:
    counter = metrics.Counter("stored", "help", ["path"], registry=registry)
    with pytest.raises(ValueError, match=r"label values of 'stored' take 1502 bytes, at most 1024"):
        counter.labels("x" * 1500)
    with pytest.raises(ValueError, match=r"label value '\\ud800' of 'stored' cannot be written"):
        counter.labels("\ud800")
    counter.labels("y" * 1022).inc()
    assert read(registry) == {("stored_total", (("path", "y" * 1022),)): 1.0}


def test_label_sets_are_bounded_with_a_clear_error(registry: metrics.Registry) -> None:
    counter = metrics.Counter("bounded", "help", ["user"], registry=registry, max_label_sets=3)
    for user in ("a", "b", "c"):
        counter.labels(user).inc()
    message = r"counter 'bounded' has 3 label sets, its limit \(max_label_sets=3\): .*'user': 'd'"
    with pytest.raises(CardinalityError, match=message):
        counter.labels("d")
    with pytest.raises(ValueError, match="max_label_sets=3"):
        counter.labels(user="e")
    counter.labels("a").inc()

    def child(_: int) -> None:
        counter.labels("b").inc()
        try:
            counter.labels("f")
        except CardinalityError:
            return
        raise AssertionError("a forked process went past the limit")

    run_forked(child, 2)
    assert read(registry) == {
        ("bounded_total", (("user", "a"),)): 2.0,
        ("bounded_total", (("user", "b"),)): 3.0,
        ("bounded_total", (("user", "c"),)): 1.0,
    }


def test_registries_refuse_a_series_name_twice(registry: metrics.Registry) -> None:
    first = metrics.Counter("taken", "help", registry=registry)
    with pytest.raises(ValueError, match="duplicated timeseries in the registry: taken"):
        metrics.Counter("taken", "help", registry=registry)
    with pytest.raises(ValueError, match="taken_total .*already made by 'taken'"):
        metrics.Gauge("taken_total", "help", registry=registry)
    metrics.Histogram("latency", "help", registry=registry)
    with pytest.raises(ValueError, match="latency_count"):
        metrics.Gauge("latency_count", "help", registry=registry)
    registry.unregister(first)
    metrics.Gauge("taken", "help", registry=registry)
    with pytest.raises(KeyError, match="'taken' is not in this registry"):
        registry.unregister(first)


# One process: what prometheus_client would show.


def test_one_process_shows_what_prometheus_client_shows(registry: metrics.Registry) -> None:
    theirs = prometheus_client.CollectorRegistry()
    pairs = []
    for module, where in (
        (prometheus_client, {"registry": theirs}),
        (metrics, {"registry": registry}),
    ):
        counter = module.Counter("hits_total", "Hits.", ["method", "code"], **where)
        gauge = module.Gauge("level", "Level.", ["shard"], **where)
        histogram = module.Histogram("wait_seconds", "Wait.", ["queue"], **where)
        plain = module.Histogram("sizes", "Sizes.", buckets=[-10, 0, 10], **where)
        pairs.append((counter, gauge, histogram, plain))
    for counter, gauge, histogram, plain in pairs:
        counter.labels("GET", 200).inc()
        counter.labels(method="GET", code="200").inc(2.5)
        counter.labels("POST", "500").inc(0)
        gauge.labels("a").set(4)
        gauge.labels("a").dec(1.5)
        gauge.labels("b").inc()
        for value in (0.005, 0.0051, 10.0, 11, -1, 0.3):
            histogram.labels("q").observe(value)
        for value in (-20, -10, 0, 5, 10, 10.5):
            plain.observe(value)
    ours = read(registry)
    assert ours == samples_of(prometheus_client.generate_latest(theirs).decode())
    assert ("sizes_sum", ()) not in ours  # prometheus_client drops _sum under negative buckets


def test_every_format_names_a_counter_as_prometheus_does(registry: metrics.Registry) -> None:
    metrics.Counter("jobs_total", "Jobs done.", registry=registry).inc(3)
    text = registry.prometheus()
    assert "# TYPE jobs_total counter\njobs_total 3.0\n" in text
    assert formats.check_prometheus_text(text) == 1
    openmetrics = registry.prometheus(openmetrics=True)
    assert "# TYPE jobs counter\njobs_total 3.0\n" in openmetrics
    formats.parse_prometheus(openmetrics + "# EOF\n", openmetrics=True)
    assert registry.json() == [
        {"name": "jobs_total", "type": "counter", "help": "Jobs done.", "samples": [
            {"labels": {}, "value": 3.0}
        ]}
    ]  # fmt: skip


def _every_kind(registry: metrics.Registry) -> None:
    metrics.Counter("app_jobs_total", 'Jobs "done".', ["queue"], registry=registry).labels(
        'a"b\\c\nd'
    ).inc(2)
    latency = metrics.Histogram("app_latency_seconds", "Latency.", ["route"], registry=registry)
    latency.labels("/").observe(0.3)
    metrics.Histogram("app_delta", "Delta.", buckets=[-1, 0, 1], registry=registry).observe(-2)
    metrics.Gauge("app_rss_bytes", "RSS.", multiprocess_mode="all", registry=registry).set(9)
    metrics.Gauge("app_in_flight", "In flight.", ["route"], registry=registry).labels("/").inc()


def test_every_kind_passes_promtool_and_the_openmetrics_parser(registry: metrics.Registry) -> None:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )

    from testsupport import programs

    _every_kind(registry)
    openmetrics = registry.prometheus(openmetrics=True) + "# EOF\n"
    parsed = {family.name: family for family in openmetrics_families(openmetrics)}
    assert sorted(parsed) == ["app_delta", "app_in_flight", "app_jobs", "app_latency_seconds",
                              "app_rss_bytes"]  # fmt: skip
    assert [sample.name for sample in parsed["app_delta"].samples][-1] == "app_delta_bucket"
    text = registry.prometheus()
    formats.check_prometheus_text(text)
    promtool = programs.require("promtool")
    result = processes.run([promtool, "check", "metrics"], timeout=60, input=text, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_json_labels_histogram_buckets_as_the_text_does(registry: metrics.Registry) -> None:
    histogram = metrics.Histogram("t", "T.", ["q"], buckets=[0.5, 1e6], registry=registry)
    histogram.labels("a").observe(0.25)
    histogram.labels("a").observe(2e6)
    assert 'le="1e+06"' in registry.prometheus()
    assert registry.json()[0]["samples"] == [
        {"labels": {"q": "a"}, "buckets": {"0.5": 1, "1e+06": 1, "+Inf": 2}, "count": 2,
         "sum": 2000000.25}
    ]  # fmt: skip
    metrics.Gauge("odd", "O.", registry=registry).set(math.nan)
    assert registry.json()[1]["samples"] == [{"labels": {}, "value": "NaN"}]
    json.dumps(registry.json(), allow_nan=False)


def test_label_values_are_escaped_and_read_back_intact(registry: metrics.Registry) -> None:
    odd = ['quote " here', "back\\slash", "new\nline", "ünïcödé ☃", "", "a,b=c}"]
    counter = metrics.Counter("odd", "Help with \\ and\nnewline.", ["value"], registry=registry)
    for value in odd:
        counter.labels(value).inc()
    parsed = read(registry)
    assert sorted(dict(labels)["value"] for _, labels in parsed) == sorted(odd)
    assert "# HELP odd_total Help with \\\\ and\\nnewline.\n" in registry.prometheus()


def test_helpers_are_context_managers_and_decorators(registry: metrics.Registry) -> None:
    histogram = metrics.Histogram("took", "help", buckets=[0.5], registry=registry)
    gauge = metrics.Gauge("running", "help", registry=registry)
    last = metrics.Gauge("last", "help", registry=registry)
    failures = metrics.Counter("failures", "help", registry=registry)

    @histogram.time()
    @gauge.track_inprogress()
    @failures.count_exceptions(KeyError)
    def work(fail: type[BaseException] | None) -> int:
        assert read(registry)[("running", ())] == 1.0
        if fail is not None:
            raise fail("x")
        return 7

    @histogram.time()
    @gauge.track_inprogress()
    async def awaited() -> str:
        await asyncio.sleep(0)
        assert read(registry)[("running", ())] == 1.0
        return "done"

    assert work(None) == 7
    with pytest.raises(KeyError):
        work(KeyError)
    with pytest.raises(ValueError):
        work(ValueError)
    assert asyncio.run(awaited()) == "done"
    with last.time(), histogram.time():
        pass
    last.set_to_current_time()
    samples = read(registry)
    assert samples[("took_count", ())] == 5.0
    assert samples[("running", ())] == 0.0
    assert samples[("failures_total", ())] == 1.0
    assert abs(samples[("last", ())] - time.time()) < 60


def test_mostrecent_gauges_only_set(registry: metrics.Registry) -> None:
    for mode in ("mostrecent", "livemostrecent"):
        gauge = metrics.Gauge(f"recent_{mode}", "help", ["k"], multiprocess_mode=mode)
        metrics.REGISTRY.unregister(gauge)
        registry.register(gauge)
        with pytest.raises(RuntimeError, match="inc must not be used with the mostrecent mode"):
            gauge.labels("a").inc()
        with pytest.raises(RuntimeError, match="dec must not be used"):
            gauge.labels("a").dec()
        gauge.labels("b")  # made but never set: no series, as prometheus_client
        gauge.labels("a").set(1)
        gauge.labels("a").set(2)
    assert read(registry) == {
        ("recent_mostrecent", (("k", "a"),)): 2.0,
        ("recent_livemostrecent", (("k", "a"),)): 2.0,
    }


# Shared memory that other code (buggy, or another definition) wrote.


def _poisoned(segment: MetricSegment, base: int, header: int, words: list[int]) -> int:
    counters = segment.counters
    segment.grow(base + 1 + segment.layout.value_words + len(words) + 1)
    counters[base] = header
    for index, word in enumerate(words):
        counters[base + 1 + segment.layout.value_words + index] = word
    return base + segment.layout.entry_words(len(words) * 8)


def test_torn_and_bad_entries_are_skipped_never_crash_a_read(registry: metrics.Registry) -> None:
    counter = metrics.Counter("poisoned", "help", ["a", "b"], registry=registry)
    counter.labels("x", "y").inc(5)
    segment = counter._shared.segment()
    tail = counter._table.refresh()  # type: ignore[union-attr]
    good = table.encode(("z", "w"), "poisoned")
    wrong_count = table.encode(("only",), "poisoned")
    bad_utf8 = b"\x02\x00\xff\xfe\x01\x00a"
    cases = [
        table.header(table.READY, len(good), 12345),  # CRC mismatch
        table.header(table.READY, len(bad_utf8), zlib.crc32(bad_utf8)),
        table.header(table.READY, len(wrong_count), zlib.crc32(wrong_count)),
        table.header(table.CLAIMED, len(good), 0),  # a claimer that died before finishing
    ]
    payloads = [good, bad_utf8, wrong_count, good]
    for header, payload in zip(cases, payloads, strict=True):
        tail = _poisoned(segment, tail, header, table.label_words(payload))
    assert read(registry) == {("poisoned_total", (("a", "x"), ("b", "y"))): 5.0}
    counter.labels("after", "poison").inc()  # claimed past the bad entries
    assert read(registry)[("poisoned_total", (("a", "after"), ("b", "poison")))] == 1.0
    end = counter._table.refresh()  # type: ignore[union-attr]
    segment.grow(end + 4)
    segment.counters[end] = 3 << 62 | 7  # an unknown state: nothing after it can be found
    segment.counters[end + 2] = table.header(table.READY, 0, 0)
    assert len(read(registry)) == 2
    segment.counters[end] = table.header(table.READY, table.LABEL_BYTES_MAX + 8, 0)
    assert len(read(registry)) == 2
    segment.counters[end] = table.header(table.READY, 1000, 0)  # would end past the segment
    assert len(read(registry)) == 2
    with pytest.raises(table.TableFull):
        counter._table.claim(("new", "one"), table.encode(("new", "one"), "p"), "p")  # type: ignore[union-attr]
    counter.labels("new", "one").inc()  # never raises: counts privately, says so
    samples = read(registry)
    assert (
        samples[("raindrops_metric_degraded", (("metric", "poisoned"), ("reason", "segment_full")))]
        == 1.0
    )


def test_decode_accepts_only_what_encode_writes() -> None:
    values = ("a", "", "ünï", "x" * 300)
    assert table.decode(table.encode(values, "m"), 4) == values
    encoded = table.encode(values, "m")
    assert table.decode(encoded, 3) is None
    assert table.decode(encoded, 5) is None
    assert table.decode(encoded[:-1], 4) is None
    assert table.decode(encoded + b"\0", 4) is None
    assert table.decode(b"\xff\xff", 1) is None
    assert table.decode(b"\x01\x00\xc3", 1) is None
    assert table.decode(b"", 0) == ()


def test_a_segment_of_another_definition_is_refused() -> None:
    one = table.Layout("counter", "same", ("a",), 2, 1, "")
    other = table.Layout("counter", "same", ("b",), 2, 1, "")
    assert one.fingerprint != other.fingerprint and one.definition != other.definition
    segment = MetricSegment(one)
    segment.stamp()
    segment.stamp()
    segment.layout = other
    with pytest.raises(ValueError, match="holds another definition than 'same'"):
        segment.stamp()
    segment.close()


def test_ordered_keys_match_the_native_ones() -> None:
    from raindrops import _native

    for value in (-math.inf, -2.5, -0.0, 0.0, 1e-300, 3.0, math.inf):
        key = _native.float_ordered_key(value)
        assert gauges.from_key(key) == value or (value == 0 and gauges.from_key(key) == 0)
        assert math.copysign(1, gauges.from_key(key)) == math.copysign(1, value)


# Real processes.


def run_forked(work: Callable[[int], None], count: int) -> None:
    """Forks `count` processes running work(index), released together; all must exit 0."""
    gate, release = os.pipe()
    pids = []
    try:
        for index in range(count):
            pid = os.fork()
            if pid == 0:
                status = 1
                try:
                    os.close(release)
                    os.read(gate, 1)
                    work(index)
                    status = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(status)
            pids.append(pid)
        os.write(release, b"x" * count)
    finally:
        os.close(gate)
        os.close(release)
        statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    assert statuses == [0] * count


INCREMENTS = 20_000


def test_four_forked_processes_count_exactly(registry: metrics.Registry) -> None:
    counter = metrics.Counter("forked", "help", ["kind"], registry=registry)
    plain = metrics.Counter("forked_plain", "help", registry=registry)
    histogram = metrics.Histogram("forked_seconds", "help", buckets=[0.1, 1], registry=registry)
    counter.labels("before").inc()  # made before the fork: its child is inherited

    def work(index: int) -> None:
        inherited = counter.labels("before")
        mine = counter.labels("shared")
        for step in range(INCREMENTS):
            inherited.inc()
            mine.inc(0.25)
            plain.inc()
            histogram.observe(0.5 if step % 2 else 0.0625)
        counter.labels(f"worker{index}").inc(index)

    run_forked(work, 4)
    samples = read(registry)
    assert samples.pop(("forked_total", (("kind", "before"),))) == 4 * INCREMENTS + 1
    assert samples.pop(("forked_total", (("kind", "shared"),))) == INCREMENTS
    assert samples.pop(("forked_plain_total", ())) == 4 * INCREMENTS
    for index in range(4):
        assert samples.pop(("forked_total", (("kind", f"worker{index}"),))) == index
    assert samples == {
        ("forked_seconds_bucket", (("le", "0.1"),)): 2 * INCREMENTS,
        ("forked_seconds_bucket", (("le", "1.0"),)): 4 * INCREMENTS,
        ("forked_seconds_bucket", (("le", "+Inf"),)): 4 * INCREMENTS,
        ("forked_seconds_count", ()): 4 * INCREMENTS,
        ("forked_seconds_sum", ()): 4 * INCREMENTS * 0.28125,
    }
    assert counter._shared.segment().name is None, "inherited memory, nothing in /dev/shm"


@contextlib.contextmanager
def held_children(work: Callable[[int], None], count: int) -> Iterator[list[int]]:
    """Forks `count` children one after the other, each running work(index) before the next
    starts, then waiting (alive) until the block ends."""
    done, finish = os.pipe()
    ready_read, ready_write = os.pipe()
    pids = []
    try:
        for index in range(count):
            pid = os.fork()
            if pid == 0:
                status = 1
                try:
                    work(index)
                    os.write(ready_write, b"r")
                    os.read(done, 1)
                    status = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(status)
            pids.append(pid)
            assert os.read(ready_read, 1) == b"r"
        yield pids
    finally:
        os.write(finish, b"x" * count)
        for fd in (done, finish, ready_read, ready_write):
            os.close(fd)
        statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    assert statuses == [0] * count


EXPECTED_MODES = {
    # mode: (value with live processes 1, 2 and dead 3, 4; after the live ones die too)
    "livesum": (3.0, None),
    "sum": (10.0, 10.0),
    "livemax": (2.0, None),
    "max": (4.0, 4.0),
    "livemin": (1.0, None),
    "min": (1.0, 1.0),
    "livemostrecent": (2.0, None),
    "mostrecent": (2.0, 2.0),
}


@pytest.mark.parametrize("mode", sorted(EXPECTED_MODES))
def test_gauge_modes_combine_processes_and_treat_the_dead_as_prometheus_client(
    mode: str, registry: metrics.Registry
) -> None:
    gauge = metrics.Gauge("g", "help", ["k"], multiprocess_mode=mode, registry=registry)

    def live(index: int) -> None:
        gauge.labels("x").set(index + 1)

    run_forked(lambda index: gauge.labels("x").set(index + 3), 1)
    run_forked(lambda index: gauge.labels("x").set(index + 4), 1)
    with_live, after = EXPECTED_MODES[mode]
    with held_children(live, 2):
        assert read(registry) == {("g", (("k", "x"),)): with_live}
    assert read(registry) == ({} if after is None else {("g", (("k", "x"),)): after})


def _by_pid(registry: metrics.Registry) -> dict[str, float]:
    return {dict(labels)["pid"]: value for (_, labels), value in read(registry).items()}


@pytest.mark.parametrize("mode", ["all", "liveall"])
def test_all_modes_show_each_process_with_its_pid(mode: str, registry: metrics.Registry) -> None:
    """`all` shows a dead process's value until a new process takes its slot; `liveall` never."""
    gauge = metrics.Gauge("each", "help", ["k"], multiprocess_mode=mode, registry=registry)
    with held_children(lambda index: gauge.labels("x").set(-5), 1) as dead:
        assert _by_pid(registry) == {str(dead[0]): -5.0}
    assert _by_pid(registry) == ({str(dead[0]): -5.0} if mode == "all" else {})
    with held_children(lambda index: gauge.labels("x").set(index), 2) as pids:
        assert _by_pid(registry) == {str(pid): float(index) for index, pid in enumerate(pids)}


def test_dead_slots_are_taken_over_and_folded_exactly(registry: metrics.Registry) -> None:
    total = metrics.Gauge("kept", "help", ["k"], multiprocess_mode="sum", registry=registry)
    low = metrics.Gauge("low", "help", multiprocess_mode="min", max_processes=2, registry=registry)
    high = metrics.Gauge("high", "help", multiprocess_mode="max", registry=registry)
    each = metrics.Gauge("each", "help", multiprocess_mode="all", registry=registry)
    live = metrics.Gauge("live", "help", registry=registry)

    def once(index: int) -> None:
        total.labels("a").inc(0.5)
        total.labels(str(index % 3)).inc()
        low.set(100 - index)
        high.set(index - 100)
        each.set(index)
        live.inc()

    for index in range(150):
        run_forked(lambda _: once(index), 1)  # noqa: B023 - runs before the next iteration
    samples = read(registry)
    assert samples[("kept", (("k", "a"),))] == 75.0
    assert [samples[("kept", (("k", str(index)),))] for index in range(3)] == [50.0] * 3
    assert samples[("low", ())] == -49.0
    assert samples[("high", ())] == 49.0
    assert ("live", ()) not in samples
    shown = [key for key in samples if key[0] == "each"]
    assert 1 <= len(shown) <= gauges.PROCESSES_DEFAULT, "a dead pid's series ends at takeover"
    owners = [word for word in total._shared.segment().counters.to_list()[2:130:2] if word]
    assert len(owners) <= 2, "sequential processes reuse the first slots"


def test_a_gauge_whose_slots_are_all_held_counts_privately(registry: metrics.Registry) -> None:
    gauge = metrics.Gauge("full", "help", max_processes=2, registry=registry)
    gauge.inc()
    reading, writing = os.pipe()

    def third(_: int) -> None:
        gauge.inc(100)  # never raises
        os.write(writing, registry.prometheus().encode())

    with held_children(lambda index: gauge.inc(10), 1):
        run_forked(third, 1)
        assert read(registry) == {("full", ()): 11.0}
    os.close(writing)
    with os.fdopen(reading, "rb") as child:
        seen = child.read().decode()
    assert 'raindrops_metric_degraded{metric="full",reason="segment_full"} 1.0' in seen
    assert "full 11.0" in seen


def _spawned_segments() -> list[Path]:
    prefix = segments.Server.this_process().prefix(KIND)
    return sorted(segments.SHM_DIR.glob(prefix + "*"))


class Spawner:
    """Runs functions of tests/metrics_spawned.py in processes that multiprocessing spawns: this
    process is their master, as uvicorn's supervisor is its workers'."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")

    def run(self, function: Callable[..., Any], *calls: tuple[object, ...]) -> list[Any]:
        """function(*arguments) for each of `calls`, each in its own process, all at once."""
        import metrics_spawned  # type: ignore[import-not-found]

        started = []
        for arguments in calls:
            receiver, sender = self._context.Pipe(duplex=False)
            process = self._context.Process(
                target=metrics_spawned.reply, args=(sender, function, arguments)
            )
            process.start()
            sender.close()
            started.append((process, receiver))
        try:
            return [receiver.recv() for _, receiver in started]
        finally:
            for process, receiver in started:
                receiver.close()
                process.join(30)
                if process.exitcode is None:
                    process.kill()
                    process.join()


@pytest.fixture
def spawner() -> Iterator[Spawner]:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        yield Spawner()
    finally:
        resource_tracker._resource_tracker._stop()  # started by the first spawn: ended here
        sys.path.remove(str(ROOT / "tests"))
        segments.remove_server_segments(kinds=(KIND,))


def test_spawned_workers_meet_in_their_masters_segment(spawner: Spawner) -> None:
    import metrics_spawned

    names = spawner.run(metrics_spawned.spawned_work, *[(INCREMENTS,)] * 4)
    (text,) = spawner.run(metrics_spawned.spawned_read, ())
    read_back = samples_of(text)
    prefix = "/" + segments.Server.this_process().prefix(KIND)
    assert len(set(names)) == 1 and names[0].startswith(prefix)
    files = _spawned_segments()
    assert len(files) == 3
    for path in files:
        info = path.stat()
        assert (info.st_uid, info.st_mode & 0o777) == (os.geteuid(), 0o600)
    assert read_back.pop(("spawned_requests_total", (("worker", "any"),))) == 4 * INCREMENTS
    quarters = [value for (name, _), value in read_back.items() if name == "spawned_requests_total"]
    assert quarters == [0.25] * 4
    assert read_back[("spawned_seconds_count", ())] == 4 * INCREMENTS
    assert read_back[("spawned_seconds_sum", ())] == 2 * INCREMENTS
    assert ("spawned_held", ()) not in read_back, "livesum: every worker that held one is gone"


def _squat(path: Path, name: str, squat: str) -> bytes:
    """Puts at `path` what someone else left: returns the bytes that must stay untouched."""
    if squat == "other-definition":
        other = MetricSegment(
            table.Layout("counter", "spawned_requests", ("x",), 2, 1, ""), name=name
        )
        other.stamp()
        other.close()
    else:
        path.write_bytes(b"not yours")
        if squat == "other-owner":
            os.chown(path, 65534, 65534)
        else:
            os.chmod(path, 0o666)
    return path.read_bytes()


@pytest.mark.parametrize("squat", ["other-owner", "writable-by-others", "other-definition"])
def test_a_segment_name_that_is_not_usable_degrades_never_fails(
    spawner: Spawner, squat: str
) -> None:
    """The workers count privately (each its own), never fail, and say why on the endpoint."""
    import metrics_spawned

    counter = metrics_spawned.spawned_metrics()[0]
    master = segments.Server.this_process()
    name = segments.segment_name(KIND, counter._layout.definition, master, os.getcwd())
    path = segments.SHM_DIR / name[1:]
    try:
        before = _squat(path, name, squat)
        spawner.run(metrics_spawned.spawned_work, *[(10,)] * 4)
        (text,) = spawner.run(metrics_spawned.spawned_read, ())
        assert path.read_bytes() == before, "someone else's file is never written"
    finally:
        path.unlink(missing_ok=True)
    reason = "segment_invalid" if squat == "other-definition" else "segment_not_ours"
    assert f'raindrops_metric_degraded{{metric="spawned_requests",reason="{reason}"}} 1.0' in text
    assert samples_of(text)[("spawned_seconds_count", ())] == 40, "the other metrics are shared"


# prometheus_client's /metrics, and raindrops' endpoints.


def test_raindrops_collector_adds_the_metrics_to_prometheus_client(
    registry: metrics.Registry,
) -> None:
    counter = metrics.Counter("collected", "Collected.", ["k"], registry=registry)
    histogram = metrics.Histogram("collected_seconds", "H.", buckets=[1], registry=registry)
    theirs = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("their_own", "Theirs.", registry=theirs).inc()
    theirs.register(metrics.RaindropsCollector(registry))
    assert counter._shared.found._bound.current() is None, "registering reads nothing"
    counter.labels("a").inc(2)
    histogram.observe(0.5)
    exposed = samples_of(prometheus_client.generate_latest(theirs).decode())
    assert exposed == {
        ("their_own_total", ()): 1.0,
        ("collected_total", (("k", "a"),)): 2.0,
        ("collected_seconds_bucket", (("le", "1.0"),)): 1.0,
        ("collected_seconds_bucket", (("le", "+Inf"),)): 1.0,
        ("collected_seconds_count", ()): 1.0,
        ("collected_seconds_sum", ()): 0.5,
    }
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        prometheus_client.Counter("collected", "Clash.", registry=theirs)
    openmetrics = prometheus_client.openmetrics.exposition.generate_latest(theirs).decode()
    assert 'collected_total{k="a"} 2.0' in openmetrics


def test_prometheus_client_is_optional() -> None:
    script = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import raindrops, raindrops.metrics as m\n"
        "c = m.Counter('c', 'h', registry=None); c.inc(); print(c.collect().samples[0].value)\n"
        "try:\n    m.RaindropsCollector()\nexcept ImportError as error:\n    print('ImportError')\n"
    )
    result = processes.run([sys.executable, "-c", script], timeout=60, text=True, cwd=ROOT)
    assert (result.returncode, result.stdout.split()) == (0, ["1.0", "ImportError"]), result.stderr


@pytest.fixture
def default_metrics() -> Iterator[tuple[metrics.Counter, metrics.Histogram]]:
    """Metrics in the default registry (every endpoint shows them), removed afterwards."""
    made = (
        metrics.Counter("endpoint_hits", "Hits.", ["route"]),
        metrics.Histogram("endpoint_seconds", "Seconds.", buckets=[1]),
    )
    try:
        yield made
    finally:
        for metric in made:
            metrics.REGISTRY.unregister(metric)


def _wsgi_get(app: Any, query: str) -> tuple[str, dict[str, str], str]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen.update(status=status, headers=dict(headers))

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/_raindrops",
        "QUERY_STRING": query,
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.multiprocess": False,
    }
    body = b"".join(app(environ, start_response)).decode()
    return seen["status"], seen["headers"], body


def _asgi_get(app: Any, query: str) -> tuple[str, dict[str, str], str]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "path": "/_raindrops",
        "method": "GET",
        "query_string": query.encode(),
        "headers": [],
        "client": ("127.0.0.1", 4711),
    }
    asyncio.run(app(scope, receive, send))
    headers = {name.decode(): value.decode() for name, value in sent[0]["headers"]}
    return str(sent[0]["status"]), headers, sent[1]["body"].decode()


async def _nothing(scope: Any, receive: Any, send: Any) -> None:
    return None


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_default_metrics_are_on_every_endpoint_format(
    kind: str,
    default_metrics: tuple[metrics.Counter, metrics.Histogram],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This process is no server's worker: with gunicorn's arbiter imported by other tests, the
    # ASGI middleware would take it for one and leave a segment named after pytest's parent.
    monkeypatch.delitem(sys.modules, "gunicorn.arbiter", raising=False)
    counter, histogram = default_metrics
    counter.labels("/a").inc(3)
    histogram.observe(0.5)
    if kind == "wsgi":
        app: Any = raindrops.Middleware(lambda environ, start: [b""], listeners=[])
        get = _wsgi_get
    else:
        app = raindrops.ASGIMiddleware(_nothing, listeners=[])
        get = _asgi_get
    status, _, prometheus = get(app, "format=prometheus")
    assert status.startswith("200")
    formats.check_prometheus_text(prometheus)
    assert 'endpoint_hits_total{route="/a"} 3.0' in prometheus
    assert "endpoint_seconds_count 1.0" in prometheus
    _, _, openmetrics = get(app, "format=openmetrics")
    parsed = formats.parse_prometheus(openmetrics, openmetrics=True)
    assert parsed['endpoint_hits_total{route="/a"}'] == 3.0
    assert "# TYPE endpoint_hits counter" in openmetrics
    _, _, body = get(app, "format=json")
    shown = {family["name"]: family for family in json.loads(body)["metrics"]}
    assert shown["endpoint_hits_total"]["samples"] == [{"labels": {"route": "/a"}, "value": 3.0}]
    assert shown["endpoint_seconds"]["samples"][0]["buckets"] == {"1.0": 1, "+Inf": 1}
    _, _, text = get(app, "")
    assert "endpoint" not in text and text.startswith("calling: ")


def test_a_metric_that_cannot_be_read_never_fails_the_endpoint(
    default_metrics: tuple[metrics.Counter, metrics.Histogram],
) -> None:
    counter, _ = default_metrics
    counter.labels("x").inc()
    counter._shared.segment().counters.close()  # every later read raises ValueError
    app = raindrops.Middleware(lambda environ, start: [b""], listeners=[])
    status, _, body = _wsgi_get(app, "format=prometheus")
    assert status.startswith("200")
    formats.check_prometheus_text(body)
    assert (
        'raindrops_metric_degraded{metric="endpoint_hits",reason="metric_unreadable"} 1.0' in body
    )
    assert "endpoint_seconds_count 0.0" in body


def test_worker_detection_in_a_plain_process() -> None:
    from raindrops.metrics.binding import worker_process

    assert worker_process() is False
    script = "from raindrops.metrics.binding import worker_process; print(worker_process())"
    command = [sys.executable, "-c", script]
    result = processes.run(command, timeout=60, text=True, cwd=ROOT)
    assert result.stdout.strip() == "False", result.stderr
