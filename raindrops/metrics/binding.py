"""How a metric finds the segment its server's workers share: segments.ServerWide, at first use.

A metric is built where the application is imported: in the master before it
forks (gunicorn --preload, uWSGI without --lazy-apps) or in each worker. It
makes anonymous shared memory at once, as the middleware does, and binds at
its first use in each process (labels(), a method call, or a read of the
endpoint), never at import:
- a process forked from the one that built it (after a preload) keeps the
  memory it inherited;
- in the process that built it, a worker of a prefork server takes the
  segment named after its master (kind "metric", the definition in the
  digest), as the middleware's workers do at their first request;
- anything else (a master before it forks, a single-process server, a
  script) keeps the anonymous memory, which its forked children share.

A metric has no WSGI environ to ask whether the process is a worker, so
worker_process() tells by what the server left in the process.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from collections.abc import Iterator, Mapping
from functools import partial

from raindrops import segments
from raindrops.metrics.table import Layout, MetricSegment

KIND = "metric"
_MULTIPROCESS = "wsgi.multiprocess"
_GUNICORN_WORKER_SIGNALS = (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1)


def _gunicorn_worker() -> bool:
    """A gunicorn worker: its Worker (or UvicornWorker) handles these signals with its own methods
    (Worker.init_signals, before the app is loaded); the master never does."""
    base = sys.modules.get("gunicorn.workers.base")
    worker_class = getattr(base, "Worker", None)
    if not isinstance(worker_class, type):
        return False
    return any(
        isinstance(getattr(signal.getsignal(number), "__self__", None), worker_class)
        for number in _GUNICORN_WORKER_SIGNALS
    )


def worker_process() -> bool:
    """Whether this process is one of the workers of a prefork server, as far as it can tell: a
    uWSGI worker (its master builds before forking), a multiprocessing child (uvicorn and
    hypercorn --workers spawn theirs), or a gunicorn worker."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None:
        return bool(uwsgi.worker_id() >= 1)
    if multiprocessing.parent_process() is not None:
        return True
    return _gunicorn_worker()


class _Server(Mapping[str, bool]):
    """The one question segments.ServerWide asks of a WSGI environ, answered when it asks."""

    def __getitem__(self, key: str) -> bool:
        if key != _MULTIPROCESS:
            raise KeyError(key)
        return worker_process()

    def __iter__(self) -> Iterator[str]:
        return iter((_MULTIPROCESS,))

    def __len__(self) -> int:
        return 1


SERVER = _Server()


class Shared:
    """One metric's segment, found once per process the way the middleware's is."""

    def __init__(self, layout: Layout) -> None:
        self.found = segments.ServerWide(
            partial(MetricSegment, layout),
            given=None,
            name=None,
            kind=KIND,
            path=layout.definition,
            prepare=MetricSegment.stamp,
        )

    def segment(self) -> MetricSegment:
        """This process's segment, bound at its first call here."""
        return self.found.get(SERVER)

    @property
    def degraded(self) -> str | None:
        """Why this process does not use its server's segment (segments.degraded_reason)."""
        return self.found.degraded
