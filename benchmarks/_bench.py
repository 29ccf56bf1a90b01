"""Helpers shared by the benchmark scripts: timeit-style timing, plain-text tables, the WSGI
request they drive, and prometheus_client's multiprocess directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import timeit
from collections.abc import Callable, Iterable, Sequence
from typing import Any

REPEATS = 5


def ns_per_op(stmt: str, namespace: dict[str, Any], repeats: int = REPEATS) -> float:
    """Best of `repeats` timeit runs, in ns per execution of `stmt`.

    The minimum is the run least disturbed by the rest of the machine; the
    loop count comes from timeit's autorange (at least 0.2 s per run).
    """
    timer = timeit.Timer(stmt, globals=namespace)
    number, _ = timer.autorange()
    return min(timer.repeat(repeats, number)) / number * 1e9


def ns_per_op_interleaved(
    stmt: str, namespaces: dict[str, dict[str, Any]], rounds: int = REPEATS
) -> dict[str, float]:
    """Best of `rounds` timeit runs of `stmt` in each namespace, in ns per execution.

    The namespaces take turns run by run, so that a burst of load elsewhere on the machine
    falls on all of them alike rather than on the one being timed (as bench_listeners.py does).
    """
    timers = {name: timeit.Timer(stmt, globals=namespace) for name, namespace in namespaces.items()}
    numbers = {name: timer.autorange()[0] for name, timer in timers.items()}
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(rounds):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(numbers[name]) / numbers[name] * 1e9)
    return best


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns: the first left-justified (names), the others right-justified (numbers)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = (str(cell) for cell in cells)
        parts = [first.ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def ruby_raindrops_installed() -> bool:
    """Whether Ruby raindrops (Debian's ruby-raindrops) can be compared in this run."""
    if shutil.which("ruby") is None:
        return False
    return (
        subprocess.run(
            ["ruby", "-e", 'require "raindrops"'], capture_output=True, check=False
        ).returncode
        == 0
    )


def prometheus_multiprocess_dir(name: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory for prometheus_client's multiprocess mode, set in the environment.
    Call it before importing prometheus_client, which picks its value class at import."""
    directory = tempfile.TemporaryDirectory(prefix=f"raindrops-bench-{name}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory.name
    return directory


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def hello_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The bare WSGI application every WSGI figure is measured against."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
    return None


def one_wsgi_request(app: WSGIApp, environ: dict[str, Any]) -> None:
    """A request as a WSGI server makes it, without a socket: call, iterate, close."""
    body = app(environ, _start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()
