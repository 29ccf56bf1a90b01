"""How many requests this worker can hold at once, where the server tells it.

`busy_seconds / workers` is a utilization only for one-request workers; a
gthread worker with 8 threads can be 800% "busy". The right denominator is
the capacity: 1 for a sync worker, threads for gthread and uWSGI --threads,
the connection limit for gevent and eventlet workers. Each worker finds its
own once, on its first request, and writes it in its scoreboard slot, so the
server's capacity is the sum over live workers.

Unknown (0) where the server does not say: uvicorn and hypercorn accept
without a limit unless told one, which the ASGI scope does not carry; pass
`worker_capacity=` to the middleware there.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

UNKNOWN = 0
_FRAMES_MAX = 32  # a gunicorn worker's handle_request sits a few frames above the middleware


def checked(worker_capacity: int | None) -> int | None:
    """The middleware's `worker_capacity=` argument, refused unless a positive int or None."""
    if worker_capacity is None:
        return None
    if worker_capacity.__class__ is not int or worker_capacity < 1:
        raise ValueError(f"worker_capacity must be a positive int or None, not {worker_capacity!r}")
    return worker_capacity


def of_this_worker(frame: FrameType | None) -> int:
    """This worker's capacity, from uWSGI or from the gunicorn worker calling the middleware
    (found among the calling frames, starting at `frame`); UNKNOWN elsewhere."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None:
        return _positive(getattr(uwsgi, "cores", UNKNOWN))
    if "gunicorn.workers.base" in sys.modules:
        worker = _gunicorn_worker(frame)
        if worker is not None:
            return _gunicorn_capacity(worker)
    return UNKNOWN


def _gunicorn_worker(frame: FrameType | None) -> Any:
    worker_class = sys.modules["gunicorn.workers.base"].Worker
    for _ in range(_FRAMES_MAX):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, worker_class):
            return candidate
        frame = frame.f_back
    return None


def _gunicorn_capacity(worker: Any) -> int:
    """1 for sync, threads for gthread, worker_connections for the async (greenlet) workers."""
    modules = sys.modules
    threaded = modules.get("gunicorn.workers.gthread")
    if threaded is not None and isinstance(worker, threaded.ThreadWorker):
        return _positive(getattr(worker.cfg, "threads", UNKNOWN))
    greenlets = modules.get("gunicorn.workers.base_async")
    if greenlets is not None and isinstance(worker, greenlets.AsyncWorker):
        return _positive(getattr(worker, "worker_connections", UNKNOWN))
    sync = modules.get("gunicorn.workers.sync")
    if sync is not None and isinstance(worker, sync.SyncWorker):
        return 1
    return UNKNOWN


def _positive(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
