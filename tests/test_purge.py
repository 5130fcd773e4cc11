"""lightspeed_purge: what the retention settings let go is deleted; a flow in progress never is."""

from __future__ import annotations

import json
import secrets
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from django_lightspeed_oauth.models import AuthorizationRequest, Invitation, TokenEvent
from django_lightspeed_oauth.purging import purge
from django_lightspeed_oauth.testing import make_company
from tests.settings import LIGHTSPEED_OAUTH

pytestmark = pytest.mark.django_db

Outcome = AuthorizationRequest.Outcome
DAY = timedelta(days=1)


def lightspeed_settings(**values):
    return override_settings(LIGHTSPEED_OAUTH={**LIGHTSPEED_OAUTH, **values})


def flow(client, *, age: timedelta, expires_in: timedelta, **fields) -> AuthorizationRequest:
    now = timezone.now()
    return AuthorizationRequest.objects.create(
        client=client,
        state=secrets.token_urlsafe(24),
        created_at=now - age,
        expires_at=now + expires_in,
        **fields,
    )


def event(company, age: timedelta) -> TokenEvent:
    return TokenEvent.objects.create(
        company=company, kind=TokenEvent.Kind.REFRESHED, created_at=timezone.now() - age
    )


def invitation(client, **fields) -> Invitation:
    made, _token = Invitation.objects.create_for(client, max_age=3600)
    Invitation.objects.filter(pk=made.pk).update(**fields)
    made.refresh_from_db()
    return made


def remaining(model) -> set[int]:
    return set(model.objects.values_list("pk", flat=True))


