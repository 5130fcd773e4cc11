"""System checks (ids ``lightspeed_oauth.E001``...), each with a hint saying how to fix it."""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError
from django.urls import NoReverseMatch, reverse
from django.utils.translation import gettext as _

from .conf import DEFAULTS, SETTING_NAME, app_settings
from .exceptions import ConfigurationError

GENERATE_KEY = "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"


@register(Tags.security)
def check_encryption_keys(app_configs=None, **kwargs: Any) -> list:
    errors = []
    keys = app_settings.ENCRYPTION_KEYS
    if not keys and not settings.DEBUG:
        errors.append(
            Error(
                _(
                    '%(setting)s["ENCRYPTION_KEYS"] is empty: tokens would be encrypted with a key '
                    "derived from SECRET_KEY."
                )
                % {"setting": SETTING_NAME},
                hint=_("Generate a key with `%(command)s` and list it in ENCRYPTION_KEYS.")
                % {"command": GENERATE_KEY},
                id="lightspeed_oauth.E001",
            )
        )
    for position, key in enumerate(keys):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            errors.append(
                Error(
                    _('%(setting)s["ENCRYPTION_KEYS"][%(position)s] is not a valid Fernet key.')
                    % {"setting": SETTING_NAME, "position": position},
                    hint=_("Keys are 32 url-safe base64-encoded bytes; generate one with `%(command)s`.")
                    % {"command": GENERATE_KEY},
                    id="lightspeed_oauth.E002",
                )
            )
    return errors


@register()
def check_settings(app_configs=None, **kwargs: Any) -> list:
    messages: list = []
    unknown = sorted(app_settings.user_keys - set(DEFAULTS))
    if unknown:
        messages.append(
            Warning(
                _("%(setting)s has unknown keys: %(keys)s.")
                % {"setting": SETTING_NAME, "keys": ", ".join(unknown)},
                hint=_("Known keys: %(known)s. A misspelt key is silently ignored.")
                % {"known": ", ".join(sorted(DEFAULTS))},
                id="lightspeed_oauth.W001",
            )
        )
    from .providers import provider_classes

    try:
        provider_classes()
    except ConfigurationError as err:
        messages.append(
            Error(err.message, hint=_("Fix or remove the entry in PROVIDERS."), id="lightspeed_oauth.E003")
        )
    messages.extend(_lease_checks())
    messages.extend(_invitation_and_purge_checks())
    messages.extend(_celery_checks())
    if "django.contrib.sessions" not in settings.INSTALLED_APPS or not any(
        m.endswith("SessionMiddleware") for m in settings.MIDDLEWARE
    ):
        messages.append(
            Error(
                _(
                    "The authorization flow needs sessions: it binds each flow to the browser that "
                    "started it."
                ),
                hint=_("Add django.contrib.sessions to INSTALLED_APPS and SessionMiddleware to MIDDLEWARE."),
                id="lightspeed_oauth.E005",
            )
        )
    return messages


def _celery_checks() -> list:
    try:
        app_settings.CELERY_BATCH_SIZE  # noqa: B018 (the property validates it)
    except ConfigurationError as err:
        return [
            Error(
                err.message,
                hint=_("The Celery sweep sends this many companies per batch task; the default is 100."),
                id="lightspeed_oauth.E012",
            )
        ]
    return []


#: Settings of invitations and the purge whose value :data:`app_settings` validates on use.
INVITATION_AND_PURGE_SETTINGS = (
    "INVITATION_MAX_AGE",
    "INVITATION_RATE_LIMIT",
    "INVITATION_IP_RATE_LIMIT",
    "INVITATION_RATE_WINDOW",
    "INVITATION_RETENTION",
    "AUTHORIZATION_REQUEST_RETENTION",
    "TOKEN_EVENT_RETENTION",
    "PURGE_INTERVAL",
)


