"""How servers name, find and clean up their segments in a /dev/shm shared with hostile users.

Issue 11: the sweep of stale segments survives any name another user plants;
names are unique per server instance (PID namespace, master start time); a
worker that cannot use the server-wide segment keeps serving, alone, and says
so. Other users are a real second uid (65534 through setpriv), namespaces are
real (unshare), a full /dev/shm is a real tiny tmpfs in a private mount
namespace. The same under real gunicorn is in test_gunicorn.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from raindrops import ASGIMiddleware, LastDataRecv, Middleware, _process, segments
from raindrops.scoreboard import SLOT_FIELDS, SLOTS_MAX, Scoreboard
from raindrops.segments import SHM_DIR, Server, remove_stale_segments, segment_name
from raindrops.slots import slot_owner
from raindrops.wsgi.last_data_recv import PATH as LDR_PATH
from testsupport import formats, processes, users

NOBODY = users.NOBODY
DIGEST = "0123456789ab"


# Helpers: another user, dead pids, names, requests.


def need_root() -> None:
    users.prefix()


def as_nobody(command: list[str], data: bytes | None = None) -> subprocess.CompletedProcess[Any]:
    """Runs `command` as uid/gid 65534: another local user."""
    return processes.run([*users.prefix(), *command], timeout=60, input=data)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def squat(file_name: str, data: bytes = b"", directory: bool = False) -> Path:
    """Creates /dev/shm/`file_name` as uid 65534: a file of mode 0666 holding `data`, or a dir."""
    path = SHM_DIR / file_name
    script = 'mkdir "$1"' if directory else 'umask 0; cat > "$1"'
    made = as_nobody(["sh", "-c", script, "sh", str(path)], data)
    assert made.returncode == 0, made.stderr
    assert path.lstat().st_uid == NOBODY
    return path


def dead_pid() -> int:
    """A pid that just exited (and was reaped), so it names no process now."""
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    return child


def here(pid: int, start_ticks: int | None = None) -> Server:
    """A master `pid` of our PID namespace; its real start time unless given."""
    start = _process.start_ticks(pid) if start_ticks is None else start_ticks
    return Server(pid, _process.pid_namespace(), start or 0)


def file_of(server: Server, kind: str = "mw") -> str:
    return server.prefix(kind) + DIGEST


def _unlink(*names: str) -> None:
    for name in names:
        (SHM_DIR / name[1:]).unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def derived_names() -> Iterator[None]:
    """The names an in-process "worker" of this test process derives: fresh for every test."""
    names = [
        segments.master_segment_name("mw", "/_raindrops"),
        segments.master_segment_name("ldr", LDR_PATH),
    ]
    _unlink(*names)
    yield
    _unlink(*names)


@pytest.fixture
def planted() -> Iterator[list[Path]]:
    """Paths a test plants in /dev/shm; all removed afterwards, whoever owns them."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def call(app: Any, path: str, query: str = "") -> tuple[str, dict[str, str], bytes]:
    """One request as a worker of a multi-process server would get it (WSGI or ASGI)."""
    if isinstance(app, ASGIMiddleware):
        return call_asgi(app, path, query)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": BytesIO(),
        "wsgi.multiprocess": True,
    }
    seen: dict[str, Any] = {}

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> None:
        seen.update(status=status, headers=dict(headers))

    body = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return seen["status"], seen["headers"], data


