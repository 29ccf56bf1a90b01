"""raindrops.Watcher: endpoints, headers, peaks, reset, tail and its end, on real loopback
listeners."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import pytest
from load import Load, raindrops_watch, wait_until

from raindrops import ListenStats, Watcher, exposition
from raindrops.watcher import pages
from raindrops.watcher.aggregate import Aggregate
from raindrops.watcher.server import WatchServer, make_server
from raindrops.watcher.shared import Listener as _Listener
from testsupport import processes

DELAY = 0.02
STAT_HEADERS = [
    "X-Count",
    "X-Min",
    "X-Max",
    "X-Mean",
    "X-Std-Dev",
    "X-Outliers-Low",
    "X-Outliers-High",
    "X-Last-Reset",
    "X-Current",
    "X-First-Peak-At",
    "X-Last-Peak-At",
    "Content-Type",
    "Expires",
    "Content-Length",
]
ORIGIN = "http://watch.test"
"""The origin of the pages call() asks for: a reset must come from it."""
HTTPDATE = re.compile(r"^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$")


class Reply:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.header_list = headers
        self.headers = dict(headers)
        self.body = body

    @property
    def code(self) -> int:
        return int(self.status.split()[0])


def call(app: Watcher, path: str, method: str = "GET", query: str = "", **extra: str) -> Reply:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote(path, "iso-8859-1"),  # as a server decodes it
        "QUERY_STRING": query,
        "SCRIPT_NAME": "",
        "SERVER_NAME": "watch.test",
        "SERVER_PORT": "80",
        "HTTP_HOST": "watch.test",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
    }
    environ.update(extra)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Any:
        seen.update(status=status, headers=headers)
        return lambda data: None

    body = app(environ, start_response)
    data = b"".join(body)
    getattr(body, "close", lambda: None)()
    return Reply(seen["status"], seen["headers"], data)


def escaped(address: str) -> str:
    return quote(address, safe="")


@pytest.fixture(autouse=True)
def sigpipe_ignored() -> Iterator[None]:
    """A server thread writing to a client that left must get EPIPE, as Python arranges by default;
    raindrops.cli.main() (called in-process by test_cli) resets SIGPIPE to the default, which
    kills."""
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGPIPE, previous)


@pytest.fixture
def watcher(load: Load) -> Iterator[Watcher]:
    with Watcher([load.address], delay=DELAY, tail_streams_max=4) as app:
        yield app


def samples(app: Watcher, address: str, count: int) -> None:
    """Waits until `count` samples of `address` were taken since its last reset."""

    def enough() -> bool:
        view = app.view(address, "active")
        return view is not None and view.snapshot.count >= count

    wait_until(enough, what=f"{count} samples")


def _thread_names() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm") as comm:
            names.append(comm.read().strip())
    return names


def test_the_sampler_thread_has_a_kernel_name(watcher: Watcher, load: Load) -> None:
    """ps -L and top -H tell it from the server's threads (the load test spares workers by it)."""
    before = _thread_names().count("raindrops-watch")  # other Watchers' of this process
    assert call(watcher, "/").status.startswith("200")
    wait_until(
        lambda: _thread_names().count("raindrops-watch") == before + 1,
        what="the named sampler thread",
    )
    watcher.close()
    wait_until(lambda: _thread_names().count("raindrops-watch") == before, what="the thread to end")


