"""/ and /slow; /_raindrops is answered by raindrops before Django sees the request."""

from django.urls import path

from examples.frameworks.django_site import views

urlpatterns = [
    path("", views.index),
    path("slow", views.slow),
]
