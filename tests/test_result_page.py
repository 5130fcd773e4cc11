"""The callback ends at a clean address that survives a reload and offers the way on."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
from django.contrib.auth.models import Permission
from django.test import Client

from django_lightspeed_oauth.models import ConnectedCompany

from .lightspeed_documented import k_series_businesses

pytestmark = pytest.mark.django_db

CALLBACK = "/lightspeed/callback/"
RESULT = "/lightspeed/callback/done/"
TOKEN_URL = "https://api.trial.lsk.lightspeed.app/oauth/token"
BUSINESSES_URL = "https://api.trial.lsk.lightspeed.app/f/data/businesses"
TOKENS = {"access_token": "A", "refresh_token": "R", "expires_in": 3600, "token_type": "bearer"}


def state_of(response) -> str:
    assert response.status_code == 302
    return dict(parse_qsl(urlsplit(response["Location"]).query))["state"]


def answer(mocked) -> None:
    mocked.add(responses.POST, TOKEN_URL, json=TOKENS)
    mocked.add(responses.GET, BUSINESSES_URL, json=k_series_businesses((4242, "Harbour Bistro", [])))


def test_success_redirects_to_a_clean_address_that_shows_success_again_on_reload(
    staff_client, staff, api_client, mocked
):
    staff.user_permissions.add(Permission.objects.get(codename="view_connectedcompany"))
    state = state_of(staff_client.post(f"/lightspeed/connect/{api_client.slug}/"))
    answer(mocked)

    response = staff_client.get(CALLBACK, {"code": "c0de", "state": state})

    assert response.status_code == 302 and response["Location"] == RESULT  # no code, no state
    company = ConnectedCompany.objects.get()
    for _ in range(2):  # the page, then a reload
        page = staff_client.get(RESULT)
        assert page.status_code == 200
        body = page.content.decode()
        assert "Connected" in body and "Harbour Bistro" in body and api_client.name in body
        assert "no-cache" in page["Cache-Control"]
        # Staff go on to the company in the admin.
        assert f'href="/admin/lightspeed_oauth/connectedcompany/{company.pk}/change/"' in body
    assert len(mocked.calls) == 2  # the reloads asked Lightspeed nothing


def test_staff_who_may_not_see_companies_in_the_admin_get_no_link_to_it(staff_client, api_client, mocked):
    state = state_of(staff_client.post(f"/lightspeed/connect/{api_client.slug}/"))
    answer(mocked)

    body = staff_client.get(CALLBACK, {"code": "c0de", "state": state}, follow=True).content.decode()

    assert "Connected" in body and "/admin/" not in body


def test_a_merchant_is_told_they_may_close_the_page(client, api_client, mocked):
    url = api_client.invitation_url()
    state = state_of(client.post(url))
    answer(mocked)

    page = client.get(CALLBACK, {"code": "c0de", "state": state}, follow=True)

    assert page.redirect_chain == [(RESULT, 302)]
    body = page.content.decode()
    assert "You can close this page." in body and "/admin/" not in body


def test_a_cancelled_staff_flow_offers_to_try_again_with_the_same_reference_and_next(
    staff_client, api_client
):
    start = staff_client.post(
        f"/lightspeed/connect/{api_client.slug}/", {"reference": "crm-7", "next": "/admin/"}
    )
    state = state_of(start)

    response = staff_client.get(CALLBACK, {"error": "access_denied", "state": state})

    assert response.status_code == 302 and response["Location"] == RESULT
    for _ in range(2):
        page = staff_client.get(RESULT)
        assert page.status_code == 400
        body = page.content.decode()
        assert 'data-reason="access_denied"' in body and "Connection cancelled" in body
        assert (
            'id="try-again" href="/lightspeed/connect/kseries/?reference=crm-7&amp;next=%2Fadmin%2F"' in body
        )
    again = staff_client.get(f"/lightspeed/connect/{api_client.slug}/?reference=crm-7&next=%2Fadmin%2F")
    assert again.status_code == 200  # the confirmation page, with the same reference and next
    body = again.content.decode()
    assert 'name="reference" value="crm-7"' in body and 'name="next" value="/admin/"' in body


def test_a_cancelled_invitation_leads_back_to_the_invitation_page(client, api_client):
    url = api_client.invitation_url(reference="shop-1")
    state = state_of(client.post(url))

    page = client.get(CALLBACK, {"error": "access_denied", "state": state}, follow=True)

    assert page.status_code == 400
    assert f'id="try-again" href="{url}"' in page.content.decode()
    assert client.get(url).status_code == 200


def test_a_failed_exchange_offers_to_try_again(staff_client, api_client, mocked):
    state = state_of(staff_client.post(f"/lightspeed/connect/{api_client.slug}/"))
    mocked.add(responses.POST, TOKEN_URL, status=503, json={"error": "temporarily_unavailable"})

    page = staff_client.get(CALLBACK, {"code": "c0de", "state": state}, follow=True)

    assert page.status_code == 502
    assert 'id="try-again" href="/lightspeed/connect/kseries/"' in page.content.decode()


def test_the_result_page_without_a_flow_in_this_browser_says_so(client):
    page = client.get(RESULT)
    assert page.status_code == 404
    body = page.content.decode()
    assert 'data-reason="no_result"' in body and "try-again" not in body


def test_another_browser_does_not_see_the_result(staff_client, api_client, mocked):
    state = state_of(staff_client.post(f"/lightspeed/connect/{api_client.slug}/"))
    answer(mocked)
    staff_client.get(CALLBACK, {"code": "c0de", "state": state})

    assert staff_client.get(RESULT).status_code == 200
    assert Client().get(RESULT).status_code == 404
