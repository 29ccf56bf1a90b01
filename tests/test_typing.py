"""The package ships py.typed, so its annotations must hold under mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_package_passes_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "raindrops"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
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
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(user)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
