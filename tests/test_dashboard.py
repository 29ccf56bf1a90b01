"""The Watcher's dashboard in a real headless Chromium, served by `raindrops watch`.

Chromium runs the page's script, which draws each listener's chart into SVG
elements carrying their point counts (data-points, data-max-active,
data-max-queued); --dump-dom shows them once the page's timers ran. A
screenshot goes to test-artifacts/dashboard.png. In CI (CI=true) a missing
Chromium fails the test; elsewhere it is skipped with one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from load import Load, raindrops_watch, wait_until
from servers import ROOT

from testsupport import processes, programs

ARTIFACTS = ROOT / "test-artifacts"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER_TIMEOUT = 60.0
DELAY = 0.1


@pytest.fixture(scope="module")
def browser() -> str:
    return programs.require(*BROWSERS)  # a skip without it, a failure in CI


def run_browser(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",
        *args,
    ]
    environment = {**os.environ, "HOME": str(profile)}
    return processes.run(command, timeout=BROWSER_TIMEOUT, env=environment, text=True)


@pytest.fixture
def load() -> Iterator[Load]:
    """A listener whose load changes every few samples, so that the chart has a shape."""
    with Load() as listener:
        stop = threading.Event()

        def vary() -> None:
            shape = [(1, 0), (2, 0), (3, 1), (4, 2), (5, 3), (4, 2), (3, 1), (2, 0)]
            step = 0
            while not stop.wait(3 * DELAY):
                listener.set(*shape[step % len(shape)])
                step += 1

        listener.set(1, 0)
        thread = threading.Thread(target=vary, daemon=True)
        thread.start()
        try:
            yield listener
        finally:
            stop.set()
            thread.join(10)


@pytest.fixture
def watch(load: Load) -> Iterator[int]:
    """`raindrops watch` on a free port, watching the loaded listener and an idle one; its port."""
    with Load() as idle:
        watched = ("--delay", str(DELAY), "--history", "80", load.address, idle.address)
        with raindrops_watch(*watched) as (process, port):
            yield port
            process.send_signal(signal.SIGINT)
            assert process.wait(10) == 130


def series(port: int) -> Any:
    from servers import request

    return json.loads(request(port, "/series.json").body)


def chart(dom: str, address: str) -> dict[str, int] | None:
    """The data-* counts of the listener's chart in the rendered DOM."""
    for tag in re.findall(r"<svg\b[^>]*>", dom):
        if f'data-listener="{address}"' in tag:
            return {
                name: int(value)
                for name, value in re.findall(r'data-(points|max-active|max-queued)="(\d+)"', tag)
            }
    return None


def test_dashboard_draws_the_load_and_saves_a_screenshot(
    browser: str, watch: int, load: Load, tmp_path: Path
) -> None:
    # Enough samples with load first: the page's first request fetches all of them.
    wait_until(
        lambda: (
            sum(1 for _, values in series(watch)["points"] if values.get(load.address, [0])[0] > 0)
            >= 40
        ),
        timeout=20,
        what="40 samples with load",
    )
    url = f"http://127.0.0.1:{watch}/"
    drawn: dict[str, int] | None = None
    for attempt in range(5):
        result = run_browser(browser, tmp_path / f"profile-{attempt}", "--dump-dom", url)
        assert result.returncode == 0, result.stderr[-2000:]
        drawn = chart(result.stdout, load.address)
        if drawn and drawn["points"] >= 2 and drawn["max-active"] >= 1:
            break
        time.sleep(0.5)
    assert drawn and drawn["points"] >= 40 and drawn["max-active"] >= 3, drawn
    assert '<p id="status" role="status"></p>' in result.stdout  # no fetch failed

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    shot = run_browser(
        browser,
        tmp_path / "shot",
        f"--screenshot={screenshot}",
        "--window-size=1280,800",
        "--hide-scrollbars",
        url,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