def _invitation_and_purge_checks() -> list:
    messages: list = []
    for name in INVITATION_AND_PURGE_SETTINGS:
        try:
            value = getattr(app_settings, name)
        except ConfigurationError as err:
            messages.append(
                Error(
                    err.message,
                    hint=_("See the settings reference in README.rst for the values it takes."),
                    id="lightspeed_oauth.E011",
                )
            )
            continue
        if name == "INVITATION_MAX_AGE" and value <= 0:
            messages.append(
                Error(
                    _("%(setting)s['INVITATION_MAX_AGE'] must be a positive number of seconds.")
                    % {"setting": SETTING_NAME},
                    hint=_("The default is 604800 (7 days)."),
                    id="lightspeed_oauth.E011",
                )
            )
    limited = any(
        _safe(lambda name=name: getattr(app_settings, name))
        for name in ("INVITATION_RATE_LIMIT", "INVITATION_IP_RATE_LIMIT")
    )
    backend = str(getattr(settings, "CACHES", {}).get("default", {}).get("BACKEND", ""))
    if limited and backend.endswith("DummyCache"):
        messages.append(
            Warning(
                _("The default cache is DummyCache: the invitation rate limits count nothing."),
                hint=_(
                    "Use a real cache (Redis, Memcached, the database cache) as CACHES['default'], "
                    "or set INVITATION_RATE_LIMIT and INVITATION_IP_RATE_LIMIT to None."
                ),
                id="lightspeed_oauth.W005",
            )
        )
    return messages


def _safe(read: Any) -> Any:
    try:
        return read()
    except ConfigurationError:
        return None


def _lease_checks() -> list:
    """E004: the rules that keep a live refresher's lease from ending under it."""
    from .leases import renew_interval

    try:
        lock_timeout = app_settings.LOCK_TIMEOUT
        interval = renew_interval()
        ceiling = app_settings.REFRESH_MAX_DURATION
        read_timeout = app_settings.REFRESH_READ_TIMEOUT
    except ConfigurationError as err:
        return [Error(err.message, id="lightspeed_oauth.E004")]
    problems = []
    if not 0 < interval <= lock_timeout / 2:
        problems.append(
            f"LOCK_RENEW_INTERVAL ({interval:g}s) must be positive and at most half of LOCK_TIMEOUT "
            f"({lock_timeout:g}s), so that one late renewal does not end a live refresher's lease"
        )
    if ceiling <= lock_timeout:
        problems.append(
            f"REFRESH_MAX_DURATION ({ceiling:g}s) must be longer than LOCK_TIMEOUT ({lock_timeout:g}s)"
        )
    if not 0 < read_timeout <= ceiling:
        problems.append(
            f"REFRESH_READ_TIMEOUT ({read_timeout:g}s) must be positive and at most REFRESH_MAX_DURATION "
            f"({ceiling:g}s)"
        )
    return [
        Error(
            _("%(setting)s: %(problem)s.") % {"setting": SETTING_NAME, "problem": problem},
            hint=_(
                "Otherwise a slow but live refresh could be taken over and its refresh token used twice. "
                "The defaults (LOCK_TIMEOUT 60, renewal every 20 s, REFRESH_MAX_DURATION 600, "
                "REFRESH_READ_TIMEOUT 120) satisfy every rule."
            ),
            id="lightspeed_oauth.E004",
        )
        for problem in problems
    ]


@register(Tags.urls)
def check_callback_url(app_configs=None, **kwargs: Any) -> list:
    try:
        reverse("lightspeed_oauth:callback")
    except NoReverseMatch:
        return [
            Error(
                _("The Lightspeed callback URL is not wired: lightspeed_oauth:callback does not resolve."),
                hint=_(
                    'Add path("lightspeed/", include("django_lightspeed_oauth.urls")) to your ROOT_URLCONF.'
                ),
                id="lightspeed_oauth.E006",
            )
        ]
    return []