def test_stats_headers_histogram_and_head(watcher: Watcher, load: Load) -> None:
    samples(watcher, load.address, 3)
    active = call(watcher, f"/active/{escaped(load.address)}.txt")
    assert active.code == 200
    assert [name for name, _ in active.header_list] == STAT_HEADERS
    count = int(active.headers["X-Count"])
    assert count >= 3
    assert (active.headers["X-Min"], active.headers["X-Max"], active.headers["X-Current"]) == (
        "2",
        "2",
        "2",
    )
    assert (active.headers["X-Mean"], active.headers["X-Std-Dev"]) == ("2.0", "0.0")
    assert (active.headers["X-Outliers-Low"], active.headers["X-Outliers-High"]) == ("0", "0")
    assert active.headers["Content-Type"] == "text/plain"
    for name in ("X-Last-Reset", "X-First-Peak-At", "X-Last-Peak-At", "Expires"):
        assert HTTPDATE.match(active.headers[name]), name
    row = active.body.decode().splitlines()[1]  # the header, then the one bucket drawn
    assert row.startswith("    2 |@") and row.endswith(f"| {count:>5}") and len(row) == 80
    assert active.headers["Content-Length"] == str(len(active.body))

    queued = call(watcher, f"/queued/{escaped(load.address)}.txt")
    assert queued.headers["X-Current"] == "1" and queued.headers["X-Max"] == "1"
    head = call(watcher, f"/queued/{escaped(load.address)}.txt", "HEAD")
    assert head.body == b"" and head.headers["Content-Length"] == queued.headers["Content-Length"]

    page = call(watcher, f"/queued/{escaped(load.address)}.html")
    assert page.headers["Content-Type"] == "text/html" and page.headers["X-Current"] == "1"
    assert "<tr><td>Current</td><td>1</td></tr>" in page.body.decode()
    assert f"action='../reset/{escaped(load.address)}'" in page.body.decode()

    data = json.loads(call(watcher, f"/active/{escaped(load.address)}.json").body)
    assert data["address"] == load.address and data["kind"] == "active" and data["current"] == 2
    assert (
        data["min"] == data["max"] == 2
        and data["count"] >= 3
        and data["first_peak_at"] <= data["last_peak_at"]
    )


def test_empty_aggregate_and_idle_listener_headers() -> None:
    with Load() as idle, Watcher([idle.address], delay=DELAY) as app:
        samples(app, idle.address, 2)
        reply = call(app, f"/active/{escaped(idle.address)}.txt")
        assert reply.body == b"Empty histogram"
        assert reply.headers["X-Outliers-Low"] == reply.headers["X-Count"]
        assert (reply.headers["X-Min"], reply.headers["X-Max"], reply.headers["X-Mean"]) == (
            "0",
            "0",
            "0.0",
        )
        # 0 is never a peak: an idle listener has no peak time.
        assert (reply.headers["X-First-Peak-At"], reply.headers["X-Last-Peak-At"]) == ("", "")
    empty = exposition.watcher_headers(Aggregate().snapshot())
    assert dict(empty) == {
        "X-Count": "0",
        "X-Min": "",
        "X-Max": "",
        "X-Mean": "NaN",
        "X-Std-Dev": "NaN",
        "X-Outliers-Low": "0",
        "X-Outliers-High": "0",
    }


def test_peaks_first_and_last_time_the_maximum_was_reached() -> None:
    listener = _Listener(now=0.0)
    for now, active in [(1, 0), (2, 3), (3, 1), (4, 3), (5, 0), (6, 2)]:
        listener.add(load_stats(active), float(now))
    view = listener.view("active")
    assert (view.first_peak, view.last_peak) == (2.0, 4.0)
    listener.add(load_stats(5), 7.0)
    assert (listener.view("active").first_peak, listener.view("active").last_peak) == (7.0, 7.0)
    idle = listener.view("queued")
    assert (idle.first_peak, idle.last_peak) == (None, None)
    listener.reset(8.0)
    after = listener.view("active")
    assert (after.first_peak, after.last_peak, after.last_reset, after.snapshot.count) == (
        None,
        None,
        8.0,
        0,
    )


def load_stats(active: int) -> ListenStats:
    return ListenStats(active, 0)


