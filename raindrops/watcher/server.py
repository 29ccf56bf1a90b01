"""A small threaded HTTP server for WSGI apps: what `raindrops watch` serves the Watcher with.

wsgiref from the standard library, with a thread per connection (a /tail
stream must not hold up the dashboard), quiet, and putting the client's
socket in environ["raindrops.socket"] (where raindrops.wsgi.http.client_socket
looks) so that a stream notices a client that left. raindrops.watcher does not
import this module, so that importing raindrops does not import http.server.
"""

from __future__ import annotations

import socket
import socketserver
import wsgiref.simple_server
from typing import Any


class _Handler(wsgiref.simple_server.WSGIRequestHandler):
    """wsgiref's handler, quiet, and exposing the client socket so /tail notices a disconnect."""

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ["raindrops.socket"] = self.connection
        return environ

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WatchServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    """A thread per connection: a /tail stream must not hold up the dashboard."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class _WatchServer6(WatchServer):
    address_family = socket.AF_INET6


def make_server(host: str, port: int, app: Any) -> WatchServer:
    """A threaded wsgiref server for `app` on host:port (port 0 picks a free one)."""
    server_class = _WatchServer6 if ":" in host else WatchServer
    server = wsgiref.simple_server.make_server(
        host, port, app, server_class=server_class, handler_class=_Handler
    )
    assert isinstance(server, WatchServer)
    return server


__all__ = ["WatchServer", "make_server"]
