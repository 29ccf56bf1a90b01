"""A fleet through Prometheus: two gunicorn servers scraped by one real Prometheus server.

Each server counts its requests in its own shared memory; Prometheus sums
them across instances (and across the method/code labels) with PromQL, and
the sum must equal the requests sent, exactly. The endpoint does not count
its own requests (Prometheus' scrapes, gunicorn's readiness probes and the
JSON reads here all go to /_raindrops), so nothing but the clients' requests
adds to the totals. monitoring/rules.yml is loaded too, and its recording
rules are evaluated on the live servers. Needs `prometheus` (Debian package
prometheus): skipped without it, a failure in CI (CI=true).
"""

from __future__ import annotations

from pathlib import Path

from servers import (
    Gunicorn,
    Prometheus,
    gunicorn,
    prometheus,
    prometheus_binaries,
    run_threads,
    wait_for,
)

from testsupport.gunicorn import request
from testsupport.programs import ROOT

RULES = ROOT / "monitoring" / "rules.yml"
REQUESTS = (137, 211)  # sent to the first and to the second server
FIRST = (1, 1)  # of which sent, and scraped, before the others
WORKERS = (2, 3)
THREADS_PER_SERVER = 4
TIMEOUT = 20.0


def shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` whole numbers that differ by at most one."""
    return [total // parts + (index < total % parts) for index in range(parts)]


def send(servers: tuple[Gunicorn, ...], totals: tuple[int, ...]) -> None:
    """totals[i] requests to servers[i], from THREADS_PER_SERVER threads per server at once."""
    work = [
        (server, count)
        for server, total in zip(servers, totals, strict=True)
        for count in shares(total, THREADS_PER_SERVER)
    ]

    def client(index: int) -> list[int]:
        server, count = work[index]
        return [request(server.port, "/").status for _ in range(count)]

    statuses = [status for batch in run_threads(len(work), client) for status in batch]
    assert statuses == [200] * sum(totals)


def wait_for_sum(prom: Prometheus, total: int) -> None:
    wait_for(
        lambda: by_instance(prom, "sum(raindrops_requests_total)"),
        {"": float(total)}.__eq__,
        TIMEOUT,
        f"sum(raindrops_requests_total) == {total}",
    )


def by_instance(prom: Prometheus, expression: str) -> dict[str, float]:
    return {
        series["metric"].get("instance", ""): float(series["value"][1])
        for series in prom.query(expression)
    }


def instances(servers: tuple[Gunicorn, ...]) -> list[str]:
    return [f"127.0.0.1:{server.port}" for server in servers]


def test_prometheus_sums_the_requests_of_two_servers_exactly(tmp_path: Path) -> None:
    binary, _ = prometheus_binaries()  # a skip without them, a failure in CI
    sync = ["--worker-class", "sync"]
    with (
        gunicorn(tmp_path / "first", sync, workers=WORKERS[0]) as first,
        gunicorn(tmp_path / "second", sync, workers=WORKERS[1]) as second,
        prometheus(
            binary,
            tmp_path / "prometheus",
            first.port,
            other_ports=[second.port],
            negotiated=False,
            rule_files=[RULES],
        ) as prom,
    ):
        servers = (first, second)
        # Both scraped before any request: the rates see every counter grow.
        wait_for(lambda: by_instance(prom, "count(up == 1)"), {"": 2.0}.__eq__, TIMEOUT, "up")
        # A (method, code) series appears with its first request: scraped once before the
        # rest arrive, its rate() sees them (a series first seen at its final value has a rate
        # of 0, and no error ratio).
        send(servers, FIRST)
        wait_for_sum(prom, sum(FIRST))
        send(servers, tuple(sent - first for sent, first in zip(REQUESTS, FIRST, strict=True)))
        total = float(sum(REQUESTS))
        wait_for_sum(prom, sum(REQUESTS))
        expected = dict(zip(instances(servers), map(float, REQUESTS), strict=True))
        assert by_instance(prom, "sum by (instance) (raindrops_requests_total)") == expected
        assert by_instance(prom, "sum(raindrops_request_duration_seconds_count)") == {"": total}
        assert by_instance(prom, "count(up == 1)") == {"": 2.0}
        for server, sent in zip(servers, REQUESTS, strict=True):
            assert server.json()["requests_total"] == sent  # and the scrapes added nothing
        wait_for(
            lambda: by_instance(prom, "raindrops:request_error:ratio_rate5m"),
            dict.fromkeys(instances(servers), 0.0).__eq__,
            TIMEOUT,
            "the recorded error ratio, 0 on both servers",
        )
        utilization = by_instance(prom, "raindrops:utilization:ratio_rate5m")
        assert utilization.keys() == set(instances(servers)), utilization
        assert all(0.0 < value <= 1.0 for value in utilization.values()), utilization
