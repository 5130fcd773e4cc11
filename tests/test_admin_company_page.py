"""A company's admin page: Refresh now, Disconnect, Send a new invitation; the e-mail on re-authorization."""

from __future__ import annotations

import logging
import re
from html import unescape
from urllib.parse import urlsplit

import pytest
from django.contrib.messages import get_messages
from django.test import override_settings
from django.urls import reverse

from django_lightspeed_oauth import tokens
from django_lightspeed_oauth.forms import ApiClientAdminForm
from django_lightspeed_oauth.models import ApiClient, ConnectedCompany, Invitation, hash_invitation_token
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_client, make_company
from tests.settings import LIGHTSPEED_OAUTH

pytestmark = pytest.mark.django_db
Status = ConnectedCompany.Status
ADDRESSES: dict[int, str] = {}


def address_of(company: ConnectedCompany) -> str:
    """The INVITATION_EMAIL hook of these tests."""
    return ADDRESSES.get(company.pk, "")


def lightspeed(**values):
    return override_settings(LIGHTSPEED_OAUTH={**LIGHTSPEED_OAUTH, **values})


HOOK = "tests.test_admin_company_page.address_of"


def url(company: ConnectedCompany, view: str = "change") -> str:
    return reverse(f"admin:lightspeed_oauth_connectedcompany_{view}", args=[company.pk])


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def invitation_in(text: str) -> dict:
    link = next(word for word in text.split() if "/lightspeed/invite/" in word)
    token = urlsplit(link).path.rstrip("/").rsplit("/", 1)[-1]
    invitation = Invitation.objects.get(token_hash=hash_invitation_token(token))
    return {"c": invitation.client_id, "r": invitation.reference, "invitation": invitation}


@pytest.mark.parametrize(
    "status, buttons, absent",
    [
        (Status.ACTIVE, ["company-refresh", "company-disconnect"], ["company-invitation"]),
        (Status.FAILING, ["company-refresh", "company-disconnect"], ["company-invitation"]),
        (
            Status.REAUTHORIZATION_REQUIRED,
            ["company-disconnect", "company-invitation"],
            ["company-refresh"],
        ),
        (Status.DISCONNECTED, ["company-invitation"], ["company-refresh", "company-disconnect"]),
    ],
)
def test_the_company_page_offers_the_actions_that_fit_its_status(admin_client, status, buttons, absent):
    company = make_company(status=status)
    body = admin_client.get(url(company)).content.decode()
    for button in buttons:
        assert f'id="{button}"' in body
    for button in absent:
        assert f'id="{button}"' not in body


