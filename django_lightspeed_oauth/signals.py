"""Signals sent when a connection changes; each is sent with ``sender=ConnectedCompany``."""

from __future__ import annotations

from django.dispatch import Signal

__all__ = [
    "company_connected",
    "token_refreshed",
    "token_refresh_failed",
    "reauthorization_required",
    "company_disconnected",
]

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
