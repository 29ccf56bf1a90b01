"""One Watcher for every worker of a server: the same series, peaks and resets in all of them,
and one process sampling the kernel per interval, holding a lease that another takes over when
it dies.

Two kinds of servers: processes forked here with one Watcher inherited (each answers WSGI calls
sent over a pipe), and real gunicorn with 4 workers (sync and gthread, with and without
--preload) serving examples.demo, whose Watcher is mounted at /watch. Which process samples is
seen in the kernel: the sampler holds a sock_diag netlink socket, the other workers none.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import random
import re
import select
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from load import Load, wait_until
from servers import SERVER_VARIANTS, Gunicorn, gunicorn
from test_segment_safety import CAPACITY_OFFSET, SIZE_OFFSET

from raindrops import ListenStats, Watcher
from raindrops.segments import DEGRADED_HEADER as DEGRADED
from raindrops.watcher import app as watcher_app
from raindrops.watcher import shared
from testsupport.gunicorn import SHM_DIR, Response

DELAY = 0.2
"""The forked workers' sampling interval (seconds)."""
DEMO_DELAY = 1.0
"""examples.demo's Watcher samples at the default interval."""
WORKERS = 4
HANDOVER_SLACK = 0.25
"""Scheduling on a loaded 2-core machine, on top of the two intervals a handover may take."""
ANSWER_TIMEOUT = 30.0
NETLINK_SOCK_DIAG = 4


def escaped(address: str) -> str:
    return quote(address, safe="")


# Who samples the kernel: the processes holding a sock_diag netlink socket.


def sock_diag_inodes() -> set[int]:
    """Inodes of every NETLINK_SOCK_DIAG socket of this network namespace."""
    inodes = set()
    with open("/proc/net/netlink") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 10 and fields[1] == str(NETLINK_SOCK_DIAG):
                inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    found = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(entry.path)
                if target.startswith("socket:["):
                    found.add(int(target[len("socket:[") : -1]))
    return found


def kernel_samplers(pids: Sequence[int], inherited: set[int]) -> list[int]:
    """The processes among `pids` that hold a sock_diag socket of their own (not one inherited
    across fork, in `inherited`)."""
    diag = sock_diag_inodes() - inherited
    return [pid for pid in pids if socket_inodes(pid) & diag]


# What every worker must agree on.


def assert_one_series(answers: Sequence[Mapping[str, Any]]) -> None:
    """The series.json answers are windows on one series: a time has one set of values in all of
    them, and each answer holds every point of another that falls within its own time span."""
    values: dict[float, Any] = {}
    for answer in answers:
        for when, point in answer["points"]:
            assert values.setdefault(when, point) == point, (when, values[when], point)
    for answer in answers:
        times = [when for when, _ in answer["points"]]
        assert times == sorted(times) and len(set(times)) == len(times), times
        for other in answers:
            inside = [when for when, _ in other["points"] if times[0] <= when <= times[-1]]
            assert set(inside) <= set(times), (inside, times)


def assert_sampled_once_per_interval(points: Sequence[Any], delay: float) -> None:
    """One sample per interval for the whole server, not one per worker."""
    times = [when for when, _ in points]
    gaps = [later - earlier for earlier, later in zip(times[:-1], times[1:], strict=True)]
    assert gaps and min(gaps) >= delay / 2, gaps
    span = times[-1] - times[0]
    assert len(times) - 1 <= span / delay + 1, (len(times), span)


def view_identity(view: Mapping[str, Any]) -> tuple[Any, ...]:
    """What does not change between two samples of a steady listener: when its statistics were
    last reset and when its peaks were first reached."""
    return view["last_reset"], view["first_peak_at"], view["max"], view["min"]


# Processes forked with the Watcher inherited.


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.status == 200, (self.status, self.body)
        return json.loads(self.body)


def wsgi_call(
    app: Watcher,
    method: str,
    path: str,
    headers: Mapping[str, str],
    *,
    multiprocess: bool = True,
) -> Answer:
    raw_path, _, query = path.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote(raw_path, "iso-8859-1"),
        "QUERY_STRING": query,
        "SCRIPT_NAME": "",
        "SERVER_NAME": "watch.test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "watch.test",
        "wsgi.url_scheme": "http",
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
    }
    environ.update(
        {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}
    )
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Any:
        seen.update(status=status, headers=headers)
        return lambda data: None

    body = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return Answer(int(seen["status"].split()[0]), dict(seen["headers"]), data)


