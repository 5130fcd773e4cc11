"""App configuration: registers the system checks."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class LightspeedOAuthConfig(AppConfig):
    name = "django_lightspeed_oauth"
    label = "lightspeed_oauth"
    verbose_name = _("Lightspeed OAuth")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import logging

        from . import (
            checks,  # noqa: F401  (registers the checks)
            signals,
        )
        from .mail import email_on_reauthorization

        signals.reauthorization_required.connect(
            email_on_reauthorization, dispatch_uid="lightspeed_oauth.email_on_reauthorization"
        )
        from .oauth import RedactGrantParameters

        # A logger's filters see only the records of that logger, not of its children.
        for name in ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.connection"):
            urllib3_logger = logging.getLogger(name)
            if not any(isinstance(f, RedactGrantParameters) for f in urllib3_logger.filters):
                urllib3_logger.addFilter(RedactGrantParameters())
