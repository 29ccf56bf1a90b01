"""gunicorn settings for `make demo`: `gunicorn -c python:examples.demo_config examples.demo:app`.

TCP_DEFER_ACCEPT on the listeners makes a connection wait in the kernel until
its request has arrived, so LastDataRecv measures how long requests waited in
the listen queue.
"""

from __future__ import annotations

from typing import Any

from raindrops import defer_accept


def when_ready(server: Any) -> None:
    defer_accept(server.LISTENERS)
