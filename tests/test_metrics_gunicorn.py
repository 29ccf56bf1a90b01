"""raindrops.metrics under real servers: exact across workers, a SIGKILL included.

tests/metrics_app.py's metrics are made at import in the default registry and
read on the middleware's /_raindrops: gunicorn with 4 workers, with --preload
(made in the master, inherited) and without (made in each worker, which meet
in segments named after the master), a worker SIGKILLed; gunicorn with
uvicorn workers; uWSGI forking in C and with --lazy-apps; uvicorn --workers 2
(spawned workers).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import run_threads, wait_for

from testsupport import formats, processes
from testsupport.gunicorn import (
    Master,
    answers,
    free_port,
    launch,
    remove_segments,
    request,
    wait_ready,
)
from testsupport.programs import ROOT

WORKERS = 4
STATS = "/_raindrops"
SHM_DIR = Path("/dev/shm")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """The app's metrics on the endpoint (Prometheus text, checked strictly), by sample."""
    response = request(port, STATS + "?format=prometheus")
    assert response.status == 200, response.body
    formats.check_prometheus_text(response.text)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith("test_")
    }


def work(port: int, requests: int, threads: int) -> None:
    """`requests` GET /work from `threads` clients: routes a and b, amount 0.75 each."""

    def client(index: int) -> None:
        route = "ab"[index % 2]
        for _ in range(requests // threads):
            assert request(port, f"/work?route={route}&amount=0.75").status == 200

    run_threads(threads, client)


def expected(requests: int, held: int, kept: int, imports: int) -> Samples:
    """The app's samples after `requests` to /work; an unlabelled gauge shows once a worker used
    it (a livesum gauge while one that did lives)."""
    half = requests / 2
    return {
        ("test_work_total", (("route", "a"),)): half,
        ("test_work_total", (("route", "b"),)): half,
        ("test_amounts_bucket", (("le", "0.5"),)): 0.0,
        ("test_amounts_bucket", (("le", "1.0"),)): requests,
        ("test_amounts_bucket", (("le", "2.0"),)): requests,
        ("test_amounts_bucket", (("le", "+Inf"),)): requests,
        ("test_amounts_count", ()): requests,
        ("test_amounts_sum", ()): 0.75 * requests,
        **({("test_held", ()): held} if held else {}),
        **({("test_kept", ()): kept} if kept else {}),
        ("test_imports_total", ()): imports,
    }


@contextlib.contextmanager
def metrics_gunicorn(tmp_path: Path, preload: bool) -> Iterator[Master]:
    args = ["--workers", str(WORKERS), "--pythonpath", "tests"]
    args += ["--preload"] if preload else []
    log = tmp_path / "gunicorn.log"
    with launch(
        Master, args, workers=WORKERS, log=log, app="metrics_app:application", ready_path=STATS
    ) as master:
        yield master


def _imports(port: int) -> float | None:
    """How many processes imported the app (a worker appears before it has loaded it)."""
    return scrape(port).get(("test_imports_total", ()))


def _segments(master: int) -> list[Path]:
    return sorted(SHM_DIR.glob(f"raindrops-metric-{master}-*"))


@pytest.mark.parametrize("preload", [False, True], ids=["after-fork", "preload"])
def test_metrics_are_exact_under_gunicorn_with_a_sigkill(preload: bool, tmp_path: Path) -> None:
    """Counters and histograms keep what a killed worker counted, a livesum gauge drops it, a sum
    gauge keeps it; the replacement worker counts on in the same memory."""
    with metrics_gunicorn(tmp_path, preload) as server:
        imports = 1 if preload else WORKERS  # the master imported the app, or every worker did
        wait_for(lambda: _imports(server.port), lambda seen: seen == imports, 30, "the imports")
        work(server.port, 400, 8)
        holders = collections.Counter(int(server.get("/hold").body) for _ in range(40))
        assert scrape(server.port) == expected(400, 40, 40, imports)
        files = _segments(server.pid)
        if preload:
            assert files == [], "inherited memory: nothing in /dev/shm"
        else:
            assert len(files) == 5, "one segment per metric, shared by the workers"
            assert {(path.stat().st_mode & 0o777, path.stat().st_uid) for path in files} == {
                (0o600, os.geteuid())
            }

        victim, held = holders.most_common(1)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            server.worker_pids,
            lambda pids: len(pids) == WORKERS and victim not in pids,
            30,
            "gunicorn to replace the killed worker",
        )
        replaced = imports if preload else imports + 1
        after_kill = expected(400, 40 - held, 40, replaced)
        wait_for(lambda: scrape(server.port), lambda seen: seen == after_kill, 30, "the reading")

        work(server.port, 100, 4)
        holders.update(int(server.get("/hold").body) for _ in range(10))
        assert scrape(server.port) == expected(500, 50 - held, 50, replaced)
        assert len(_segments(server.pid)) == (0 if preload else 5)
        assert "Traceback" not in server.log_text()


