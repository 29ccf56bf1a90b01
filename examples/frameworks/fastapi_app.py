"""FastAPI with raindrops.ASGIMiddleware added as Starlette middleware.

gunicorn -w 2 -k uvicorn_worker.UvicornWorker examples.frameworks.fastapi_app:app
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

import raindrops
from examples.frameworks import SLOW_SECONDS_MAX

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def index() -> str:
    return "hello from FastAPI\n"


@app.get("/slow", response_class=PlainTextResponse)
async def slow(seconds: float = 1.0) -> str:
    await asyncio.sleep(min(max(seconds, 0.0), SLOW_SECONDS_MAX))
    return "slept\n"


# The recipe: Starlette builds raindrops.ASGIMiddleware(<its stack>) in each worker at
# the app's first call; keywords (path=..., allow=...) go after the class.
app.add_middleware(raindrops.ASGIMiddleware)
