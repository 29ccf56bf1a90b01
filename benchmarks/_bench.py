"""Helpers shared by the benchmark scripts: timeit-style timing and plain-text tables."""

from __future__ import annotations

import shutil
import subprocess
import timeit
from collections.abc import Sequence
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