def _serve(app: Watcher, requests_fd: int, answers_fd: int) -> None:
    """The child's loop: one JSON request per line, one JSON answer per line, until EXIT."""
    with os.fdopen(requests_fd, "r") as requests, os.fdopen(answers_fd, "w") as answers:
        for line in requests:
            method, path, headers = json.loads(line)
            if method == "EXIT":
                return
            if method == "CLOSE":  # the Watcher's close(): this process stops sampling
                app.close()
                answer = Answer(200, {}, b"")
            else:
                answer = wsgi_call(app, method, path, headers)
            reply = [answer.status, answer.headers, answer.body.decode("latin-1")]
            answers.write(json.dumps(reply) + "\n")
            answers.flush()


class Forked:
    """A process forked with the Watcher inherited, answering WSGI calls sent over a pipe."""

    def __init__(self, app: Watcher) -> None:
        to_child, to_child_end = os.pipe()
        from_child_end, from_child = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(to_child_end)
                os.close(from_child_end)
                _serve(app, to_child, from_child)
                code = 0
            finally:
                os._exit(code)
        os.close(to_child)
        os.close(from_child)
        self.pid = pid
        self._requests = os.fdopen(to_child_end, "w")
        self._answers = from_child_end
        self._pending = b""
        self.reaped = False

    def call(
        self, path: str, method: str = "GET", headers: Mapping[str, str] | None = None
    ) -> Answer:
        self._requests.write(json.dumps([method, path, dict(headers or {})]) + "\n")
        self._requests.flush()
        status, answer_headers, body = json.loads(self._read_line())
        return Answer(status, answer_headers, body.encode("latin-1"))

    def json(self, path: str) -> Any:
        return self.call(path).json()

    def _read_line(self) -> bytes:
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self._answers], [], [], max(0.0, remaining))
            assert readable, f"process {self.pid} did not answer within {ANSWER_TIMEOUT} s"
            chunk = os.read(self._answers, 65536)
            assert chunk, f"process {self.pid} exited"
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def kill(self) -> None:
        """SIGKILL, and reaped at once: the process is gone, not a zombie."""
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.reaped = True

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if not self.reaped:
                self._requests.write(json.dumps(["EXIT", "", {}]) + "\n")
                self._requests.flush()
        with contextlib.suppress(OSError):
            self._requests.close()
        os.close(self._answers)
        if self.reaped:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            time.sleep(0.01)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self.reaped = True


@dataclass
class Forks:
    app: Watcher
    workers: list[Forked]
    inherited: set[int]  # socket inodes the children got from this process

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers if not worker.reaped]

    def samplers(self) -> list[int]:
        return kernel_samplers(self.pids, self.inherited)


def alone(app: Watcher) -> Watcher:
    """`app`, after every other Watcher of this process is closed. A forked child starts the
    sampler of each Watcher it inherits that is not closed, and the tests here count the
    processes that sample: examples.demo's Watcher, built when another test module imports the
    demo, lives as long as this process (a later request to it starts it again)."""
    for other in list(watcher_app._STARTED_IN_CHILDREN):
        if other is not app:
            other.close()
    return app


@pytest.fixture
def forks(load: Load) -> Iterator[Forks]:
    """WORKERS processes forked with one Watcher made here (never used here: this process does
    not sample), each sampling or watching the lease from its fork on, and answering."""
    app = alone(Watcher([load.address], delay=DELAY))
    forked = Forks(app, [], socket_inodes(os.getpid()))
    try:
        for _ in range(WORKERS):
            forked.workers.append(Forked(app))
        for worker in forked.workers:
            assert worker.call("/series.json").status == 200
        yield forked
    finally:
        for worker in forked.workers:
            worker.stop()
        app.close()


def samples_seen(worker: Forked, address: str) -> int:
    answer = worker.call(f"/active/{escaped(address)}.json")
    return int(answer.json()["count"]) if answer.status == 200 else 0


def wait_for_samples(forks: Forks, address: str, count: int) -> None:
    wait_until(
        lambda: all(samples_seen(worker, address) >= count for worker in forks.workers),
        timeout=20,
        what=f"{count} samples seen by every worker",
    )


def test_forked_workers_answer_one_series_and_one_set_of_peaks(forks: Forks, load: Load) -> None:
    wait_for_samples(forks, load.address, 8)
    views = [worker.json(f"/active/{escaped(load.address)}.json") for worker in forks.workers]
    assert len({view_identity(view) for view in views}) == 1, views
    assert {view["current"] for view in views} == {2}
    answers = [worker.json("/series.json") for worker in forks.workers]
    assert_one_series(answers)
    assert_sampled_once_per_interval(answers[-1]["points"], DELAY)
    assert {answer["sampler"] for answer in answers} == set(forks.samplers())
    assert len(forks.samplers()) == 1, "exactly one process samples the kernel"


