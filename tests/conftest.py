"""Fixtures shared by the test suite."""

from __future__ import annotations

import pytest
import responses as responses_lib
from django.contrib.auth.models import Permission

from django_lightspeed_oauth.testing import make_client


@pytest.fixture(autouse=True)
def _empty_cache():
    """Rate-limit counters live in the cache: every test starts with none."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _default_language():
    """LocaleMiddleware leaves the last request's language active: each test starts in English."""
    from django.utils import translation

    yield
    translation.deactivate()


@pytest.fixture
def mocked():
    """Every outgoing request must be mocked; unmatched ones fail the test."""
    with responses_lib.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def staff(django_user_model):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="add_connectedcompany"))
    return user


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def api_client(db):
    return make_client(
        slug="kseries",
        provider="k-series",
        environment="trial",
        client_id="devp-abc",
        client_secret="s3cret-value",
    )