def test_reset_redirects_to_a_real_url_and_forgets_peaks(watcher: Watcher, load: Load) -> None:
    samples(watcher, load.address, 20)
    before = json.loads(call(watcher, f"/active/{escaped(load.address)}.json").body)
    reply = call(watcher, f"/reset/{escaped(load.address)}", "POST", HTTP_ORIGIN=ORIGIN)
    assert reply.code == 302
    assert reply.headers["Location"] == "http://watch.test/"
    assert reply.body == b"Redirecting to http://watch.test/"
    after = json.loads(call(watcher, f"/active/{escaped(load.address)}.json").body)
    assert after["last_reset"] > before["last_reset"]
    assert 1 <= after["count"] < before["count"]  # the reset waited for one new sample
    assert after["first_peak_at"] > before["first_peak_at"]  # peaks start again too

    back = f"http://watch.test/active/{escaped(load.address)}.html"
    reset = f"/reset/{escaped(load.address)}"
    assert call(watcher, reset, "POST", HTTP_REFERER=back).headers["Location"] == back
    assert call(watcher, reset, "POST", HTTP_ORIGIN=ORIGIN, HTTP_REFERER=back).headers[
        "Location"
    ] == (back)
    mounted = call(watcher, "", SCRIPT_NAME="/watch")
    assert (mounted.code, mounted.headers["Location"]) == (302, "http://watch.test/watch/")


def test_not_found_and_method_not_allowed(watcher: Watcher, load: Load) -> None:
    addr = escaped(load.address)
    unknown = (
        "/nope",
        "/active/",
        f"/active/{addr}.xml",
        f"/active/{addr}",
        "/active/10.0.0.1%3A1.txt",
        "/tail/x.txt",
    )
    for path in unknown:
        reply = call(watcher, path)
        assert (reply.code, reply.body) == (404, b"Not Found"), path
    assert call(watcher, "/reset/127.0.0.1:1", "POST", HTTP_ORIGIN=ORIGIN).code == 404
    put = call(watcher, "/", "PUT")
    assert (put.code, put.headers["Allow"], put.body) == (405, "GET, HEAD", b"Method Not Allowed")
    assert call(watcher, f"/reset/{addr}").headers["Allow"] == "POST"
    assert call(watcher, f"/active/{addr}.txt", "POST").code == 405
    assert call(watcher, f"/tail/{addr}.txt", query="active_min=x").code == 400


def test_requests_for_unknown_addresses_create_no_state(watcher: Watcher, load: Load) -> None:
    samples(watcher, load.address, 1)
    sampler = watcher._running()
    for port in range(1, 200):
        call(watcher, f"/queued/10.0.0.1%3A{port}.txt")
        call(watcher, f"/reset/10.0.0.1%3A{port}", "POST", HTTP_ORIGIN=ORIGIN)
    assert list(sampler.listeners) == [load.address]


def test_index_escapes_names_and_lists_sorted(tmp_path: Path) -> None:
    hostile = str(tmp_path / "<b>&'\"x.sock")
    with socket.socket(socket.AF_UNIX) as unix, Load() as tcp:
        unix.bind(hostile)
        unix.listen(4)
        with Watcher([hostile, tcp.address], delay=DELAY) as app:
            reply = call(app, "/")
            page = reply.body.decode()
            assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
            assert "<b>" not in page and "&lt;b&gt;&amp;&#x27;&quot;x.sock" in page
            assert f"href='tail/{escaped(hostile)}.txt'" in page
            assert page.index("&lt;b&gt;") < page.index(
                tcp.address
            )  # sorted: "/tmp/..." before "127..."
            assert "<h3>Updated at " in page and "<script>" in page and "src=" not in page
            assert "'sha256-" in reply.headers["Content-Security-Policy"]
            html_page = call(app, f"/active/{escaped(hostile)}.html").body.decode()
            assert "<b>" not in html_page


def test_series_json_since(watcher: Watcher, load: Load) -> None:
    samples(watcher, load.address, 3)
    first = json.loads(call(watcher, "/series.json").body)
    assert first["listeners"] == {load.address: {"active": 2, "queued": 1}}
    assert len(first["points"]) >= 3 and first["points"][-1][1] == {load.address: [2, 1]}
    assert first["window"] == pytest.approx(DELAY * 300)
    later = json.loads(call(watcher, "/series.json", query=f"since={first['updated']!r}").body)
    assert all(point[0] > first["updated"] for point in later["points"])
    assert call(watcher, "/series.json", query="since=yesterday").code == 400


