"""A minimal Django project (no database, no apps) behind raindrops, over WSGI and ASGI."""
