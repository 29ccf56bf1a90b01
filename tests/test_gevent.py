"""gunicorn's gevent workers (-k gevent): `calling` counts the greenlets inside the application.

A gevent worker is one process serving up to --worker-connections requests at
once, one greenlet each, with the standard library monkey-patched (threading,
socket, time). Two workers of CONNECTIONS each serve examples.demo:app on
loopback, after fork and --preload: HELD slow requests read exactly `calling
HELD` (more than one worker can hold, so both hold many); a SIGKILL of one
worker drops calling at once to exactly what the other holds, the totals stay
exact, and gunicorn's replacement worker counts in the same scoreboard. The
server log has no traceback and no line from raindrops.

Two defects found under gevent (both fixed) have a regression test each here,
in a subprocess (monkey patching is for a whole process) and, for the one a user meets, in a real
server: the Watcher's first requests at once hang a preloaded gevent worker;
every read of the endpoint turns the process's blocking sockets non-blocking.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import ROOT, Gunicorn, gunicorn, wait_for
from test_server_segments import python

from testsupport import processes
from testsupport.gunicorn import SHM_DIR
from testsupport.processes import is_dead

pytest.importorskip("gevent")

WORKERS = 2
CONNECTIONS = 40  # --worker-connections: the requests (greenlets) one worker holds at once
HELD = 60  # more than one worker holds: each of the two holds HELD - CONNECTIONS at least
HOLD_SECONDS = 3.0  # long enough to read the endpoint and find each request's worker
KILL_HOLD_SECONDS = 6.0  # and to SIGKILL a worker and read again before any request ends
MODES = {"after-fork": [], "preload": ["--preload"]}
LOG_MUST_NOT_SAY = ("Traceback", "raindrops", "Warning:")


def gevent_args(mode: str) -> list[str]:
    return ["--worker-class", "gevent", "--worker-connections", str(CONNECTIONS), *MODES[mode]]


# Requests held in the application, on sockets of the test's own.


@contextlib.contextmanager
def held(server: Gunicorn, count: int, path: str) -> Iterator[list[socket.socket]]:
    """`count` requests for `path` sent on connections of their own; closed at the end."""
    opened: list[socket.socket] = []
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    try:
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            opened.append(client)
            client.sendall(head)
        yield opened
    finally:
        for client in opened:
            client.close()


def answer(client: socket.socket) -> bytes:
    """Everything the server sent until it closed; b"" when its worker died with the connection."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := client.recv(65536):
            data += chunk
    return data


def slept(data: bytes) -> bool:
    return data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nslept\n")


def owners(server: Gunicorn, clients: list[socket.socket]) -> list[int]:
    """The worker holding each client's connection, in the order of `clients` (0: none).

    One read of the TCP table and of each worker's fds for all the clients, so that the held
    requests are still held when it is done, on a busy machine too."""
    ports = {client.getsockname()[1] for client in clients}
    inodes: dict[int, str] = {}  # client port -> inode of the server's end of its connection
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.rpartition(":")[2], 16) for address in fields[1:3])
        if local == server.port and remote in ports and fields[3] == "01":  # ESTABLISHED
            inodes[remote] = f"socket:[{fields[9]}]"
    holders: dict[str, int] = {}
    for pid in server.worker_pids():
        with contextlib.suppress(OSError):
            for entry in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    holders[os.readlink(entry.path)] = pid
    return [holders.get(inodes.get(client.getsockname()[1], ""), 0) for client in clients]


def calling(count: int) -> Any:
    return lambda stats: stats["calling"] == count


# The counts, exactly.