def test_a_configured_listener_that_is_absent_reads_zero(load: Load) -> None:
    with Watcher(["/nonexistent/raindrops.sock", load.address], delay=DELAY) as app:
        assert app.stats() == {"/nonexistent/raindrops.sock": (0, 0), load.address: (2, 1)}
        assert call(app, "/queued/%2Fnonexistent%2Fraindrops.sock.txt").headers["X-Current"] == "0"


def test_arguments_are_checked() -> None:
    for delay in (0, -1, 1e9, float("nan")):
        with pytest.raises(ValueError):
            Watcher(delay=delay)
    with pytest.raises(ValueError):
        Watcher(["127.0.0.1:99999"])
    with pytest.raises(ValueError):
        Watcher(history=1)
    with pytest.raises(TypeError):
        Watcher("127.0.0.1:80")  # a str is a Sequence[str], but surely a mistake
    with pytest.raises(TypeError, match="int 5"):
        Watcher([5])  # type: ignore[list-item]


# /tail over a real server.


@pytest.fixture
def server(watcher: Watcher) -> Iterator[WatchServer]:
    httpd = make_server("127.0.0.1", 0, watcher)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def open_tail(port: int, address: str, query: str = "") -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall(f"GET /tail/{escaped(address)}.txt?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return client


def read_until(client: socket.socket, lines: int, timeout: float = 5.0) -> bytes:
    data = b""
    client.settimeout(timeout)
    while data.partition(b"\r\n\r\n")[2].count(b"\n") < lines:
        chunk = client.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_tail_lines_and_filters(server: WatchServer, watcher: Watcher, load: Load) -> None:
    client = open_tail(server.server_port, load.address)
    data = read_until(client, 2)
    head, _, body = data.partition(b"\r\n\r\n")
    assert (
        b"Cache-Control: no-transform" in head and b"Expires: Thu, 01 Jan 1970 00:00:00 GMT" in head
    )
    line = body.decode().splitlines()[0]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ " + re.escape(load.address) + r" {10}2 {10}1", line
    ), line
    client.close()

    waiting = open_tail(server.server_port, load.address, "queued_min=3&active_min=1")
    waiting.settimeout(0.3)
    with pytest.raises(socket.timeout):
        waiting.recv(
            4096
        )  # no line passes the filters yet (wsgiref sends the headers with the first line)
    load.set(active=1, queued=3)
    assert b" 1          3\n" in read_until(waiting, 1)
    waiting.close()


def test_tail_ends_when_the_client_leaves(
    server: WatchServer, watcher: Watcher, load: Load
) -> None:
    quiet = open_tail(server.server_port, load.address, "queued_min=1000")  # never writes a line
    talkative = open_tail(server.server_port, load.address)
    read_until(talkative, 1)
    wait_until(lambda: watcher.streams == 2, what="two streams")
    quiet.close()
    talkative.close()
    wait_until(lambda: watcher.streams == 0, timeout=3, what="both streams to end")

    remaining = open_tail(server.server_port, load.address, "queued_min=1000")
    wait_until(lambda: watcher.streams == 1, what="a stream")
    watcher.close()  # closing the Watcher ends the streams still open
    wait_until(lambda: watcher.streams == 0, timeout=3, what="the stream to end on close()")
    remaining.settimeout(5)
    assert remaining.recv(4096).startswith(
        b"HTTP/1.0 200"
    )  # an empty response, then the server closes
    remaining.close()


def test_head_on_tail_sends_headers_only(watcher: Watcher, load: Load) -> None:
    reply = call(watcher, f"/tail/{escaped(load.address)}.txt", "HEAD")
    assert (reply.code, reply.body, reply.headers["Cache-Control"]) == (200, b"", "no-transform")


# raindrops watch.


