"""monitoring/: the Grafana dashboard and the Prometheus rules, checked by Prometheus' promtool.

The rules pass `promtool check rules` and their unit tests (`promtool test
rules monitoring/rules-test.yml`), which check every recorded value exactly
and show every alert both firing and not firing. Every query of the
dashboard parses: promtool has no PromQL command of its own, so each query,
with Grafana's variables replaced by values they could take, becomes a
recording rule of a temporary file that `promtool check rules` parses.
Without promtool (Debian package prometheus) those tests are skipped, except
in CI (CI=true) where its absence fails; the checks of the dashboard's
structure and of the metric names run everywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raindrops import exposition
from raindrops.asgi.middleware import WEBSOCKETS
from testsupport import processes, programs
from testsupport.programs import ROOT

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "rules.yml"
RULES_TEST = MONITORING / "rules-test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMTOOL_TIMEOUT = 60.0

# Grafana's global variables, and values the dashboard's own variables could take.
GRAFANA_GLOBALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
EXAMPLE_VALUES = {"job": "raindrops", "instance": "127.0.0.1:8000"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
SELECTOR = '{job=~"$job", instance=~"$instance"}'
METRIC_NAME = re.compile(r"\braindrops_\w+")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24


def sample_name(metric: exposition.Metric) -> str:
    """The name queries use: a counter's samples end in _total, a histogram's buckets in
    _bucket."""
    suffix = {"counter": "_total", "histogram": "_bucket"}.get(metric.kind, "")
    return metric.name + suffix


ENDPOINT_METRICS = (
    exposition.CALLING,
    exposition.WRITING,
    exposition.WORKERS,
    exposition.CAPACITY,
    exposition.BUSY,
    exposition.REQUESTS,
    exposition.ERRORS,
    exposition.EXCEPTIONS,
    exposition.DURATION,
    exposition.LISTENER_ACTIVE,
    exposition.LISTENER_QUEUED,
    WEBSOCKETS,
)
SAMPLE_NAMES = {sample_name(metric) for metric in ENDPOINT_METRICS}


@pytest.fixture(scope="module")
def promtool() -> str:
    return programs.require("promtool")  # a skip without it, a failure in CI


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those folded inside rows included; rows themselves hold no query."""
    for panel in board["panels"]:
        yield from panel.get("panels", [])
        if panel["type"] != "row":
            yield panel


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


def panel_queries(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(board) for target in panel["targets"]]


def variable_selectors(board: dict[str, Any]) -> list[str]:
    """The series selectors inside the query variables' label_values(SELECTOR, LABEL)."""
    selectors = []
    for variable in variables(board).values():
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+), *\w+\)", variable["query"]["query"])
            assert found, variable["query"]
            selectors.append(found.group(1))
    return selectors


