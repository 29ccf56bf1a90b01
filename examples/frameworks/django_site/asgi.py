"""Django over ASGI behind raindrops.ASGIMiddleware.

gunicorn -w 2 -k uvicorn_worker.UvicornWorker examples.frameworks.django_site.asgi:application
"""

import os

from django.core.asgi import get_asgi_application

import raindrops

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.frameworks.django_site.settings")

application = raindrops.ASGIMiddleware(get_asgi_application())