def test_watch_command_serves_and_exits_130_on_ctrl_c(load: Load) -> None:
    with raindrops_watch("--delay", "0.05", load.address) as (process, port):
        assert process.stderr is not None
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"GET /series.json HTTP/1.0\r\n\r\n")
            client.settimeout(5)
            reply = b"".join(iter(lambda: client.recv(65536), b""))
        assert reply.startswith(b"HTTP/1.0 200") and load.address.encode() in reply
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 130
        assert process.stderr.read() == ""


def test_watch_command_rejects_bad_input() -> None:
    for args in (["--bind", "nowhere"], ["127.0.0.1:99999"], ["--delay", "0"]):
        command = [sys.executable, "-m", "raindrops", "watch", *args]
        result = processes.run(command, timeout=30, text=True)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_forked_child_samples_with_its_own_thread(watcher: Watcher, load: Load) -> None:
    samples(watcher, load.address, 1)
    parent = watcher._running()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child = watcher._running()
            fresh = child is not parent and child._thread is not None and child._thread.is_alive()
            code = 0 if fresh and watcher.stats()[load.address] == (2, 1) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert watcher._running() is parent


# The Watcher's lifetime: a dropped Watcher ends its thread and closes its socket.


def _sampler_threads() -> int:
    return sum(thread.name == "raindrops-watcher" for thread in threading.enumerate())


def _open_sockets() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd of listdir itself is gone by now
            count += os.readlink(f"/proc/self/fd/{name}").startswith("socket:")
    return count


def test_dropped_watchers_end_their_threads_and_close_their_sockets(load: Load) -> None:
    gc.collect()
    threads, sockets = _sampler_threads(), _open_sockets()
    for _ in range(50):
        Watcher([load.address], delay=DELAY).start()
    gc.collect()
    wait_until(
        lambda: (_sampler_threads(), _open_sockets()) == (threads, sockets),
        timeout=5,
        what=f"{threads} sampler threads and {sockets} sockets, as before",
    )


def test_a_watcher_in_a_cycle_is_collected_and_stopped(load: Load) -> None:
    gc.collect()
    threads = _sampler_threads()
    app = Watcher([load.address], delay=DELAY)
    app.start()
    app.cycle = app  # type: ignore[attr-defined]
    del app
    gc.collect()
    wait_until(lambda: _sampler_threads() == threads, timeout=5, what="the thread to end")


EXIT_WITHOUT_CLOSE = """
import atexit, sys, time
atexit.register(time.sleep, 0.3)  # the application's own exit work, done after raindrops' part
from raindrops import Watcher
app = Watcher(sys.argv[1:], delay=0.001)
app.start()
deadline = time.monotonic() + 5
while app.view(sys.argv[1], "active").snapshot.count < 20 and time.monotonic() < deadline:
    time.sleep(0.001)
print(app.stats()[sys.argv[1]])
"""


def test_exit_without_close_is_quiet(load: Load) -> None:
    """At exit the sampler thread stops before its socket closes: no 'Bad file descriptor' from a
    thread still sampling while the rest of the program exits."""
    command = [sys.executable, "-c", EXIT_WITHOUT_CLOSE, load.address]
    result = processes.run(command, timeout=30, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "ListenStats(active=2, queued=1)\n"


# Bounded /tail streams: a stream holds a server thread, so a process serves only a few.


class Opened:
    """A response whose body is not read yet: a /tail stream stays open until close()."""

    def __init__(self, app: Watcher, path: str, method: str = "GET", **extra: Any) -> None:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "PATH_INFO": unquote(path, "iso-8859-1"),
            "QUERY_STRING": "",
            "SCRIPT_NAME": "",
            "SERVER_NAME": "watch.test",
            "SERVER_PORT": "80",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http",
            "wsgi.multithread": True,
        }
        environ.update(extra)
        seen: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc: object = None) -> Any:
            seen.update(status=status, headers=dict(headers))
            return lambda data: None

        self.body = app(environ, start_response)
        self.code = int(seen["status"].split()[0])
        self.headers: dict[str, str] = seen["headers"]

    def close(self) -> None:
        getattr(self.body, "close", lambda: None)()


