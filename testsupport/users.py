"""Another local user for the tests: uid/gid 65534 ("nobody"), through setpriv.

That user must be able to run Python and import raindrops. A clone in a
directory that others cannot enter (mktemp -d makes 0700 ones) hides the
project and its venv from them, so the package (with its library) is copied
once per run into a directory everyone can read, and the interpreter is the
real file behind the venv's symlink.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from testsupport import processes
from testsupport.programs import ROOT

NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
_readable: list[Path] = []


class NotRoot(Exception):
    """Acting as another uid is impossible here: it needs root (the tests run as root in CI)."""


def prefix() -> list[str]:
    """The command prefix that runs a command as uid/gid 65534."""
    if os.geteuid() != 0:
        raise NotRoot(f"acting as uid {NOBODY} needs root (the tests run as root in CI)")
    return list(SETPRIV)


def readable_package() -> Path:
    """A directory that others can read, holding a copy of the raindrops package."""
    if not _readable:
        place = Path(tempfile.mkdtemp(prefix="raindrops-nobody-"))
        shutil.copytree(
            ROOT / "raindrops", place / "raindrops", ignore=shutil.ignore_patterns("__pycache__")
        )
        for path in [place, *place.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        _readable.append(place)
    return _readable[0]


def interpreter() -> str:
    """A Python that uid 65534 can run: this one, unless it lives where others cannot go
    (pyenv under a 0700 /root), then the system's of the same version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(sys.executable), f"/usr/bin/python{version}", "/usr/bin/python3"]
    for candidate in candidates:
        if processes.run([*prefix(), "test", "-x", candidate], timeout=30).returncode == 0:
            return candidate
    raise NotRoot(f"uid {NOBODY} can run none of {', '.join(candidates)}")


def python() -> list[str]:
    """`prefix()` plus an interpreter that uid 65534 can run and that imports raindrops."""
    return [*prefix(), "env", f"PYTHONPATH={readable_package()}", interpreter(), "-s"]


def cleanup() -> None:
    """Removes the readable copy (the end of the test run calls this)."""
    while _readable:
        shutil.rmtree(_readable.pop(), ignore_errors=True)
