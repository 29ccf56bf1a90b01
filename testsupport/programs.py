"""System programs some checks need: a missing one skips with one line on a user's machine, and
fails in CI.

A fresh machine (python3, make, git, curl) has none of them; `.ci/run` installs
them all. Each skip is also written to the skip log that `make test`'s summary
prints, so the end of the run says what was not checked and why.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_LOG = ROOT / ".test-skips"
KEEP_SKIP_LOG = "RAINDROPS_KEEP_SKIP_LOG"
"""Set by `make test`, whose steps before pytest log their skips: pytest keeps the log, where a
run of its own starts it afresh."""

# program -> the Debian package that brings it
PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "chromium": "chromium",
    "qemu-aarch64": "qemu-user",
    "objdump": "binutils",
}


class MissingProgram(Exception):
    """A program is not installed; the message is the one line to show."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing_message(program: str) -> str:
    return f"{program} is not installed (Debian package {PACKAGES[program]})"


def find(program: str, *alternatives: str) -> str | None:
    for name in (program, *alternatives):
        path = shutil.which(name)
        if path:
            return path
    return None


def require(program: str, *alternatives: str) -> str:
    """The program's path; MissingProgram if absent and CI is not set; AssertionError if absent
    in CI."""
    path = find(program, *alternatives)
    if path:
        return path
    message = missing_message(program)
    if in_ci():
        raise AssertionError(f"{message}: CI=true requires it (.ci/run installs it)")
    raise MissingProgram(message)


def log_skip(line: str) -> None:
    """Adds one line to the summary that `make test` prints at its end."""
    with open(SKIP_LOG, "a", encoding="utf-8") as log:
        log.write(line.rstrip("\n") + "\n")