def test_tail_streams_are_bounded_per_process(load: Load) -> None:
    with Watcher([load.address], delay=DELAY) as app:
        tail = f"/tail/{escaped(load.address)}.txt"
        first = Opened(app, tail)
        assert (first.code, app.streams) == (200, 1), "one stream per process with threads"
        second = Opened(app, tail)
        assert second.code == 503 and 1 <= int(second.headers["Retry-After"]) <= 300
        assert b"1 /tail stream" in b"".join(second.body)
        assert Opened(app, tail, "HEAD").code == 503
        assert next(iter(first.body)).startswith(b"20")  # the first stream still streams
        first.close()
        assert app.streams == 0
        third = Opened(app, tail)
        assert third.code == 200
        third.close()

        # One thread per worker (gunicorn's sync workers): a stream would hold the whole worker.
        single = Opened(app, tail, **{"wsgi.multithread": False})
        assert single.code == 503 and b"tail_streams_max" in b"".join(single.body)
        assert Opened(app, tail, "HEAD", **{"wsgi.multithread": False}).code == 503
        assert app.streams == 0

    with Watcher([load.address], delay=DELAY, tail_streams_max=2) as app:
        opened = [Opened(app, tail, **{"wsgi.multithread": False}) for _ in range(3)]
        assert [reply.code for reply in opened] == [200, 200, 503]
        for reply in opened:
            reply.close()
        assert app.streams == 0


def test_a_tail_ends_after_its_maximum_duration(load: Load) -> None:
    with Watcher([load.address], delay=DELAY, tail_seconds_max=0.3) as app:
        started = time.monotonic()
        reply = Opened(app, f"/tail/{escaped(load.address)}.txt")
        lines = list(reply.body)  # ends by itself
        elapsed = time.monotonic() - started
        reply.close()
        assert 0.3 <= elapsed < 3 and len(lines) >= 3, (elapsed, lines)
        assert app.streams == 0


def test_tail_settings_are_checked() -> None:
    for streams in (-1, 1_000_000, 1.5, True, "2"):
        with pytest.raises((ValueError, TypeError), match="tail_streams_max"):
            Watcher(tail_streams_max=streams)  # type: ignore[arg-type]
    for seconds in (0, -1, float("nan"), float("inf"), True, "5", 1e9):
        with pytest.raises(ValueError, match="tail_seconds_max"):
            Watcher(tail_seconds_max=seconds)  # type: ignore[arg-type]


# The mount point without its slash, and links that resolve under any mount prefix.


def test_the_mount_point_without_its_slash_redirects(watcher: Watcher) -> None:
    for prefix in ("/watch", "/a/b%20c/watch"):
        mounted = call(watcher, "", SCRIPT_NAME=unquote(prefix))
        assert (mounted.code, mounted.headers["Location"]) == (302, f"{ORIGIN}{prefix}/")
    query = call(watcher, "", SCRIPT_NAME="/watch", QUERY_STRING="a=1")
    assert query.headers["Location"] == f"{ORIGIN}/watch/?a=1"
    # A dispatcher that hands "/watch" over as "/": the raw request path tells.
    for raw in ("RAW_URI", "REQUEST_URI"):
        dispatched = call(
            watcher, "/", SCRIPT_NAME="/watch", QUERY_STRING="a=1", **{raw: "/watch?a=1"}
        )
        assert (dispatched.code, dispatched.headers["Location"]) == (302, f"{ORIGIN}/watch/?a=1")
        assert call(watcher, "/", SCRIPT_NAME="/watch", **{raw: "/watch/"}).code == 200
        assert call(watcher, "/", SCRIPT_NAME="/watch", **{raw: "/watch/?a=/"}).code == 200


