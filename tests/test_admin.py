"""The admin: write-only secrets, fingerprints only, per-company actions, invitation links."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import constants as levels
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_lightspeed_oauth.admin import humanize_expiry
from django_lightspeed_oauth.models import (
    ApiClient,
    AuthorizationRequest,
    ConnectedCompany,
    TokenEvent,
)
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_client, make_company

CLIENT_SECRET = "client-secret-DO-NOT-SHOW-1f2e3d"
ACCESS_TOKEN = "access-token-DO-NOT-SHOW-9a8b7c"
REFRESH_TOKEN = "refresh-token-DO-NOT-SHOW-6d5e4f"
STATE = "StateDoNotShowInFull0123456789abcdef"
VERIFIER = "verifier-DO-NOT-SHOW-0f1e2d3c4b5a"

Status = ConnectedCompany.Status


def change_url(obj) -> str:
    return reverse(f"admin:lightspeed_oauth_{obj._meta.model_name}_change", args=[obj.pk])


def changelist_url(model) -> str:
    return reverse(f"admin:lightspeed_oauth_{model._meta.model_name}_changelist")


def invitation_url(client: ApiClient) -> str:
    return reverse("admin:lightspeed_oauth_apiclient_invitation", args=[client.pk])


def client_form_data(client: ApiClient, **changes) -> dict:
    data = {
        "name": client.name,
        "slug": client.slug,
        "provider": client.provider,
        "environment": client.environment,
        "client_id": client.client_id,
        "client_secret": "",
        "redirect_uri": client.redirect_uri,
        "scopes": client.scopes,
        "authorize_url": client.authorize_url,
        "token_url": client.token_url,
        "provider_options": "{}",
        "is_active": "on",
    }
    data.update(changes)
    return data


def messages_of(response) -> list[tuple[int, str]]:
    return [(m.level, m.message) for m in get_messages(response.wsgi_request)]


def run_action(admin_client, action: str, companies, **extra):
    return admin_client.post(
        changelist_url(ConnectedCompany),
        {
            "action": action,
            "_selected_action": [c.pk for c in companies],
            "index": 0,
            **extra,
        },
    )


@pytest.fixture
def secret_client(db):
    return make_client(name="Secret bistro", slug="secret-bistro", client_secret=CLIENT_SECRET)


@pytest.fixture
def secret_company(secret_client):
    company = make_company(
        secret_client,
        access_token=ACCESS_TOKEN,
        refresh_token=REFRESH_TOKEN,
        name="Bistro Uno",
        reference="crm-42",
    )
    TokenEvent.objects.create(
        company=company,
        kind=TokenEvent.Kind.CONNECTED,
        message="Connected.",
        details={"access_token": company.access_token_fingerprint},
    )
    AuthorizationRequest.objects.create(
        client=secret_client,
        state=STATE,
        code_verifier=VERIFIER,
        reference="crm-42",
        expires_at=timezone.now() + timedelta(minutes=10),
        company=company,
    )
    return company


# API clients ------------------------------------------------------------------------------------


def test_client_list_counts_companies_by_status_in_one_query(admin_client, django_assert_max_num_queries):
    for n in range(3):
        client = make_client(name=f"Client {n}")
        make_company(client)
        make_company(client, status=Status.FAILING)
        make_company(client, status=Status.REAUTHORIZATION_REQUIRED)
        make_company(client, status=Status.DISCONNECTED)

    # Session, user, count, page: the same whatever the number of clients.
    with django_assert_max_num_queries(6):
        response = admin_client.get(changelist_url(ApiClient))

    assert response.status_code == 200
    rows = {c.name: c for c in response.context["cl"].result_list}
    assert len(rows) == 3
    client = rows["Client 0"]
    assert (
        client.connected_count,
        client.active_count,
        client.failing_count,
        client.reauthorization_count,
    ) == (3, 1, 1, 1)
    assert "Restaurant K-Series (V1)" in response.content.decode()


def test_client_list_filters_by_provider_and_searches_client_id(admin_client, db):
    make_client(name="K client", provider="k-series", client_id="devp-k")
    make_client(name="R client", provider="retail-r", client_id="r-client-id")

    by_provider = admin_client.get(changelist_url(ApiClient), {"provider": "retail-r"})
    by_search = admin_client.get(changelist_url(ApiClient), {"q": "devp-k"})

    assert [c.name for c in by_provider.context["cl"].result_list] == ["R client"]
    assert [c.name for c in by_search.context["cl"].result_list] == ["K client"]


def test_add_page_prefills_the_callback_as_redirect_uri_and_requires_a_secret(admin_client, db):
    page = admin_client.get(reverse("admin:lightspeed_oauth_apiclient_add"))
    assert page.context["adminform"].form.initial["redirect_uri"] == (
        "http://testserver/lightspeed/callback/"
    )

    data = {
        "name": "New",
        "slug": "new",
        "provider": "retail-r",
        "environment": "production",
        "client_id": "cid",
        "client_secret": "",
        "redirect_uri": "https://x.example/cb/",
        "scopes": "employee:all",
        "authorize_url": "",
        "token_url": "",
        "provider_options": "{}",
        "is_active": "on",
    }
    without_secret = admin_client.post(reverse("admin:lightspeed_oauth_apiclient_add"), data)
    assert without_secret.status_code == 200
    assert "client_secret" in without_secret.context["adminform"].form.errors
    assert not ApiClient.objects.exists()

    response = admin_client.post(
        reverse("admin:lightspeed_oauth_apiclient_add"), {**data, "client_secret": "first-secret"}
    )
    assert response.status_code == 302
    assert ApiClient.objects.get(slug="new").client_secret == "first-secret"


def test_blank_secret_on_the_change_page_keeps_the_stored_secret(admin_client, secret_client):
    response = admin_client.post(change_url(secret_client), client_form_data(secret_client, name="Renamed"))

    assert response.status_code == 302
    secret_client.refresh_from_db()
    assert secret_client.name == "Renamed"
    assert secret_client.client_secret == CLIENT_SECRET


def test_a_new_secret_on_the_change_page_replaces_the_stored_one(admin_client, secret_client):
    response = admin_client.post(
        change_url(secret_client), client_form_data(secret_client, client_secret="rotated-secret")
    )

    assert response.status_code == 302
    secret_client.refresh_from_db()
    assert secret_client.client_secret == "rotated-secret"


def test_change_page_shows_only_the_secrets_fingerprint(admin_client, secret_client):
    response = admin_client.get(change_url(secret_client))
    content = response.content.decode()

    assert secret_client.client_secret_fingerprint in content
    assert CLIENT_SECRET not in content
    assert re.search(r'<input type="password" name="client_secret"[^>]*>', content)


@pytest.mark.parametrize(
    "options, expected",
    [
        ('{"token_auth": "header"}', "token_auth: must be one of 'basic', 'body'"),
        ('{"pkce_mode": "on"}', "Unknown option 'pkce_mode'"),
        ('["not", "an", "object"]', "Provider options must be a JSON object."),
    ],
)
def test_invalid_provider_options_show_an_error_and_save_nothing(
    admin_client, secret_client, options, expected
):
    response = admin_client.post(
        change_url(secret_client),
        client_form_data(
            secret_client,
            name="Should not be saved",
            client_secret="should-not-be-saved",
            provider_options=options,
        ),
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["provider_options"]
    assert any(expected in error for error in errors)
    secret_client.refresh_from_db()
    assert secret_client.name == "Secret bistro"
    assert secret_client.client_secret == CLIENT_SECRET
    assert secret_client.provider_options == {}


def test_each_bad_provider_option_gets_its_own_message(admin_client, secret_client):
    response = admin_client.post(
        change_url(secret_client),
        client_form_data(secret_client, provider_options='{"token_auth": "header", "state_length": 3}'),
    )

    errors = response.context["adminform"].form.errors["provider_options"]
    assert len(errors) == 2
    assert "state_length: must be a whole number from 8 to 128." in errors
    assert "token_auth: must be one of 'basic', 'body'." in errors


def test_model_clean_runs_for_a_custom_provider_without_urls(admin_client, secret_client):
    response = admin_client.post(
        change_url(secret_client), client_form_data(secret_client, provider="custom")
    )

    assert response.status_code == 200
    assert "authorize_url" in response.context["adminform"].form.errors
    secret_client.refresh_from_db()
    assert secret_client.provider == "k-series"


def test_valid_provider_options_are_saved(admin_client, secret_client):
    response = admin_client.post(
        change_url(secret_client),
        client_form_data(
            secret_client,
            provider_options='{"token_auth": "body", "state_length": 20}',
            client_secret=CLIENT_SECRET,
        ),
    )

    assert response.status_code == 302
    secret_client.refresh_from_db()
    assert secret_client.provider_options == {"token_auth": "body", "state_length": 20}


def test_change_page_shows_the_redirect_uri_to_register_notes_and_buttons(admin_client, secret_client):
    content = admin_client.get(change_url(secret_client)).content.decode()

    assert "Redirect URI to register" in content
    assert 'value="http://testserver/lightspeed/callback/"' in content
    assert "Client ids start with devp-." in content  # the K-Series provider's notes
    connect = reverse("lightspeed_oauth:connect", args=[secret_client.slug])
    # A form whose button posts (with the CSRF token), not a link that a GET could follow.
    form = re.search(rf'<form method="post" action="{connect}">(.*?)</form>', content, re.S)
    assert form and 'name="csrfmiddlewaretoken"' in form.group(1)
    assert 'id="connect-company"' in form.group(1)
    assert f'href="{connect}"' not in content
    assert f'id="create-invitation" href="{invitation_url(secret_client)}"' in content


def test_connect_button_starts_a_flow(admin_client, secret_client):
    response = admin_client.post(reverse("lightspeed_oauth:connect", args=[secret_client.slug]))

    assert response.status_code == 302
    assert response["Location"].startswith(secret_client.authorize_endpoint())


def test_view_only_staff_see_no_secret_and_no_buttons(client, django_user_model, secret_client):
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_apiclient"))
    client.force_login(user)

    response = client.get(change_url(secret_client))
    content = response.content.decode()

    assert response.status_code == 200
    assert CLIENT_SECRET not in content
    assert secret_client.client_secret_fingerprint in content
    assert 'id="connect-company"' not in content
    assert 'id="create-invitation"' not in content


# Invitations ------------------------------------------------------------------------------------


def test_invitation_link_works_for_a_merchant_without_login(admin_client, secret_client):
    page = admin_client.get(invitation_url(secret_client))
    assert page.status_code == 200
    assert page.context["form"]["max_age_hours"].value() == 7 * 24

    response = admin_client.post(invitation_url(secret_client), {"reference": "crm-7", "max_age_hours": 48})

    assert response.status_code == 200
    content = response.content.decode()
    match = re.search(r'<input[^>]*id="invitation-url"[^>]*value="([^"]+)"', content)
    assert match, "the page shows the link"
    link = unescape(match.group(1))
    assert link.startswith("http://testserver/lightspeed/invite/")
    expires = response.context["expires_at"]
    assert timedelta(hours=47, minutes=59) < expires - timezone.now() <= timedelta(hours=48)

    merchant = Client().get(link)
    assert merchant.status_code == 200
    assert "Continue to Lightspeed" in merchant.content.decode()


def test_invitation_link_uses_site_url_when_set(admin_client, secret_client, settings):
    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, "SITE_URL": "https://shop.example"}

    response = admin_client.post(invitation_url(secret_client), {"max_age_hours": 1})

    assert response.context["invitation_url"].startswith("https://shop.example/lightspeed/invite/")


def test_invitation_form_rejects_a_bad_lifetime_and_creates_no_link(admin_client, secret_client):
    response = admin_client.post(invitation_url(secret_client), {"max_age_hours": 0})

    assert response.status_code == 200
    assert "max_age_hours" in response.context["form"].errors
    assert 'id="invitation-url"' not in response.content.decode()


def test_inactive_client_gets_no_invitation_link(admin_client, secret_client):
    ApiClient.objects.filter(pk=secret_client.pk).update(is_active=False)

    response = admin_client.post(invitation_url(secret_client), {"max_age_hours": 1})

    assert response.context["invitation_url"] is None
    assert "not active" in response.content.decode()


def test_invitation_view_needs_the_connect_permission(client, django_user_model, secret_client):
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="change_apiclient"))
    client.force_login(user)

    assert client.get(invitation_url(secret_client)).status_code == 403
    assert client.post(invitation_url(secret_client), {"max_age_hours": 1}).status_code == 403
    assert 'id="create-invitation"' not in client.get(change_url(secret_client)).content.decode()


# Secrets ----------------------------------------------------------------------------------------


def test_no_secret_appears_on_any_admin_page(admin_client, secret_company):
    auth_request = AuthorizationRequest.objects.get()
    event = TokenEvent.objects.get()
    pages = [
        changelist_url(ApiClient),
        change_url(secret_company.client),
        invitation_url(secret_company.client),
        changelist_url(ConnectedCompany),
        change_url(secret_company),
        changelist_url(AuthorizationRequest),
        change_url(auth_request),
        changelist_url(TokenEvent),
        change_url(event),
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        content = response.content.decode()
        for secret in (CLIENT_SECRET, ACCESS_TOKEN, REFRESH_TOKEN, STATE, VERIFIER):
            assert secret not in content, (url, secret)

    link = admin_client.post(invitation_url(secret_company.client), {"max_age_hours": 1})
    assert CLIENT_SECRET not in link.content.decode()


def test_state_is_shown_cut_short(admin_client, secret_company):
    content = admin_client.get(changelist_url(AuthorizationRequest)).content.decode()

    assert f"{STATE[:6]}…" in content


# Connected companies ----------------------------------------------------------------------------


def test_company_list_shows_status_badge_and_time_to_expiry(admin_client, db):
    make_company(name="Soon", expires_in=54 * 60 + 30)
    make_company(name="Late", expires_in=-(3 * 60 + 30), status=Status.REAUTHORIZATION_REQUIRED)

    content = admin_client.get(changelist_url(ConnectedCompany)).content.decode()

    assert '<span class="ls-status ls-status-active">Active</span>' in content
    assert (
        '<span class="ls-status ls-status-reauthorization_required">Re-authorization required</span>'
    ) in content
    assert "in 54 min" in content
    assert "expired 3 min ago" in content
    assert "Expires in" in content


def test_company_list_sorts_by_expiry(admin_client, db):
    make_company(name="B later", expires_in=7200)
    make_company(name="A sooner", expires_in=60)
    url = changelist_url(ConnectedCompany)
    position = admin_client.get(url).context["cl"].list_display.index("expires_in")

    response = admin_client.get(url, {"o": str(position)})

    assert [c.name for c in response.context["cl"].result_list] == ["A sooner", "B later"]


def test_company_list_filters_and_searches(admin_client, db):
    one, two = make_client(), make_client()
    make_company(one, name="Alpha", reference="crm-1")
    make_company(two, name="Beta", status=Status.FAILING)
    url = changelist_url(ConnectedCompany)

    def names(**params):
        return [c.name for c in admin_client.get(url, params).context["cl"].result_list]

    assert names(client__id__exact=two.pk) == ["Beta"]
    assert names(status__exact="failing") == ["Beta"]
    assert names(q="crm-1") == ["Alpha"]


def test_companies_cannot_be_added_from_the_admin(admin_client, db):
    assert admin_client.get(reverse("admin:lightspeed_oauth_connectedcompany_add")).status_code == 403


def test_only_name_and_reference_of_a_company_can_be_changed(admin_client, secret_company):
    url = change_url(secret_company)
    form = admin_client.get(url).context["adminform"].form
    assert set(form.fields) == {"name", "reference"}

    response = admin_client.post(
        url,
        {
            "name": "Renamed",
            "reference": "crm-43",
            "status": "disconnected",
            "company_id": "forged",
            "access_token": "forged",
            "events-TOTAL_FORMS": "1",
            "events-INITIAL_FORMS": "1",
            "events-MIN_NUM_FORMS": "0",
            "events-MAX_NUM_FORMS": "0",
        },
    )

    assert response.status_code == 302
    company = ConnectedCompany.objects.get(pk=secret_company.pk)
    assert (company.name, company.reference) == ("Renamed", "crm-43")
    assert company.status == Status.ACTIVE
    assert company.company_id == secret_company.company_id
    assert company.access_token == ACCESS_TOKEN


def test_company_page_lists_its_newest_token_events(admin_client, secret_company):
    now = timezone.now()
    for n in range(60):
        TokenEvent.objects.create(
            company=secret_company,
            kind=TokenEvent.Kind.REFRESHED,
            message=f"Refresh number {n}.",
            created_at=now + timedelta(minutes=n),
        )

    content = admin_client.get(change_url(secret_company)).content.decode()

    assert "Refresh number 59." in content
    assert "Refresh number 10." in content
    assert "Refresh number 9." not in content  # beyond the newest 50
    assert content.index("Refresh number 59.") < content.index("Refresh number 58.")
    events = reverse("admin:lightspeed_oauth_tokenevent_changelist")
    assert f"{events}?company__id__exact={secret_company.pk}" in content


def test_saving_a_company_still_works_when_a_new_event_shifted_the_recent_ones(admin_client, secret_company):
    for n in range(60):
        secret_company.events.create(kind=TokenEvent.Kind.REFRESHED, message=f"Refresh {n}.")
    url = change_url(secret_company)
    formset = admin_client.get(url).context["inline_admin_formsets"][0].formset
    data = {"name": "Renamed", "reference": ""}
    data.update({f"{formset.prefix}-{key}": value for key, value in formset.management_form.initial.items()})
    for form in formset.forms:
        data[form.add_prefix("id")] = form.instance.pk
        data[form.add_prefix("company")] = secret_company.pk
    # A refresh lands between the page load and the save.
    secret_company.events.create(kind=TokenEvent.Kind.REFRESHED, message="Meanwhile.")

    response = admin_client.post(url, data)

    assert response.status_code == 302
    assert ConnectedCompany.objects.get(pk=secret_company.pk).name == "Renamed"
    assert secret_company.events.count() == 62


@pytest.mark.parametrize("model", [ConnectedCompany, AuthorizationRequest, TokenEvent])
def test_lists_do_not_query_once_per_row(admin_client, model, django_assert_max_num_queries):
    for n in range(5):
        company = make_company(make_client(), connected_by=None)
        company.events.create(kind=TokenEvent.Kind.CONNECTED, message="Connected.")
        AuthorizationRequest.objects.create(
            client=company.client, state=f"state-{n}-abcdefgh", expires_at=timezone.now(), company=company
        )

    # Session, user, counts, rows, filters' choices (clients) and the date hierarchy.
    with django_assert_max_num_queries(10):
        assert admin_client.get(changelist_url(model)).status_code == 200


def test_all_events_link_filters_the_token_event_list(admin_client, secret_company):
    make_company(secret_company.client).events.create(
        kind=TokenEvent.Kind.CONNECTED, message="Other company."
    )
    response = admin_client.get(changelist_url(TokenEvent), {"company__id__exact": secret_company.pk})

    assert response.status_code == 200
    assert [e.company_id for e in response.context["cl"].result_list] == [secret_company.pk]


@pytest.mark.django_db(transaction=True)
def test_refresh_now_refreshes_each_company_and_says_so(admin_client):
    client = make_client()
    first = make_company(client, name="First", expires_in=60)
    second = make_company(client, name="Second", expires_in=60)

    with FakeTokenEndpoint(client, expires_in=3600) as fake:
        response = run_action(admin_client, "refresh_now", [first, second])

    assert response.status_code == 302
    assert fake.refresh_count == 2
    for company in (first, second):
        refreshed = ConnectedCompany.objects.get(pk=company.pk)
        assert refreshed.expires_at > timezone.now() + timedelta(minutes=55)
        assert refreshed.expires_at > company.expires_at + timedelta(minutes=50)
    reported = messages_of(response)
    assert len(reported) == 2
    for level, message in reported:
        assert level == levels.SUCCESS
        assert "refreshed" in message and "expires in 59 min" in message


@pytest.mark.django_db(transaction=True)
def test_refresh_now_reports_each_failure_without_stopping_the_others(admin_client):
    refusing_client = make_client(token_url="https://refusing.example/oauth/token")
    working_client = make_client()
    refused = make_company(refusing_client, name="Refused")
    gone = make_company(working_client, name="Gone", status=Status.DISCONNECTED)
    fine = make_company(working_client, name="Fine", expires_in=60)

    with FakeTokenEndpoint(refusing_client) as refusing:
        refusing.fail_with("invalid_grant")
        with FakeTokenEndpoint(working_client, mock=refusing._mock):
            response = run_action(admin_client, "refresh_now", [refused, gone, fine])

    # Each message names the company and its API client.
    reported = {message.split(" (")[0]: (level, message) for level, message in messages_of(response)}
    assert reported["Refused"][1].startswith(f"Refused ({refusing_client.name}): ")
    assert reported["Fine"][1].startswith(f"Fine ({working_client.name}): refreshed")
    assert ConnectedCompany.objects.get(pk=refused.pk).status == Status.REAUTHORIZATION_REQUIRED
    level, message = reported["Refused"]
    assert level == levels.ERROR and "re-authorization" in message
    level, message = reported["Gone"]
    assert level == levels.ERROR and "disconnected" in message
    assert reported["Fine"][0] == levels.SUCCESS
    assert ConnectedCompany.objects.get(pk=fine.pk).expires_at > timezone.now() + timedelta(minutes=55)


@pytest.mark.django_db(transaction=True)
def test_refresh_now_reports_a_transient_failure_as_a_warning(admin_client):
    company = make_company(name="Flaky")

    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with(503)
        response = run_action(admin_client, "refresh_now", [company])

    [(level, message)] = messages_of(response)
    assert level == levels.WARNING
    assert message.startswith(f"Flaky ({company.client.name}): refresh failed") and "retried in" in message
    assert ConnectedCompany.objects.get(pk=company.pk).status == Status.FAILING


def test_disconnect_asks_for_confirmation_then_erases_tokens(admin_client, admin_user, secret_company):
    confirm = run_action(admin_client, "disconnect", [secret_company])

    assert confirm.status_code == 200
    assert 'id="confirm-disconnect"' in confirm.content.decode()
    assert ConnectedCompany.objects.get(pk=secret_company.pk).status == Status.ACTIVE

    response = admin_client.post(
        changelist_url(ConnectedCompany),
        {"action": "disconnect", "_selected_action": [secret_company.pk], "post": "yes"},
    )

    assert response.status_code == 302
    company = ConnectedCompany.objects.get(pk=secret_company.pk)
    assert company.status == Status.DISCONNECTED
    assert company.access_token == "" and company.refresh_token == ""
    event = company.events.first()
    assert (event.kind, event.actor) == (TokenEvent.Kind.DISCONNECTED, admin_user)
    [(level, message)] = messages_of(response)
    assert level == levels.SUCCESS and message.startswith("Bistro Uno: disconnected")


def test_actions_need_the_change_permission(client, django_user_model, secret_company):
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_connectedcompany"))
    client.force_login(user)

    response = client.get(changelist_url(ConnectedCompany))

    assert response.status_code == 200
    assert 'value="refresh_now"' not in response.content.decode()
    assert 'value="disconnect"' not in response.content.decode()


# Audit trail ------------------------------------------------------------------------------------


def test_authorization_requests_and_events_are_read_only(admin_client, secret_company):
    auth_request = AuthorizationRequest.objects.get()
    event = TokenEvent.objects.get()

    for model, obj in ((AuthorizationRequest, auth_request), (TokenEvent, event)):
        name = model._meta.model_name
        assert admin_client.get(reverse(f"admin:lightspeed_oauth_{name}_add")).status_code == 403
        page = admin_client.get(change_url(obj))
        assert page.status_code == 200
        assert not page.context["has_change_permission"]
        assert admin_client.post(change_url(obj), {}).status_code == 403
        assert (
            admin_client.post(reverse(f"admin:lightspeed_oauth_{name}_delete", args=[obj.pk])).status_code
            == 403
        )
    assert AuthorizationRequest.objects.count() == 1 and TokenEvent.objects.count() == 1


def test_authorization_requests_filter_by_outcome_and_invitation(admin_client, secret_company):
    AuthorizationRequest.objects.create(
        client=secret_company.client,
        state="another-state-0123456789",
        via_invitation=True,
        outcome=AuthorizationRequest.Outcome.DENIED,
        expires_at=timezone.now(),
    )
    url = changelist_url(AuthorizationRequest)

    denied = admin_client.get(url, {"outcome__exact": "denied"}).context["cl"].result_list
    invited = admin_client.get(url, {"via_invitation__exact": "1"}).context["cl"].result_list

    assert [r.state for r in denied] == ["another-state-0123456789"]
    assert [r.state for r in invited] == ["another-state-0123456789"]


@pytest.mark.parametrize(
    "seconds, expected",
    [
        (54 * 60 + 30, "in 54 min"),
        (-(3 * 60 + 5), "expired 3 min ago"),
        (30, "in 30 s"),
        (2 * 3600 + 5 * 60, "in 2 h 5 min"),
        (3 * 86400 + 60, "in 3 days"),
    ],
)
def test_expiry_is_humanized(seconds, expected):
    now = timezone.now()
    assert humanize_expiry(now + timedelta(seconds=seconds), now=now) == expected


def test_no_expiry_is_shown_as_empty():
    assert humanize_expiry(None) == ""


@pytest.mark.django_db
def test_a_token_url_with_a_stray_brace_is_refused_by_the_model():
    from django.core.exceptions import ValidationError

    from django_lightspeed_oauth.models import ApiClient

    client = ApiClient(
        name="c",
        slug="c",
        provider="custom",
        environment="production",
        client_id="i",
        client_secret="s",
        redirect_uri="https://site.example.com/cb/",
        authorize_url="https://a.example.com/authorize",
        token_url="https://a.example.com/{oops-}/token",
    )
    with pytest.raises(ValidationError) as caught:
        client.full_clean()
    assert "token_url" in caught.value.message_dict


@pytest.mark.parametrize(
    "field,value",
    [
        ("token_url", "https://collector.example.net/token"),
        ("authorize_url", "https://collector.example.net/authorize"),
        ("environment", "production"),
        ("provider", "o-series"),
        ("provider_options", '{"api_base_url": "https://collector.example.net"}'),
    ],
)
def test_changing_where_the_secret_is_sent_requires_entering_it_again(
    admin_client, secret_client, field, value
):
    response = admin_client.post(change_url(secret_client), client_form_data(secret_client, **{field: value}))
    assert response.status_code == 200
    assert "Enter the client secret again" in response.content.decode()
    stored = ApiClient.objects.get(pk=secret_client.pk)
    assert getattr(stored, field) == getattr(secret_client, field)

    response = admin_client.post(
        change_url(secret_client),
        client_form_data(secret_client, client_secret=CLIENT_SECRET, **{field: value}),
    )
    assert response.status_code == 302


def test_a_refused_client_is_flagged_and_a_new_secret_lets_refreshes_resume(admin_client, secret_client):
    ApiClient.objects.filter(pk=secret_client.pk).update(
        credentials_refused_at=timezone.now(),
        credentials_error="The token endpoint refused (invalid_client).",
    )
    listing = admin_client.get(changelist_url(ApiClient)).content.decode()
    page = admin_client.get(change_url(secret_client)).content.decode()
    assert "refused by Lightspeed" in listing
    assert "The token endpoint refused (invalid_client)." in page

    response = admin_client.post(
        change_url(secret_client), client_form_data(secret_client, client_secret="the-right-secret")
    )

    assert response.status_code == 302
    assert ApiClient.objects.get(pk=secret_client.pk).credentials_refused_at is None


def test_saving_a_k_series_v2_client_without_offline_access_warns(admin_client, db):
    client = make_client(provider="k-series-v2", scopes="offline_access orders-api")
    response = admin_client.post(
        change_url(client), client_form_data(client, scopes="orders-api"), follow=True
    )
    assert any("offline_access" in text for _level, text in messages_of(response))


def test_a_retail_x_client_without_scopes_is_refused_with_what_to_add(admin_client, db):
    client = make_client(provider="retail-x", scopes="retailer:read")
    response = admin_client.post(change_url(client), client_form_data(client, scopes=""))
    assert response.status_code == 200
    assert "retailer:read" in response.content.decode() and "requires scopes" in response.content.decode()
    assert ApiClient.objects.get(pk=client.pk).scopes == "retailer:read"


@pytest.mark.django_db
def test_invitation_page_of_a_missing_client_says_so_as_the_admin_does(admin_client):
    """The admin's own wording and redirect, without its private helper."""
    response = admin_client.get(
        reverse("admin:lightspeed_oauth_apiclient_invitation", args=["4242"]), follow=False
    )
    assert response.status_code == 302 and response.url == reverse("admin:index")
    assert messages_of(response) == [
        (levels.WARNING, "API client with ID “4242” doesn’t exist. Perhaps it was deleted?")  # noqa: RUF001
    ]
