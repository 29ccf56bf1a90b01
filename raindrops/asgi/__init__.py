"""The ASGI layer: raindrops.asgi.Middleware counts requests of ASGI 3 applications.

It shares the WSGI layer's scoreboard, access rule, formats and answers (raindrops.wsgi.http):
only how a request is seen (a scope and messages instead of an environ) differs.
"""

from raindrops.asgi.middleware import Middleware

__all__ = ["Middleware"]