def test_a_reset_in_one_worker_is_seen_by_all(forks: Forks, load: Load) -> None:
    wait_for_samples(forks, load.address, 5)
    path = f"/active/{escaped(load.address)}.json"
    before = forks.workers[0].json(path)
    origin = {"Origin": "http://watch.test"}
    reset = forks.workers[1].call(f"/reset/{escaped(load.address)}", "POST", origin)
    assert reset.status == 302, reset
    after = [worker.json(path) for worker in forks.workers]
    assert len({view["last_reset"] for view in after}) == 1, after
    assert after[0]["last_reset"] > before["last_reset"]
    assert all(1 <= view["count"] < before["count"] for view in after), after
    assert len({view["first_peak_at"] for view in after}) == 1, after
    assert after[0]["first_peak_at"] > before["first_peak_at"]


def test_sigkill_of_the_sampling_worker_hands_sampling_over_within_two_intervals(
    forks: Forks, load: Load
) -> None:
    wait_for_samples(forks, load.address, 3)
    [sampling] = forks.samplers()
    victim = next(worker for worker in forks.workers if worker.pid == sampling)
    observer = next(worker for worker in forks.workers if worker.pid != sampling)
    killed_at = time.time()
    victim.kill()

    def later_points() -> list[float]:
        return [when for when, _ in observer.json("/series.json")["points"] if when > killed_at]

    first = wait_until(later_points, timeout=10, what="a sample after the kill")[0]
    assert first - killed_at <= 2 * DELAY + HANDOVER_SLACK, first - killed_at
    successor = observer.json("/series.json")["sampler"]
    assert successor in forks.pids and successor != sampling
    wait_until(lambda: forks.samplers() == [successor], timeout=5, what="the successor alone")
    wait_until(lambda: len(later_points()) >= 6, what="samples after the handover")
    assert_sampled_once_per_interval(observer.json("/series.json")["points"], DELAY)


