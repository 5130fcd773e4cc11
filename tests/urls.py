from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("lightspeed/", include("django_lightspeed_oauth.urls")),
    path("lightspeed-sandbox/", include("django_lightspeed_oauth.sandbox.urls")),
]
