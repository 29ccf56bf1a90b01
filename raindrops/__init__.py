"""raindrops: real-time statistics for preforking Python web servers.

Lock-free counters in shared memory, each on its own cache line, shared by
every worker process of a server such as gunicorn or uWSGI.
"""

from raindrops.asgi.middleware import Middleware as ASGIMiddleware
from raindrops.counters import MAX, PAGE_SIZE, SIZE, Raindrops, Struct, StructBase
from raindrops.linux import ListenStats
from raindrops.scoreboard import Scoreboard
from raindrops.tcp_info import TCP_STATES, TCPInfo
from raindrops.watcher import Watcher
from raindrops.wsgi.last_data_recv import LastDataRecv, defer_accept
from raindrops.wsgi.middleware import Middleware

__version__ = "0.1.0"

__all__ = [
    "ASGIMiddleware",
    "MAX",
    "PAGE_SIZE",
    "SIZE",
    "TCP_STATES",
    "LastDataRecv",
    "ListenStats",
    "Middleware",
    "Raindrops",
    "Scoreboard",
    "Struct",
    "StructBase",
    "TCPInfo",
    "Watcher",
    "__version__",
    "defer_accept",
]