def test_gunicorn_uvicorn_workers_share_the_metrics(tmp_path: Path) -> None:
    """gunicorn -k uvicorn_worker.UvicornWorker without --preload: each ASGI worker builds the
    metrics at import and finds its master's segments (the worker's signal handlers tell it is
    one)."""
    pytest.importorskip("uvicorn_worker")
    args = ["--workers", "2", "--pythonpath", "tests", "-k", "uvicorn_worker.UvicornWorker"]
    log = tmp_path / "gunicorn.log"
    app = "metrics_app:asgi_application"
    with launch(Master, args, workers=2, log=log, app=app, ready_path=STATS) as server:
        wait_for(lambda: _imports(server.port), lambda seen: seen == 2, 30, "both imports")
        work(server.port, 200, 4)
        assert scrape(server.port) == expected(200, 0, 0, 2)
        assert len(_segments(server.pid)) == 5


UWSGI = str(Path(sys.executable).parent / "uwsgi")


@pytest.mark.parametrize("lazy", [False, True], ids=["forked-in-c", "lazy-apps"])
def test_uwsgi_workers_share_the_metrics(lazy: bool, tmp_path: Path) -> None:
    """uWSGI forks its workers in C after loading the app in the master (inherited memory), or
    loads it in each worker with --lazy-apps (segments named after the master)."""
    if not os.path.exists(UWSGI):
        pytest.skip("pyuwsgi is not installed")
    port = free_port()
    log = tmp_path / "uwsgi.log"
    command = [UWSGI, "--http-socket", f"127.0.0.1:{port}", "--pythonpath", "tests"]
    command += ["--module", "metrics_app:application", "--die-on-term", "--need-app"]
    command += ["--disable-logging", "--master", "--processes", "3"]
    command += ["--lazy-apps"] if lazy else []
    imports = 3 if lazy else 1
    with processes.running(command, log=log, cwd=ROOT, env=_environment()) as process:
        try:
            assert wait_ready(process, lambda: answers(port, STATS), "uWSGI", log)
            wait_for(lambda: _imports(port), lambda seen: seen == imports, 30, "the imports")
            work(port, 200, 4)
            holds = [request(port, "/hold").status for _ in range(6)]
            assert scrape(port) == expected(200, 6, 6, imports) and holds == [200] * 6
            assert len(_segments(process.pid)) == (5 if lazy else 0)
        finally:
            processes.stop(process)
            remove_segments(process.pid)


def _environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if "RAINDROPS" not in key}
    environment.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return environment


def test_uvicorn_spawned_workers_share_the_metrics(tmp_path: Path) -> None:
    """uvicorn --workers spawns its workers: each imports the app and builds the metrics, and
    they meet in the segments named after the supervisor."""
    pytest.importorskip("uvicorn")
    port = free_port()
    log = tmp_path / "uvicorn.log"
    app = "tests.metrics_app:asgi_application"
    command = [sys.executable, "-m", "uvicorn", "--workers", "2", "--port", str(port), app]
    with processes.running(command, log=log, cwd=ROOT, env=_environment()) as process:
        try:
            assert wait_ready(process, lambda: answers(port, STATS), "uvicorn", log)
            wait_for(lambda: _imports(port), lambda seen: seen == 2, 30, "both workers' imports")
            work(port, 200, 4)
            assert scrape(port) == expected(200, 0, 0, 2)
            assert len(_segments(process.pid)) == 5
        finally:
            processes.stop(process)
            remove_segments(process.pid)
