"""What the WSGI and ASGI middlewares are built from: their keywords, checked once, here.

Both take the same keywords; a bad one fails at construction with an error
that names it, before any request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from raindrops import capacity, linux, scoreboard
from raindrops.scoreboard import Scoreboard
from raindrops.wsgi import http


class Settings(NamedTuple):
    path: str
    access: http.AccessRule
    listeners: linux.ListenerSet
    counts: scoreboard.ServerBoard
    route: Callable[[Any], object] | None
    worker_capacity: int | None


def middleware_settings(
    path: str,
    listeners: Sequence[str] | None,
    stats: Scoreboard | None,
    *,
    name: str | None,
    allow: Iterable[str],
    trusted_proxies: Iterable[str],
    worker_capacity: int | None,
    buckets: Iterable[float],
    route: Callable[[Any], object] | None,
    request_is: str,
) -> Settings:
    """The checked settings; `request_is` names what route= is given ("environ", "scope")."""
    if route is not None and not callable(route):
        raise ValueError(f"route must be a callable taking the {request_is}, not {route!r}")
    given_capacity = capacity.checked(worker_capacity)
    path, access = http.endpoint_settings(path, allow, trusted_proxies)
    own_listeners = linux.ListenerSet.own_or(listeners)  # bad addresses fail now
    counts = scoreboard.ServerBoard.configured(path, stats, name, buckets, route is not None)
    return Settings(path, access, own_listeners, counts, route, given_capacity)
