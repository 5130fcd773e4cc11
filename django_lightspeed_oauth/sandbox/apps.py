"""App configuration of the sandbox authorization servers, and whether they serve."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings


def sandbox_enabled() -> bool:
    """Whether the sandbox's pages answer: ``SANDBOX_ENABLED`` when set, else ``DEBUG``."""
    from ..conf import app_settings

    enabled = app_settings.SANDBOX_ENABLED
    return bool(settings.DEBUG) if enabled is None else enabled


class SandboxConfig(AppConfig):
    name = "django_lightspeed_oauth.sandbox"
    label = "lightspeed_sandbox"
    verbose_name = "Lightspeed OAuth sandbox"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the sandbox's system checks)
