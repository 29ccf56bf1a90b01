"""raindrops.Watcher: listener statistics over time, as a WSGI application.

Each `delay` seconds one process reads `active` and `queued` of every watched
listener and keeps their statistics in shared memory, with the last
`history` samples that the dashboard charts. Every worker of a server answers
from that memory, so all of them show the same series, peaks and reset times;
the kernel is read once per interval for the whole server. Its layers, one
file each:

- app.py: the Watcher itself, its routes and endpoints;
- sampler.py: each process's sampler thread, which samples while its process
  holds the lease and otherwise waits to take it over;
- shared.py: the shared memory: the lease, the sequence lock, the listener
  table, the statistics and the rings of samples;
- aggregate.py: count, min, max, mean, standard deviation and log2 buckets of
  one number, as shared.py keeps them;
- pages.py: the HTML pages, with static/dashboard.js and static/dashboard.css
  inlined under a Content-Security-Policy;
- server.py: the threaded wsgiref server of `raindrops watch` (not imported
  here: importing raindrops does not import http.server).
"""

from raindrops.watcher.app import DELAY, HISTORY, Watcher
from raindrops.watcher.sampler import View

__all__ = ["DELAY", "HISTORY", "View", "Watcher"]
