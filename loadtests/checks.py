"""The verdict: locust's numbers against the middleware's, and the invariants seen during the run.

The exact accounting. Every request the locust users make is judged in the
locustfile: a complete response with the expected status and body is a
success (a 500 from /fail too: the application served it, and raised), and
every failure says its kind. A "transport" failure got no complete response:
the connection was refused, reset, or cut mid-body by the SIGKILL. The
middleware counts a request when its response starts (the application
returned with start_response called, or raised), and observes its duration
when it ends, so:

- requests_total and the duration histogram's count == successes of every
  locust request name except /_raindrops (the endpoint does not count
  itself), plus the requests whose response had started (or whose
  application had raised) when their worker was killed, which locust saw
  cut: at most its transport failures, and none without a kill. The kill only hits workers
  whose request threads are all asleep inside the application (see
  server.kill_if_sleeping), but a gthread worker's other thread may wake and
  respond between that look and the kill;
- request_errors_total == successes of /fail, plus at most those killed
  requests;
- the /count counter == successes of /count, and the values /count returned
  are all distinct and within 1..counter: a permutation of 1..N, so no
  increment was lost or applied twice;
Nothing else talks to the application: the runner only reads /_raindrops
and reads the /count counter from its segment directly.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from loadtests.runner import Measured
from testsupport.gunicorn import STATS

FAILURE_KINDS = ("transport", "status", "body")
PROMTOOL_MINIMUM = 3


@dataclass(frozen=True)
class Endpoint:
    """One row of locust's *_stats.csv."""

    name: str
    requests: int
    failures: int
    p50: float | None  # milliseconds
    p99: float | None

    @property
    def successes(self) -> int:
        return self.requests - self.failures


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    measured: Measured
    endpoints: list[Endpoint]
    total: Endpoint | None  # locust's "Aggregated" row
    failures: dict[str, int]  # failure kind -> occurrences
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def endpoint(self, name: str) -> Endpoint:
        return next(
            (row for row in self.endpoints if row.name == name), Endpoint(name, 0, 0, None, None)
        )

    @property
    def served(self) -> int:
        """Requests the application served, as the clients saw them: every success outside
        /_raindrops."""
        return sum(row.successes for row in self.endpoints if not row.name.startswith(STATS))


