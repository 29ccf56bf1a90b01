"""Flask behind raindrops.Middleware.

gunicorn -w 2 examples.frameworks.flask_app:app
"""

from __future__ import annotations

import time

from flask import Flask, request

import raindrops
from examples.frameworks import seconds

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "hello from Flask\n"


@app.get("/slow")
def slow() -> str:
    time.sleep(seconds(request.args.get("seconds")))
    return "slept\n"


# The recipe: wrap Flask's WSGI callable, not the Flask object, so that `app` stays a
# Flask (flask run, app.test_client(), extensions) and the endpoint answers before routing.
app.wsgi_app = raindrops.Middleware(app.wsgi_app)  # type: ignore[method-assign]
