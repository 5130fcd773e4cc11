"""K-Series: a token covers every business its user sees; the merchant chooses one after the callback."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
from django.test import Client
from django.utils import timezone

from django_lightspeed_oauth.models import AuthorizationRequest, ConnectedCompany
from django_lightspeed_oauth.providers import BusinessLocation, KSeriesProvider

from .lightspeed_documented import K_SERIES_BUSINESSES, K_SERIES_V1_TOKEN, k_series_businesses
from .raw_db import raw_column

pytestmark = pytest.mark.django_db

TOKEN_URL = "https://api.trial.lsk.lightspeed.app/oauth/token"
BUSINESSES_URL = "https://api.trial.lsk.lightspeed.app/f/data/businesses"
TWO_BUSINESSES = k_series_businesses(
    (1234, "My Business", [(1234567890, "My Business Location 1")]),
    (5678, "My Other Business", [(5678000001, "Terrace"), (5678000002, "Bar")]),
)


def callback(browser, api_client, mocked, businesses=TWO_BUSINESSES, follow=False):
    location = browser.post(f"/lightspeed/connect/{api_client.slug}/")["Location"]
    state = dict(parse_qsl(urlsplit(location).query))["state"]
    mocked.add(responses.POST, TOKEN_URL, json=K_SERIES_V1_TOKEN)
    mocked.add(responses.GET, BUSINESSES_URL, json=businesses)
    return browser.get("/lightspeed/callback/", {"code": "c", "state": state}, follow=follow)


def test_one_business_connects_without_a_question(staff_client, mocked, api_client):
    response = callback(staff_client, api_client, mocked, K_SERIES_BUSINESSES, follow=True)

    assert response.status_code == 200
    company = ConnectedCompany.objects.get()
    assert (company.company_id, company.name) == ("1234", "My Business")
    assert company.business_locations == [
        BusinessLocation(id=1234567890, name="My Business Location 1", country="GB", timezone="Europe/London")
    ]
    assert company.details["currency_code"] == "GBP"


def test_a_user_with_two_businesses_chooses_one_and_only_that_one_is_connected(
    staff_client, mocked, api_client
):
    response = callback(staff_client, api_client, mocked)

    assert response.status_code == 302
    assert response["Location"] == "/lightspeed/callback/choose/"
    assert not ConnectedCompany.objects.exists()
    page = staff_client.get(response["Location"])
    html = page.content.decode()
    assert page.status_code == 200
    assert "My Business" in html and "My Other Business" in html and "Terrace, Bar" in html
    # The tokens wait on the server, encrypted: never in the page or the browser's cookies.
    secrets = (K_SERIES_V1_TOKEN["access_token"], K_SERIES_V1_TOKEN["refresh_token"])
    assert not any(secret in html for secret in secrets)
    assert not any(secret in str(staff_client.cookies) for secret in secrets)
    pending = AuthorizationRequest.objects.get()
    assert pending.outcome == "choosing"
    assert not any(
        secret in raw_column(AuthorizationRequest, pending.pk, "pending_tokens") for secret in secrets
    )

    chosen = staff_client.post("/lightspeed/callback/choose/", {"company": "5678"}, follow=True)

    assert chosen.status_code == 200
    assert b"Connected" in chosen.content
    company = ConnectedCompany.objects.get()
    assert (company.company_id, company.name) == ("5678", "My Other Business")
    assert [location.id for location in company.business_locations] == [5678000001, 5678000002]
    assert company.refresh_token == K_SERIES_V1_TOKEN["refresh_token"]
    done = AuthorizationRequest.objects.get()
    assert (done.outcome, done.pending_tokens, done.company_id) == ("connected", "", company.pk)


def test_a_choice_is_used_once(staff_client, mocked, api_client):
    callback(staff_client, api_client, mocked)
    assert (
        staff_client.post("/lightspeed/callback/choose/", {"company": "1234"}, follow=True).status_code == 200
    )

    again = staff_client.post("/lightspeed/callback/choose/", {"company": "5678"})

    assert again.status_code == 400
    assert ConnectedCompany.objects.get().company_id == "1234"  # one row, not two sharing tokens


def test_a_business_that_was_not_offered_is_refused_and_the_choice_stays_open(
    staff_client, mocked, api_client
):
    callback(staff_client, api_client, mocked)

    response = staff_client.post("/lightspeed/callback/choose/", {"company": "9999"})

    assert response.status_code == 400
    assert not ConnectedCompany.objects.exists()
    assert (
        staff_client.post("/lightspeed/callback/choose/", {"company": "1234"}, follow=True).status_code == 200
    )


def test_another_browser_cannot_choose(staff_client, mocked, api_client, staff):
    callback(staff_client, api_client, mocked)
    other = Client()
    other.force_login(staff)

    assert other.get("/lightspeed/callback/choose/").status_code == 400
    assert other.post("/lightspeed/callback/choose/", {"company": "1234"}).status_code == 400
    assert not ConnectedCompany.objects.exists()


def test_an_expired_choice_discards_the_tokens(staff_client, mocked, api_client):
    callback(staff_client, api_client, mocked)
    AuthorizationRequest.objects.update(choice_expires_at=timezone.now() - timedelta(seconds=1))

    response = staff_client.post("/lightspeed/callback/choose/", {"company": "1234"})

    assert response.status_code == 400
    assert b"not chosen in time" in response.content
    request = AuthorizationRequest.objects.get()
    assert (request.outcome, request.pending_tokens) == ("failed", "")
    assert not ConnectedCompany.objects.exists()


def test_every_page_of_businesses_is_read(staff_client, mocked, api_client, monkeypatch):
    monkeypatch.setattr(KSeriesProvider, "identity_page_size", 1)
    first = k_series_businesses((1, "First", []))
    second = k_series_businesses((2, "Second", []))
    mocked.add(
        responses.GET,
        BUSINESSES_URL,
        json=first,
        match=[responses.matchers.query_param_matcher({"page": "0", "size": "1"})],
    )
    mocked.add(
        responses.GET,
        BUSINESSES_URL,
        json=second,
        match=[responses.matchers.query_param_matcher({"page": "1", "size": "1"})],
    )
    mocked.add(
        responses.GET,
        BUSINESSES_URL,
        json=k_series_businesses(),
        match=[responses.matchers.query_param_matcher({"page": "2", "size": "1"})],
    )

    location = staff_client.post(f"/lightspeed/connect/{api_client.slug}/")["Location"]
    state = dict(parse_qsl(urlsplit(location).query))["state"]
    mocked.add(responses.POST, TOKEN_URL, json=K_SERIES_V1_TOKEN)
    response = staff_client.get("/lightspeed/callback/", {"code": "c", "state": state})

    assert response.status_code == 302
    names = [c["name"] for c in AuthorizationRequest.objects.get().pending_companies["companies"]]
    assert names == ["First", "Second"]
