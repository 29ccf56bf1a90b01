"""The package ships py.typed, so its annotations must hold under mypy --strict."""

from __future__ import annotations

import sys
from pathlib import Path

from testsupport import processes

ROOT = Path(__file__).resolve().parent.parent


def test_package_passes_mypy_strict() -> None:
    command = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "raindrops"]
    result = processes.run(command, cwd=ROOT, timeout=300, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_typed_user_can_call_the_api(tmp_path: Path) -> None:
    user = tmp_path / "user.py"
    user.write_text(
        "import raindrops\n"
        "rd = raindrops.Raindrops(2)\n"
        "total: int = rd.incr(0) + rd.incr(1, 2) + rd.decr(0) + rd[0]\n"
        "rd[1] = 3\n"
        "values: list[int] = rd.to_list()\n"
        "stats = raindrops.linux.tcp_listener_stats(['127.0.0.1:80'])\n"
        "queued: int = stats['127.0.0.1:80'].queued\n"
    )
    command = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(user)]
    result = processes.run(command, cwd=ROOT, timeout=300, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
