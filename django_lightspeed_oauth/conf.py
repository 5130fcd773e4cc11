"""The app's settings: one ``LIGHTSPEED_OAUTH`` dict, read lazily so ``override_settings`` works."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from .exceptions import ConfigurationError

__all__ = ["DEFAULTS", "app_settings"]

SETTING_NAME = "LIGHTSPEED_OAUTH"

#: Every key the ``LIGHTSPEED_OAUTH`` dict understands, with its default. README.rst documents each.
DEFAULTS: dict[str, Any] = {
    # Fernet keys (urlsafe base64, 32 bytes). The first encrypts; all of them decrypt.
    # Empty: a key derived from SECRET_KEY (allowed only with DEBUG, see check E001).
    "ENCRYPTION_KEYS": [],
    # Seconds an authorization request (the state) stays valid.
    "STATE_MAX_AGE": 600,
    # Default lifetime, in seconds, of an invitation link.
    "INVITATION_MAX_AGE": 7 * 24 * 3600,
    # Anonymous starts of a flow from invitation links allowed per window (INVITATION_RATE_WINDOW
    # seconds), per invitation and per client IP address (REMOTE_ADDR); counted in Django's
    # "default" cache. None (or 0) turns that limit off.
    "INVITATION_RATE_LIMIT": 10,
    "INVITATION_IP_RATE_LIMIT": 30,
    "INVITATION_RATE_WINDOW": 3600,
    # Days an expired, revoked or used-up invitation is kept before lightspeed_purge deletes it.
    "INVITATION_RETENTION": 30,
    # Days a finished or expired authorization request is kept before lightspeed_purge deletes it.
    "AUTHORIZATION_REQUEST_RETENTION": 30,
    # Days token events are kept before lightspeed_purge deletes them; None keeps them forever.
    "TOKEN_EVENT_RETENTION": 365,
    # Seconds between purges run by refresh_lightspeed_tokens --every; None: the loop never purges.
    "PURGE_INTERVAL": 3600,
    # Dotted path of a callable(company) -> e-mail address (or "" / None) of the merchant to send a
    # company's new invitation to; the admin offers it, and REAUTHORIZATION_EMAIL uses it.
    "INVITATION_EMAIL": None,
    # E-mail a new invitation link (to INVITATION_EMAIL's address), once, when a company falls
    # into "re-authorization required".
    "REAUTHORIZATION_EMAIL": False,
    # (connect, read) timeouts in seconds for every request to an authorization server.
    "HTTP_TIMEOUT": (5.0, 20.0),
    # A token that expires within this many seconds is refreshed by get_access_token().
    "REFRESH_MARGIN": 300,
    # Default of refresh_lightspeed_tokens --within: refresh what expires within this many seconds.
    "REFRESH_WITHIN": 1800,
    # Seconds a refresher's lease on a company lasts unless renewed: a refresher that dies or is
    # frozen blocks the company this long at most (database clock).
    "LOCK_TIMEOUT": 60,
    # Seconds between renewals of a live refresher's lease; None: a third of LOCK_TIMEOUT.
    "LOCK_RENEW_INTERVAL": None,
    # Hard ceiling, in seconds, on one refresh (token request and storing the answer): the lease
    # is renewed until then, and a token answer still not read by then is given up as uncertain.
    "REFRESH_MAX_DURATION": 600,
    # Read timeout, in seconds, of refresh requests (per read; the whole answer is bounded by
    # REFRESH_MAX_DURATION). Long on purpose: the answer may hold the only copy of a rotated token.
    "REFRESH_READ_TIMEOUT": 120,
    # Companies a refresh sweep claims at a time (see "Several processes and hosts" in README.rst).
    "SWEEP_BATCH_SIZE": 100,
    # Seconds a sweep's claim on its batch lasts unless renewed (database clock); None: LOCK_TIMEOUT.
    # A sweep that dies or is frozen keeps its batch from the others this long at most.
    "SWEEP_CLAIM_LIFETIME": None,
    # First and largest back-off, in seconds, after a transient refresh failure.
    "RETRY_BACKOFF": 60,
    "RETRY_BACKOFF_MAX": 3600,
    # Where the callback sends the browser when the flow has no ``next``: a URL, a URL name,
    # or None for the app's own page.
    "SUCCESS_URL": None,
    "FAILURE_URL": None,
    # The permission a logged-in user needs to start a flow with the connect view.
    "CONNECT_PERMISSION": "lightspeed_oauth.add_connectedcompany",
    # Scheme and host prepended to invitation links (e.g. "https://example.com"); None: site-relative.
    "SITE_URL": None,
    # Where the sandbox authorization servers live (an API client with environment "sandbox").
    "SANDBOX_URL": "http://127.0.0.1:8000/lightspeed-sandbox/",
    # Lifetime of access tokens the sandbox issues, in seconds.
    "SANDBOX_TOKEN_LIFETIME": 3600,
    # Whether the sandbox app's servers answer: None follows DEBUG; True serves them with DEBUG off
    # too (a test or staging site); False answers 404 even with DEBUG (check lightspeed_sandbox.E001).
    "SANDBOX_ENABLED": None,
    # Extra provider classes, as dotted paths, added to the registry.
    "PROVIDERS": [],
    # Companies per task when the Celery sweep fans the due companies out over the workers.
    "CELERY_BATCH_SIZE": 100,
}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigurationError(f"{SETTING_NAME}[{name!r}] must be a number of seconds, not {value!r}.")
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(
            f"{SETTING_NAME}[{name!r}] must be a number of seconds, not {value!r}."
        ) from None


class AppSettings:
    """``settings.LIGHTSPEED_OAUTH`` with the defaults filled in: one typed property per key.

    Read at every access (``override_settings`` works). Numbers are converted here, once for every
    caller; a value that is not a number raises :class:`ConfigurationError` naming the key.
    """

    def _get(self, name: str) -> Any:
        user = getattr(settings, SETTING_NAME, None) or {}
        return user.get(name, DEFAULTS[name])

    def __getattr__(self, name: str) -> Any:
        # Keys without a property of their own (none today) still read as they are.
        if name not in DEFAULTS:
            raise AttributeError(f"{SETTING_NAME} has no key {name!r}")
        return self._get(name)

    @property
    def user_keys(self) -> set[str]:
        return set(getattr(settings, SETTING_NAME, None) or {})

    def _seconds(self, name: str) -> float:
        return _number(name, self._get(name))

    def _whole_seconds(self, name: str) -> int:
        return int(self._seconds(name))

    @property
    def ENCRYPTION_KEYS(self) -> tuple[str, ...]:
        keys = self._get("ENCRYPTION_KEYS") or ()
        return (keys,) if isinstance(keys, str) else tuple(keys)

    @property
    def STATE_MAX_AGE(self) -> int:
        return self._whole_seconds("STATE_MAX_AGE")

    @property
    def INVITATION_MAX_AGE(self) -> int:
        return self._whole_seconds("INVITATION_MAX_AGE")

    def _optional_count(self, name: str) -> int | None:
        value = self._get(name)
        if value is None or value is False:
            return None
        problem = f"{SETTING_NAME}[{name!r}] must be a whole number or None, not {value!r}."
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigurationError(problem)
        try:
            count = int(value)
        except ValueError:
            raise ConfigurationError(problem) from None
        if count < 0:
            raise ConfigurationError(f"{SETTING_NAME}[{name!r}] cannot be negative, not {value!r}.")
        return count or None

    def _days(self, name: str) -> float:
        days = _number(name, self._get(name))
        if days < 0:
            raise ConfigurationError(f"{SETTING_NAME}[{name!r}] cannot be negative, not {days!r}.")
        return days

    @property
    def INVITATION_RATE_LIMIT(self) -> int | None:
        """Flows an invitation may start per window; None: no limit."""
        return self._optional_count("INVITATION_RATE_LIMIT")

    @property
    def INVITATION_IP_RATE_LIMIT(self) -> int | None:
        """Flows one IP address may start from invitations per window; None: no limit."""
        return self._optional_count("INVITATION_IP_RATE_LIMIT")

    @property
    def INVITATION_RATE_WINDOW(self) -> int:
        seconds = self._whole_seconds("INVITATION_RATE_WINDOW")
        if seconds <= 0:
            raise ConfigurationError(f"{SETTING_NAME}['INVITATION_RATE_WINDOW'] must be positive.")
        return seconds

    @property
    def INVITATION_RETENTION(self) -> float:
        return self._days("INVITATION_RETENTION")

    @property
    def AUTHORIZATION_REQUEST_RETENTION(self) -> float:
        return self._days("AUTHORIZATION_REQUEST_RETENTION")

    @property
    def TOKEN_EVENT_RETENTION(self) -> float | None:
        return None if self._get("TOKEN_EVENT_RETENTION") is None else self._days("TOKEN_EVENT_RETENTION")

    @property
    def PURGE_INTERVAL(self) -> float | None:
        if self._get("PURGE_INTERVAL") is None:
            return None
        seconds = self._seconds("PURGE_INTERVAL")
        if seconds <= 0:
            raise ConfigurationError(f"{SETTING_NAME}['PURGE_INTERVAL'] must be positive or None.")
        return seconds

    @property
    def INVITATION_EMAIL(self) -> str | None:
        value: str | None = self._get("INVITATION_EMAIL")
        return value

    @property
    def REAUTHORIZATION_EMAIL(self) -> bool:
        return bool(self._get("REAUTHORIZATION_EMAIL"))

    @property
    def HTTP_TIMEOUT(self) -> tuple[float, float]:
        """(connect, read) seconds; a single number is both."""
        value = self._get("HTTP_TIMEOUT")
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ConfigurationError(
                    f"{SETTING_NAME}['HTTP_TIMEOUT'] must be a number or a (connect, read) pair, "
                    f"not {value!r}."
                )
            return (_number("HTTP_TIMEOUT", value[0]), _number("HTTP_TIMEOUT", value[1]))
        seconds = _number("HTTP_TIMEOUT", value)
        return (seconds, seconds)

    @property
    def REFRESH_MARGIN(self) -> float:
        return self._seconds("REFRESH_MARGIN")

    @property
    def REFRESH_WITHIN(self) -> float:
        return self._seconds("REFRESH_WITHIN")

    @property
    def LOCK_TIMEOUT(self) -> float:
        return self._seconds("LOCK_TIMEOUT")

    @property
    def LOCK_RENEW_INTERVAL(self) -> float | None:
        value = self._get("LOCK_RENEW_INTERVAL")
        return None if value is None else _number("LOCK_RENEW_INTERVAL", value)

    @property
    def REFRESH_MAX_DURATION(self) -> float:
        return self._seconds("REFRESH_MAX_DURATION")

    @property
    def REFRESH_READ_TIMEOUT(self) -> float:
        return self._seconds("REFRESH_READ_TIMEOUT")

    @property
    def SWEEP_BATCH_SIZE(self) -> int:
        value = self._get("SWEEP_BATCH_SIZE")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(
                f"{SETTING_NAME}['SWEEP_BATCH_SIZE'] must be a whole number of at least 1, not {value!r}."
            )
        return value

    @property
    def SWEEP_CLAIM_LIFETIME(self) -> float:
        value = self._get("SWEEP_CLAIM_LIFETIME")
        if value is None:
            return self.LOCK_TIMEOUT
        seconds = _number("SWEEP_CLAIM_LIFETIME", value)
        if seconds <= 0:
            raise ConfigurationError(
                f"{SETTING_NAME}['SWEEP_CLAIM_LIFETIME'] must be a positive number of seconds, not {value!r}."
            )
        return seconds

    @property
    def RETRY_BACKOFF(self) -> float:
        return self._seconds("RETRY_BACKOFF")

    @property
    def RETRY_BACKOFF_MAX(self) -> float:
        return self._seconds("RETRY_BACKOFF_MAX")

    @property
    def SUCCESS_URL(self) -> str | None:
        value: str | None = self._get("SUCCESS_URL")
        return value

    @property
    def FAILURE_URL(self) -> str | None:
        value: str | None = self._get("FAILURE_URL")
        return value

    @property
    def CONNECT_PERMISSION(self) -> str:
        return str(self._get("CONNECT_PERMISSION"))

    @property
    def SITE_URL(self) -> str | None:
        value: str | None = self._get("SITE_URL")
        return value

    @property
    def SANDBOX_URL(self) -> str:
        return str(self._get("SANDBOX_URL"))

    @property
    def SANDBOX_TOKEN_LIFETIME(self) -> int:
        return self._whole_seconds("SANDBOX_TOKEN_LIFETIME")

    @property
    def SANDBOX_ENABLED(self) -> bool | None:
        value = self._get("SANDBOX_ENABLED")
        if value is not None and not isinstance(value, bool):
            raise ConfigurationError(
                f"{SETTING_NAME}['SANDBOX_ENABLED'] must be True, False or None, not {value!r}."
            )
        return value

    @property
    def PROVIDERS(self) -> tuple[str, ...]:
        return tuple(self._get("PROVIDERS") or ())

    @property
    def CELERY_BATCH_SIZE(self) -> int:
        value = self._get("CELERY_BATCH_SIZE")
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(
                f"{SETTING_NAME}['CELERY_BATCH_SIZE'] must be a whole number of companies, not {value!r}."
            )
        if value < 1:
            raise ConfigurationError(
                f"{SETTING_NAME}['CELERY_BATCH_SIZE'] must be at least 1, not {value!r}."
            )
        return value


app_settings = AppSettings()
