"""A company this process cannot decrypt (a key it lacks) stops nothing but itself."""

from __future__ import annotations

import json
import logging
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.urls import reverse

from django_lightspeed_oauth.exceptions import DecryptionError
from django_lightspeed_oauth.models import ConnectedCompany
from django_lightspeed_oauth.refreshing import refresh_due
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_client, make_company
from tests.raw_db import encryption_keys
from tests.settings import LIGHTSPEED_OAUTH

pytestmark = pytest.mark.django_db

#: What another process already has (the next key of a rolling deploy); this one lacks it.
OTHER_KEY = Fernet.generate_key()
LOST_ACCESS, LOST_REFRESH = "access-of-the-unreadable-one", "refresh-of-the-unreadable-one"


@pytest.fixture
def companies():
    """Four healthy companies due for a refresh, and one written under a key this process lacks."""
    client = make_client()
    healthy = [make_company(client, expires_in=60) for _ in range(4)]
    current = LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"]
    with encryption_keys(OTHER_KEY, *current):
        unreadable = make_company(client, expires_in=60, access_token=LOST_ACCESS, refresh_token=LOST_REFRESH)
    return client, healthy, unreadable


def test_the_sweep_refreshes_the_healthy_companies_and_reports_the_unreadable_one(companies, caplog):
    client, healthy, unreadable = companies
    caplog.set_level(logging.INFO, logger="django_lightspeed_oauth")
    with FakeTokenEndpoint(client) as fake:
        summary = refresh_due(workers=1)

    assert summary.refreshed == 4
    assert summary.failed == 1
    (problem,) = summary.problems
    assert (problem.pk, problem.outcome) == (unreadable.pk, "error")
    assert f"connected company {unreadable.pk}" in problem.message
    assert 'LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"]' in problem.message
    # Four requests, none for the unreadable company; its row is untouched.
    assert len(fake.requests) == 4
    row = ConnectedCompany.objects.get(pk=unreadable.pk)
    assert (row.status, row.token_version, row.refresh_lock_id) == ("active", 0, "")
    for company in healthy:
        assert ConnectedCompany.objects.get(pk=company.pk).token_version == 1
    logged = caplog.text
    assert f"company {unreadable.pk}" in logged
    for secret in (LOST_ACCESS, LOST_REFRESH, OTHER_KEY.decode()):
        assert secret not in logged and secret not in problem.message


def test_the_command_counts_the_unreadable_company_and_exits_1(companies):
    client, _, unreadable = companies
    out = StringIO()
    with FakeTokenEndpoint(client), pytest.raises(SystemExit) as exit:
        call_command("refresh_lightspeed_tokens", "--json", stdout=out, stderr=StringIO())
    assert exit.value.code == 1
    result = json.loads(out.getvalue())
    assert (result["refreshed"], result["failed"]) == (4, 1)
    assert [(p["company"], p["outcome"]) for p in result["problems"]] == [(unreadable.pk, "error")]
    assert LOST_REFRESH not in out.getvalue()


def test_the_process_with_the_key_refreshes_it(companies):
    client, _, _ = companies
    with encryption_keys(*LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"], OTHER_KEY), FakeTokenEndpoint(client):
        summary = refresh_due(workers=1)
    assert (summary.refreshed, summary.failed) == (5, 0)


def test_api_session_raises_a_clear_error_and_sends_nothing(companies, mocked):
    _, _, unreadable = companies
    company = ConnectedCompany.objects.select_related("client").get(pk=unreadable.pk)
    with pytest.raises(DecryptionError) as caught:
        company.api_session().get("items")
    assert f"Access token of connected company {unreadable.pk}" in caught.value.message
    assert not mocked.calls


def test_admin_list_and_company_page_say_cannot_decrypt(companies, admin_client):
    _, healthy, unreadable = companies
    changelist = admin_client.get(reverse("admin:lightspeed_oauth_connectedcompany_changelist"))
    assert changelist.status_code == 200
    page = changelist.content.decode()
    assert page.count("cannot decrypt") == 1
    assert healthy[0].company_id in page and unreadable.company_id in page

    change = admin_client.get(reverse("admin:lightspeed_oauth_connectedcompany_change", args=[unreadable.pk]))
    assert change.status_code == 200
    page = change.content.decode()
    assert "cannot decrypt" in page
    for secret in (LOST_ACCESS, LOST_REFRESH):
        assert secret not in page


def test_admin_client_page_says_cannot_decrypt_for_a_secret_under_a_missing_key(admin_client):
    current = LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"]
    with encryption_keys(OTHER_KEY, *current):
        client = make_client()
    page = admin_client.get(reverse("admin:lightspeed_oauth_apiclient_change", args=[client.pk]))
    assert page.status_code == 200
    assert "cannot decrypt" in page.content.decode()