def hold_everywhere(server: Gunicorn, before: dict[str, Any]) -> Counter[int]:
    """HELD slow requests at once read `calling HELD`; every worker holds its share (at most
    CONNECTIONS); all are answered and counted, nothing else is. Returns each worker's share."""
    with held(server, HELD, f"/slow?seconds={HOLD_SECONDS}") as clients:
        seen = wait_for(server.json, calling(HELD), 20, f"calling: {HELD}")
        assert (seen["writing"], seen["requests_total"]) == (0, before["requests_total"]), seen
        shares = Counter(owners(server, clients))
        assert sorted(shares) == server.worker_pids(), shares
        assert all(HELD - CONNECTIONS <= share <= CONNECTIONS for share in shares.values()), shares
        answers = [answer(client) for client in clients]
    assert [slept(data) for data in answers] == [True] * HELD, answers
    after = server.wait_totals(before["requests_total"] + HELD, before["request_errors_total"])
    assert after["workers"] == WORKERS, after
    if "capacity" in after:  # each live worker's --worker-connections
        assert after["capacity"] == WORKERS * CONNECTIONS, after
    return shares


def kill_the_busiest(server: Gunicorn, before: dict[str, Any]) -> int:
    """HELD slow requests, then a SIGKILL of the worker holding most: one read right after its
    death says exactly what the other worker holds; only the other's requests are answered and
    counted. Returns the killed worker's pid."""
    with held(server, HELD, f"/slow?seconds={KILL_HOLD_SECONDS}") as clients:
        wait_for(server.json, calling(HELD), 20, f"calling: {HELD}")
        holder = owners(server, clients)
        assert 0 not in holder, holder
        victim, killed = Counter(holder).most_common(1)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: is_dead(victim), bool, 10, f"worker {victim} to die")
        healed = server.json()  # one read, no polling
        assert healed["calling"] == HELD - killed, (killed, healed)
        assert (healed["writing"], healed["requests_total"]) == (0, before["requests_total"])
        answers = [answer(client) for client in clients]
    expected = [pid != victim for pid in holder]
    assert [slept(data) for data in answers] == expected, answers
    assert [data == b"" for data in answers] == [not ok for ok in expected], answers
    server.wait_totals(before["requests_total"] + HELD - killed, before["request_errors_total"])
    return victim


def check_log(server: Gunicorn) -> None:
    lines = [
        line
        for line in server.log_text().splitlines()
        if any(word in line for word in LOG_MUST_NOT_SAY)
    ]
    assert lines == [], server.log_text()


@pytest.mark.parametrize("mode", list(MODES))
def test_gevent_workers_count_the_greenlets_in_the_app_exactly(mode: str, tmp_path: Path) -> None:
    with gunicorn(tmp_path, gevent_args(mode), workers=WORKERS) as server:
        segments = list(SHM_DIR.glob(f"raindrops-mw-{server.pid}-*"))
        assert len(segments) == (0 if mode == "preload" else 1), "inherited, or met by name"
        before = server.settle()
        assert (before["requests_total"], before["degraded"]) == (0, []), before
        hold_everywhere(server, before)
        first = set(server.worker_pids())
        victim = kill_the_busiest(server, server.settle())
        workers = wait_for(
            server.worker_pids, lambda pids: len(pids) == WORKERS, 20, "a replacement worker"
        )
        [replacement] = set(workers) - first
        assert victim not in workers
        shares = hold_everywhere(server, server.settle())
        assert shares[replacement] >= HELD - CONNECTIONS, "the replacement counts too"
        assert server.json()["degraded"] == []
    check_log(server)


# Defect: the Watcher's first requests at once hang a preloaded gevent worker.

