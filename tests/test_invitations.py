"""Signed, expiring invitation links: a merchant without a site login starts a flow."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
from django.core import signing
from django.test import Client, override_settings
from django.utils import timezone

from django_lightspeed_oauth.models import AuthorizationRequest, ConnectedCompany
from tests.settings import LIGHTSPEED_OAUTH

from .lightspeed_documented import k_series_businesses

pytestmark = pytest.mark.django_db

AUTHORIZE_URL = "https://api.trial.lsk.lightspeed.app/oauth/authorize"


def lightspeed_settings(**values):
    """override_settings for some LIGHTSPEED_OAUTH keys, keeping the test encryption keys."""
    return override_settings(LIGHTSPEED_OAUTH={**LIGHTSPEED_OAUTH, **values})


def invitation_made_at(client, moment, **kwargs) -> str:
    """An invitation URL as it would have been made at ``moment``."""
    real_now = timezone.now
    timezone.now = lambda: moment
    try:
        return client.invitation_url(**kwargs)
    finally:
        timezone.now = real_now


def test_a_merchant_without_a_login_connects_through_an_invitation(client, api_client, mocked):
    url = api_client.invitation_url(reference="shop-42", max_age=3600)
    assert url.startswith("/lightspeed/invite/")

    page = client.get(url)
    assert page.status_code == 200
    assert "Connect your Lightspeed account" in page.content.decode()
    assert api_client.name in page.content.decode()
    assert not AuthorizationRequest.objects.exists()  # looking at the page starts nothing

    response = client.post(url)
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == AUTHORIZE_URL
    query = dict(parse_qsl(location.query))
    assert query["client_id"] == api_client.client_id
    auth_request = AuthorizationRequest.objects.get()
    assert query["state"] == auth_request.state
    assert auth_request.via_invitation is True
    assert auth_request.reference == "shop-42"
    assert auth_request.created_by is None

    mocked.add(
        responses.POST,
        "https://api.trial.lsk.lightspeed.app/oauth/token",
        json={"access_token": "A", "refresh_token": "R", "expires_in": 3600},
    )
    mocked.add(
        responses.GET,
        "https://api.trial.lsk.lightspeed.app/f/data/businesses",
        json=k_series_businesses((9, "Shop", [])),
    )
    done = client.get("/lightspeed/callback/", {"code": "c0de", "state": query["state"]}, follow=True)
    assert done.status_code == 200
    company = ConnectedCompany.objects.get()
    assert company.reference == "shop-42" and company.connected_by is None
    event = company.events.get()
    assert event.details["via_invitation"] is True


def test_an_invitation_can_be_used_by_a_new_browser_each_time_until_it_expires(api_client):
    url = api_client.invitation_url()
    for _ in range(2):
        assert Client().post(url).status_code == 302
    assert AuthorizationRequest.objects.filter(via_invitation=True).count() == 2


def test_the_invitation_form_is_protected_against_cross_site_posts(api_client):
    url = api_client.invitation_url()
    response = Client(enforce_csrf_checks=True).post(url)
    assert response.status_code == 403
    assert not AuthorizationRequest.objects.exists()


@pytest.mark.parametrize("tamper", ["signature", "payload", "other-salt", "garbage"])
def test_a_tampered_invitation_is_refused(client, api_client, tamper):
    token = api_client.invitation_token(reference="r", max_age=3600)
    if tamper == "signature":
        token = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    elif tamper == "payload":
        token = (
            "." + signing.b64_encode(b'{"c":1,"r":"x","e":9999999999}').decode() + token[token.index(":") :]
        )
    elif tamper == "other-salt":
        token = signing.dumps({"c": api_client.pk, "r": "", "e": 9_999_999_999})
    else:
        token = "not-a-token"
    for method in (client.get, client.post):
        response = method(f"/lightspeed/invite/{token}/")
        assert response.status_code == 400
        assert 'data-reason="bad_invitation"' in response.content.decode()
        assert "This invitation link is not valid." in response.content.decode()
    assert not AuthorizationRequest.objects.exists()


def test_an_expired_invitation_is_gone(client, api_client):
    url = invitation_made_at(api_client, timezone.now() - timedelta(hours=2), max_age=3600)
    for method in (client.get, client.post):
        response = method(url)
        assert response.status_code == 410
        assert "This invitation link has expired. Ask for a new one." in response.content.decode()
    assert not AuthorizationRequest.objects.exists()


def test_an_invitation_for_an_inactive_client_is_not_found(client, api_client):
    url = api_client.invitation_url()
    api_client.is_active = False
    api_client.save()
    for method in (client.get, client.post):
        response = method(url)
        assert response.status_code == 404
        assert "This connection is no longer offered." in response.content.decode()
    assert not AuthorizationRequest.objects.exists()


def test_an_invitation_for_a_misconfigured_client_gives_a_clear_page(client, api_client):
    url = api_client.invitation_url()
    type(api_client).objects.filter(pk=api_client.pk).update(provider="gone")
    for method in (client.get, client.post):
        response = method(url)
        assert response.status_code == 500
        assert 'data-reason="misconfigured"' in response.content.decode()
    assert not AuthorizationRequest.objects.exists()


@lightspeed_settings(SITE_URL="https://connect.example.com/")
def test_site_url_makes_the_invitation_absolute(api_client):
    url = api_client.invitation_url(reference="x")
    assert url.startswith("https://connect.example.com/lightspeed/invite/")
    assert "//lightspeed" not in url


def test_without_site_url_the_invitation_is_site_relative(api_client):
    assert api_client.invitation_url().startswith("/lightspeed/invite/")


@pytest.mark.parametrize("max_age", [None, 90])
def test_invitation_lifetime_defaults_to_the_setting(client, api_client, max_age):
    with lightspeed_settings(INVITATION_MAX_AGE=600):
        url = api_client.invitation_url(max_age=max_age)
    response = client.get(url)
    expected = timezone.now() + timedelta(seconds=max_age or 600)
    assert abs((response.context["expires_at"] - expected).total_seconds()) < 5


def test_an_invitation_just_past_its_max_age_is_expired(client, api_client):
    url = invitation_made_at(api_client, timezone.now() - timedelta(seconds=61), max_age=60)
    assert client.get(url).status_code == 410
    url = invitation_made_at(api_client, timezone.now() - timedelta(seconds=50), max_age=60)
    assert client.get(url).status_code == 200


@pytest.mark.parametrize("max_age", [0, -5])
def test_an_invitation_must_live_a_positive_number_of_seconds(api_client, max_age):
    with pytest.raises(ValueError, match="positive"):
        api_client.invitation_url(max_age=max_age)
