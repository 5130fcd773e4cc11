"""App configuration: registers the system checks."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class LightspeedOAuthConfig(AppConfig):
    name = "django_lightspeed_oauth"
    label = "lightspeed_oauth"
    verbose_name = _("Lightspeed OAuth")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)
