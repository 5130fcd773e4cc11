"""The app's errors: one hierarchy; messages are safe to show and never contain a secret."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "BindingError",
    "CompanyDisconnected",
    "ConfigurationError",
    "DecryptionError",
    "IdentityError",
    "InvalidClient",
    "InvalidGrant",
    "LightspeedOAuthError",
    "ProviderError",
    "ReauthorizationRequired",
    "RefreshFailed",
    "RefreshInProgress",
    "TokenEndpointError",
    "TransientTokenError",
    "UnboundSecretError",
]


class LightspeedOAuthError(Exception):
    """Base of every error the app raises on purpose.

    ``status_code`` is the HTTP status of the authorization server's answer when there was one;
    ``error`` the OAuth error code it gave (``invalid_grant``...). The message is one sentence meant
    for staff, free of tokens, secrets and codes.
    """

    def __init__(self, message: str, *, status_code: int | None = None, error: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error = error


class ConfigurationError(LightspeedOAuthError, ImproperlyConfigured):
    """A setting or an API client is configured in a way that cannot work."""


class DecryptionError(ConfigurationError):
    """A stored secret cannot be decrypted with any of the configured keys."""


class BindingError(DecryptionError):
    """A stored secret does not belong to its row, field or destination (moved or tampered with):
    it is refused, never sent."""


class UnboundSecretError(BindingError):
    """A stored secret is in 0.1.0's format, not bound to its row: it is refused."""


class ProviderError(ConfigurationError):
    """A provider key is unknown, or its provider options are invalid."""


class TokenEndpointError(LightspeedOAuthError):
    """The token endpoint did not give us tokens.

    ``transient`` tells whether trying again later may help; ``retry_after`` is the delay in seconds
    the server asked for (429/503 ``Retry-After``), if any.
    """

    transient = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, error=error)
        self.retry_after = retry_after


class InvalidGrant(TokenEndpointError):
    """The grant (code or refresh token) was refused for good: the merchant must connect again."""

    transient = False


class InvalidClient(TokenEndpointError):
    """The API client's own credentials were refused: fix the client id or secret in the admin."""

    transient = False


class TransientTokenError(TokenEndpointError):
    """Timeout, connection failure, 429, 5xx or an answer that is not a token: try again later.

    ``maybe_spent`` is true when the request went out and its answer was lost (a read timeout, a
    connection dropped after sending): the server may have acted on it, and rotated the refresh
    token, so the outcome is uncertain rather than a plain failure.
    """

    def __init__(self, message: str, *, maybe_spent: bool = False, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.maybe_spent = maybe_spent


class IdentityError(LightspeedOAuthError):
    """The company's identity could not be found after the code exchange."""


class ReauthorizationRequired(LightspeedOAuthError):
    """The company's refresh token is no longer accepted; the merchant must connect again."""


class CompanyDisconnected(ReauthorizationRequired):
    """The company was disconnected; it has no tokens until the merchant connects again."""


class RefreshInProgress(LightspeedOAuthError):
    """Another process holds the company's refresh lock and did not finish in time."""


class RefreshFailed(LightspeedOAuthError):
    """A refresh failed for a reason that may pass; the company keeps its current tokens."""
