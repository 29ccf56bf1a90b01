"""The Prometheus side, checked by Prometheus' own tools: promtool and a real Prometheus server.

These tests need `promtool` and `prometheus` (Debian package prometheus).
Without them they are skipped, except in CI (CI=true), where the binaries are
required and their absence is a failure. The strict parser that stands in for
promtool where it is missing is tested here too, against promtool's verdicts
when promtool is installed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from servers import (
    JOB,
    NEGOTIATED_JOB,
    Background,
    Gunicorn,
    Prometheus,
    gunicorn,
    prometheus,
    prometheus_binaries,
    wait_for,
)

from testsupport import formats, processes, programs
from testsupport.formats import family_total, parse_prometheus

SLOW_SECONDS = 8


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    return prometheus_binaries()  # a skip without them, a failure in CI


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    with gunicorn(
        tmp_path_factory.mktemp("gunicorn"), ["--worker-class", "sync"], workers=3
    ) as running:
        # Something in every metric family: requests, an error, a streamed body.
        assert running.get("/").status == 200
        assert running.get("/fail").status == 500
        assert running.get("/stream?chunks=3&delay=0").status == 200
        running.wait_totals(3, 1)
        yield running


def promtool_check(promtool: str, exposition: str) -> subprocess.CompletedProcess[str]:
    return processes.run([promtool, "check", "metrics"], input=exposition, timeout=60, text=True)


def test_promtool_accepts_the_prometheus_format(
    binaries: tuple[str, str], server: Gunicorn
) -> None:
    _, promtool = binaries
    by_query = server.stats("?format=prometheus")
    by_accept = server.stats(headers={"Accept": "text/plain;version=0.0.4"})
    for response in (by_query, by_accept):
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples = parse_prometheus(response.text)
        assert (
            family_total(samples, "raindrops_requests_total") >= 3
            and samples["raindrops_request_errors_total"] >= 1
        )
        assert f'raindrops_listener_queued{{listener="{server.address}"}}' in samples
        assert samples['raindrops_requests_total{method="GET",code="500"}'] >= 1
        infinite = 'raindrops_request_duration_seconds_bucket{method="GET",code="200",le="+Inf"}'
        assert samples[infinite] >= 1
        result = promtool_check(promtool, response.text)
        assert result.returncode == 0, (
            f"promtool check metrics failed:\n{result.stdout}{result.stderr}"
        )


# What promtool rejects, and so must the strict parser that stands in for it (testsupport.formats).
BREAKAGES = {
    "broken label set": ("\nraindrops_calling ", "\nraindrops_calling{ "),
    "unknown type": ("# TYPE raindrops_calling gauge", "# TYPE raindrops_calling gaugeish"),
    "value not a number": ("\nraindrops_calling ", "\nraindrops_calling x"),
    "no newline at the end": (None, None),
    "counter without _total": ("raindrops_requests_total", "raindrops_requests"),
}
# What promtool (2.42) lets pass, but the endpoint never serves: the strict parser rejects it too.
STRICTER = {
    "sample before its TYPE": ("# TYPE raindrops_calling gauge\n", ""),
    "+Inf bucket is not the count": (
        '\nraindrops_request_duration_seconds_count{method="GET",code="200"} ',
        '\nraindrops_request_duration_seconds_count{method="GET",code="200"} 9',
    ),
}


def broken(exposition: str, breakage: str) -> str:
    old, new = {**BREAKAGES, **STRICTER}[breakage]
    if old is None:
        return exposition.rstrip("\n")
    assert old in exposition, (breakage, old)
    return exposition.replace(old, new)


def test_the_strict_parser_accepts_what_the_endpoint_serves(server: Gunicorn) -> None:
    body = server.stats("?format=prometheus").text
    assert formats.check_prometheus_text(body) == len(parse_prometheus(body))


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_the_strict_parser_rejects_what_promtool_rejects(breakage: str, server: Gunicorn) -> None:
    body = broken(server.stats("?format=prometheus").text, breakage)
    with pytest.raises(formats.FormatError):
        formats.check_prometheus_text(body)
    promtool = programs.find("promtool")
    if promtool is not None:
        assert promtool_check(promtool, body).returncode != 0, breakage


@pytest.mark.parametrize("breakage", sorted(STRICTER))
def test_the_strict_parser_is_stricter_than_promtool(breakage: str, server: Gunicorn) -> None:
    with pytest.raises(formats.FormatError):
        formats.check_prometheus_text(broken(server.stats("?format=prometheus").text, breakage))


def test_openmetrics_ends_with_eof(binaries: tuple[str, str], server: Gunicorn) -> None:
    response = server.stats(headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert (
        response.headers["content-type"]
        == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    assert response.text.endswith("\n# EOF\n")
    samples = parse_prometheus(response.text, openmetrics=True)
    assert family_total(samples, "raindrops_requests_total") >= 3
    assert "# TYPE raindrops_requests counter\n" in response.text, (
        "OpenMetrics names the family without _total"
    )
    try:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    except ImportError:  # the bench extra; the checks above stand without it
        return
    families = {family.name: family for family in text_string_to_metric_families(response.text)}  # type: ignore[no-untyped-call]
    assert families["raindrops_requests"].type == "counter"
    assert families["raindrops_request_duration_seconds"].type == "histogram"


def _by_job(prom: Prometheus, expression: str) -> dict[str, float]:
    return {series["metric"]["job"]: float(series["value"][1]) for series in prom.query(expression)}


def test_a_prometheus_server_scrapes_requests_in_flight(
    binaries: tuple[str, str], server: Gunicorn, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two jobs: one asks for ?format=prometheus, the other lets Prometheus' Accept header
    choose."""
    binary, _ = binaries
    jobs = {JOB, NEGOTIATED_JOB}
    with prometheus(binary, tmp_path_factory.mktemp("prometheus"), server.port) as prom:
        # Scraping works: both targets are up and the counters arrive.
        wait_for(
            lambda: _by_job(prom, "up"),
            lambda up: up == dict.fromkeys(jobs, 1.0),
            20,
            "both targets up",
        )
        requests = server.json()["requests_total"]
        wait_for(
            lambda: _by_job(prom, "sum by (job) (raindrops_requests_total)"),
            lambda seen: seen == dict.fromkeys(jobs, requests),
            20,
            f"raindrops_requests_total {requests} in both jobs",
        )
        slow = Background()
        for _ in range(2):
            slow.start(server.port, f"/slow?seconds={SLOW_SECONDS}")
        started = time.monotonic()
        wait_for(
            lambda: _by_job(prom, "raindrops_calling"),
            lambda seen: seen == dict.fromkeys(jobs, 2.0),
            20,
            "raindrops_calling 2 in both jobs",
        )
        assert time.monotonic() - started < SLOW_SECONDS, "seen while the requests were in flight"
        slow.join()
        wait_for(
            lambda: (
                _by_job(prom, "raindrops_calling"),
                _by_job(prom, "sum by (job) (raindrops_requests_total)"),
            ),
            lambda seen: seen == (dict.fromkeys(jobs, 0.0), dict.fromkeys(jobs, requests + 2)),
            20,
            "raindrops_calling 0 and raindrops_requests_total grown by 2",
        )
