"""gunicorn configuration used by test_last_data_recv: TCP_DEFER_ACCEPT on every listener.

The hook the README documents for raindrops.LastDataRecv: the master sets the
option once its listeners are bound, before any worker accepts.
"""

from __future__ import annotations

from typing import Any

from raindrops import defer_accept


def when_ready(server: Any) -> None:
    changed = defer_accept(server.LISTENERS)
    server.log.info("raindrops: TCP_DEFER_ACCEPT set on %d listener(s)", len(changed))
