"""Examples run from the repository (not installed): the demo app and its gunicorn config."""
