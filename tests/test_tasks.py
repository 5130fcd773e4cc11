"""The Celery task runs the same refresh as the command."""

from __future__ import annotations

import pytest

from django_lightspeed_oauth.models import ConnectedCompany
from django_lightspeed_oauth.tasks import refresh_lightspeed_tokens
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_company


@pytest.mark.django_db
def test_celery_task_refreshes_due_companies_and_returns_the_summary():
    company = make_company(expires_in=60)
    make_company(company.client, expires_in=7200)
    with FakeTokenEndpoint(company.client) as fake:
        result = refresh_lightspeed_tokens.apply(kwargs={"within": 900}).get()
    assert result["refreshed"] == 1 and result["considered"] == 1 and result["exit_code"] == 0
    assert ConnectedCompany.objects.get(pk=company.pk).refresh_token == fake.last_refresh_token
