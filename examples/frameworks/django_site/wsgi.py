"""Django over WSGI behind raindrops.Middleware.

gunicorn -w 2 examples.frameworks.django_site.wsgi:application
"""

import os

from django.core.wsgi import get_wsgi_application

import raindrops

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.frameworks.django_site.settings")

application = raindrops.Middleware(get_wsgi_application())
