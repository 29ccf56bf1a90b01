"""gunicorn server hooks: segments that only this server's workers can name, removed at exit.

Without preloading, the workers of one master meet in named segments in
/dev/shm (raindrops.segments). These hooks run in the master:
- `on_starting` hands the workers a random key that goes into those names,
  so another user cannot compute a name and create it first, and sweeps the
  segments that crashed masters left behind;
- `on_exit`, once every worker has exited, removes this master's segments,
  so a clean stop leaves nothing behind and a restart starts from zero.

Use this module as the configuration file:

    gunicorn -c python:raindrops.gunicorn myapp:application

or import the hooks into your own configuration file (names are what gunicorn
looks for), calling them from your own hooks of the same name if you have some:

    from raindrops.gunicorn import on_exit, on_starting
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from raindrops import segments

_KEY_BYTES = 16


def on_starting(server: Any) -> None:
    """The master, before it binds or forks: a fresh key for this server's segment names."""
    os.environ[segments.SERVER_KEY_ENV] = secrets.token_hex(_KEY_BYTES)
    removed = segments.remove_stale_segments()
    if removed:
        server.log.info("raindrops: removed %d segment(s) of stopped servers", len(removed))


def on_exit(server: Any) -> None:
    """The master, after its workers have exited: removes the segments they shared."""
    workers_uid = getattr(server.cfg, "uid", None)  # gunicorn --user: workers may not be root
    owners = [workers_uid] if isinstance(workers_uid, int) else []
    removed = segments.remove_server_segments(owners=owners)
    server.log.info("raindrops: removed %d segment(s) of this server", len(removed))


__all__ = ["on_exit", "on_starting"]