def call_asgi(app: ASGIMiddleware, path: str, query: str) -> tuple[str, dict[str, str], bytes]:
    """call() for an ASGI app: one HTTP request from a loopback client."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query.encode(),
        "headers": [],
        "client": ("127.0.0.1", 50000),
    }
    asyncio.run(app(scope, receive, send))
    start, body = sent[0], b"".join(message.get("body", b"") for message in sent[1:])
    status = f"{start['status']} {HTTPStatus(start['status']).phrase}"
    headers = {key.decode().title(): value.decode() for key, value in start["headers"]}
    return status, headers, body  # header names as WSGI servers spell them


def segment_bytes(make: Callable[..., Any]) -> bytes:
    """The bytes of a real, valid segment that `make(name=...)` creates: what a squatter copies."""
    name = f"/raindrops-test-copy-{os.getpid()}"
    made = make(name=name)
    try:
        return (SHM_DIR / name[1:]).read_bytes()
    finally:
        made.close()
        (SHM_DIR / name[1:]).unlink()


# 1. The sweep of stale segments: any name anyone plants.


def sweep_as_nobody() -> subprocess.CompletedProcess[Any]:
    code = "from raindrops.segments import remove_stale_segments; print(remove_stale_segments())"
    return processes.run([*users.python(), "-c", code], timeout=60)


HOSTILE_FILES = {
    "huge pid": "raindrops-mw-99999999999999999999-x",
    "superscript digit": "raindrops-mw-\u00b2-x",
    "huge pid, new layout": f"raindrops-mw-99999999999999999999-1-1-{DIGEST}",
    "superscript, new layout": f"raindrops-mw-\u00b2-1-1-{DIGEST}",
    "pid above pid_max": f"raindrops-ldr-{segments.PID_MAX_LIMIT + 1}-1-1-{DIGEST}",
    "pid 0": f"raindrops-mw-0-1-1-{DIGEST}",
    "fullwidth digits": f"raindrops-mw-\uff11\uff12-1-1-{DIGEST}",
}


@pytest.mark.parametrize("file_name", list(HOSTILE_FILES.values()), ids=list(HOSTILE_FILES))
def test_the_sweep_skips_names_it_cannot_parse(file_name: str, planted: list[Path]) -> None:
    planted.append(squat(file_name))
    assert "/" + file_name not in remove_stale_segments()
    swept = sweep_as_nobody()
    assert swept.returncode == 0, swept.stderr
    assert planted[0].exists()


def test_the_sweep_never_touches_another_users_stale_looking_file(planted: list[Path]) -> None:
    """As root it could unlink it, as another user it got PermissionError: it must do neither."""
    theirs = squat(file_of(here(dead_pid(), start_ticks=1)))
    planted.append(theirs)
    assert f"/{theirs.name}" not in remove_stale_segments()
    assert theirs.exists() and theirs.stat().st_uid == NOBODY


def test_the_sweep_as_another_user_skips_our_files(planted: list[Path]) -> None:
    ours = SHM_DIR / file_of(here(dead_pid(), start_ticks=1))
    ours.write_bytes(b"")
    planted.append(ours)
    swept = sweep_as_nobody()
    assert swept.returncode == 0, swept.stderr  # no PermissionError from unlinking our file
    assert swept.stdout == b"[]\n" and ours.exists()


def test_the_sweep_skips_directories_and_symlinks(planted: list[Path], tmp_path: Path) -> None:
    directory = squat(file_of(here(dead_pid(), start_ticks=1)), directory=True)
    planted.append(directory)
    target = tmp_path / "target"
    target.write_bytes(b"")
    link = SHM_DIR / file_of(here(dead_pid(), start_ticks=1), "ldr")
    link.symlink_to(target)
    planted.append(link)
    assert remove_stale_segments() == []  # no IsADirectoryError, no link followed
    assert directory.is_dir() and link.is_symlink() and target.exists()


def test_the_sweep_removes_our_segments_of_gone_masters_only(planted: list[Path]) -> None:
    me = here(os.getpid())
    files = {
        "dead": file_of(here(dead_pid(), start_ticks=1)),
        "reused pid": file_of(here(os.getpid(), start_ticks=me.start_ticks + 1)),
        "zombie": "",
        "live": file_of(me, "ldr"),
        "unknown start": file_of(here(os.getppid(), start_ticks=0)),
        "other namespace": file_of(Server(dead_pid(), me.namespace + 1, 1)),
    }
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)
    try:
        _process_wait_zombie(zombie)
        files["zombie"] = file_of(here(zombie, start_ticks=1))
        for file_name in files.values():
            (SHM_DIR / file_name).write_bytes(b"")
            planted.append(SHM_DIR / file_name)
        removed = remove_stale_segments()
    finally:
        os.waitpid(zombie, 0)
    gone = {what for what, file_name in files.items() if f"/{file_name}" in removed}
    assert gone == {"dead", "reused pid", "zombie"}
    assert {what for what, file_name in files.items() if (SHM_DIR / file_name).exists()} == {
        "live",
        "unknown start",
        "other namespace",
    }


def _process_wait_zombie(pid: int) -> None:
    deadline = time.monotonic() + 10
    while not processes.is_dead(pid):
        assert time.monotonic() < deadline, f"child {pid} did not exit"
        time.sleep(0.005)


SWEEP_UNDER_ATTACK = """
import json, os, subprocess, sys, time
nobody, planted = json.loads(sys.argv[1]), int(sys.argv[2])
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/dev/shm"], check=True)
from raindrops import _process, segments
namespace = _process.pid_namespace()
# Names of live pid 1 (the start time is not its own: a "reused pid", stale if it were ours).
plant = (
    "import os, sys\\n"
    "for index in range(int(sys.argv[2])):\\n"
    "    open(f'/dev/shm/raindrops-mw-1-{sys.argv[1]}-1-{index:012x}', 'x').close()\\n"
)
subprocess.run([*nobody, "-c", plant, str(namespace), str(planted)], check=True)
child = os.fork()
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
ours = f"raindrops-ldr-{child}-{namespace}-1-0123456789ab"  # a master that is gone
open("/dev/shm/" + ours, "x").close()
def look():
    # The least a sweep that checks owners does: list the directory, lstat every entry.
    with os.scandir("/dev/shm") as entries:
        for entry in entries:
            entry.stat(follow_symlinks=False)