WATCH_REQUESTS = 20
WATCH_ANSWER_SECONDS = 4.0


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the length of the block: connections made meanwhile
    wait in the listener's queue with their requests, and it accepts them all when it continues."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def status_lines(clients: list[socket.socket], timeout: float) -> list[str]:
    """Each client's status line, or what came instead before `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    for client in clients:
        client.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = answer(client)
        except TimeoutError:
            data = b"no answer within %.0f s" % timeout
        lines.append(data.partition(b"\r\n")[0].decode("latin-1"))
    return lines


@pytest.mark.parametrize("mode", list(MODES))
def test_the_watchers_first_requests_at_once_leave_a_gevent_worker_serving(
    mode: str, tmp_path: Path
) -> None:
    """Many first requests to the Watcher (the demo mounts it at /watch) reach a fresh worker at
    once, as a dashboard opened during a burst makes them.

    Failed with --preload before the fix: the worker hung for good (until gunicorn's --timeout
    killed it). The first request made the worker's sampler inside PerProcess.get(), under
    the holder's lock; under gevent, Thread.start() waits for the new thread, so that greenlet
    yielded with the lock held, and the next request's greenlet asked for the lock. After fork
    the lock was gevent's (raindrops imported after the patch): that greenlet waited its turn.
    With --preload it was a real lock, made by the at-fork hook before gevent patched
    threading: taken again in the same thread, it blocked the thread for good.
    """
    with gunicorn(tmp_path, gevent_args(mode), workers=1) as server:
        [worker] = server.worker_pids()
        with contextlib.ExitStack() as stack:
            with stopped(worker):
                clients = stack.enter_context(held(server, WATCH_REQUESTS, "/watch/series.json"))
            lines = status_lines(clients, WATCH_ANSWER_SECONDS)
        assert lines == ["HTTP/1.1 200 OK"] * WATCH_REQUESTS, lines
        assert server.get("/", timeout=WATCH_ANSWER_SECONDS).status == 200
    check_log(server)


def test_a_per_process_value_made_while_its_greenlet_yields_blocks_no_other_greenlet() -> None:
    """The same defect in one process, as a preloaded gevent worker has it: raindrops imported
    before the patch, a fork, gevent's patch, then two greenlets asking a PerProcess holder for
    a value whose making yields (it starts a thread, as the Watcher's sampler does).

    Failed before the fix (locks are now made at first use in each process): the second
    greenlet blocked the process on the real lock the at-fork hook made
    (faulthandler ends the stuck child after 3 s, with its traceback on stderr)."""
    code = """
        import faulthandler, os, sys
        from raindrops import _process  # before gevent's patch, as gunicorn --preload loads it
        holder = _process.PerProcess()
        child = os.fork()
        if child:
            sys.exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
        faulthandler.dump_traceback_later(3, exit=True)
        from gevent import monkey
        monkey.patch_all()  # what gunicorn's gevent worker does first
        import gevent, threading
        def make():
            threading.Thread(target=lambda: None).start()  # waits for the thread: yields
            return object()
        greenlets = [gevent.spawn(holder.get, make) for _ in range(2)]
        gevent.joinall(greenlets, timeout=3)
        values = {id(greenlet.value) for greenlet in greenlets}
        print(all(greenlet.successful() for greenlet in greenlets), len(values), flush=True)
        os._exit(0)
    """
    done = processes.run(python(code), timeout=30, cwd=ROOT, text=True)
    assert (done.returncode, done.stdout) == (0, "True 1\n"), done.stderr


# Defect: reading the endpoint turns the process's blocking sockets non-blocking.


@pytest.mark.parametrize("mode", ["gevent", "setdefaulttimeout"])
def test_reading_the_listeners_leaves_the_apps_blocking_sockets_blocking(mode: str) -> None:
    """Every read of the endpoint looks for the process's listeners (linux.process_listeners) by
    wrapping each socket fd in socket.socket(fileno=fd). gevent's socket class makes its fd
    non-blocking (O_NONBLOCK is the open file's, shared with its owner); so does CPython's once
    an app called socket.setdefaulttimeout(). A blocking socket the application holds (a C
    client library's, or one made before either) then fails its next recv() with EAGAIN
    (BlockingIOError) instead of waiting.

    Failed in both modes before the fix (raindrops now wraps the fd with _socket and
    SOCK_NONBLOCK, which leaves its flags alone)."""
    code = """
        import _socket, os, socket, sys
        app_end, _ = _socket.socketpair()  # blocking, as a C library's connection is
        if sys.argv[1] == "gevent":
            from gevent import monkey
            monkey.patch_all()
        else:
            socket.setdefaulttimeout(30.0)
        from raindrops import linux
        before = os.get_blocking(app_end.fileno())
        linux.process_listeners()
        print(before, os.get_blocking(app_end.fileno()), flush=True)
    """
    done = processes.run([*python(code), mode], timeout=30, cwd=ROOT, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True True\n", "the app's blocking socket was made non-blocking"
