"""Delete what the app no longer needs: spent authorization requests, old token events and
invitations that can no longer be used.

:func:`purge` is what ``manage.py lightspeed_purge`` runs, and what ``refresh_lightspeed_tokens
--every`` runs between sweeps (every ``PURGE_INTERVAL`` seconds). It never deletes a flow in
progress: a request whose state is still valid, or whose merchant is still choosing a business.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from .conf import app_settings
from .models import AuthorizationRequest, Invitation, TokenEvent

__all__ = ["PurgeResult", "purge", "purgeable_invitations", "purgeable_requests", "purgeable_token_events"]

logger = logging.getLogger(__name__)

#: Rows deleted per statement, so that a first purge of millions of token events holds no long lock.
BATCH_SIZE = 2000


@dataclass
class PurgeResult:
    authorization_requests: int = 0
    token_events: int = 0
    invitations: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _days_ago(days: float, now: datetime) -> datetime:
    return now - timedelta(days=days)


def in_progress(now: datetime) -> Q:
    """Authorization requests that may still end in a connection."""
    return Q(used_at__isnull=True, expires_at__gt=now) | Q(
        outcome=AuthorizationRequest.Outcome.CHOOSING, choice_expires_at__gt=now
    )


def purgeable_requests(now: datetime) -> models.QuerySet[AuthorizationRequest]:
    """Finished or expired requests created more than ``AUTHORIZATION_REQUEST_RETENTION`` days ago."""
    cutoff = _days_ago(app_settings.AUTHORIZATION_REQUEST_RETENTION, now)
    return AuthorizationRequest.objects.filter(created_at__lt=cutoff).exclude(in_progress(now))


def purgeable_token_events(now: datetime) -> models.QuerySet[TokenEvent]:
    """Token events older than ``TOKEN_EVENT_RETENTION`` days (none when it is ``None``)."""
    days = app_settings.TOKEN_EVENT_RETENTION
    if days is None:
        return TokenEvent.objects.none()
    return TokenEvent.objects.filter(created_at__lt=_days_ago(days, now))


def purgeable_invitations(now: datetime) -> models.QuerySet[Invitation]:
    """Invitations expired, revoked or used up more than ``INVITATION_RETENTION`` days ago."""
    cutoff = _days_ago(app_settings.INVITATION_RETENTION, now)
    return Invitation.objects.filter(
        Q(expires_at__lt=cutoff)
        | Q(revoked_at__lt=cutoff)
        | Q(uses__gte=F("max_uses"), last_used_at__lt=cutoff)
    ).exclude(
        # An invitation whose flow is still running keeps its row until that flow ends.
        pk__in=AuthorizationRequest.objects.filter(in_progress(now), invitation__isnull=False).values(
            "invitation"
        )
    )


def discard_expired_choices(now: datetime) -> int:
    """Erase the tokens still waiting for a business choice that was not made in time.

    They are encrypted, but need not wait for the retention: nobody can use them any more.
    """
    expired = AuthorizationRequest.objects.filter(
        outcome=AuthorizationRequest.Outcome.CHOOSING, choice_expires_at__lte=now
    )
    discarded = 0
    for pk in list(expired.values_list("pk", flat=True)):
        discarded += AuthorizationRequest.objects.filter(
            pk=pk, outcome=AuthorizationRequest.Outcome.CHOOSING, choice_expires_at__lte=now
        ).update(
            pending_tokens="",
            pending_companies=[],
            outcome=AuthorizationRequest.Outcome.FAILED,
            error="The business was not chosen in time; the tokens were discarded.",
        )
        Invitation.objects.release_use(pk)
    return discarded


def _delete_in_batches(queryset: models.QuerySet) -> int:
    model = queryset.model
    deleted = 0
    while True:
        pks = list(queryset.order_by().values_list("pk", flat=True)[:BATCH_SIZE])
        if not pks:
            return deleted
        model._default_manager.filter(pk__in=pks).delete()
        deleted += len(pks)


def purge(*, now: datetime | None = None, dry_run: bool = False) -> PurgeResult:
    """Delete (or, with ``dry_run``, count) what the retention settings say is no longer needed."""
    now = now or timezone.now()
    requests = purgeable_requests(now)
    events = purgeable_token_events(now)
    invitations = purgeable_invitations(now)
    if dry_run:
        return PurgeResult(requests.count(), events.count(), invitations.count())
    discard_expired_choices(now)
    # A request that never came back still holds a use of its invitation: give it back first.
    for pk in requests.filter(holds_invitation_use=True).values_list("pk", flat=True).iterator():
        Invitation.objects.release_use(pk)
    result = PurgeResult(
        authorization_requests=_delete_in_batches(requests),
        token_events=_delete_in_batches(events),
        invitations=_delete_in_batches(invitations),
    )
    if any(result.as_dict().values()):
        logger.info(
            "Purged %s authorization requests, %s token events and %s invitations",
            result.authorization_requests,
            result.token_events,
            result.invitations,
        )
    return result