def test_refresh_now_on_the_company_page_refreshes_and_comes_back_naming_the_client(admin_client):
    company = make_company(name="Harbour Bistro", expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        response = admin_client.post(url(company, "refresh"))
    assert response.status_code == 302 and response["Location"] == url(company)
    assert fake.refresh_count == 1
    [message] = messages_of(response)
    assert message.startswith(f"Harbour Bistro ({company.client.name}): refreshed")
    assert admin_client.get(url(company, "refresh")).status_code == 405  # never on a GET


def test_disconnect_on_the_company_page_asks_first(admin_client):
    company = make_company(name="Harbour Bistro")
    page = admin_client.get(url(company, "disconnect"))
    assert page.status_code == 200 and 'id="confirm-disconnect"' in page.content.decode()
    assert ConnectedCompany.objects.get(pk=company.pk).status == Status.ACTIVE

    response = admin_client.post(url(company, "disconnect"), {"post": "yes"})

    assert response.status_code == 302 and response["Location"] == url(company)
    company.refresh_from_db()
    assert company.status == Status.DISCONNECTED and company.access_token == ""


def test_staff_without_change_permission_cannot_act(client, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_connectedcompany"))
    client.force_login(viewer)
    company = make_company(status=Status.REAUTHORIZATION_REQUIRED)
    body = client.get(url(company)).content.decode()
    assert "company-disconnect" not in body and "company-invitation" not in body
    assert client.post(url(company, "refresh")).status_code == 403
    assert client.post(url(company, "disconnect"), {"post": "yes"}).status_code == 403
    assert client.get(url(company, "invitation")).status_code == 403


def test_a_new_invitation_is_bound_to_the_companys_client_and_reference(admin_client):
    company = make_company(name="Harbour Bistro", reference="crm-42", status=Status.REAUTHORIZATION_REQUIRED)
    page = admin_client.post(url(company, "invitation"), {"email": "", "max_age_hours": "48"})
    body = unescape(page.content.decode())
    link = body.split('id="invitation-url"')[1].split('value="')[1].split('"')[0]
    assert link.startswith("http://testserver/lightspeed/invite/")
    data = invitation_in(link)
    assert (data["c"], data["r"]) == (company.client.pk, "crm-42")
    assert 'id="copy-invitation-url"' in body
    assert "UTC" in body.split('id="invitation-expires"')[1].split("</div>")[0]  # a time zone


@lightspeed(INVITATION_EMAIL=HOOK)
def test_a_new_invitation_is_e_mailed_to_the_address_the_hook_provides(admin_client, mailoutbox):
    company = make_company(name="Harbour Bistro", reference="crm-42", status=Status.DISCONNECTED)
    ADDRESSES[company.pk] = "chef@harbour.example"
    page = admin_client.get(url(company, "invitation"))
    assert 'value="chef@harbour.example"' in page.content.decode()  # ready, staff may change it

    response = admin_client.post(
        url(company, "invitation"), {"email": "owner@harbour.example", "max_age_hours": "24"}
    )

    [mail] = mailoutbox
    assert mail.to == ["owner@harbour.example"]
    assert "Harbour Bistro" in mail.body and invitation_in(mail.body)["r"] == "crm-42"
    assert any("e-mailed to owner@harbour.example" in m for m in messages_of(response))


def test_an_active_company_gets_no_invitation(admin_client):
    company = make_company()
    assert admin_client.get(url(company, "invitation")).status_code == 403


def test_a_bad_address_is_refused_and_nothing_is_sent(admin_client, mailoutbox):
    company = make_company(status=Status.DISCONNECTED)
    page = admin_client.post(url(company, "invitation"), {"email": "chef@", "max_age_hours": "24"})
    assert page.status_code == 200 and "errorlist" in page.content.decode()
    assert mailoutbox == [] and 'id="invitation-url"' not in page.content.decode()


# The e-mail when a company falls into re-authorization ----------------------------------------


def fall_into_reauthorization(company: ConnectedCompany) -> None:
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with("invalid_grant")
        tokens.refresh(company, force=True)
    company.refresh_from_db()
    assert company.status == Status.REAUTHORIZATION_REQUIRED


@pytest.mark.django_db(transaction=True)
@lightspeed(REAUTHORIZATION_EMAIL=True, INVITATION_EMAIL=HOOK, SITE_URL="https://partner.example")
def test_with_the_setting_a_company_falling_into_reauthorization_gets_one_e_mail(mailoutbox):
    company = make_company(name="Harbour Bistro", reference="crm-7", expires_in=60)
    ADDRESSES[company.pk] = "chef@harbour.example"

    fall_into_reauthorization(company)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with("invalid_grant")
        tokens.refresh(company, force=True)  # already fallen: no second e-mail

    [mail] = mailoutbox
    assert mail.to == ["chef@harbour.example"]
    assert "Harbour Bistro" in mail.body
    link = next(word for word in mail.body.split() if "/lightspeed/invite/" in word)
    assert link.startswith("https://partner.example/lightspeed/invite/")
    assert invitation_in(mail.body)["r"] == "crm-7"


@pytest.mark.django_db(transaction=True)
@lightspeed(INVITATION_EMAIL=HOOK, SITE_URL="https://partner.example")
def test_without_the_setting_no_e_mail_is_sent(mailoutbox):
    company = make_company(expires_in=60)
    ADDRESSES[company.pk] = "chef@harbour.example"
    fall_into_reauthorization(company)
    assert mailoutbox == []


@pytest.mark.django_db(transaction=True)
@lightspeed(REAUTHORIZATION_EMAIL=True, INVITATION_EMAIL=HOOK)
def test_without_site_url_the_e_mail_is_not_sent_and_the_log_says_why(mailoutbox, caplog):
    company = make_company(expires_in=60)
    ADDRESSES[company.pk] = "chef@harbour.example"
    with caplog.at_level(logging.ERROR, logger="django_lightspeed_oauth.mail"):
        fall_into_reauthorization(company)
    assert mailoutbox == [] and "needs SITE_URL" in caplog.text


# API clients ----------------------------------------------------------------------------------


def test_local_sandbox_is_offered_only_with_the_sandbox_app(monkeypatch):
    from django_lightspeed_oauth import forms

    assert "sandbox" in [c[0] for c in ApiClientAdminForm().fields["environment"].choices]
    real = forms.apps.is_installed
    monkeypatch.setattr(
        forms.apps, "is_installed", lambda name: False if name.endswith(".sandbox") else real(name)
    )
    assert "sandbox" not in [c[0] for c in ApiClientAdminForm().fields["environment"].choices]
    existing = make_client(environment=ApiClient.Environment.SANDBOX)
    assert "sandbox" in [c[0] for c in ApiClientAdminForm(instance=existing).fields["environment"].choices]


def test_the_redirect_uri_has_a_copy_button_and_the_list_has_one_active_column(admin_client):
    client = make_client()
    body = admin_client.get(
        reverse("admin:lightspeed_oauth_apiclient_change", args=[client.pk])
    ).content.decode()
    assert 'id="copy-redirect-uri" data-copy="redirect-uri-to-register"' in body
    assert "navigator.clipboard" in body
    listing = admin_client.get(reverse("admin:lightspeed_oauth_apiclient_changelist")).content.decode()
    headers = re.findall(
        r'<th scope="col" class="[^"]*column-[^"]*">.*?<div class="text"><a [^>]*>([^<]*)</a>', listing, re.S
    )
    assert "Active companies" in headers and "Active" in headers
    assert len(headers) == len(set(headers)), headers  # no two columns with the same heading


# Token events ---------------------------------------------------------------------------------


def test_token_events_name_the_staff_member_who_refreshed_and_show_details_readably(admin_client, admin_user):
    company = make_company(name="Harbour Bistro", expires_in=60)
    with FakeTokenEndpoint(company.client):
        tokens.refresh(company, force=True)  # the app on its own
        admin_client.post(url(company, "refresh"))  # a staff member
    automatic, by_staff = company.events.order_by("pk")
    assert automatic.actor is None and by_staff.actor == admin_user

    body = re.sub(r"\s+", " ", admin_client.get(url(company)).content.decode())
    assert f'<td class="field-triggered_by"> <p>{admin_user.username}</p> </td>' in body
    assert '<td class="field-triggered_by"> <p>automatic</p> </td>' in body
    details = re.findall(r'<td class="field-details_text">(.*?)</td>', body)
    assert len(details) == 2 and '<span class="ls-detail">rotated: True</span>' in details[-1]
    assert not any("{" in cell for cell in details)  # no raw JSON

    listing = admin_client.get(reverse("admin:lightspeed_oauth_tokenevent_changelist")).content.decode()
    assert f'<td class="field-triggered_by">{admin_user.username}</td>' in listing


def test_token_events_outside_the_admin_have_no_actor():
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client):
        with tokens.acting_as("ignored outside"):
            pass
        tokens.refresh(company, force=True)
    assert company.events.get().actor is None