seconds, looks = [], []
for _ in range(3):
    started = time.perf_counter()
    removed = segments.remove_stale_segments()
    seconds.append(time.perf_counter() - started)
    if removed:
        assert removed == ["/" + ours], removed
    started = time.perf_counter()
    look()
    looks.append(time.perf_counter() - started)
left = sum(1 for name in os.listdir("/dev/shm") if os.lstat("/dev/shm/" + name).st_uid != 0)
print(json.dumps([seconds, looks, left, os.path.exists("/dev/shm/" + ours)]))
"""


def test_names_planted_by_another_user_cost_the_sweep_no_more_than_a_look() -> None:
    """16,000 names of live pid 1 owned by uid 65534 in a private /dev/shm (unshare --mount): the
    sweep checks each file's owner before asking whether its master lives, and asks once per
    master, so every worker's first request does not pay a kill() and a /proc read per name.
    A functional bound, not a benchmark: under 0.2 s, or (on a loaded machine) within 4 times a
    bare look at every entry (list and lstat); the old sweep took 7 times that."""
    planted = 16_000
    nobody = [*users.prefix(), users.interpreter()]
    command = ["unshare", "--mount", *python(SWEEP_UNDER_ATTACK), json.dumps(nobody), str(planted)]
    done = processes.run(command, timeout=120, text=True)
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"the kernel refuses a mount namespace: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    seconds, looks, left, ours_left = json.loads(done.stdout)
    assert (left, ours_left) == (planted, False), "theirs all stay, ours (stale) goes"
    assert min(seconds) < max(0.2, 4 * min(looks)), f"sweeps took {seconds} s, looks {looks} s"


def test_a_request_never_fails_for_hostile_names_in_dev_shm(planted: list[Path]) -> None:
    for file_name in list(HOSTILE_FILES.values())[:2]:
        planted.append(squat(file_name))
    planted.append(squat(file_of(here(dead_pid(), start_ticks=1)), directory=True))
    planted.append(squat(file_of(here(dead_pid(), start_ticks=1), "ldr")))
    app = LastDataRecv(Middleware(hello, listeners=[]))
    assert call(app, "/")[:1] == ("200 OK",)
    status, _, body = call(app, "/_raindrops", "format=json")
    assert status == "200 OK" and json.loads(body)["degraded"] == []
    assert all(path.exists() for path in planted)


# 7. Names unique per server instance.

NAME_OF_A_WORKER = """
import json, os, sys, time
from raindrops import segments

def worker_name():
    # The name a worker of this process computes: its parent is the master.
    reader, writer = os.pipe()
    worker = os.fork()
    if worker == 0:
        os.write(writer, segments.master_segment_name("mw", "/_raindrops").encode())
        os._exit(0)
    os.close(writer)
    name = os.read(reader, 4096).decode()
    os.waitpid(worker, 0)
    return name
