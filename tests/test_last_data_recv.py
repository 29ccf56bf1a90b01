"""raindrops.LastDataRecv: raindrops' headers and histogram, TCP_DEFER_ACCEPT, and real gunicorn
workers."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raindrops import LastDataRecv
from raindrops.wsgi.last_data_recv import PATH, LastDataRecvStats, defer_accept, last_data_recv
from testsupport.gunicorn import Master, launch

# raindrops-outputs/probe_ldr.out: samples 5, 10, 100, 1000 and 0.
PROBE_HEADERS = [
    ("X-Count", "5"),
    ("X-Min", "0"),
    ("X-Max", "1000"),
    ("X-Mean", "223"),
    ("X-Std-Dev", "436"),
    ("X-Outliers-Low", "1"),
    ("X-Outliers-High", "0"),
]
RULE = "-" * 66
PROBE_BODY = (
    f"value |{RULE}| count\n"
    f"    4 |@{' ' * 65}|     1\n"
    f"    8 |@{' ' * 65}|     1\n"
    "      ~\n"
    f"   64 |@{' ' * 65}|     1\n"
    "      ~\n"
    f"  512 |@{' ' * 65}|     1\n"
    "      ~\n"
    f"Total |{RULE}|     4\n"
)
WORKERS = 3


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def call(
    app: LastDataRecv, path: str = PATH, **extra: Any
) -> tuple[str, list[tuple[str, str]], bytes]:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": ""}
    environ["REMOTE_ADDR"] = "127.0.0.1"
    environ.update(extra)
    seen: dict[str, Any] = {}
    body = app(
        environ, lambda status, headers, exc_info=None: seen.update(status=status, headers=headers)
    )
    return seen["status"], seen["headers"], b"".join(body)


def test_headers_and_histogram_are_raindrops_byte_for_byte() -> None:
    stats = LastDataRecvStats()
    for milliseconds in (5, 10, 100, 1000, 0):
        stats.observe(milliseconds)
    status, headers, body = call(LastDataRecv(hello, stats=stats))
    assert status == "200 OK"
    assert [header for header in headers if header[0].startswith("X-")] == PROBE_HEADERS
    assert dict(headers)["Content-Type"] == "text/plain"
    assert body.decode() == PROBE_BODY and dict(headers)["Content-Length"] == "510"


def test_one_sample_sends_only_the_count_and_none_says_empty() -> None:
    stats = LastDataRecvStats()
    app = LastDataRecv(hello, stats=stats)
    _, headers, body = call(app)
    assert (body, [h for h in headers if h[0].startswith("X-")]) == (
        b"Empty histogram",
        [("X-Count", "0")],
    )
    stats.observe(4)
    _, headers, body = call(app)
    assert [h for h in headers if h[0].startswith("X-")] == [("X-Count", "1")]
    assert body.decode().splitlines()[1] == f"    4 |@{' ' * 65}|     1"


def test_prometheus_and_json() -> None:
    stats = LastDataRecvStats()
    for milliseconds in (0, 3, 3, 700):
        stats.observe(milliseconds)
    app = LastDataRecv(hello, stats=stats)
    status, headers, body = call(app, QUERY_STRING="format=prometheus")
    text = body.decode()
    assert dict(headers)["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE raindrops_last_data_recv_seconds histogram" in text
    assert 'raindrops_last_data_recv_seconds_bucket{le="0.0"} 1\n' in text
    assert 'raindrops_last_data_recv_seconds_bucket{le="0.003"} 3\n' in text
    assert 'raindrops_last_data_recv_seconds_bucket{le="0.511"} 3\n' in text
    assert 'raindrops_last_data_recv_seconds_bucket{le="1.023"} 4\n' in text
    assert 'raindrops_last_data_recv_seconds_bucket{le="+Inf"} 4\n' in text
    assert "raindrops_last_data_recv_seconds_sum 0.706\n" in text
    assert "raindrops_last_data_recv_seconds_count 4\n" in text
    data = json.loads(call(app, QUERY_STRING="format=json")[2])
    assert (data["count"], data["min"], data["max"], data["unit"], data["skipped"]) == (
        4,
        0,
        700,
        "ms",
        0,
    )


def test_endpoint_refuses_other_methods_and_remote_clients() -> None:
    app = LastDataRecv(hello, stats=LastDataRecvStats())
    status, headers, _ = call(app, REQUEST_METHOD="POST")
    assert status.startswith("405") and dict(headers)["Allow"] == "GET, HEAD"
    assert call(app, REMOTE_ADDR="192.0.2.1")[0].startswith("403")
    assert call(app, QUERY_STRING="format=yaml")[0].startswith("400")


def test_requests_without_a_tcp_socket_are_counted_as_skipped() -> None:
    stats = LastDataRecvStats()
    app = LastDataRecv(hello, stats=stats)
    assert call(app, "/")[2] == b"hello"
    left, right = socket.socketpair()
    with left, right:
        call(app, "/", **{"gunicorn.socket": left})
    assert (stats.snapshot().count, stats.skipped) == (0, 2)
    assert call(app)[2] == b"Empty histogram"  # the endpoint itself is not a sample


def test_last_data_recv_is_the_time_since_the_request_arrived() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        assert defer_accept(listener) == [listener.fileno()]
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            time.sleep(0.3)
            accepted, _ = listener.accept()
            with accepted:
                waited = last_data_recv(accepted)
                assert waited is not None and 250 <= waited < 5000
                stats = LastDataRecvStats()
                call(LastDataRecv(hello, stats=stats), "/", **{"raindrops.socket": accepted})
                assert stats.snapshot().count == 1 and stats.snapshot().min >= 250  # type: ignore[operator]


def test_defer_accept_sets_tcp_listeners_and_skips_unix_ones(tmp_path: Path) -> None:
    with (
        socket.socket() as v4,
        socket.socket(socket.AF_INET6) as v6,
        socket.socket(socket.AF_UNIX) as unix,
    ):
        v4.bind(("127.0.0.1", 0))
        v6.bind(("::1", 0))
        unix.bind(str(tmp_path / "s"))
        for sock in (v4, v6, unix):
            sock.listen(1)
        assert defer_accept([v4, v6.fileno(), unix]) == [v4.fileno(), v6.fileno()]
        assert (
            v4.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) >= 60
        )  # Linux rounds up to its retries
        assert defer_accept(v4, seconds=0) == [v4.fileno()]
        assert v4.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
        for bad in (-1, 2**31, 1.5, True):
            with pytest.raises(ValueError):
                defer_accept(v4, seconds=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            defer_accept(["nope"])


# Real gunicorn: every request of every worker is one sample.


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0 request on a new connection (so each one goes through the accept queue)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b"".join(iter(lambda: client.recv(65536), b""))
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
    }
    return int(status_line.split()[1]), headers, body


@contextlib.contextmanager
def ldr_gunicorn(log: Path, preload: bool) -> Iterator[int]:
    """ldr_app under gunicorn: its port once every worker is up and PATH answers; always stopped."""
    args = ["--workers", str(WORKERS), "--config", "tests/gunicorn_defer_accept.py"]
    args += ["--pythonpath", "tests", *(["--preload"] if preload else [])]
    with launch(
        Master, args, workers=WORKERS, log=log, app="ldr_app:app", ready_path=PATH
    ) as master:
        yield master.port


@pytest.mark.parametrize("preload", [False, True], ids=["after-fork", "preload"])
def test_one_sample_per_request_across_gunicorn_workers(tmp_path: Path, preload: bool) -> None:
    log = tmp_path / "gunicorn.log"
    with ldr_gunicorn(log, preload) as port:
        assert "TCP_DEFER_ACCEPT set on 1 listener(s)" in log.read_text()
        status, _, body = http_get(port, "/defer")
        assert status == 200 and json.loads(body) and all(value > 0 for value in json.loads(body))

        # Three workers busy for 0.6 s: one more request waits in the listen queue meanwhile.
        sleepers = [
            threading.Thread(target=http_get, args=(port, "/sleep?seconds=0.6"))
            for _ in range(WORKERS)
        ]
        for thread in sleepers:
            thread.start()
        time.sleep(0.2)
        assert http_get(port, "/")[0] == 200
        for thread in sleepers:
            thread.join(30)

        pids: list[bytes] = []

        def fifteen() -> None:
            pids.extend(http_get(port, "/")[2] for _ in range(15))

        threads = [threading.Thread(target=fifteen) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(pids) == 60 and len(set(pids)) >= 2  # served by several workers
        requests = 1 + WORKERS + 1 + len(pids)

        status, headers, body = http_get(port, PATH)
        assert status == 200 and headers["x-count"] == str(requests), body
        assert int(headers["x-max"]) >= 250  # the request that waited for a free worker
        drawn = int(
            body.decode().splitlines()[-1].rpartition("|")[2]
        )  # "Total |---| N": samples >= 1 ms
        assert drawn + int(headers["x-outliers-low"]) == requests
        prometheus = http_get(port, PATH + "?format=prometheus")[2].decode()
        assert f"raindrops_last_data_recv_seconds_count {requests}\n" in prometheus
        assert "raindrops_last_data_recv_skipped_total 0\n" in prometheus