@register(Tags.database)
def check_api_clients(app_configs=None, databases=None, **kwargs: Any) -> list:
    """Needs the database, so Django runs it with ``manage.py check --database default``."""
    if not databases:
        return []
    from .models import ApiClient
    from .providers import provider_classes

    messages: list = []
    try:
        clients = list(
            ApiClient.objects.filter(is_active=True).only(
                "slug",
                "provider",
                "environment",
                "redirect_uri",
                "provider_options",
                "scopes",
                "credentials_refused_at",
                "credentials_error",
                "client_secret",
                "authorize_url",
                "token_url",
            )
        )
    except DatabaseError:
        return []  # not migrated yet
    known = provider_classes()
    for client in clients:
        if client.provider not in known:
            messages.append(
                Error(
                    _("API client %(client)s uses the unknown provider %(provider)s.")
                    % {"client": repr(client.slug), "provider": repr(client.provider)},
                    hint=_("Known providers: %(known)s; or add its class to PROVIDERS.")
                    % {"known": ", ".join(known)},
                    obj=client,
                    id="lightspeed_oauth.E007",
                )
            )
            continue
        try:
            known[client.provider].validate_options(client.provider_options or {})
        except ConfigurationError as err:
            messages.append(
                Error(
                    _("API client %(client)s: %(error)s")
                    % {"client": repr(client.slug), "error": err.message},
                    hint=_("Fix its provider options in the admin."),
                    obj=client,
                    id="lightspeed_oauth.E008",
                )
            )
        if client.environment == "production" and not client.redirect_uri.startswith("https://"):
            messages.append(
                Warning(
                    _("API client %(client)s is a production client whose redirect URI is not https.")
                    % {"client": repr(client.slug)},
                    hint=_("Lightspeed sends the authorization code to this URI: use https in production."),
                    obj=client,
                    id="lightspeed_oauth.W002",
                )
            )
        messages.extend(_scope_and_credential_checks(client))
        messages.extend(_secret_check(client))
    return messages


def _secret_check(client: Any) -> list:
    """W006: a client secret this process cannot use (a missing key, or a refused binding)."""
    try:
        client.client_secret  # noqa: B018
    except ConfigurationError as err:  # DecryptionError, BindingError, or no keys at all
        return [
            Warning(
                _("API client %(client)s: its stored client secret cannot be used: %(error)s")
                % {"client": repr(client.slug), "error": err.message},
                hint=_(
                    "If its provider, environment, URLs or options were changed outside the app, "
                    "enter the secret again in the admin; if this process lacks a key of "
                    'LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"], add it (README: replacing a key is a rollout '
                    "in phases)."
                ),
                obj=client,
                id="lightspeed_oauth.W006",
            )
        ]
    return []


def _scope_and_credential_checks(client: Any) -> list:
    messages: list = []
    missing = client.missing_scopes_message()
    if missing:
        messages.append(
            Error(
                _("API client %(client)s: %(missing)s") % {"client": repr(client.slug), "missing": missing},
                hint=_("Set the client's scopes in the admin (space-separated, as Lightspeed writes them)."),
                obj=client,
                id="lightspeed_oauth.E009",
            )
        )
    advice = client.scope_warning()
    if advice:
        messages.append(
            Warning(
                _("API client %(client)s: %(advice)s") % {"client": repr(client.slug), "advice": advice},
                hint=_("Add offline_access to the client's scopes."),
                obj=client,
                id="lightspeed_oauth.W003",
            )
        )
    if client.credentials_refused_at:
        # A warning, not an error: an error would stop migrate and every other command, and with
        # them the deployment that fixes the client.
        messages.append(
            Warning(
                _(
                    "API client %(client)s: Lightspeed refused its credentials (%(error)s); its "
                    "companies are not being refreshed."
                )
                % {"client": repr(client.slug), "error": client.credentials_error},
                hint=_("Correct the client id, secret or endpoints in the admin and save the client."),
                obj=client,
                id="lightspeed_oauth.W004",
            )
        )
    return messages
