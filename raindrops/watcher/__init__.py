"""raindrops.Watcher: listener statistics over time, as a WSGI application.

A sampler thread (one per process, started by the first request, with its own
netlink socket) reads `active` and `queued` of every watched listener each
`delay` seconds and keeps their statistics; the dashboard charts the last
`history` samples. Its layers, one file each:

- app.py: the Watcher itself, its routes and endpoints;
- sampler.py: the sampler thread and the statistics it keeps per listener;
- aggregate.py: count, min, max, mean, standard deviation and log2 buckets of
  one number, as the sampler keeps them;
- pages.py: the HTML pages, with static/dashboard.js and static/dashboard.css
  inlined under a Content-Security-Policy;
- server.py: the threaded wsgiref server of `raindrops watch` (not imported
  here: importing raindrops does not import http.server).
"""

from raindrops.watcher.app import DELAY, HISTORY, Watcher
from raindrops.watcher.sampler import View

__all__ = ["DELAY", "HISTORY", "View", "Watcher"]