"""


def in_new_pid_namespace(code: str) -> Any:
    """Runs `code` as pid 1 of a new PID namespace with its own /proc; the JSON it prints."""
    command = ["unshare", "--pid", "--fork", "--mount-proc", *python(NAME_OF_A_WORKER + code)]
    done = processes.run(command, timeout=60, text=True, cwd="/")
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip(f"the kernel refuses a new PID namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_masters_with_the_same_pid_in_two_pid_namespaces_get_different_names() -> None:
    """Two containers sharing /dev/shm: both masters are pid 1, the same app, the same path."""
    code = "print(json.dumps([os.getpid(), worker_name()]))"
    first, second = in_new_pid_namespace(code), in_new_pid_namespace(code)
    assert first[0] == second[0] == 1
    assert first[1] != second[1]
    parsed = [segments.parse_segment_name(name[1:]) for name in (first[1], second[1])]
    assert [(found[0], found[1].pid) if found else None for found in parsed] == [("mw", 1)] * 2


def test_a_restarted_master_with_the_same_pid_gets_a_new_name() -> None:
    """One namespace; ns_last_pid makes the second master reuse the first one's pid."""
    code = """
    def master():
        with open("/proc/sys/kernel/ns_last_pid", "w") as last:
            last.write("99")
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(writer, json.dumps([os.getpid(), worker_name()]).encode())
            os._exit(0)
        os.close(writer)
        result = json.loads(os.read(reader, 4096))
        os.waitpid(pid, 0)
        return result

    first = master()
    time.sleep(0.05)  # start times count clock ticks (10 ms)
    print(json.dumps([first, master()]))
    """
    first, second = in_new_pid_namespace(textwrap.dedent(code))
    assert first[0] == second[0] == 100
    assert first[1] != second[1]


def test_the_sweep_never_removes_a_segment_of_another_pid_namespace(planted: list[Path]) -> None:
    """Our live master's segment, seen from a namespace where its pid names nobody."""
    ours = SHM_DIR / file_of(here(os.getpid()))
    ours.write_bytes(b"")
    planted.append(ours)
    code = """
    from raindrops._process import pid_namespace
    theirs = f"/dev/shm/raindrops-mw-4000-{pid_namespace()}-1-0123456789ab"
    open(theirs, "wb").close()  # pid 4000 is dead in this new namespace: a stale segment
    print(json.dumps([theirs, segments.remove_stale_segments()]))
    """
    theirs, removed = in_new_pid_namespace(textwrap.dedent(code))
    planted.append(Path(theirs))
    assert removed == ["/" + Path(theirs).name], "its own namespace's stale segment goes"
    assert ours.exists(), "a segment of another PID namespace is never judged"


def test_names_hold_the_master_its_namespace_and_start_time() -> None:
    name = segments.master_segment_name("mw", "/_raindrops")
    parsed = segments.parse_segment_name(name[1:])
    assert parsed == ("mw", Server.parent())
    assert parsed[1].namespace == os.stat("/proc/self/ns/pid").st_ino
    assert parsed[1].start_ticks == _process.start_ticks(os.getppid())
    assert segments.master_segment_name("mw", "/other") != name
    assert segments.master_segment_name("ldr", "/_raindrops") != name


def test_the_server_key_changes_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = segments.master_segment_name("mw", "/_raindrops")
    monkeypatch.setenv(segments.SERVER_KEY_ENV, "secret")
    keyed = segments.master_segment_name("mw", "/_raindrops")
    assert keyed != plain and keyed.rpartition("-")[0] == plain.rpartition("-")[0]


# 2. A worker that cannot use the server-wide segment serves on, alone, and says so.


def degraded(app: Any, path: str) -> tuple[list[str], dict[str, float], str]:
    """The endpoint's word on degradation: JSON "degraded", the raindrops_degraded samples (every
    Prometheus and OpenMetrics line checked by the strict parsers), the response header."""
    status, headers, body = call(app, path, "format=json")
    assert status == "200 OK"
    exposition = call(app, path, "format=prometheus")[2].decode()
    samples = formats.parse_prometheus(exposition)
    formats.parse_prometheus(call(app, path, "format=openmetrics")[2].decode(), openmetrics=True)
    ours = {key: value for key, value in samples.items() if key.startswith("raindrops_degraded")}
    return json.loads(body)["degraded"], ours, headers.get("X-Raindrops-Degraded", "")


