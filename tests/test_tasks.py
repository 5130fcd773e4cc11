"""The Celery tasks run the same refresh as the command (in this process; tests/test_celery.py runs
them on real workers and a real broker)."""

from __future__ import annotations

from unittest import mock

import pytest

from django_lightspeed_oauth.exceptions import ConfigurationError
from django_lightspeed_oauth.models import ConnectedCompany
from django_lightspeed_oauth.tasks import (
    purge_lightspeed_data,
    refresh_lightspeed_batch,
    refresh_lightspeed_tokens,
    sweep_lightspeed_tokens,
)
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_client, make_company


@pytest.mark.django_db
def test_celery_task_refreshes_due_companies_and_returns_the_summary():
    company = make_company(expires_in=60)
    make_company(company.client, expires_in=7200)
    with FakeTokenEndpoint(company.client) as fake:
        result = refresh_lightspeed_tokens.apply(kwargs={"within": 900}).get()
    assert result["refreshed"] == 1 and result["considered"] == 1 and result["exit_code"] == 0
    assert ConnectedCompany.objects.get(pk=company.pk).refresh_token == fake.last_refresh_token


@pytest.mark.django_db
def test_sweep_sends_one_batch_task_per_batch_size_of_due_companies(settings):
    client = make_client()
    due = [make_company(client, expires_in=60).pk for _ in range(5)]
    make_company(client, expires_in=7200)  # not due
    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, "CELERY_BATCH_SIZE": 2}
    with mock.patch.object(refresh_lightspeed_batch, "apply_async") as send:
        result = sweep_lightspeed_tokens.apply(kwargs={"within": 900, "workers": 3}).get()
    assert result == {"due": 5, "batches": 3}
    sent = [call.kwargs["kwargs"] for call in send.call_args_list]
    assert sent == [{"pks": due[i : i + 2], "within": 900, "workers": 3} for i in (0, 2, 4)]


@pytest.mark.django_db
def test_sweep_with_nothing_due_sends_nothing():
    make_company(expires_in=7200)
    with mock.patch.object(refresh_lightspeed_batch, "apply_async") as send:
        assert sweep_lightspeed_tokens.apply(kwargs={"within": 900}).get() == {"due": 0, "batches": 0}
    send.assert_not_called()


@pytest.mark.parametrize("size", [0, -1, "ten", 2.5, True])
def test_a_batch_size_that_is_not_a_positive_whole_number_is_refused(settings, size):
    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, "CELERY_BATCH_SIZE": size}
    with pytest.raises(ConfigurationError) as raised:
        sweep_lightspeed_tokens.apply(kwargs={"within": 900}).get()
    assert "CELERY_BATCH_SIZE" in str(raised.value)


@pytest.mark.django_db
def test_batch_refreshes_only_what_is_still_due():
    company = make_company(expires_in=60)
    done = make_company(company.client, expires_in=7200)  # refreshed since the sweep saw it
    with FakeTokenEndpoint(company.client) as fake:
        result = refresh_lightspeed_batch.apply(kwargs={"pks": [company.pk, done.pk], "within": 900}).get()
        again = refresh_lightspeed_batch.apply(kwargs={"pks": [company.pk, done.pk], "within": 900}).get()
    assert (result["considered"], result["refreshed"], result["exit_code"]) == (1, 1, 0)
    assert again["considered"] == 0
    assert ConnectedCompany.objects.get(pk=company.pk).refresh_token == fake.last_refresh_token
    assert ConnectedCompany.objects.get(pk=done.pk).token_version == 0


@pytest.mark.django_db
def test_the_purge_task_deletes_what_lightspeed_purge_would(settings):
    from datetime import timedelta

    from django.utils import timezone

    from django_lightspeed_oauth.models import TokenEvent

    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, "TOKEN_EVENT_RETENTION": 30}
    company = make_company()
    TokenEvent.objects.create(
        company=company, kind=TokenEvent.Kind.REFRESHED, created_at=timezone.now() - timedelta(days=31)
    )
    kept = TokenEvent.objects.create(company=company, kind=TokenEvent.Kind.REFRESHED)

    result = purge_lightspeed_data.apply().get()

    assert result == {"authorization_requests": 0, "token_events": 1, "invitations": 0}
    assert list(TokenEvent.objects.values_list("pk", flat=True)) == [kept.pk]
