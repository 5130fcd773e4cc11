"""The demo site's URLs: the admin, the app's flow and the sandbox authorization servers."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

urlpatterns = [
    path("", TemplateView.as_view(template_name="testproject/home.html"), name="home"),
    path("admin/", admin.site.urls),
    path("lightspeed/", include("django_lightspeed_oauth.urls")),
    # Development and test sites only: without DEBUG it answers 404 (see SANDBOX_ENABLED in README.rst).
    path("lightspeed-sandbox/", include("django_lightspeed_oauth.sandbox.urls")),
]
