"""`python -m loadtests [--short] [--variant sync|gthread] [--duration S] [--results DIR]`.

Exits 0 only when every check of every variant passed. DURATION= in the
environment sets the seconds per variant (the default run is 60 s each;
--short is the CI run inside `make test`, under a minute in all).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from loadtests import checks, report
from loadtests.config import (
    DEFAULT_DURATION,
    RESULTS,
    SHORT_DURATION,
    VARIANTS,
    Plan,
    duration_from_environment,
)
from loadtests.runner import run_variant


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument(
        "--short", action="store_true", help=f"{SHORT_DURATION:g} s per variant, fewer users (CI)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        choices=sorted(VARIANTS),
        help="only this variant (repeatable)",
    )
    parser.add_argument("--duration", type=float, help="seconds per variant (overrides DURATION=)")
    parser.add_argument(
        "--users",
        type=int,
        help="steady users per variant (the poller and overload users come on top)",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"report directory (default {RESULTS})"
    )
    return parser.parse_args(argv)


def plans(args: argparse.Namespace) -> list[Plan]:
    duration = args.duration or duration_from_environment(
        SHORT_DURATION if args.short else DEFAULT_DURATION
    )
    users = args.users or (8 if args.short else 12)
    names = args.variant or list(VARIANTS)
    return [
        Plan(
            VARIANTS[name],
            duration,
            users,
            spawn_rate=float(users + 1 + 2 * VARIANTS[name].capacity),
        )
        for name in names
    ]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a test's timeout) unwinds like an exception, so gunicorn and locust are stopped
    too."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    began = time.monotonic()
    verdicts = []
    for plan in plans(args):
        print(
            f"loadtests: {plan.variant.name}: {plan.total_users} users for {plan.duration:g} s ...",
            flush=True,
        )
        verdict = checks.judge(run_variant(plan, args.results))
        for check in verdict.checks:
            print(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}", flush=True)
        verdicts.append(verdict)
    header = f"{'short' if args.short else 'full'} run, {time.monotonic() - began:.0f} s in all"
    print("\n" + report.write(verdicts, args.results, header), flush=True)
    print(f"report: {args.results / 'summary.md'}", flush=True)
    return 0 if all(verdict.ok for verdict in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
