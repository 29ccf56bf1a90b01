"""The least Django needs to serve views: no database, no installed apps, no middleware."""

SECRET_KEY = "raindrops-example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.frameworks.django_site.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
TIME_ZONE = "UTC"  # Django's default (America/Chicago) would also set the process's TZ
