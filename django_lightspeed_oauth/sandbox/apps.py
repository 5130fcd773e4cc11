"""App configuration of the sandbox authorization servers."""

from __future__ import annotations

from django.apps import AppConfig


class SandboxConfig(AppConfig):
    name = "django_lightspeed_oauth.sandbox"
    label = "lightspeed_sandbox"
    verbose_name = "Lightspeed OAuth sandbox"
    default_auto_field = "django.db.models.BigAutoField"
