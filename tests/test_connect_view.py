"""The connect view: a GET only asks; the flow starts with a CSRF-protected POST."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

import pytest
from django.test import Client, override_settings

from django_lightspeed_oauth.models import AuthorizationRequest

from .settings import MIDDLEWARE

pytestmark = pytest.mark.django_db

URL = "/lightspeed/connect/kseries/"


def csrf_token_of(page) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert match, "the page has no CSRF token"
    return match.group(1)


@pytest.fixture
def strict_staff(staff) -> Client:
    """A logged-in staff browser whose POSTs go through Django's CSRF check."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(staff)
    return browser


def test_a_get_shows_a_confirmation_page_and_creates_nothing(strict_staff, api_client):
    page = strict_staff.get(URL, {"reference": "attacker-tenant", "next": "/admin/"})

    assert page.status_code == 200
    body = page.content.decode()
    assert "Connect a Lightspeed company" in body and api_client.name in body
    assert "Continue to Lightspeed" in body
    # What would be stored is shown before anything happens.
    assert 'id="connect-reference">attacker-tenant<' in body
    assert 'id="connect-next">/admin/<' in body
    assert 'name="reference" value="attacker-tenant"' in body
    assert "no-cache" in page["Cache-Control"]
    assert not AuthorizationRequest.objects.exists()


def test_a_post_without_the_csrf_token_is_refused(strict_staff, api_client):
    strict_staff.get(URL)  # the browser holds a CSRF cookie, as a victim's would

    response = strict_staff.post(URL, {"reference": "attacker-tenant", "next": "/admin/"})

    assert response.status_code == 403
    assert not AuthorizationRequest.objects.exists()


@override_settings(MIDDLEWARE=[m for m in MIDDLEWARE if m != "django.middleware.csrf.CsrfViewMiddleware"])
def test_the_view_checks_csrf_even_without_the_middleware(strict_staff, api_client):
    assert strict_staff.post(URL, {"reference": "x"}).status_code == 403
    assert not AuthorizationRequest.objects.exists()


def test_the_confirmation_form_starts_the_flow_with_its_reference_and_next(strict_staff, api_client):
    page = strict_staff.get(URL, {"reference": "crm-7", "next": "/admin/"})

    response = strict_staff.post(
        URL, {"csrfmiddlewaretoken": csrf_token_of(page), "reference": "crm-7", "next": "/admin/"}
    )

    assert response.status_code == 302
    assert response["Location"].startswith(api_client.authorize_endpoint())
    auth_request = AuthorizationRequest.objects.get()
    assert dict(parse_qsl(urlsplit(response["Location"]).query))["state"] == auth_request.state
    assert auth_request.reference == "crm-7" and auth_request.next_url == "/admin/"
    assert auth_request.via_invitation is False and auth_request.created_by is not None


def test_head_and_other_methods_create_nothing(strict_staff, api_client):
    assert strict_staff.head(URL).status_code == 200
    assert strict_staff.put(URL).status_code in (403, 405)
    assert not AuthorizationRequest.objects.exists()