def test_a_squatted_name_leaves_the_worker_counting_alone(
    planted: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    name = segments.master_segment_name("mw", "/_raindrops")
    squatted = squat(name[1:], segment_bytes(Scoreboard))
    planted.append(squatted)
    before = squatted.read_bytes()
    app = Middleware(hello, listeners=[])
    with caplog.at_level(logging.WARNING, logger="raindrops"):
        for _ in range(3):
            assert call(app, "/") == ("200 OK", {"Content-Type": "text/plain"}, b"hello")
        status, headers, text = call(app, "/_raindrops")
    assert (status, text) == ("200 OK", b"calling: 0\nwriting: 0\n"), "raindrops' lines, unchanged"
    assert headers["X-Raindrops-Degraded"] == "segment_not_ours"
    reasons, samples, _ = degraded(app, "/_raindrops")
    assert reasons == ["segment_not_ours"]
    assert samples == {'raindrops_degraded{reason="segment_not_ours"}': 1}
    assert json.loads(call(app, "/_raindrops", "format=json")[2])["requests_total"] == 3
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and name in warnings[0].getMessage()
    assert squatted.read_bytes() == before and squatted.stat().st_uid == NOBODY
    app.stats.close()


NOT_REGULAR = {
    "fifo": 'umask 0; mkfifo "$1"',
    "directory": 'umask 0; mkdir "$1"',
    "symlink": 'ln -s /dev/null "$1"',
}


@pytest.mark.parametrize(
    ("owner", "reason"), [("nobody", "segment_not_ours"), ("us", "segment_invalid")]
)
@pytest.mark.parametrize("kind", sorted(NOT_REGULAR))
def test_a_name_that_is_not_a_regular_file_leaves_the_worker_counting_alone(
    kind: str, owner: str, reason: str, planted: list[Path]
) -> None:
    """Another user's FIFO, directory or symlink at the derived name is theirs (not ours); one
    of our own is not a segment (invalid). Never the catch-all segment_error."""
    path = SHM_DIR / segments.master_segment_name("mw", "/_raindrops")[1:]
    prefix = users.prefix() if owner == "nobody" else []
    made = processes.run([*prefix, "sh", "-c", NOT_REGULAR[kind], "sh", str(path)], timeout=60)
    assert made.returncode == 0, made.stderr
    planted.append(path)
    app = Middleware(hello, listeners=[])
    assert call(app, "/")[2] == b"hello"
    reasons, samples, header = degraded(app, "/_raindrops")
    assert (reasons, header) == ([reason], reason)
    assert samples == {f'raindrops_degraded{{reason="{reason}"}}': 1}
    assert path.is_symlink() or not path.is_file(), "left as it was"
    app.stats.close()


# Offsets of the capacity and size fields in a segment's header (zig/shm.zig Header) -> values.
CORRUPTIONS = {
    "size past the capacity": {24: 10**6},
    "size and capacity past any file": {24: 10**6, 16: 2**60},
}
ENDPOINTS: dict[str, Callable[[str], tuple[Any, str]]] = {
    "wsgi": lambda name: (Middleware(hello, listeners=[], name=name), "/_raindrops"),
    "asgi": lambda name: (ASGIMiddleware(asgi_hello, listeners=[], name=name), "/_raindrops"),
    "last_data_recv": lambda name: (LastDataRecv(hello, name=name), LDR_PATH),
}


async def asgi_hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_a_segment_corrupted_after_the_attach_leaves_the_endpoint_answering(
    endpoint: str, corruption: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A buggy process of the same user writes over the header of the segment that the workers
    already use: requests are served, and the endpoint answers in every format (with what it can
    still tell: its listeners) and says why its numbers are missing; one warning per process."""
    name = f"/raindrops-test-corrupt-{os.getpid()}"
    path = SHM_DIR / name[1:]
    try:
        app, stats_path = ENDPOINTS[endpoint](name)
        assert call(app, "/")[2] == b"hello"
        assert degraded(app, stats_path)[0] == []
        intact = path.read_bytes()
        with open(path, "r+b") as segment:
            for offset, value in CORRUPTIONS[corruption].items():
                segment.seek(offset)
                segment.write(value.to_bytes(8, "little"))
        with caplog.at_level(logging.WARNING, logger="raindrops"):
            assert call(app, "/")[2] == b"hello"
            status, headers, _ = call(app, stats_path)
            assert (status, headers["X-Raindrops-Degraded"]) == ("200 OK", "segment_invalid")
            reasons, samples, header = degraded(app, stats_path)
        assert (reasons, header) == (["segment_invalid"], "segment_invalid")
        assert samples == {'raindrops_degraded{reason="segment_invalid"}': 1}
        warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
        assert len(warnings) == 1, [record.getMessage() for record in warnings]
        assert name in warnings[0].getMessage() and "corrupt header" in warnings[0].getMessage()
        path.write_bytes(intact)  # repaired: the numbers are whole again
        assert degraded(app, stats_path)[0] == []
        app.stats.close()
    finally:
        path.unlink(missing_ok=True)
        path.with_name(path.name + "-websockets").unlink(missing_ok=True)  # the ASGI one's


WORKER = """
import json
from io import BytesIO
from raindrops import Middleware

def hello(environ, start_response):
    start_response("200 OK", [])
    return [b"hello"]

def call(path, query=""):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
               "REMOTE_ADDR": "127.0.0.1", "wsgi.input": BytesIO(), "wsgi.multiprocess": True}
    body = app(environ, lambda status, headers, exc_info=None: None)
    data = b"".join(body)
    getattr(body, "close", lambda: None)()
    return data.decode()

app = Middleware(hello, listeners=[])
answers = [call("/") for _ in range(3)]
stats = json.loads(call("/_raindrops", "format=json"))
print(json.dumps([answers, stats["degraded"], stats["requests_total"]]))
"""
"""A worker's first requests in a process of its own: [answers, JSON "degraded", requests]."""


def run_worker(interpreter: list[str], before: str = "", **options: Any) -> Any:
    """WORKER run by `interpreter` (under setpriv or unshare), after the Python code `before`."""
    command = [*interpreter, "-c", textwrap.dedent(before + WORKER)]
    done = processes.run(command, timeout=60, text=True, **options)
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip(f"the kernel refuses {interpreter[0]} here: {done.stderr.strip()}")
    assert done.returncode == 0, (done.returncode, done.stderr)
    return json.loads(done.stdout)


def test_a_worker_running_as_another_user_than_the_squatter_counts_alone() -> None:
    """The worker is uid 65534 and the derived name is root's (0600): opening it is EACCES."""
    need_root()
    name = segment_name("mw", "/_raindrops", Server.this_process(), "/")  # the child's parent: us
    squatter = Scoreboard(name=name)
    try:
        assert run_worker(users.python(), cwd="/") == [["hello"] * 3, ["segment_not_ours"], 3]
        assert squatter.totals().requests == 0
    finally:
        squatter.close()
        (SHM_DIR / name[1:]).unlink()


def test_lastdatarecv_falls_back_the_same_way(planted: list[Path]) -> None:
    from raindrops.wsgi.last_data_recv import LastDataRecvStats

    name = segments.master_segment_name("ldr", LDR_PATH)
    planted.append(squat(name[1:], segment_bytes(LastDataRecvStats)))
    app = LastDataRecv(hello)
    assert call(app, "/")[2] == b"hello"
    reasons, samples, header = degraded(app, LDR_PATH)
    assert (reasons, header) == (["segment_not_ours"], "segment_not_ours")
    assert samples == {'raindrops_degraded{reason="segment_not_ours"}': 1}
    assert json.loads(call(app, LDR_PATH, "format=json")[2])["skipped"] == 1
    app.stats.close()


def test_a_corrupt_segment_of_our_own_uid_leaves_the_worker_counting_alone() -> None:
    name = segments.master_segment_name("mw", "/_raindrops")
    path = SHM_DIR / name[1:]
    path.write_bytes(b"\xff" * 8192)  # a buggy process of the same user wrote over it
    try:
        app = Middleware(hello, listeners=[])
        assert call(app, "/")[2] == b"hello"
        assert degraded(app, "/_raindrops")[0] == ["segment_invalid"]
        assert path.read_bytes() == b"\xff" * 8192
        app.stats.close()
    finally:
        path.unlink()


def test_a_name_the_user_chose_and_someone_else_owns_does_not_stop_the_app(
    planted: list[Path],
) -> None:
    name = f"/raindrops-test-chosen-{os.getpid()}"
    planted.append(squat(name[1:], segment_bytes(Scoreboard)))
    app = Middleware(hello, listeners=[], name=name)  # built in a master or a worker alike
    assert call(app, "/")[2] == b"hello"
    assert degraded(app, "/_raindrops")[0] == ["segment_not_ours"]
    assert app.stats.name is None, "anonymous memory: still shared with workers forked later"
    app.stats.close()


def test_a_scoreboard_with_every_slot_held_leaves_the_worker_counting_alone() -> None:
    board = Scoreboard()
    init_start = _process.start_ticks(1)
    if init_start is None:
        pytest.skip("pid 1 is not visible in /proc here")
    for slot in range(SLOTS_MAX):  # every slot (owner, calling, writing) held by pid 1
        board.counters[slot * SLOT_FIELDS] = slot_owner(1, init_start)
    app = Middleware(hello, listeners=[], stats=board)
    assert call(app, "/")[2] == b"hello"
    assert degraded(app, "/_raindrops")[0] == ["segment_full"]
    assert board.totals().requests == 0
    board.close()


FULL_SHM = {
    "no inode left": "size=1m,nr_inodes=1",
    "no byte left": "size=8k",
}


@pytest.mark.parametrize("options", list(FULL_SHM.values()), ids=list(FULL_SHM))
def test_a_full_dev_shm_leaves_the_worker_counting_alone(options: str) -> None:
    """A tiny tmpfs over /dev/shm in a private mount namespace: nothing else sees it."""
    mount = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", "/dev/shm"]
    before = f"import subprocess\nsubprocess.run({mount!r}, check=True)\n"
    result = run_worker(["unshare", "--mount", sys.executable], before)
    assert result == [["hello"] * 3, ["segment_no_space"], 3]


# 15. A clean exit removes the server's segments (the gunicorn hooks are in test_gunicorn.py).


def test_remove_server_segments_takes_this_masters_segments_only(planted: list[Path]) -> None:
    me = Server.this_process()
    unknown_start = me._replace(start_ticks=0)  # a worker that could not read the master's
    mine = [SHM_DIR / file_of(me), SHM_DIR / file_of(me, "ldr"), SHM_DIR / file_of(unknown_start)]
    others = [
        SHM_DIR / file_of(me._replace(start_ticks=me.start_ticks + 1)),
        SHM_DIR / file_of(me._replace(namespace=me.namespace + 1)),
        SHM_DIR / file_of(here(os.getppid())),
    ]
    for path in mine + others:
        path.write_bytes(b"")
        planted.append(path)
    theirs = squat(file_of(me, "ldr").replace(DIGEST, "ffffffffffff"))
    planted.append(theirs)
    assert sorted(segments.remove_server_segments()) == sorted(f"/{path.name}" for path in mine)
    assert all(path.exists() for path in others) and theirs.exists()
    # gunicorn --user: the workers' uid is named, so their segments go too.
    assert segments.remove_server_segments(owners=[NOBODY]) == [f"/{theirs.name}"]
    assert all(path.exists() for path in others)


def cleanup(*arguments: str) -> subprocess.CompletedProcess[str]:
    """`raindrops cleanup ARGUMENTS` in a process of its own, as a server's exit hook runs it."""
    command = [sys.executable, "-m", "raindrops", "cleanup", *arguments]
    return processes.run(command, timeout=60, text=True)


def test_the_cleanup_command_removes_the_running_masters_segments_only(
    planted: list[Path],
) -> None:
    """A pid alone does not name a master: the start time in the names must be the running
    process's, so the segments of an earlier server that had its pid stay (another user's too)."""
    with processes.running(["sleep", "60"]) as master:
        running = here(master.pid)
        mine = [SHM_DIR / file_of(running), SHM_DIR / file_of(running, "ldr")]
        others = [
            SHM_DIR / file_of(running._replace(start_ticks=running.start_ticks - 1)),
            SHM_DIR / file_of(running._replace(namespace=running.namespace + 1)),
            SHM_DIR / file_of(here(os.getpid())),
        ]
        for path in mine + others:
            path.write_bytes(b"")
            planted.append(path)
        theirs = squat(file_of(running, "metric"))
        planted.append(theirs)
        done = cleanup("--master", str(master.pid))
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(f"/{path.name}" for path in mine)
    assert not any(path.exists() for path in mine)
    assert all(path.exists() for path in others) and theirs.exists()


def test_the_cleanup_command_removes_nothing_for_a_master_that_is_not_running(
    planted: list[Path],
) -> None:
    """Its start time is unknown, so nothing can be told apart; without --master, the stale
    sweep removes what a gone master left (ours only)."""
    gone = here(dead_pid(), start_ticks=1)
    ours, theirs = SHM_DIR / file_of(gone), squat(file_of(gone, "ldr"))
    ours.write_bytes(b"")
    planted.extend([ours, theirs])
    done = cleanup("--master", str(gone.pid))
    assert done.returncode == 1 and f"no process {gone.pid} runs here" in done.stderr
    assert ours.exists() and done.stdout == ""
    swept = cleanup()  # the whole /dev/shm: other stale segments of ours may go too
    assert swept.returncode == 0 and f"/{ours.name}" in swept.stdout.splitlines(), swept.stderr
    assert not ours.exists() and theirs.exists()
    assert cleanup("--master", "0").returncode == 2
