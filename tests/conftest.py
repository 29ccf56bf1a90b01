"""Shared fixtures and the run's summary of what was not checked.

Every process the tests start must be ended by them: at the end of the run,
any that is still alive (orphans included: this process adopts them) is
killed, named, and fails the run. A missing system program
(testsupport.programs.MissingProgram, raised by a test or a fixture) is
reported as a skip with its one line; in CI the same lookup fails instead.
The run ends with every skip and fallback grouped by reason, with those
`make test` logged before pytest started (the aarch64 Zig tests without
qemu).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from load import Load

from testsupport import processes, programs, users
from testsupport.gunicorn import SHM_DIR, segment_name

LEFTOVERS: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    processes.restore_default_sigint()
    processes.adopt_orphans()
    if not os.environ.get(programs.KEEP_SKIP_LOG):  # a run of its own: no older run's lines
        programs.SKIP_LOG.unlink(missing_ok=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every test ends what it starts; a process still running now is a bug in a test, and fails
    the run."""
    LEFTOVERS.extend(processes.end_leftovers())
    users.cleanup()
    if LEFTOVERS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(
        (programs.MissingProgram, users.NotRoot)
    ):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {call.excinfo.value}")
    return report


def _skip_reasons(reports: list[Any]) -> collections.Counter[str]:
    reasons: collections.Counter[str] = collections.Counter()
    for report in reports:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    return reasons


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    logged = (
        programs.SKIP_LOG.read_text(encoding="utf-8").splitlines()
        if programs.SKIP_LOG.exists()
        else []
    )
    lines = list(dict.fromkeys(line for line in logged if line.strip()))
    for reason, count in sorted(_skip_reasons(terminalreporter.stats.get("skipped", [])).items()):
        lines.append(f"SKIP {count} test{'s' if count > 1 else ''}: {reason}")
    if LEFTOVERS:
        terminalreporter.section("processes the tests left running (killed now)", red=True)
        for line in LEFTOVERS:
            terminalreporter.write_line(line)
    terminalreporter.section("what was not checked, and why")
    for line in lines or ["nothing: every check ran"]:
        terminalreporter.write_line(line)
    if any("Debian package" in line for line in lines) and not programs.in_ci():
        terminalreporter.write_line(
            "(.ci/run installs every program above; with CI=true a missing one fails)"
        )


@pytest.fixture
def shm_name() -> Iterator[Callable[[], str]]:
    """Makes fresh segment names; every file they name is unlinked afterwards."""
    made: list[str] = []

    def make() -> str:
        name = segment_name("test")
        made.append(name)
        return name

    yield make
    for name in made:
        (SHM_DIR / name[1:]).unlink(missing_ok=True)


@pytest.fixture
def load() -> Iterator[Load]:
    """A loopback listener with 2 active and 1 queued connections, for the Watcher's tests."""
    with Load() as listener:
        listener.set(active=2, queued=1)
        yield listener
