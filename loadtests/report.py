"""The report under loadtests/results/: summary.md (and .json), samples CSV and a PNG timeline
per variant.

locust writes its own CSV (<variant>_stats.csv, _failures.csv, ...) and HTML
(<variant>.html) next to these.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from loadtests.checks import Verdict

SUMMARY_COLUMNS = (
    "variant", "requests", "failures", "p50 ms", "p99 ms", "/count", "requests_total",
    "errors_total", "peak calling", "peak writing", "peak queued", "recycled", "killed", "result",
)  # fmt: skip


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _exact_cell(verdict: Verdict, name: str) -> str:
    check = next(check for check in verdict.checks if check.name == f"exact: {name}")
    observed = check.detail.split(" ", 1)[0]
    return f"{observed} {'exact' if check.ok else 'WRONG'}"


def summary_row(verdict: Verdict) -> list[str]:
    measured, total = verdict.measured, verdict.total
    samples = measured.samples
    return [
        measured.plan.variant.name,
        str(total.requests) if total else "-",
        str(total.failures) if total else "-",
        _ms(total.p50 if total else None),
        _ms(total.p99 if total else None),
        _exact_cell(verdict, "/count counter"),
        _exact_cell(verdict, "requests_total"),
        _exact_cell(verdict, "request_errors_total"),
        f"{max((s.calling for s in samples), default=0)}/{measured.plan.variant.capacity}",
        str(max((s.writing for s in samples), default=0)),
        str(max((s.queued for s in samples), default=0)),
        str(measured.recycled),
        str(len(measured.kills)),
        "PASS" if verdict.ok else "FAIL",
    ]


def _table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines) + "\n"


def summary_table(verdicts: list[Verdict]) -> str:
    return _table(SUMMARY_COLUMNS, [summary_row(verdict) for verdict in verdicts])


def variant_section(verdict: Verdict) -> str:
    measured = verdict.measured
    plan, variant = measured.plan, measured.plan.variant
    endpoints = [
        [row.name, str(row.requests), str(row.failures), _ms(row.p50), _ms(row.p99)]
        for row in verdict.endpoints
    ]
    checks = [
        ["ok" if check.ok else "**FAIL**", check.name, check.detail] for check in verdict.checks
    ]
    overload = (
        "never"
        if measured.overload is None
        else f"{measured.overload[0]:.1f}-{measured.overload[1]:.1f} s"
    )
    return (
        f"## {variant.name}\n\n"
        f"gunicorn {' '.join(variant.gunicorn_args())}; locust {plan.total_users} users "
        f"({plan.users} steady, 1 poller, {plan.overload_users} overload), "
        f"spawn rate {plan.spawn_rate:g}/s, "
        f"{plan.duration:g} s; overload phase {overload}.\n\n"
        + _table(("request", "requests", "failures", "p50 ms", "p99 ms"), endpoints)
        + "\n"
        + _table(("", "check", "detail"), checks)
        + f"\n![timeline]({variant.name}-timeline.png)\n"
    )


def write_samples(verdict: Verdict) -> None:
    measured = verdict.measured
    with open(measured.path("-samples.csv"), "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            (
                "t",
                "calling",
                "writing",
                "workers",
                "requests_total",
                "request_errors_total",
                "active",
                "queued",
                "pids",
            )
        )
        for s in measured.samples:
            writer.writerow(
                (
                    f"{s.t:.3f}",
                    s.calling,
                    s.writing,
                    s.workers,
                    s.requests,
                    s.errors,
                    s.active,
                    s.queued,
                    " ".join(map(str, s.pids)),
                )
            )


def plot(verdict: Verdict) -> Path:
    """calling, writing, active and queued over time, with the overload phase and the kill
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    measured = verdict.measured
    samples = measured.samples
    times = [s.t for s in samples]
    figure, axes = plt.subplots(figsize=(13, 5), dpi=100)
    try:
        for name, values, style, color in (
            ("calling", [s.calling for s in samples], "-", "C0"),
            ("writing", [s.writing for s in samples], "-", "C1"),
            ("active", [s.active for s in samples], "--", "C2"),
            ("queued", [s.queued for s in samples], "--", "C3"),
        ):
            axes.step(
                times,
                values,
                style,
                where="post",
                color=color,
                label=f"{name} (/_raindrops)",
                linewidth=1.4,
            )
        kernel = measured.kernel
        for column, name, color in ((1, "active", "C2"), (2, "queued", "C3")):
            axes.plot(
                [reading[0] for reading in kernel], [reading[column] for reading in kernel],
                ":", color=color, linewidth=0.9, alpha=0.7, label=f"{name} (netlink, every 0.1 s)",
            )  # fmt: skip
        axes.axhline(
            measured.plan.variant.capacity,
            color="grey",
            linewidth=0.8,
            linestyle=":",
            label="capacity",
        )
        if measured.overload is not None:
            axes.axvspan(*measured.overload, color="orange", alpha=0.15, label="overload phase")
        for kill in measured.kills:
            axes.axvline(kill.t, color="red", linewidth=1, label=f"SIGKILL worker {kill.pid}")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("seconds")
        axes.set_ylabel("requests / connections")
        axes.set_title(
            f"raindrops under locust: gunicorn {measured.plan.variant.name} "
            f"({'PASS' if verdict.ok else 'FAIL'})"
        )
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        axes.grid(alpha=0.3)
        path = measured.path("-timeline.png")
        figure.tight_layout()
        figure.savefig(path)
        return path
    finally:
        plt.close(figure)


def write(verdicts: list[Verdict], results: Path, header: str) -> str:
    """Writes every report file; returns the summary (markdown) for the console."""
    for verdict in verdicts:
        write_samples(verdict)
        plot(verdict)
    summary = f"# raindrops load test\n\n{header}\n\n" + summary_table(verdicts)
    document = summary + "\n" + "\n".join(variant_section(verdict) for verdict in verdicts)
    (results / "summary.md").write_text(document)
    (results / "summary.json").write_text(
        json.dumps(
            {
                verdict.measured.plan.variant.name: {
                    "ok": verdict.ok,
                    "summary": dict(zip(SUMMARY_COLUMNS, summary_row(verdict), strict=True)),
                    "checks": [asdict(check) for check in verdict.checks],
                }
                for verdict in verdicts
            },
            indent=2,
        )
    )
    return summary
