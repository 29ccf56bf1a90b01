"""Framework recipes: Flask, Django (WSGI and ASGI) and FastAPI apps wrapped in raindrops.

Each serves / (a greeting), /slow?seconds=S (sleeps, at most 30 s) and
/_raindrops (raindrops' statistics), and is run by tests/test_frameworks.py
under a real gunicorn with two workers.
"""

SLOW_SECONDS_MAX = 30.0


def seconds(value: str | None, default: float = 1.0) -> float:
    """How long /slow sleeps: the query's number, clamped to 0..SLOW_SECONDS_MAX."""
    try:
        number = float(value) if value is not None else default
    except ValueError:
        number = default
    return min(max(number, 0.0), SLOW_SECONDS_MAX)
