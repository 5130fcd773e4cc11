"""System checks of the sandbox app (ids ``lightspeed_sandbox.E001``...): it stays off production sites."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.translation import gettext as _

from ..conf import SETTING_NAME, app_settings
from ..exceptions import ConfigurationError


@register(Tags.security)
def check_sandbox_outside_debug(app_configs: Any = None, **kwargs: Any) -> list:
    """E001 / W001: the sandbox installed on a site without ``DEBUG``; E002: a bad ``SANDBOX_ENABLED``."""
    try:
        enabled = app_settings.SANDBOX_ENABLED
    except ConfigurationError as err:
        return [
            Error(
                err.message,
                hint=_("Leave SANDBOX_ENABLED out (it then follows DEBUG), or set it to True or False."),
                id="lightspeed_sandbox.E002",
            )
        ]
    if settings.DEBUG or enabled is False:
        return []
    if enabled is None:
        return [
            Error(
                _(
                    "The Lightspeed sandbox app (django_lightspeed_oauth.sandbox) is installed while DEBUG "
                    "is off: its servers hand out tokens to anyone and its switches change how they answer."
                ),
                hint=_(
                    "Remove django_lightspeed_oauth.sandbox from INSTALLED_APPS (and its URLs) on a "
                    'production site. On a test or staging site set %(setting)s["SANDBOX_ENABLED"] to '
                    "True to serve it anyway, or to False to keep it installed but answering 404."
                )
                % {"setting": SETTING_NAME},
                id="lightspeed_sandbox.E001",
            )
        ]
    return [
        Warning(
            _(
                '%(setting)s["SANDBOX_ENABLED"] is True while DEBUG is off: the sandbox servers answer '
                "anyone who reaches them (its switches stay staff-only)."
            )
            % {"setting": SETTING_NAME},
            hint=_("Only on a test or staging site that the public cannot reach."),
            id="lightspeed_sandbox.W001",
        )
    ]
