"""Invitations: server-side, opaque, single use by default, expiring, revocable, rate-limited."""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
from django.contrib.auth.models import Permission
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from django_lightspeed_oauth.models import AuthorizationRequest, ConnectedCompany, Invitation
from tests.settings import LIGHTSPEED_OAUTH

from .lightspeed_documented import k_series_businesses

pytestmark = pytest.mark.django_db

AUTHORIZE_URL = "https://api.trial.lsk.lightspeed.app/oauth/authorize"
TOKEN_URL = "https://api.trial.lsk.lightspeed.app/oauth/token"
BUSINESSES_URL = "https://api.trial.lsk.lightspeed.app/f/data/businesses"


def lightspeed_settings(**values):
    """override_settings for some LIGHTSPEED_OAUTH keys, keeping the test encryption keys."""
    return override_settings(LIGHTSPEED_OAUTH={**LIGHTSPEED_OAUTH, **values})


def token_of(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


def invitation_of(url: str) -> Invitation:
    from django_lightspeed_oauth.models import hash_invitation_token

    return Invitation.objects.get(token_hash=hash_invitation_token(token_of(url)))


def state_of(response) -> str:
    assert response.status_code == 302, response.content.decode()[:500]
    return dict(parse_qsl(urlsplit(response["Location"]).query))["state"]


def answer(mocked, company_id: int = 9, name: str = "Shop") -> None:
    mocked.add(
        responses.POST, TOKEN_URL, json={"access_token": "A", "refresh_token": "R", "expires_in": 3600}
    )
    mocked.add(responses.GET, BUSINESSES_URL, json=k_series_businesses((company_id, name, [])))


def assert_page(response, status: int, reason: str, sentence: str) -> None:
    assert response.status_code == status
    body = response.content.decode()
    assert f'data-reason="{reason}"' in body
    assert sentence in body


def test_a_merchant_without_a_login_connects_through_an_invitation(client, api_client, mocked):
    url = api_client.invitation_url(reference="shop-42", max_age=3600)
    assert url.startswith("/lightspeed/invite/")

    page = client.get(url)
    assert page.status_code == 200
    assert "Connect your Lightspeed account" in page.content.decode()
    assert api_client.name in page.content.decode()
    assert not AuthorizationRequest.objects.exists()  # looking at the page starts nothing

    response = client.post(url)
    location = urlsplit(response["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == AUTHORIZE_URL
    query = dict(parse_qsl(location.query))
    assert query["client_id"] == api_client.client_id
    auth_request = AuthorizationRequest.objects.get()
    assert query["state"] == auth_request.state
    assert auth_request.via_invitation is True and auth_request.invitation == invitation_of(url)
    assert auth_request.reference == "shop-42"
    assert auth_request.created_by is None

    answer(mocked)
    done = client.get("/lightspeed/callback/", {"code": "c0de", "state": query["state"]}, follow=True)
    assert done.status_code == 200
    company = ConnectedCompany.objects.get()
    assert company.reference == "shop-42" and company.connected_by is None
    assert company.events.get().details["via_invitation"] is True
    invitation = invitation_of(url)
    assert (invitation.uses, invitation.status) == (1, Invitation.Status.USED)


def test_the_link_is_opaque_and_only_its_hash_is_stored(api_client):
    url = api_client.invitation_url(reference="crm-secret-ref-1234")
    token = token_of(url)

    assert len(token) >= 40
    padded = token + "=" * (-len(token) % 4)
    assert b"crm-secret-ref" not in base64.urlsafe_b64decode(padded)
    assert "crm-secret-ref" not in token
    invitation = Invitation.objects.get()
    assert invitation.reference == "crm-secret-ref-1234"
    assert token not in repr(Invitation.objects.values().get())  # no column holds the token
    assert invitation.token_hash != token and len(invitation.token_hash) == 64


def test_a_single_use_invitation_used_twice_shows_already_used_and_creates_nothing(
    client, api_client, mocked
):
    url = api_client.invitation_url(reference="shop-1")
    answer(mocked)
    client.get("/lightspeed/callback/", {"code": "c0de", "state": state_of(client.post(url))})
    assert ConnectedCompany.objects.count() == 1

    for browser in (client, Client()):  # the same browser again, and another merchant
        for method in (browser.get, browser.post):
            response = method(url)
            assert_page(response, 410, "invitation_used", "This invitation has already been used")
    assert AuthorizationRequest.objects.count() == 1
    assert invitation_of(url).uses == 1


def test_a_second_browser_cannot_start_while_the_first_holds_the_only_use(api_client):
    url = api_client.invitation_url()
    first, second = Client(), Client()
    state_of(first.post(url))

    assert_page(second.post(url), 410, "invitation_used", "already been used")
    assert_page(second.get(url), 410, "invitation_used", "already been used")
    assert AuthorizationRequest.objects.count() == 1


def test_the_same_browser_gets_its_pending_flow_back_instead_of_a_new_one(client, api_client):
    url = api_client.invitation_url()

    states = {state_of(client.post(url)) for _ in range(3)}

    assert len(states) == 1
    assert AuthorizationRequest.objects.count() == 1
    assert invitation_of(url).uses == 1
    assert client.get(url).status_code == 200  # its page still opens for the browser holding the use


def test_a_declined_flow_gives_the_use_back(client, api_client, mocked):
    url = api_client.invitation_url()
    state = state_of(client.post(url))
    client.get("/lightspeed/callback/", {"error": "access_denied", "state": state})
    assert invitation_of(url).uses == 0

    other = Client()
    answer(mocked)
    other.get("/lightspeed/callback/", {"code": "c0de", "state": state_of(other.post(url))})
    assert ConnectedCompany.objects.count() == 1
    assert_page(Client().post(url), 410, "invitation_used", "already been used")


def test_a_failed_exchange_gives_the_use_back(client, api_client, mocked):
    url = api_client.invitation_url()
    mocked.add(responses.POST, TOKEN_URL, status=503, json={"error": "temporarily_unavailable"})
    client.get("/lightspeed/callback/", {"code": "c0de", "state": state_of(client.post(url))})

    assert invitation_of(url).uses == 0
    assert client.get(url).status_code == 200


def test_an_abandoned_flow_gives_the_use_back_once_its_state_expires(client, api_client):
    url = api_client.invitation_url()
    state_of(client.post(url))
    AuthorizationRequest.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    other = Client()
    assert other.get(url).status_code == 200
    state_of(other.post(url))
    assert AuthorizationRequest.objects.count() == 2
    assert invitation_of(url).uses == 1


def test_an_invitation_with_several_uses_connects_that_many_merchants(api_client, mocked):
    url = api_client.invitation_url(reference="chain", max_uses=2)
    for company_id in (1, 2):
        browser = Client()
        answer(mocked, company_id, f"Shop {company_id}")
        browser.get("/lightspeed/callback/", {"code": "c0de", "state": state_of(browser.post(url))})
    assert sorted(ConnectedCompany.objects.values_list("company_id", flat=True)) == ["1", "2"]

    assert_page(Client().post(url), 410, "invitation_used", "already been used")
    assert AuthorizationRequest.objects.count() == 2


def test_a_revoked_invitation_shows_a_clear_page(client, api_client):
    url = api_client.invitation_url()
    assert invitation_of(url).revoke() is True
    assert invitation_of(url).revoke() is False

    for method in (client.get, client.post):
        assert_page(method(url), 410, "invitation_revoked", "This invitation has been withdrawn")
    assert not AuthorizationRequest.objects.exists()


def test_a_pending_flow_cannot_be_resumed_after_revocation(client, api_client):
    url = api_client.invitation_url()
    state_of(client.post(url))
    invitation_of(url).revoke()

    assert_page(client.post(url), 410, "invitation_revoked", "withdrawn")
    assert AuthorizationRequest.objects.count() == 1


def test_an_expired_invitation_is_gone(client, api_client):
    url = api_client.invitation_url(max_age=60)
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    for method in (client.get, client.post):
        assert_page(method(url), 410, "invitation_expired", "This invitation link has expired.")
    assert not AuthorizationRequest.objects.exists()


@pytest.mark.parametrize("token", ["not-a-token", "A" * 43, "x" * 300, "%00"])
def test_an_unknown_invitation_is_refused(client, api_client, token):
    api_client.invitation_url()
    for method in (client.get, client.post):
        response = method(f"/lightspeed/invite/{token}/")
        assert_page(response, 404, "bad_invitation", "This invitation link is not valid.")
    assert not AuthorizationRequest.objects.exists()


def test_the_invitation_form_is_protected_against_cross_site_posts(api_client):
    url = api_client.invitation_url()
    response = Client(enforce_csrf_checks=True).post(url)
    assert response.status_code == 403
    assert not AuthorizationRequest.objects.exists()
    assert invitation_of(url).uses == 0


def test_an_invitation_for_an_inactive_client_is_not_found(client, api_client):
    url = api_client.invitation_url()
    api_client.is_active = False
    api_client.save()
    for method in (client.get, client.post):
        assert_page(method(url), 404, "client_gone", "This connection is no longer offered.")
    assert not AuthorizationRequest.objects.exists()


def test_an_invitation_for_a_misconfigured_client_gives_a_clear_page(client, api_client):
    url = api_client.invitation_url()
    type(api_client).objects.filter(pk=api_client.pk).update(provider="gone")
    for method in (client.get, client.post):
        assert_page(method(url), 500, "misconfigured", "misconfigured")
    assert not AuthorizationRequest.objects.exists()
    assert invitation_of(url).uses == 0


# Rate limits ---------------------------------------------------------------------------------------


@lightspeed_settings(INVITATION_RATE_LIMIT=3, INVITATION_IP_RATE_LIMIT=None)
def test_anonymous_starts_are_limited_per_invitation(api_client):
    url = api_client.invitation_url(max_uses=100)
    for n in range(3):
        state_of(Client(REMOTE_ADDR=f"10.0.0.{n}").post(url))

    response = Client(REMOTE_ADDR="10.0.0.99").post(url)

    assert_page(response, 429, "rate_limited", "Too many attempts")
    assert response["Retry-After"] == "3600"
    assert AuthorizationRequest.objects.count() == 3
    assert invitation_of(url).uses == 3
    # Another invitation is not affected.
    state_of(Client(REMOTE_ADDR="10.0.0.99").post(api_client.invitation_url()))


@lightspeed_settings(INVITATION_RATE_LIMIT=None, INVITATION_IP_RATE_LIMIT=2)
def test_anonymous_starts_are_limited_per_address(api_client):
    for _ in range(2):
        state_of(Client(REMOTE_ADDR="192.0.2.7").post(api_client.invitation_url()))

    assert_page(Client(REMOTE_ADDR="192.0.2.7").post(api_client.invitation_url()), 429, "rate_limited", "")
    state_of(Client(REMOTE_ADDR="192.0.2.8").post(api_client.invitation_url()))
    assert AuthorizationRequest.objects.count() == 3


@lightspeed_settings(INVITATION_RATE_LIMIT=2)
def test_the_browser_holding_a_pending_flow_is_not_counted_again(client, api_client):
    url = api_client.invitation_url(max_uses=5)
    for _ in range(5):
        state_of(client.post(url))
    assert AuthorizationRequest.objects.count() == 1


def test_300_posts_of_one_link_create_one_request(api_client):
    url = api_client.invitation_url(max_uses=1000)
    statuses = [Client(REMOTE_ADDR=f"198.51.100.{n % 250}").post(url).status_code for n in range(300)]

    assert statuses.count(302) == 10  # INVITATION_RATE_LIMIT's default
    assert statuses.count(429) == 290
    assert AuthorizationRequest.objects.count() == 10


# The Python API ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("kwargs", [{"max_age": 0}, {"max_age": -5}, {"max_uses": 0}, {"reference": "a\nb"}])
def test_an_invitation_needs_sensible_values(api_client, kwargs):
    with pytest.raises(ValueError):
        api_client.invitation_url(**kwargs)
    assert not Invitation.objects.exists()


# The admin -----------------------------------------------------------------------------------------


def test_staff_create_an_invitation_in_the_admin_and_see_its_link_once(admin_client, api_client):
    add_url = reverse("admin:lightspeed_oauth_invitation_add")
    response = admin_client.post(
        add_url, {"client": api_client.pk, "reference": "crm-9", "max_uses": 3, "max_age_hours": 2}
    )

    assert response.status_code == 200
    invitation = Invitation.objects.get()
    assert (invitation.reference, invitation.max_uses, invitation.uses) == ("crm-9", 3, 0)
    assert abs((invitation.expires_at - timezone.now() - timedelta(hours=2)).total_seconds()) < 5
    link = response.context["invitation_url"]
    assert link.startswith("http://testserver/lightspeed/invite/")
    assert invitation_of(link) == invitation
    assert f'value="{link}"' in response.content.decode()

    page = admin_client.get(reverse("admin:lightspeed_oauth_invitation_change", args=[invitation.pk]))
    assert page.status_code == 200
    assert token_of(link) not in page.content.decode()  # never shown again
    assert "0 / 3" in page.content.decode()
    listing = admin_client.get(reverse("admin:lightspeed_oauth_invitation_changelist")).content.decode()
    assert "crm-9" in listing and "ls-invitation-active" in listing and token_of(link) not in listing


def test_the_admin_revokes_invitations(admin_client, api_client):
    url = api_client.invitation_url()
    invitation = invitation_of(url)
    response = admin_client.post(
        reverse("admin:lightspeed_oauth_invitation_changelist"),
        {"action": "revoke", "_selected_action": [invitation.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "revoked; its link no longer starts a connection" in response.content.decode()
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.REVOKED and invitation.revoked_by is not None
    assert Client().get(url).status_code == 410


def test_an_invitation_page_links_to_the_flows_it_started(admin_client, api_client):
    url = api_client.invitation_url(reference="linked", max_uses=2)
    state_of(Client().post(url))
    api_client.invitation_url()  # another invitation, whose flows are not listed
    state_of(Client().post(api_client.invitation_url()))
    invitation = invitation_of(url)

    page = admin_client.get(reverse("admin:lightspeed_oauth_invitation_change", args=[invitation.pk]))
    link = re.search(r'href="([^"]*invitation__id__exact=[^"]*)"', page.content.decode()).group(1)
    listing = admin_client.get(link.replace("&amp;", "&"))

    assert listing.status_code == 200
    assert listing.context["cl"].result_count == 1


def test_the_status_filter(admin_client, api_client):
    active = invitation_of(api_client.invitation_url(reference="active-one"))
    revoked = invitation_of(api_client.invitation_url(reference="revoked-one"))
    revoked.revoke()
    changelist = reverse("admin:lightspeed_oauth_invitation_changelist")
    for status, present, absent in (("active", active, revoked), ("revoked", revoked, active)):
        body = admin_client.get(changelist, {"status": status}).content.decode()
        assert present.reference in body and absent.reference not in body


def test_creating_invitations_needs_the_connect_permission(client, django_user_model, api_client):
    user = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["add_invitation", "view_invitation"]))
    client.force_login(user)
    add_url = reverse("admin:lightspeed_oauth_invitation_add")
    assert client.get(add_url).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="add_connectedcompany"))
    assert client.get(add_url).status_code == 200


# Everything that makes invitations makes rows -------------------------------------------------------


def test_the_invite_command_creates_an_invitation_with_its_max_uses(api_client):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    options = ["--base-url", "https://shop.example", "--max-uses", "3"]
    call_command("lightspeed_invite", api_client.slug, *options, stdout=out)
    link = out.getvalue().strip()
    assert link.startswith("https://shop.example/lightspeed/invite/")
    invitation = invitation_of(link)
    assert (invitation.client, invitation.max_uses, invitation.created_by) == (api_client, 3, None)


@pytest.mark.parametrize("value", ["0", "many", "10001"])
def test_the_invite_command_refuses_a_bad_max_uses(api_client, value):
    from io import StringIO

    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--max-uses") as error:
        call_command(
            "lightspeed_invite",
            api_client.slug,
            "--base-url",
            "https://s.example",
            "--max-uses",
            value,
            stdout=StringIO(),
        )
    assert error.value.returncode == 2
    assert not Invitation.objects.exists()


def test_the_email_on_reauthorization_is_a_single_use_invitation_for_the_company(settings, api_client):
    from django.core import mail

    from django_lightspeed_oauth.mail import email_on_reauthorization
    from django_lightspeed_oauth.testing import make_company

    settings.LIGHTSPEED_OAUTH = {
        **settings.LIGHTSPEED_OAUTH,
        "SITE_URL": "https://partner.example",
        "REAUTHORIZATION_EMAIL": True,
        "INVITATION_EMAIL": "tests.test_invitations.merchant_email",
    }
    company = make_company(api_client, reference="crm-5")

    email_on_reauthorization(None, company=company)

    (message,) = mail.outbox
    link = next(word for word in message.body.split() if "/lightspeed/invite/" in word)
    invitation = invitation_of(link)
    assert (invitation.company, invitation.reference, invitation.max_uses) == (company, "crm-5", 1)
    assert invitation.email == "owner@example.com"


def merchant_email(company) -> str:
    return "owner@example.com"


def test_the_api_client_invitation_page_takes_a_maximum_of_uses(admin_client, api_client):
    page = reverse("admin:lightspeed_oauth_apiclient_invitation", args=[api_client.pk])
    response = admin_client.post(page, {"reference": "chain-7", "max_age_hours": 24, "max_uses": 5})

    link = response.context["invitation_url"]
    invitation = invitation_of(link)
    assert (invitation.reference, invitation.max_uses, invitation.uses) == ("chain-7", 5, 0)
    assert invitation.created_by is not None
    assert 'id="copy-invitation-url"' in response.content.decode()
    assert admin_client.post(page, {"max_age_hours": 1, "max_uses": 0}).context["invitation_url"] is None