def run(*args: str) -> str:
    out = StringIO()
    call_command("lightspeed_purge", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@lightspeed_settings(AUTHORIZATION_REQUEST_RETENTION=30)
def test_old_finished_and_expired_requests_go_and_flows_in_progress_stay(api_client):
    now = timezone.now()
    old = 31 * DAY
    finished_old = flow(api_client, age=old, expires_in=-old, used_at=now - old, outcome=Outcome.CONNECTED)
    denied_old = flow(api_client, age=old, expires_in=-old, used_at=now - old, outcome=Outcome.DENIED)
    never_returned = flow(api_client, age=old, expires_in=-old)
    finished_recent = flow(api_client, age=DAY, expires_in=-DAY, used_at=now - DAY, outcome=Outcome.CONNECTED)
    # In progress whatever their age: a state still valid, a merchant still choosing a business.
    pending = flow(api_client, age=old, expires_in=timedelta(minutes=5))
    choosing = flow(
        api_client,
        age=old,
        expires_in=-old,
        used_at=now,
        outcome=Outcome.CHOOSING,
        choice_expires_at=now + timedelta(minutes=5),
    )

    assert "Deleted 3 authorization requests, 0 token events and 0 invitations." in run()

    assert remaining(AuthorizationRequest) == {finished_recent.pk, pending.pk, choosing.pk}
    assert not {finished_old.pk, denied_old.pk, never_returned.pk} & remaining(AuthorizationRequest)


@lightspeed_settings(AUTHORIZATION_REQUEST_RETENTION=0)
def test_even_with_no_retention_a_flow_in_progress_is_kept(api_client):
    pending = flow(api_client, age=timedelta(0), expires_in=timedelta(minutes=10))
    expired = flow(api_client, age=timedelta(minutes=11), expires_in=-timedelta(minutes=1))

    assert purge().authorization_requests == 1
    assert remaining(AuthorizationRequest) == {pending.pk}
    assert expired.pk not in remaining(AuthorizationRequest)


@lightspeed_settings(AUTHORIZATION_REQUEST_RETENTION=0)
def test_a_purged_flow_that_never_came_back_gives_its_invitation_use_back(api_client):
    held = invitation(api_client, uses=1)
    flow(
        api_client,
        age=timedelta(hours=1),
        expires_in=-timedelta(minutes=30),
        invitation=held,
        via_invitation=True,
        holds_invitation_use=True,
    )

    purge()

    held.refresh_from_db()
    assert (held.uses, held.status) == (0, Invitation.Status.ACTIVE)


@lightspeed_settings(TOKEN_EVENT_RETENTION=365)
def test_token_events_older_than_the_retention_go(api_client):
    company = make_company(api_client)
    old = event(company, 366 * DAY)
    kept = event(company, 364 * DAY)

    assert purge().token_events == 1
    assert remaining(TokenEvent) == {kept.pk}
    assert old.pk not in remaining(TokenEvent)


@lightspeed_settings(TOKEN_EVENT_RETENTION=None)
def test_token_events_are_kept_forever_when_the_retention_is_none(api_client):
    company = make_company(api_client)
    event(company, 3650 * DAY)
    assert purge().token_events == 0
    assert TokenEvent.objects.count() == 1


@lightspeed_settings(INVITATION_RETENTION=30, AUTHORIZATION_REQUEST_RETENTION=30)
def test_dead_invitations_go_after_the_grace_and_live_ones_stay(api_client):
    now = timezone.now()
    active = invitation(api_client)
    expired_long_ago = invitation(api_client, expires_at=now - 31 * DAY)
    expired_lately = invitation(api_client, expires_at=now - 29 * DAY)
    revoked_long_ago = invitation(api_client, revoked_at=now - 31 * DAY)
    used_up_long_ago = invitation(api_client, uses=1, last_used_at=now - 31 * DAY)
    used_up_lately = invitation(api_client, uses=1, last_used_at=now - DAY)
    # Revoked long ago, but a merchant's flow from it is still running: kept until it ends.
    busy = invitation(api_client, revoked_at=now - 31 * DAY)
    flow(api_client, age=timedelta(0), expires_in=timedelta(minutes=5), invitation=busy)

    assert purge().invitations == 3

    assert remaining(Invitation) == {active.pk, expired_lately.pk, used_up_lately.pk, busy.pk}
    assert not {expired_long_ago.pk, revoked_long_ago.pk, used_up_long_ago.pk} & remaining(Invitation)


@lightspeed_settings(AUTHORIZATION_REQUEST_RETENTION=0, TOKEN_EVENT_RETENTION=0, INVITATION_RETENTION=0)
def test_a_dry_run_counts_and_deletes_nothing(api_client):
    flow(api_client, age=DAY, expires_in=-DAY)
    event(make_company(api_client), DAY)
    invitation(api_client, expires_at=timezone.now() - DAY)

    output = json.loads(run("--dry-run", "--json"))

    assert output == {"authorization_requests": 1, "token_events": 1, "invitations": 1, "dry_run": True}
    counts = [model.objects.count() for model in (AuthorizationRequest, TokenEvent, Invitation)]
    assert counts == [1, 1, 1]
    assert json.loads(run("--json"))["token_events"] == 1
    assert TokenEvent.objects.count() == 0


def test_batches_delete_everything_past_the_retention(api_client, monkeypatch):
    from django_lightspeed_oauth import purging

    monkeypatch.setattr(purging, "BATCH_SIZE", 3)
    company = make_company(api_client)
    TokenEvent.objects.bulk_create(
        TokenEvent(company=company, kind=TokenEvent.Kind.REFRESHED, created_at=timezone.now() - 400 * DAY)
        for _ in range(10)
    )
    kept = event(company, DAY)

    assert purge().token_events == 10
    assert remaining(TokenEvent) == {kept.pk}


@lightspeed_settings(AUTHORIZATION_REQUEST_RETENTION=30)
def test_tokens_waiting_for_a_choice_that_expired_are_erased_at_once(api_client):
    now = timezone.now()
    held = invitation(api_client, uses=1)
    waiting = {"pending_tokens": '{"access_token": "A", "refresh_token": "R"}', "used_at": now}
    expired = flow(
        api_client,
        age=timedelta(minutes=20),
        expires_in=-timedelta(minutes=10),
        outcome=Outcome.CHOOSING,
        choice_expires_at=now - timedelta(minutes=1),
        invitation=held,
        holds_invitation_use=True,
        **waiting,
    )
    choosing = flow(
        api_client,
        age=timedelta(minutes=2),
        expires_in=timedelta(minutes=8),
        outcome=Outcome.CHOOSING,
        choice_expires_at=now + timedelta(minutes=5),
        **waiting,
    )

    assert purge().authorization_requests == 0  # both are younger than the retention

    expired.refresh_from_db()
    choosing.refresh_from_db()
    assert (expired.pending_tokens, expired.outcome) == ("", Outcome.FAILED)
    assert choosing.pending_tokens and choosing.outcome == Outcome.CHOOSING
    held.refresh_from_db()
    assert held.uses == 0