def substituted(query: str) -> str:
    """`query` as Grafana sends it: every $variable, ${variable} or ${variable:format} replaced."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        known = {**GRAFANA_GLOBALS, **EXAMPLE_VALUES}
        assert name in known, f"unknown variable ${name} in {query!r}"
        return known[name]

    return VARIABLE.sub(value, query)


def check_queries(promtool: str, directory: Path, queries: list[str]) -> tuple[int, str]:
    """promtool's exit status and output for `queries` as the recording rules of one group.

    The file is JSON, which is YAML too: no quoting of PromQL to get wrong.
    """
    rules = [{"record": f"dashboard:query_{index}", "expr": q} for index, q in enumerate(queries)]
    path = directory / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = processes.run(
        [promtool, "check", "rules", str(path)], timeout=PROMTOOL_TIMEOUT, text=True
    )
    return result.returncode, result.stdout + result.stderr


# The dashboard's structure and names: no promtool needed.


def test_the_dashboard_is_a_recent_grafana_dashboard_with_its_variables() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["title"] and board["uid"]
    assert board["time"] == {"from": "now-1h", "to": "now"}
    found = variables(board)
    assert found.keys() == {"datasource", *EXAMPLE_VALUES}
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    for name in EXAMPLE_VALUES:
        assert found[name]["type"] == "query" and found[name]["datasource"] == DATASOURCE
        assert found[name]["multi"] and found[name]["includeAll"]
    assert variable_selectors(board) == [
        "raindrops_workers",
        'raindrops_workers{job=~"$job"}',
    ]


def test_every_panel_has_a_title_a_datasource_and_queries() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)) >= 8, ids
    for panel in panels(board):
        title = panel.get("title")
        assert isinstance(title, str) and title.strip(), panel
        assert panel["datasource"] == DATASOURCE, title
        assert panel["description"], title
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS and grid["h"] > 0, title
        targets = panel["targets"]
        assert targets, f"{title} has no query"
        assert len({target["refId"] for target in targets}) == len(targets), title
        for target in targets:
            assert target["datasource"] == DATASOURCE, title
            assert isinstance(target["expr"], str) and target["expr"].strip(), title
            assert target["legendFormat"], title


def test_every_series_selector_follows_the_job_and_instance_variables() -> None:
    for query in panel_queries(dashboard()):
        for found in METRIC_NAME.finditer(query):
            assert query.startswith(SELECTOR, found.end()), (found.group(), query)


def test_the_dashboard_shows_every_metric_of_the_endpoint() -> None:
    queries = panel_queries(dashboard())
    used = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert used == SAMPLE_NAMES, (used - SAMPLE_NAMES, SAMPLE_NAMES - used)
    for quantile in ("0.5", "0.9", "0.99"):
        quantile_query = (
            f"histogram_quantile({quantile}, sum by (le) (rate("
            f"raindrops_request_duration_seconds_bucket{SELECTOR}[$__rate_interval])))"
        )
        assert quantile_query in queries, quantile


def test_the_rules_name_only_metrics_the_endpoint_serves() -> None:
    used = set(METRIC_NAME.findall(RULES.read_text(encoding="utf-8")))
    assert used and used <= SAMPLE_NAMES, used - SAMPLE_NAMES


def rule_names(kind: str) -> list[str]:
    return re.findall(rf"^ *- {kind}: (\S+)$", RULES.read_text(encoding="utf-8"), re.MULTILINE)


def test_the_unit_tests_check_every_recording_rule_and_every_alert_both_ways() -> None:
    tests = RULES_TEST.read_text(encoding="utf-8")
    records, alerts = rule_names("record"), rule_names("alert")
    assert records and alerts
    for record in records:
        assert re.search(rf"^ *- expr: {re.escape(record)}$", tests, re.MULTILINE), record
        assert re.search(rf"^ *- labels: {re.escape(record)}\{{", tests, re.MULTILINE), record
    checks = re.findall(
        r"^ *- alertname: (\S+)\n *eval_time: \S+\n *exp_alerts:( \[\])?$", tests, re.MULTILINE
    )
    for alert in alerts:
        outcomes = {silent == "" for name, silent in checks if name == alert}
        assert outcomes == {True, False}, f"{alert} must be shown firing and not firing"


# promtool.


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = processes.run(
        [promtool, "check", "rules", str(RULES)], timeout=PROMTOOL_TIMEOUT, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(rule_names("record")) + len(rule_names("alert"))
    assert f"SUCCESS: {count} rules found" in result.stdout, result.stdout


def run_unit_tests(promtool: str, tests: Path) -> tuple[int, str]:
    result = processes.run(
        [promtool, "test", "rules", str(tests)], timeout=PROMTOOL_TIMEOUT, text=True
    )
    return result.returncode, result.stdout + result.stderr


def test_the_rules_pass_their_unit_tests(promtool: str) -> None:
    status, output = run_unit_tests(promtool, RULES_TEST)
    assert status == 0 and "SUCCESS" in output, output


@pytest.mark.parametrize("alert", rule_names("alert"))
def test_the_unit_tests_fail_an_alert_that_fires_at_once(
    promtool: str, tmp_path: Path, alert: str
) -> None:
    """Without its `for`, an alert fires where the unit tests expect it still pending."""
    rules = RULES.read_text(encoding="utf-8")
    start = rules.index(f"- alert: {alert}\n")
    waiting = re.compile(r"^ *for: \S+\n", re.MULTILINE)
    found = waiting.search(rules, start)
    assert found, alert
    (tmp_path / RULES.name).write_text(rules[: found.start()] + rules[found.end() :])
    (tmp_path / RULES_TEST.name).write_text(RULES_TEST.read_text(encoding="utf-8"))
    status, output = run_unit_tests(promtool, tmp_path / RULES_TEST.name)
    assert status != 0 and f"alertname: {alert}," in output, output


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    board = dashboard()
    queries = [substituted(query) for query in panel_queries(board) + variable_selectors(board)]
    assert not any("$" in query for query in queries), queries
    status, output = check_queries(promtool, tmp_path, queries)
    assert status == 0, output
    assert f"SUCCESS: {len(queries)} rules found" in output, output


def test_the_query_check_rejects_a_query_that_does_not_parse(promtool: str, tmp_path: Path) -> None:
    broken = substituted(panel_queries(dashboard())[0]).rstrip(")")
    status, output = check_queries(promtool, tmp_path, ["sum(up)", broken])
    assert status != 0 and '"dashboard:query_1": could not parse expression' in output, output
