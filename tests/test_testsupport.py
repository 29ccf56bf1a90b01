"""The test suite's own guarantees: missing programs skip or fail by CI, and no process outlives
its test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testsupport import processes, programs
from testsupport.processes import is_dead


def test_a_missing_program_is_a_skip_outside_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(
        programs.MissingProgram, match=r"^promtool is not installed \(Debian package prometheus\)$"
    ):
        programs.require("promtool")


def test_a_missing_program_fails_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(AssertionError, match="chromium is not installed .* CI=true requires it"):
        programs.require("chromium", "chromium-browser")


def test_a_present_program_is_found_under_any_of_its_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = tmp_path / "chromium-browser"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert programs.require("chromium", "chromium-browser") == str(browser)


def test_a_timeout_ends_the_whole_process_group(tmp_path: Path) -> None:
    """subprocess.run would kill the shell only; its background child must die too."""
    pid_file = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        processes.run(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], timeout=1)
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not is_dead(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert is_dead(grandchild)


def test_a_process_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    command = [sys.executable, "-c", code]
    with processes.running(command, stdout=subprocess.PIPE, text=True, stop_timeout=0.5) as process:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
    assert process.returncode == -signal.SIGKILL


def test_children_start_with_the_default_sigint_even_if_ours_is_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = processes.run(["grep", "^SigIgn", "/proc/self/status"], timeout=10, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    ignored = int(result.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1)), result.stdout


def test_orphans_are_adopted_so_leftovers_can_be_found() -> None:
    """pytest is a child subreaper (conftest): a grandchild whose parent exits becomes our child."""
    # The grandchild leaves the group first (setsid), so that ending its parent's group spares it.
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    print(os.getpid(), flush=True)\n"
        "    os.close(1); os.close(2)\n"
        "    time.sleep(30)\n"
    )
    result = processes.run([sys.executable, "-c", code], timeout=10, text=True)
    orphan = int(result.stdout)
    try:
        deadline = time.monotonic() + 5
        while orphan not in processes.children(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert orphan in processes.children(os.getpid())
    finally:
        os.kill(orphan, signal.SIGKILL)
        os.waitpid(orphan, 0)
