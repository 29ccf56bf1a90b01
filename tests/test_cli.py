"""`raindrops listeners` and `raindrops watch` end to end, as a user runs them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from load import Load, raindrops_watch

from raindrops.cli import main
from testsupport import processes


def run(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return processes.run([sys.executable, "-m", "raindrops", *args], timeout=timeout_s, text=True)


@pytest.fixture
def busy_listener() -> Iterator[str]:
    """127.0.0.1:P with one accepted and two queued connections."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        host, port = server.getsockname()
        address = f"{host}:{port}"
        clients = [socket.create_connection(server.getsockname(), timeout=5) for _ in range(3)]
        accepted, _ = server.accept()
        time.sleep(0.01)
        try:
            yield address
        finally:
            accepted.close()
            for client in clients:
                client.close()


def test_text_report_of_one_address(busy_listener: str) -> None:
    result = run("listeners", busy_listener)
    assert result.returncode == 0, result.stderr
    assert result.stderr.split() == ["timestamp", "address", "active", "queued"]
    (line,) = result.stdout.splitlines()
    stamp, address, active, queued = line.split()
    assert stamp.endswith("Z") and "T" in stamp
    assert (address, active, queued) == (busy_listener, "1", "2")


def test_json_and_prometheus_formats(busy_listener: str) -> None:
    report = json.loads(run("listeners", busy_listener, "--format", "json").stdout)
    assert report["listeners"] == {busy_listener: {"active": 1, "queued": 2}}
    text = run("listeners", busy_listener, "--format", "prometheus").stdout
    assert f'raindrops_listener_active{{listener="{busy_listener}"}} 1' in text
    assert f'raindrops_listener_queued{{listener="{busy_listener}"}} 2' in text
    assert "# TYPE raindrops_listener_queued gauge" in text


def test_default_shows_every_listener_including_unix(busy_listener: str, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(path)
        unix.listen(4)
        report = json.loads(run("listeners", "--format", "json").stdout)
    assert report["listeners"][busy_listener] == {"active": 1, "queued": 2}
    assert report["listeners"][path] == {"active": 0, "queued": 0}


def test_interval_count_and_queued_min(busy_listener: str) -> None:
    result = run("listeners", busy_listener, "--interval", "0.05", "--count", "3")
    assert len(result.stdout.splitlines()) == 3
    assert run("listeners", busy_listener, "--queued-min", "3").stdout == ""
    assert len(run("listeners", busy_listener, "--queued-min", "2").stdout.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["listeners", "foo"],
        ["listeners", "1.2.3.4:99999"],
        ["listeners", "--interval", "0"],
        ["listeners", "--interval", "x"],
        ["listeners", "--count", "0"],
        ["listeners", "--queued-min", "-1"],
        ["listeners", "--format", "xml"],
        ["nonsense"],
        [],
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def interrupt_listeners(address: str) -> tuple[int, str]:
    """Starts `raindrops listeners --interval`, sends SIGINT after its first line; exit code and
    stderr."""
    command = [sys.executable, "-m", "raindrops", "listeners", address, "--interval", "0.05"]
    with processes.running(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        process.stdout.readline()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
        return process.returncode, err


def test_ctrl_c_ends_quietly(busy_listener: str) -> None:
    code, err = interrupt_listeners(busy_listener)
    assert code == 130
    assert "Traceback" not in err


def test_ctrl_c_works_when_the_test_runner_ignores_sigint(busy_listener: str) -> None:
    """`make test &` starts everything with SIGINT ignored, which exec keeps; the child must still
    get it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code, err = interrupt_listeners(busy_listener)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    assert "Traceback" not in err


def test_closed_pipe_ends_quietly(busy_listener: str) -> None:
    command = f"{sys.executable} -m raindrops listeners {busy_listener} --interval 0.01 | head -n 2"
    pipeline = processes.run(["sh", "-c", command], timeout=30, text=True)
    assert len(pipeline.stdout.splitlines()) == 2
    assert "Traceback" not in pipeline.stderr and "Broken pipe" not in pipeline.stderr


def test_main_in_process(busy_listener: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["listeners", busy_listener, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["listeners"][busy_listener]["queued"] == 2


def watch_request(port: int, path: str, forwarded_for: str | None = None) -> socket.socket:
    """GET `path` from `raindrops watch` on 127.0.0.1:port; the open connection."""
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    forwarded = "" if forwarded_for is None else f"X-Forwarded-For: {forwarded_for}\r\n"
    client.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{forwarded}\r\n".encode())
    return client


def status_line(client: socket.socket) -> str:
    """The status line of a response that may go on (a /tail stream): read up to its end."""
    data = b""
    while b"\r\n" not in data:
        chunk = client.recv(1)
        assert chunk, data
        data += chunk
    return data.decode("latin-1").strip()


def test_watch_allow_trusted_proxy_and_tail_streams_take_effect(load: Load) -> None:
    """--allow replaces the loopback default, --trusted-proxy makes 127.0.0.1 a proxy whose
    X-Forwarded-For names the client, and --tail-streams bounds the /tail streams."""
    args = ["--delay", "0.05", "--allow", "10.0.0.0/8", "--trusted-proxy", "127.0.0.1/32"]
    args += ["--tail-streams", "1", load.address]
    with raindrops_watch(*args) as (_, port):

        def status(path: str, forwarded_for: str | None = None) -> str:
            with watch_request(port, path, forwarded_for) as client:
                return status_line(client)

        assert status("/series.json").endswith(" 403 Forbidden")  # loopback is not in --allow
        assert status("/series.json", "10.1.2.3").endswith(" 200 OK")
        assert status("/series.json", "203.0.113.9").endswith(" 403 Forbidden")
        assert status("/series.json", "10.1.2.3, 203.0.113.9").endswith(" 403 Forbidden")
        tail = f"/tail/{quote(load.address, safe='')}.txt"
        with watch_request(port, tail, "10.1.2.3") as streaming:
            assert status_line(streaming).endswith(" 200 OK")
            with watch_request(port, tail, "10.1.2.3") as refused:
                response = b"".join(iter(lambda: refused.recv(4096), b""))
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.split(b"\r\n")[0].endswith(b" 503 Service Unavailable"), response
            assert b"\r\nRetry-After: " in head, response
            assert b"at most 1 /tail stream per process" in body, response