def _milliseconds(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "N/A" when a name had no request


def read_stats(path: Path) -> tuple[list[Endpoint], Endpoint | None]:
    endpoints, total = [], None
    with open(path, newline="") as stats:
        for row in csv.DictReader(stats):
            endpoint = Endpoint(
                row["Name"],
                int(row["Request Count"]),
                int(row["Failure Count"]),
                _milliseconds(row["50%"]),
                _milliseconds(row["99%"]),
            )
            if row["Name"] == "Aggregated":
                total = endpoint
            else:
                endpoints.append(endpoint)
    return endpoints, total


def read_failures(path: Path) -> dict[str, int]:
    """Occurrences by kind, from the message the locustfile gave each failure."""
    kinds = dict.fromkeys((*FAILURE_KINDS, "other"), 0)
    with open(path, newline="") as failures:
        for row in csv.DictReader(failures):
            kind = next((kind for kind in FAILURE_KINDS if f"{kind}:" in row["Error"]), "other")
            kinds[kind] += int(row["Occurrences"])
    return kinds


def judge(measured: Measured) -> Verdict:
    endpoints: list[Endpoint] = []
    total = None
    failures = dict.fromkeys((*FAILURE_KINDS, "other"), 0)
    problems = list(measured.errors)
    try:
        endpoints, total = read_stats(measured.path("_stats.csv"))
        failures = read_failures(measured.path("_failures.csv"))
    except (OSError, KeyError, ValueError) as error:
        problems.append(f"locust's CSV: {type(error).__name__}: {error}")
    verdict = Verdict(measured, endpoints, total, failures, [])
    verdict.checks.extend(
        [
            _run(measured, problems),
            _tally_agrees(verdict),
            *_exactness(verdict),
            _monotonic(measured),
            _samples(measured),
            _polls(verdict),
            _promtool(measured),
            _rest(measured),
            _backlog(measured),
            _churn(measured),
            _kill(measured),
            _failure_kinds(verdict),
        ]
    )
    return verdict


def _run(measured: Measured, problems: list[str]) -> Check:
    if measured.locust_returncode != 0:
        problems.append(f"locust exited with {measured.locust_returncode}")
    if "Not all users finished" in measured.locust_log:
        problems.append("locust abandoned requests in flight at the end (--stop-timeout too short)")
    detail = (
        "; ".join(problems)
        or f"gunicorn on {measured.address}, locust ran {measured.plan.duration:g} s"
    )
    return Check("run completed", not problems, detail)


def _tally_agrees(verdict: Verdict) -> Check:
    """locust's CSV and the users' own tally are two records of the same requests: they must
    agree."""
    outcomes = verdict.measured.tally.get("outcomes", {})
    disagree = [
        f"{row.name}: csv {row.successes} ok, tally {outcomes.get(row.name, {}).get('ok', 0)}"
        for row in verdict.endpoints
        if outcomes.get(row.name, {}).get("ok", 0) != row.successes
    ]
    if not outcomes:
        disagree.append("no tally from the locust users")
    return Check(
        "locust's CSV agrees with the users' tally",
        not disagree,
        "; ".join(disagree) or "every request name",
    )


def _exact(name: str, expected: int | None, observed: int | None, why: str) -> Check:
    ok = expected is not None and expected == observed
    return Check(f"exact: {name}", ok, f"{observed} {'==' if ok else '!='} {expected} ({why})")


def _killed_after_start(name: str, successes: int, observed: int | None, verdict: Verdict) -> Check:
    """`observed` == `successes` plus requests killed after their response started: at most
    the transport failures, and none without a kill."""
    allowed = verdict.failures["transport"] if verdict.measured.kills else 0
    extra = None if observed is None else observed - successes
    ok = extra is not None and 0 <= extra <= allowed
    detail = (
        f"{observed} = {successes} successes in locust + {extra} killed after their response"
        f" started (at most {allowed})"
    )
    return Check(f"exact: {name}", ok, detail)


def _exactness(verdict: Verdict) -> list[Check]:
    measured, rest = verdict.measured, verdict.measured.rest
    requests, errors, observed = (
        (rest.requests, rest.errors, rest.observed) if rest else (None, None, None)
    )
    count_ok = verdict.endpoint("/count").successes
    checks = [
        _exact(
            "/count counter", count_ok, measured.counter, "successful /count requests in locust"
        ),
        _killed_after_start("duration histogram count", verdict.served, observed, verdict),
        _killed_after_start("requests_total", verdict.served, requests, verdict),
        _killed_after_start(
            "request_errors_total", verdict.endpoint("/fail").successes, errors, verdict
        ),
    ]
    values = measured.tally.get("count_values", [])
    permutation = len(set(values)) == len(values) == count_ok and (
        not values or (min(values) >= 1 and max(values) == measured.counter)
    )
    checks.append(
        Check(
            "exact: /count answers are 1..N, each once",
            permutation,
            f"{len(values)} values, {len(set(values))} distinct, max {max(values, default=0)}",
        )
    )
    return checks


def _monotonic(measured: Measured) -> Check:
    """Shared totals survive worker exits (recycling, SIGKILL): they never go back."""
    back = [
        f"{name} {before} -> {after} at t={later.t:.2f}s"
        for earlier, later in zip(measured.samples, measured.samples[1:], strict=False)
        for name, before, after in (
            ("requests_total", earlier.requests, later.requests),
            ("request_errors_total", earlier.errors, later.errors),
            ("histogram count", earlier.observed, later.observed),
        )
        if after < before
    ]
    return Check(
        "totals never decrease",
        not back,
        "; ".join(back[:5]) or f"over {len(measured.samples)} samples",
    )


def _samples(measured: Measured) -> Check:
    """Every sample parsed and 0 <= calling, writing <= capacity; unanswered only if a kill took
    it."""
    unexplained = [
        f"t={lost.asked:.2f}s: {lost.error}"
        for lost in measured.lost
        if not any(lost.asked <= kill.t <= lost.failed for kill in measured.kills)
    ]
    bad = measured.problems + unexplained
    capacity = measured.plan.variant.capacity
    detail = f"{len(measured.samples)} samples, calling and writing within 0..{capacity}"
    if measured.lost and not unexplained:
        detail += f" ({len(measured.lost)} lost with the killed worker)"
    return Check(
        "samples parse, within bounds",
        bool(measured.samples) and not bad,
        "; ".join(bad[:5]) or detail,
    )


def _polls(verdict: Verdict) -> Check:
    """The locust poller validated every /_raindrops answer in every format (failures say why)."""
    polls = [row for row in verdict.endpoints if row.name.startswith(STATS)]
    outcomes = verdict.measured.tally.get("outcomes", {})
    wrong = [
        f"{row.name}: {kind} {counts.get(kind, 0)}"
        for row in polls
        for counts in [outcomes.get(row.name, {})]
        for kind in ("status", "body")
        if counts.get(kind, 0)
    ]
    formats = len(polls)
    ok = formats == 5 and all(row.successes > 0 for row in polls) and not wrong
    detail = (
        "; ".join(wrong)
        or f"{sum(row.successes for row in polls)} polls valid in {formats} formats"
    )
    return Check("locust's /_raindrops polls valid", ok, detail)


def _promtool(measured: Measured) -> Check:
    """promtool's verdict on every saved exposition, or the strict parser's where promtool is
    missing."""
    failed = [
        f"{Path(name).name}: {output[:200]}"
        for name, code, output in measured.promtool
        if code != 0
    ]
    ok = len(measured.promtool) >= PROMTOOL_MINIMUM and not failed
    fallback = next(
        (
            output
            for _, code, output in measured.promtool
            if code == 0 and "strict parser" in output
        ),
        "",
    )
    checker = "the strict parser (promtool is missing)" if fallback else "promtool check metrics"
    detail = "; ".join(failed) or f"{len(measured.promtool)} expositions pass {checker}"
    return Check("Prometheus exposition format", ok, detail)


def _rest(measured: Measured) -> Check:
    rest = measured.rest
    if rest is None:
        return Check("at rest: calling 0, writing 0", False, "no reading after the run")
    ok = (rest.calling, rest.writing) == (0, 0)
    return Check(
        "at rest: calling 0, writing 0", ok, f"calling {rest.calling}, writing {rest.writing}"
    )


def _backlog(measured: Measured) -> Check:
    if measured.overload is None:
        return Check(
            "backlog: queued > 0 under overload", False, "the overload phase never started"
        )
    # A reading waits in the listen queue too, so some come only as the backlog drains after the
    # phase.
    start, end = measured.overload
    during = [
        sample
        for sample in measured.samples
        if start <= sample.t <= end + measured.plan.drain_seconds
    ]
    peak = max((sample.queued for sample in during), default=0)
    calling = max((sample.calling for sample in during), default=0)
    detail = (
        f"peak queued {peak}, peak calling {calling}/{measured.plan.variant.capacity} "
        f"over {len(during)} samples"
    )
    return Check("backlog: queued > 0 under overload", peak > 0, detail)


def _churn(measured: Measured) -> Check:
    seen = {pid for sample in measured.samples for pid in sample.pids}
    detail = f"{measured.recycled} workers recycled by --max-requests, {len(seen)} worker pids seen"
    return Check("churn: workers recycled", measured.recycled >= 1, detail)


def _kill(measured: Measured) -> Check:
    """One worker SIGKILLed mid-request; gunicorn replaced it and calling did not stay raised."""
    if not measured.kills:
        return Check("SIGKILL: worker killed mid-request", False, measured.kill_error or "no kill")
    kill = measured.kills[0]
    workers = measured.plan.variant.workers
    before = [sample for sample in measured.samples if sample.t <= kill.t]
    after = [sample for sample in measured.samples if sample.t > kill.t]
    replaced = next(
        (
            sample.t
            for sample in after
            if kill.pid not in sample.pids and len(sample.pids) == workers
        ),
        None,
    )
    calling_before = before[-1].calling if before else None
    rest = measured.rest
    ok = replaced is not None and rest is not None and rest.calling == 0
    detail = (
        f"pid {kill.pid} at t={kill.t:.2f}s (calling {calling_before} just before); "
        + (f"replaced by t={replaced:.2f}s; " if replaced is not None else "never replaced; ")
        + f"calling at rest {rest.calling if rest else '?'}"
    )
    return Check("SIGKILL: worker killed mid-request", ok, detail)


def _failure_kinds(verdict: Verdict) -> Check:
    """Only transport failures are possible without a bug: a killed worker's requests, nothing
    else."""
    wrong = {
        kind: count for kind, count in verdict.failures.items() if kind != "transport" and count
    }
    detail = f"{verdict.failures['transport']} transport failures" + (
        f"; unexpected {wrong}" if wrong else ""
    )
    return Check("failures are transport errors only", not wrong, detail)
