"""Flask behind raindrops.Middleware.

gunicorn -w 2 examples.frameworks.flask_app:app
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, request

import raindrops
from examples.frameworks import seconds

app = Flask(__name__)


@app.after_request
def remember_url_rule(response: Response) -> Response:
    """Flask clears its request from the environ when the request ends: keep the matched rule
    ("/slow", not "/slow?seconds=1") where route= finds it."""
    rule = request.url_rule
    request.environ["raindrops.route"] = rule.rule if rule is not None else None
    return response


def url_rule(environ: dict[str, Any]) -> object:
    return environ.get("raindrops.route")


@app.get("/")
def index() -> str:
    return "hello from Flask\n"


@app.get("/slow")
def slow() -> str:
    time.sleep(seconds(request.args.get("seconds")))
    return "slept\n"


# The recipe: wrap Flask's WSGI callable, not the Flask object, so that `app` stays a
# Flask (flask run, app.test_client(), extensions) and the endpoint answers before routing.
# route= adds Flask's URL rule ("/slow", not "/slow?seconds=1") as a `route` label.
app.wsgi_app = raindrops.Middleware(app.wsgi_app, route=url_rule)  # type: ignore[method-assign]
