"""The load test suite's short run, so that every `make test` proves the counters under real load.

`python -m loadtests --short`: both gunicorn variants (sync -w 4, gthread
--preload) under locust for 12 s each, with the overload phase, worker
recycling and a SIGKILL mid-request; about 30 s in all, and under a minute
by design. Not skipped anywhere: locust and matplotlib come with the
`loadtest` extra that `make build` installs. Without promtool (outside CI) its
expositions are checked by the strict parser instead, which the summary says.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from testsupport import processes, programs

ROOT = Path(__file__).resolve().parent.parent
HARD_LIMIT = (
    150  # the run is designed for under 60 s; a slow CI machine gets slack before it is called hung
)


@pytest.mark.timeout(HARD_LIMIT + 30)
def test_short_load_test_passes_every_check(tmp_path: Path) -> None:
    results = tmp_path / "results"
    environment = {
        key: value for key, value in os.environ.items() if key != "DURATION"
    }  # --short's own length
    command = [sys.executable, "-m", "loadtests", "--short", "--results", str(results)]
    run = processes.run(command, cwd=ROOT, env=environment, timeout=HARD_LIMIT, text=True)
    assert run.returncode == 0, f"load test failed:\n{run.stdout}\n{run.stderr}"
    summary = json.loads((results / "summary.json").read_text())
    assert sorted(summary) == ["gthread", "sync"]
    for variant, verdict in summary.items():
        assert verdict["ok"] and all(check["ok"] for check in verdict["checks"]), verdict
        for suffix in (
            "_stats.csv",
            "_failures.csv",
            ".html",
            "-timeline.png",
            "-samples.csv",
            "-metrics-rest.prom",
        ):
            report = results / f"{variant}{suffix}"
            assert report.is_file() and report.stat().st_size > 0, report
    assert (results / "summary.md").read_text().count("| PASS |") == 2
    if programs.find("promtool") is None:
        programs.log_skip(
            f"FALLBACK load test: {programs.missing_message('promtool')}; "
            "the strict parser checked its expositions"
        )


@pytest.mark.parametrize(
    ("killed", "transport", "counted", "ok"),
    [
        (False, 0, 100, True),
        (False, 0, 101, False),  # counted beyond the successes, and no kill to explain it
        (True, 2, 102, True),
        (True, 2, 103, False),  # more than the cut requests
        (True, 2, 99, False),  # fewer than the successes: a lost count
    ],
)
def test_counts_beyond_the_successes_need_a_kill_and_a_cut_request(
    killed: bool, transport: int, counted: int, ok: bool, tmp_path: Path
) -> None:
    from loadtests.checks import Verdict, _killed_after_start
    from loadtests.config import VARIANTS, Plan
    from loadtests.runner import Kill, Measured

    plan = Plan(next(iter(VARIANTS.values())), duration=1.0, users=1, spawn_rate=1.0)
    measured = Measured(plan, tmp_path, kills=[Kill(1.0, 4242)] if killed else [])
    failures = {"transport": transport, "status": 0, "body": 0, "other": 0}
    verdict = Verdict(measured, [], None, failures, [])
    assert _killed_after_start("requests_total", 100, counted, verdict).ok is ok


@pytest.mark.parametrize("ci", [False, True])
def test_without_promtool_the_strict_parser_checks_and_says_so(
    ci: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadtests.runner import _check_exposition

    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))
    monkeypatch.setenv("CI", "true" if ci else "false")
    good = tmp_path / "good.prom"
    good.write_text("# HELP a_total A.\n# TYPE a_total counter\na_total 1\n")
    bad = tmp_path / "bad.prom"
    bad.write_text("a_total 1\n")
    if ci:
        assert _check_exposition(good)[1:] == (127, _ci_requires("promtool"))
        return
    assert _check_exposition(good)[1:] == (
        0,
        f"{programs.missing_message('promtool')}: 1 samples checked by the strict parser instead",
    )
    assert _check_exposition(bad)[1:] == (
        1,
        "strict parser: sample without a TYPE line before it: 'a_total 1'",
    )


def _ci_requires(program: str) -> str:
    return f"{programs.missing_message(program)}: CI=true requires it (.ci/run installs it)"
