"""A loopback listener whose `active` and `queued` counts a test sets, for the Watcher's tests."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from servers import wait_for

from testsupport import processes

T = TypeVar("T")


class Load:
    """127.0.0.1:P with `active` accepted connections held open and `queued` ones left in the
    accept queue."""

    def __init__(self, backlog: int = 64) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._clients: list[socket.socket] = []
        self._accepted: list[socket.socket] = []

    def set(self, active: int, queued: int) -> None:
        """Replaces every connection: drains the queue (a closed client stays queued until
        accepted)."""
        self._drop()
        where = self.listener.getsockname()
        self._clients = [socket.create_connection(where, timeout=5) for _ in range(active + queued)]
        self._accepted = [self.listener.accept()[0] for _ in range(active)]

    def _drop(self) -> None:
        for sock in self._clients + self._accepted:
            sock.close()
        self._clients, self._accepted = [], []
        self.listener.setblocking(False)
        try:
            for _ in range(10_000):
                self.listener.accept()[0].close()
        except BlockingIOError:
            pass
        finally:
            self.listener.setblocking(True)

    def close(self) -> None:
        self._drop()
        self.listener.close()

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wait_until(probe: Callable[[], T], timeout: float = 10.0, what: str = "a condition") -> T:
    """probe() until it returns something true; fails after `timeout` seconds (servers.wait_for)."""
    return wait_for(probe, bool, timeout, what, interval=0.01)


@contextlib.contextmanager
def raindrops_watch(*args: str) -> Iterator[tuple[subprocess.Popen[Any], int]]:
    """`raindrops watch ARGS` on a free loopback port: the process and the port its banner names."""
    command = [sys.executable, "-m", "raindrops", "watch", "--bind", "127.0.0.1:0", *args]
    with processes.running(command, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        banner = process.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", banner)
        assert match, banner
        yield process, int(match.group(1))