def test_a_stuck_sampler_is_replaced_and_stops_when_it_wakes(forks: Forks, load: Load) -> None:
    """A holder alive but silent (SIGSTOP: a hung netlink read, a long pause) loses the lease
    after a few intervals; when it runs again it finds the lease taken and stops sampling, so
    the server never samples twice per interval."""
    from raindrops.watcher.sampler import STALE_GRACE_S, STALE_INTERVALS

    wait_for_samples(forks, load.address, 3)
    [stuck] = forks.samplers()
    observer = next(worker for worker in forks.workers if worker.pid != stuck)
    os.kill(stuck, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        takeover = (STALE_INTERVALS + 2) * DELAY + STALE_GRACE_S + HANDOVER_SLACK
        wait_until(
            lambda: observer.json("/series.json")["sampler"] not in (0, stuck),
            timeout=takeover + 5,
            what="another process to take the lease",
        )
        assert time.time() - stopped_at <= takeover + 1.0
    finally:
        os.kill(stuck, signal.SIGCONT)
    successor = observer.json("/series.json")["sampler"]
    woke_at = time.time()
    wait_until(
        lambda: len([p for p in observer.json("/series.json")["points"] if p[0] > woke_at]) >= 6,
        what="samples after the stuck process woke",
    )
    assert forks.samplers() == [successor], (stuck, successor)
    points = [p for p in observer.json("/series.json")["points"] if p[0] > woke_at]
    assert_sampled_once_per_interval(points, DELAY)


def test_a_closed_sampler_hands_the_lease_back_at_once(forks: Forks, load: Load) -> None:
    wait_for_samples(forks, load.address, 3)
    [sampling] = forks.samplers()
    holder = next(worker for worker in forks.workers if worker.pid == sampling)
    observer = next(worker for worker in forks.workers if worker.pid != sampling)
    closed_at = time.time()
    holder.call("/", "CLOSE")
    wait_until(
        lambda: observer.json("/series.json")["sampler"] not in (0, sampling),
        what="another process to take the lease",
    )
    first = wait_until(
        lambda: [p[0] for p in observer.json("/series.json")["points"] if p[0] > closed_at],
        what="a sample after close()",
    )[0]
    assert first - closed_at <= 2 * DELAY + HANDOVER_SLACK
    wait_until(lambda: sampling not in forks.samplers(), timeout=5, what="its socket to close")


def test_a_forked_worker_watches_the_lease_before_its_first_request(
    load: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child forked with the Watcher inherited (a worker of a preloaded server) starts its
    sampler at fork: it takes the free lease and samples without serving any request. (A process
    with a greenlet library loaded waits for the first request instead; test_gevent.py imports
    gevent into this process, so it is hidden here.)"""
    for greenlets in ("gevent", "eventlet"):
        monkeypatch.delitem(sys.modules, greenlets, raising=False)
    with alone(Watcher([load.address], delay=DELAY)) as app:
        child = Forked(app)
        try:
            inherited = socket_inodes(os.getpid())
            wait_until(
                lambda: kernel_samplers([child.pid], inherited) == [child.pid],
                timeout=5,
                what="the child to sample without a request",
            )
        finally:
            child.stop()


def test_a_request_that_finds_the_sampler_dead_takes_the_lease_at_once(load: Load) -> None:
    """A process whose sampler has not looked at the lease yet (its first request here) and
    finds the holder gone with its sample overdue takes over at once: its answer is fresh and
    names it, not the dead sampler. (This process and its child share the Watcher's own segment,
    as the master and the workers of a preloaded server do.)"""
    with alone(Watcher([load.address], delay=DELAY)) as app:
        child = Forked(app)
        try:
            wait_until(lambda: child.json("/series.json")["sampler"] == child.pid)
            child.kill()
            killed_at = time.time()
            time.sleep(1.5 * DELAY)  # its next sample is overdue
            answer = wsgi_call(app, "GET", "/series.json", {}, multiprocess=False).json()
        finally:
            child.stop()
        assert answer["sampler"] == os.getpid()
        assert answer["points"][-1][0] > killed_at, answer["points"][-3:]


def in_child(work: Callable[[], Any], timeout: float = ANSWER_TIMEOUT) -> Any:
    """work() in a forked process (which makes its own objects, as a worker without --preload
    does); its JSON result, or the child's traceback as an AssertionError."""
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(readable)
            try:
                result = json.dumps(["ok", work()])
            except BaseException:  # noqa: BLE001 - reported to the parent
                result = json.dumps(["error", traceback.format_exc()])
            with os.fdopen(writable, "w") as out:
                out.write(result)
        finally:
            os._exit(0)
    os.close(writable)
    try:
        with os.fdopen(readable, "r") as source:
            ready, _, _ = select.select([source], [], [], timeout)
            assert ready, f"child {pid} did not answer within {timeout} s"
            outcome, value = json.loads(source.read())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert outcome == "ok", value
    return value


def test_a_worker_whose_segment_is_unusable_serves_its_own_samples_and_says_so(
    load: Load,
) -> None:
    """A worker building its own Watcher (no --preload) meets the others in a segment named
    after its master; one that holds another layout (another raindrops version, a squatter)
    leaves this worker sampling on its own, saying so in a header and in series.json."""
    from raindrops import Raindrops, segments
    from raindrops.watcher.app import _segment_path

    def squatted() -> dict[str, Any]:
        path = _segment_path([load.address], DELAY, 300)
        name = segments.master_segment_name("watch", path)
        squat = Raindrops(64, name=name)
        squat[0] = 12345  # not a Watcher layout's fingerprint
        try:
            with Watcher([load.address], delay=DELAY) as app:
                answer = wsgi_call(app, "GET", "/series.json", {})
                return {"headers": answer.headers, "body": answer.json()}
        finally:
            squat.unlink()

    result = in_child(squatted)
    assert result["headers"]["X-Raindrops-Degraded"] == "segment_invalid"
    assert result["body"]["degraded"] == ["segment_invalid"]
    assert result["body"]["listeners"] == {load.address: {"active": 2, "queued": 1}}


class Warnings(logging.Handler):
    """The warnings logged, as text."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


POISONS: dict[str, tuple[dict[int, int], str | None]] = {
    # header fields written -> what the answers say
    "size": ({SIZE_OFFSET: 10**6}, "segment_invalid"),
    "capacity": ({CAPACITY_OFFSET: 2**60}, None),  # read at attach and growth only: still shared
    "both": ({CAPACITY_OFFSET: 2**60, SIZE_OFFSET: 2**40}, "segment_invalid"),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_segment_corrupted_after_attach_leaves_every_answer_served(
    poison: str, load: Load
) -> None:
    """A same-uid process writes nonsense into the header of the segment the workers share.
    Reads within what a worker has mapped go on; the next change of the listener table (here:
    a listener gone for longer than the history) makes every worker read the segment's size
    again. Where that fails, a worker's request falls back to its own private samples: every
    endpoint answers and says so (X-Raindrops-Degraded, series.json's degraded), logged once."""
    fields, expected = POISONS[poison]
    address = escaped(load.address)
    paths = ["/", "/series.json", f"/active/{address}.json", f"/queued/{address}.txt"]
    paths.append(f"/active/{address}.html")

    def poisoned() -> dict[str, Any]:
        warnings = Warnings()
        logging.getLogger("raindrops.watcher").addHandler(warnings)
        leaving = Load()
        with Watcher(None, delay=DELAY, history=2) as app:
            assert wsgi_call(app, "GET", "/series.json", {}).status == 200  # the named segment
            name = app._boards.current.name
            try:
                wait_until(lambda: leaving.address in app.stats(), what="the leaving listener")
                with open(SHM_DIR / name[1:], "r+b") as segment:
                    for offset, value in fields.items():
                        segment.seek(offset)
                        segment.write(struct.pack("<Q", value))
                leaving.close()

                def table_changed() -> bool:
                    answer = wsgi_call(app, "GET", "/series.json", {})
                    assert answer.status == 200, answer
                    return leaving.address not in app._running().state().slots

                wait_until(table_changed, what="the listener table to change")
                rounds = [{path: wsgi_call(app, "GET", path, {}) for path in paths}]
                rounds.append({path: wsgi_call(app, "GET", path, {}) for path in paths})
                tail = wsgi_call(app, "HEAD", f"/tail/{address}.txt", {})
            finally:
                (SHM_DIR / name[1:]).unlink()
        return {
            "statuses": [[answer.status for answer in one.values()] for one in rounds],
            "headers": [answer.headers.get(DEGRADED) for one in rounds for answer in one.values()],
            "series": rounds[-1]["/series.json"].json(),
            "tail": tail.status,
            "warnings": [line for line in warnings.lines if "went bad" in line],
        }

    result = in_child(poisoned)
    assert result["statuses"] == [[200] * len(paths)] * 2, result
    assert result["headers"] == [expected] * 2 * len(paths), result
    assert result["series"]["degraded"] == ([] if expected is None else [expected])
    assert result["series"]["listeners"][load.address] == {"active": 2, "queued": 1}
    assert result["tail"] == 200
    assert len(result["warnings"]) == (0 if expected is None else 1), result["warnings"]


def test_workers_building_their_own_watcher_meet_in_one_named_segment(load: Load) -> None:
    """Without --preload each worker builds its Watcher after fork: they find the same named
    segment (the one raindrops.segments derives from their master), not one each."""

    def worker() -> dict[str, Any]:
        with Watcher([load.address], delay=DELAY) as app:
            first = wsgi_call(app, "GET", "/series.json", {}).json()
            return {"name": app._boards.current.name, "sampler": first["sampler"]}

    names = set()
    for _ in range(2):
        result = in_child(worker)
        names.add(result["name"])
        assert result["sampler"] != 0
    [name] = names
    assert name.startswith(f"/raindrops-watch-{os.getpid()}-"), name
    (Path("/dev/shm") / name.lstrip("/")).unlink()


def test_two_watchers_of_one_worker_on_one_segment_sample_once_per_interval(
    load: Load,
) -> None:
    """Two Watchers watching the same way in one worker meet in the same named segment, with
    the same lease token (the process's): only one of them samples."""

    def worker() -> list[Any]:
        with (
            Watcher([load.address], delay=DELAY) as one,
            Watcher([load.address], delay=DELAY) as two,
        ):
            for app in (one, two):
                assert wsgi_call(app, "GET", "/series.json", {}).status == 200
            assert one._boards.current.name == two._boards.current.name
            time.sleep(12 * DELAY)
            points: list[Any] = wsgi_call(two, "GET", "/series.json", {}).json()["points"]
            name = one._boards.current.name
        (Path("/dev/shm") / name.lstrip("/")).unlink()
        return points

    points = in_child(worker)
    assert len(points) >= 6, points
    assert_sampled_once_per_interval(points, DELAY)


# The segment itself: writes, reads, bounds.


def board(slots: int = 4, history: int = 5) -> Any:
    return shared.Board(shared.Layout(slots, history))


def write(
    target: Any, stats: Mapping[str, tuple[int, int]], now: float, slots: dict[str, int]
) -> list[str]:
    writing = target.begin_write(0)
    assert writing is not None
    try:
        return target.record(
            {name: ListenStats(*values) for name, values in stats.items()}, now, slots
        )
    finally:
        target.end_write(writing)


def test_the_ring_keeps_the_last_history_samples_and_since_filters_them() -> None:
    target, slots = board(history=5), {}
    for number in range(12):
        write(target, {"127.0.0.1:1": (number, 2 * number)}, 100.0 + number, slots)
    state = target.state(shared.EMPTY)
    points = target.points(state, 0.0)
    assert [when for when, _ in points] == [107.0, 108.0, 109.0, 110.0, 111.0]
    assert points[-1][1] == {"127.0.0.1:1": (11, 22)}
    assert [when for when, _ in target.points(state, 109.0)] == [110.0, 111.0]
    assert state.latest == {"127.0.0.1:1": ListenStats(11, 22)}
    view = target.view(state, "127.0.0.1:1", "queued")
    assert (view.snapshot.count, view.snapshot.max, view.current) == (12, 22, 22)


def test_listeners_gone_longer_than_the_history_are_forgotten_and_their_slot_reused() -> None:
    target, slots = board(slots=1, history=3), {}
    write(target, {"a:1": (1, 0)}, 1.0, slots)
    for when in range(2, 6):
        left_out = write(target, {}, float(when), slots)
        assert left_out == []
    assert target.state(shared.EMPTY).slots == {}
    write(target, {"b:2": (5, 5)}, 6.0, slots)
    state = target.state(shared.EMPTY)
    assert list(state.slots) == ["b:2"]
    assert [values for _, values in target.points(state, 0.0)] == [{}, {}, {"b:2": (5, 5)}]


def test_listeners_beyond_the_slots_or_with_too_long_names_are_left_out() -> None:
    target, slots = board(slots=2), {}
    long_name = "/" + "x" * shared.NAME_BYTES_MAX
    fits = "/" + "y" * (shared.NAME_BYTES_MAX - 1)
    stats = {long_name: (1, 1), fits: (2, 2), "10.0.0.1:80": (3, 3), "10.0.0.2:80": (4, 4)}
    left_out = write(target, stats, 1.0, slots)
    assert sorted(left_out) == sorted([long_name, fits])  # TCP listeners are kept first
    state = target.state(shared.EMPTY)
    assert sorted(state.slots) == ["10.0.0.1:80", "10.0.0.2:80"] and state.left_out == 2
    wide, slots = board(slots=2), {}
    assert write(wide, {long_name: (1, 1), fits: (2, 2)}, 1.0, slots) == [long_name]
    assert list(wide.state(shared.EMPTY).latest) == [fits]


def test_one_writer_at_a_time_and_a_dead_writer_is_passed_after_an_interval() -> None:
    target = board()
    writing = target.begin_write(0)
    assert writing is not None and writing % 2 == 1
    assert target.begin_write(0) is None  # another writer is at it
    # Its writer died (it never ends): seen again an interval later, the number is passed.
    passed = target.begin_write(writing)
    assert passed == writing + 2
    target.end_write(writing)  # a late end of the dead writer changes nothing
    assert target.sequence() == passed
    target.end_write(passed)
    assert target.sequence() == passed + 1


def test_the_lease_names_a_process_by_pid_and_start_time() -> None:
    from raindrops import _process

    token = shared.own_token()
    assert token & ((1 << 22) - 1) == os.getpid()
    assert token >> 22 == _process.own_start_ticks()
    assert not shared.holder_gone(token)
    assert shared.holder_gone(token + (1 << 22))  # this pid, another start: a reused pid
    child = os.fork()
    if child == 0:
        os._exit(0)
    child_token = (_process.start_ticks(child) or 0) << 22 | child
    os.waitpid(child, 0)
    assert shared.holder_gone(child_token)
    target = board()
    assert target.take(0, token) and target.holds(token) and not target.take(0, child_token)
    target.release(child_token)  # only the holder releases
    assert target.holds(token)
    target.release(token)
    assert target.lease()[0] == 0


def test_a_segment_of_another_layout_is_refused_by_name() -> None:
    from testsupport.gunicorn import segment_name

    name = segment_name("watchtest")
    first = shared.Board(shared.Layout(4, 10), name=name)
    try:
        with pytest.raises(ValueError, match=re.escape(repr(name))):
            shared.Board(shared.Layout(4, 11), name=name)
        again = shared.Board(shared.Layout(4, 10), name=name)
        assert again.counters.size >= first.counters.size
        again.close()
    finally:
        first.counters.unlink()
        first.close()


def test_readers_in_other_processes_never_see_half_a_sample() -> None:
    """A writer as fast as it can go; readers in forked processes check that every view they
    get is one whole sample: sample k writes (k, k), so count, sum, max and current agree."""
    target, slots = board(slots=1, history=50), {}
    write(target, {"w:1": (0, 0)}, 1.0, slots)
    readers = []
    for _ in range(2):
        readable, writable = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(readable)
                code = _check_views(target, time.monotonic() + 1.5)
            finally:
                os._exit(code)
        os.close(writable)
        readers.append((pid, readable))
    number = 1
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            write(target, {"w:1": (number, number)}, 1.0 + number, slots)
            number += 1
            time.sleep(0.001)  # the shortest interval a Watcher samples at
    finally:
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid, _ in readers]
        for _, readable in readers:
            os.close(readable)
    assert number > 100, number
    assert codes == [0, 0]


def _check_views(target: Any, deadline: float) -> int:
    state = shared.EMPTY
    checked = 0
    while time.monotonic() < deadline:
        state = target.state(state)
        view = target.view(state, "w:1", "active")
        count = view.snapshot.count
        if count and (view.snapshot.sum != count * (count - 1) // 2 or view.current != count - 1):
            return 2
        checked += 1
    return 0 if checked > 100 else 3


def test_garbage_in_the_segment_never_breaks_an_answer(load: Load) -> None:
    """A buggy process of the same user may write anything into the segment: every endpoint
    still answers (values may be wrong, nothing is addressed by them)."""
    rng = random.Random(12)
    with Watcher([load.address], delay=DELAY) as app:
        wait_until(lambda: app.view(load.address, "active"), what="a sample")
        counters = app._boards.current.counters
        paths = ["/", "/series.json", f"/active/{escaped(load.address)}.json"]
        paths += [f"/queued/{escaped(load.address)}.txt", f"/active/{escaped(load.address)}.html"]
        for round_number in range(30):
            for index in range(len(counters)):
                if rng.random() < 0.2:
                    counters[index] = rng.choice([0, 1, 2**63, 2**64 - 1, rng.getrandbits(64)])
            for path in paths:
                answer = wsgi_call(app, "GET", path, {})
                assert answer.status in (200, 404), (round_number, path, answer)
                if path.endswith(".json") and answer.status == 200:
                    json.loads(answer.body)
        sampler = app._running()
        written = sampler.board.sequence()
        wait_until(lambda: sampler.board.sequence() != written, what="sampling to go on")
        assert sampler._thread is not None and sampler._thread.is_alive()


# Real gunicorn, 4 workers.

ANSWERS_MAX = 50  # requests made to reach every worker


@pytest.fixture(scope="module", params=list(SERVER_VARIANTS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gunicorn]:
    log_dir: Path = tmp_path_factory.mktemp(request.param)
    with gunicorn(log_dir, SERVER_VARIANTS[request.param], workers=WORKERS) as running:
        running.label = request.param
        yield running


@pytest.fixture(scope="module")
def steady() -> Iterator[Load]:
    """A listener of this host with a steady load: its peaks and reset time do not move."""
    with Load() as listener:
        listener.set(active=2, queued=1)
        yield listener


def worker_request(
    server: Gunicorn, path: str, method: str = "GET", headers: Mapping[str, str] | None = None
) -> tuple[int, Response]:
    """One request on a new connection; the worker that accepted it, and the response."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=ANSWER_TIMEOUT)
    try:
        connection.connect()
        assert connection.sock is not None
        client_port = connection.sock.getsockname()[1]

        def owner() -> int:
            with contextlib.suppress(AssertionError):
                return server.connection_owner(client_port)
            return 0

        pid = wait_until(owner, timeout=10, what="a worker to accept the connection")
        connection.request(method, path, headers={"Connection": "close", **(headers or {})})
        response = connection.getresponse()
        body = response.read()
        names = {name.lower(): value for name, value in response.getheaders()}
        return pid, Response(response.status, names, body)
    finally:
        connection.close()


def from_every_worker(server: Gunicorn, path: str) -> dict[int, Response]:
    return from_every_worker_of(server, path, WORKERS)


def from_every_worker_of(server: Gunicorn, path: str, workers: int) -> dict[int, Response]:
    """An answer of each of the `workers` workers to GET `path`.

    Which worker accepts a connection is the kernel's choice, and one may
    win most of them: a worker that answered is stopped (SIGSTOP) until every
    worker has answered, so the next connections go to the others.
    """
    answers: dict[int, Response] = {}
    stopped: list[int] = []
    try:
        for _ in range(ANSWERS_MAX):
            pid, response = worker_request(server, path)
            answers[pid] = response
            if len(answers) == workers:
                return answers
            if pid not in stopped:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    raise AssertionError(f"only workers {sorted(answers)} answered {path}")


STEADY_HEADERS = ("x-last-reset", "x-first-peak-at", "x-min", "x-max", "x-current")
"""raindrops' X-* headers that do not change between two samples of a steady listener."""


def header_identity(reply: Response) -> tuple[str, ...]:
    """What a reply's X-* headers say of a steady listener: every worker must say the same."""
    assert DEGRADED.lower() not in reply.headers, reply.headers
    return tuple(reply.headers[name] for name in STEADY_HEADERS)


def agreeing_views(server: Gunicorn, path: str) -> dict[int, Any]:
    """Every worker's view of a steady listener, in its JSON and its X-* headers; views of one
    round can differ only by a sample taken between two answers, so a few rounds are allowed to
    agree."""
    views: dict[int, Any] = {}
    for _ in range(5):
        replies = from_every_worker(server, path)
        views = {pid: json.loads(reply.body) for pid, reply in replies.items()}
        seen = {
            (view_identity(views[pid]), header_identity(reply)) for pid, reply in replies.items()
        }
        if len(seen) == 1:
            return views
    raise AssertionError(f"the workers disagree: {views}")


def test_every_gunicorn_worker_answers_one_view(server: Gunicorn, steady: Load) -> None:
    stats = f"/watch/active/{escaped(steady.address)}.json"
    wait_until(lambda: server.get(stats).status == 200, what="the listener to be sampled")
    views = agreeing_views(server, stats)
    assert {view["current"] for view in views.values()} == {2}

    series = from_every_worker(server, "/watch/series.json")
    answers = [reply.json() for reply in series.values()]
    assert_one_series(answers)
    assert len({answer["sampler"] for answer in answers} - {0}) == 1, answers
    assert all(answer["degraded"] == [] for answer in answers), answers
    # Built after fork, the workers meet in a segment named after their master; preloaded, they
    # share the anonymous one they inherited.
    named = list(Path("/dev/shm").glob(f"raindrops-watch-{server.pid}-*"))
    assert len(named) == (0 if server.label.endswith("preload") else 1), named

    before = next(iter(views.values()))
    origin = {"Origin": f"http://127.0.0.1:{server.port}"}
    reset_path = f"/watch/reset/{escaped(steady.address)}"
    _, reset = worker_request(server, reset_path, "POST", origin)
    assert reset.status == 302, (reset.status, reset.body)
    after = agreeing_views(server, stats)
    assert next(iter(after.values()))["last_reset"] > before["last_reset"]


def test_the_kernel_is_sampled_once_per_interval_for_the_whole_server(server: Gunicorn) -> None:
    from_every_worker(server, "/watch/series.json")  # every worker runs its sampler thread
    started = time.time()
    time.sleep(5 * DEMO_DELAY)
    answer = server.get("/watch/series.json").json()
    later = [point for point in answer["points"] if point[0] > started]
    assert len(later) >= 4, later
    assert_sampled_once_per_interval(later, DEMO_DELAY)


def test_sigkill_of_the_sampling_gunicorn_worker_hands_sampling_over(server: Gunicorn) -> None:
    from_every_worker(server, "/watch/series.json")  # every worker runs its sampler thread
    sampling = wait_until(
        lambda: server.get("/watch/series.json").json()["sampler"], what="a sampling worker"
    )
    assert sampling in server.worker_pids()
    killed_at = time.time()
    os.kill(sampling, signal.SIGKILL)

    def after_kill() -> list[float]:
        points = server.get("/watch/series.json").json()["points"]
        return [when for when, _ in points if when > killed_at]

    first = wait_until(after_kill, timeout=20, what="a sample after the kill")[0]
    assert first - killed_at <= 2 * DEMO_DELAY + HANDOVER_SLACK, first - killed_at
    successor = server.get("/watch/series.json").json()["sampler"]
    assert successor != sampling and successor in server.worker_pids()


@pytest.mark.parametrize("preload", [False, True], ids=["after-fork", "preload"])
def test_sigkill_of_the_sampler_when_no_other_worker_served_the_watcher(
    preload: bool, tmp_path: Path
) -> None:
    """Only one worker has served the Watcher (one request) when the sampling worker is killed:
    the others, which never served it, take over sampling within two intervals all the same,
    and the next answer names a live sampler."""
    args = ["--worker-class", "sync", *(["--preload"] if preload else [])]
    with gunicorn(tmp_path, args, workers=WORKERS) as server:
        _, first = worker_request(server, "/watch/series.json")
        sampling = first.json()["sampler"]
        assert sampling in server.worker_pids(), sampling
        killed_at = time.time()
        os.kill(sampling, signal.SIGKILL)
        time.sleep(2 * DEMO_DELAY + HANDOVER_SLACK)
        answer = server.get("/watch/series.json").json()
        later = [when for when, _ in answer["points"] if when > killed_at]
        assert later, f"no sample in the {time.time() - killed_at:.1f} s after the kill"
        assert later[0] - killed_at <= 2 * DEMO_DELAY + HANDOVER_SLACK, later[0] - killed_at
        assert answer["sampler"] not in (0, sampling), answer["sampler"]
        assert answer["sampler"] in server.worker_pids()


def test_a_clean_stop_with_the_hooks_removes_the_watcher_segment(tmp_path: Path) -> None:
    args = ["--worker-class", "sync", "-c", "python:raindrops.gunicorn"]
    with gunicorn(tmp_path, args, workers=2) as server:
        from_every_worker_of(server, "/watch/series.json", 2)
        shm = Path("/dev/shm")
        assert len(list(shm.glob(f"raindrops-watch-{server.pid}-*"))) == 1
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0, server.log_text()
        assert list(shm.glob(f"raindrops-*-{server.pid}-*")) == []
