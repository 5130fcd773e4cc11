"""Signals sent when a connection changes; each is sent with ``sender=ConnectedCompany``."""

from __future__ import annotations

import logging

from django.dispatch import Signal

__all__ = [
    "client_credentials_refused",
    "company_connected",
    "company_disconnected",
    "reauthorization_required",
    "refresh_outcome_uncertain",
    "send",
    "token_refresh_failed",
    "token_refreshed",
]

logger = logging.getLogger(__name__)

#: kwargs: company, created (bool), request (or None)
company_connected = Signal()
#: kwargs: company
token_refreshed = Signal()
#: kwargs: company, error (TokenEndpointError), attempt (int)
token_refresh_failed = Signal()
#: kwargs: company, error
reauthorization_required = Signal()
#: kwargs: company, user (or None)
company_disconnected = Signal()
#: kwargs: client (ApiClient), company (the one whose refresh was refused), error (InvalidClient).
#: The client's id or secret (or its configuration at Lightspeed) was refused: fix the client; its
#: companies keep their tokens and are refreshed again once the client is changed.
client_credentials_refused = Signal()
#: kwargs: company, error. A refresh request went out and its answer was lost (read timeout,
#: dropped connection): Lightspeed may have rotated the refresh token. Not retried automatically.
refresh_outcome_uncertain = Signal()


def send(signal: Signal, **kwargs) -> None:
    """Send ``signal`` to every receiver; a receiver that raises is logged, not propagated.

    The signals report something that already happened (tokens are stored by then); a broken
    receiver must not turn that into a failure for the caller of ``get_access_token()``.
    """
    from .models import ConnectedCompany

    for receiver, result in signal.send_robust(sender=ConnectedCompany, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "Receiver %r of a lightspeed_oauth signal raised",
                receiver,
                exc_info=(type(result), result, result.__traceback__),
            )