def test_the_demo_redirects_its_mount_point(load: Load) -> None:
    from examples import demo

    seen: list[Any] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/watch",
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "HTTP_HOST": "demo.test",
        "SERVER_NAME": "demo.test",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
    }
    demo.routes(environ, lambda status, headers, exc_info=None: seen.append((status, headers)))
    assert seen[0][0].startswith("302") and ("Location", "http://demo.test/watch/") in seen[0][1]


LINK = re.compile(r"""(?:href|action)=['"]([^'"]*)['"]""")
SCRIPT_LINKS = (
    "tail/{link}.txt",
    "active/{link}.html",
    "queued/{link}.html",
    "series.json?since=0",
)
"""The URLs the dashboard's script makes: each literal before the name is checked in SCRIPT."""


def _follow(app: Watcher, prefix: str, page: str, link: str, address: str) -> None:
    """Resolves `link` as a browser would on `page`; the Watcher must serve what it names."""
    url = urljoin(page, link.replace("&amp;", "&").replace("{link}", escaped(address)))
    target = urlsplit(url)
    assert target.netloc == "watch.test" and target.path.startswith(prefix + "/"), (page, url)
    path = target.path[len(prefix) :]
    if path.startswith("/reset/"):
        reply = call(app, path, "POST", SCRIPT_NAME=prefix, HTTP_ORIGIN=ORIGIN, HTTP_REFERER=page)
        assert (reply.code, reply.headers["Location"]) == (302, page), (page, url)
        return
    method = "HEAD" if path.startswith("/tail/") else "GET"  # HEAD: a tail does not end
    reply = call(app, path, method, SCRIPT_NAME=prefix, QUERY_STRING=target.query)
    assert reply.code == 200, (page, link, url, reply.code)


def test_every_link_resolves_under_any_mount_prefix(watcher: Watcher, load: Load) -> None:
    samples(watcher, load.address, 1)
    for literal in ('"tail/"', '"active/"', '"queued/"', '"series.json?since="'):
        assert literal in pages.SCRIPT, literal
    for prefix in ("", "/watch", "/a/b/watch"):
        index_url = f"{ORIGIN}{prefix}/"
        index = call(watcher, "/", SCRIPT_NAME=prefix).body.decode()
        links = LINK.findall(index)
        assert len(links) == 8, links  # a row of the table and its template: 3 links, a form
        for link in [*links, *SCRIPT_LINKS]:
            _follow(watcher, prefix, index_url, link, load.address)
        for kind in ("active", "queued"):
            page_url = f"{index_url}{kind}/{escaped(load.address)}.html"
            page = call(watcher, f"/{kind}/{escaped(load.address)}.html", SCRIPT_NAME=prefix)
            page_links = LINK.findall(page.body.decode())
            assert page_links == ["../", f"../reset/{escaped(load.address)}"], page_links
            for link in page_links:
                _follow(watcher, prefix, page_url, link, load.address)


def test_no_request_header_reaches_a_header_line_unchecked(watcher: Watcher, load: Load) -> None:
    """A Host or Referer with CR/LF (a server that passes them on) must not split Location."""
    for host in ("watch.test\r\nSet-Cookie: a=b", "watch.test/x", "watch test", "w\x00"):
        for path, method in (("", "GET"), ("/", "GET"), ("/series.json", "GET")):
            reply = call(watcher, path, method, HTTP_HOST=host, SCRIPT_NAME="/watch")
            assert (reply.code, "Location" in reply.headers) == (400, False), (host, path)
    reset = f"/reset/{escaped(load.address)}"
    for referer in (
        "http://watch.test/\r\nSet-Cookie: a=b",
        "http://watch.test/a b",
        "http://watch.test/\x7f",
    ):
        reply = call(watcher, reset, "POST", HTTP_ORIGIN=ORIGIN, HTTP_REFERER=referer)
        assert (reply.code, reply.headers["Location"]) == (302, f"{ORIGIN}/"), referer
    for headers in call(watcher, "", SCRIPT_NAME="/w", QUERY_STRING="a=\r\nb").header_list:
        assert all(32 <= ord(char) < 127 for char in headers[1]), headers
