"""gunicorn settings for `make demo`: `gunicorn -c python:examples.demo_config examples.demo:app`.

TCP_DEFER_ACCEPT on the listeners makes a connection wait in the kernel until
its request has arrived, so LastDataRecv measures how long requests waited in
the listen queue. raindrops.gunicorn's hooks give the workers' segments names
that only they can compute and remove them when the server stops; this
configuration adds its own work to them, the way any configuration with hooks
of its own composes with them. The demo's /count counter is made per run
(unless RAINDROPS_DEMO_COUNTER names one) and removed with the rest, so a new
run starts from zero.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from raindrops import defer_accept
from raindrops import gunicorn as raindrops_hooks
from raindrops.counters import Raindrops

COUNTER_ENV = "RAINDROPS_DEMO_COUNTER"
# Read when the configuration loads: before the master imports the app (--preload) or forks.
_OWN_COUNTER = None if COUNTER_ENV in os.environ else f"/raindrops-demo-count-{os.getpid()}"
if _OWN_COUNTER is not None:
    os.environ[COUNTER_ENV] = _OWN_COUNTER


def on_starting(server: Any) -> None:
    raindrops_hooks.on_starting(server)


def when_ready(server: Any) -> None:
    defer_accept(server.LISTENERS)


def on_exit(server: Any) -> None:
    raindrops_hooks.on_exit(server)
    if _OWN_COUNTER is not None:
        with contextlib.suppress(OSError, ValueError):  # none made, or not ours to remove
            Raindrops.open(_OWN_COUNTER).unlink()
