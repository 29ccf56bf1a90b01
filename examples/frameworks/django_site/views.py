"""Views that run alike under WSGI and ASGI.

/slow is an async view: under ASGI, Django runs sync views one at a time in a
single thread per worker (thread_sensitive), so a sleeping sync view would hold
back every other request of its worker. Under WSGI Django runs the async view
in an event loop of its own, blocking the worker as a sync view would.
"""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse

from examples.frameworks import seconds


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello from Django\n", content_type="text/plain")


async def slow(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(seconds(request.GET.get("seconds")))
    return HttpResponse("slept\n", content_type="text/plain")
