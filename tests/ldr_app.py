"""What gunicorn serves in test_last_data_recv: raindrops.LastDataRecv around a tiny application.

GET /sleep?seconds=S holds the worker, /defer reports TCP_DEFER_ACCEPT of the
listeners this worker inherited, anything else answers the worker's pid.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from raindrops import LastDataRecv


def defer_accept_of_listeners() -> list[int]:
    """TCP_DEFER_ACCEPT of every listening TCP socket open in this process."""
    values = []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:
            continue
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if sock.family in (socket.AF_INET, socket.AF_INET6) and listening:
                values.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT))
        except OSError:
            pass
        finally:
            sock.detach()
    return values


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/sleep":
        time.sleep(float(parse_qs(environ.get("QUERY_STRING", "")).get("seconds", ["0"])[0]))
    body = json.dumps(defer_accept_of_listeners()) if path == "/defer" else str(os.getpid())
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


app = LastDataRecv(hello)
