"""Tests of the lightspeed_invite and lightspeed_demo management commands."""

from __future__ import annotations

import re
import time
from io import StringIO
from urllib.parse import urljoin, urlsplit

import django
import pytest
import requests
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command, get_commands

from django_lightspeed_oauth.models import ApiClient, ConnectedCompany, Invitation, hash_invitation_token
from django_lightspeed_oauth.sandbox.management.commands.lightspeed_demo import DEMO_CLIENTS
from django_lightspeed_oauth.sandbox.models import SandboxClient
from django_lightspeed_oauth.testing import make_client

DEMO_SLUGS = [
    "sandbox-k-series",
    "sandbox-k-series-v2",
    "sandbox-o-series",
    "sandbox-retail-r",
    "sandbox-retail-x",
    "sandbox-vendors",
]


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def invitation_data(url: str) -> dict:
    token = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    invitation = Invitation.objects.get(token_hash=hash_invitation_token(token))
    return {
        "c": invitation.client_id,
        "r": invitation.reference,
        "e": invitation.expires_at.timestamp(),
        "max_uses": invitation.max_uses,
    }


# lightspeed_invite -----------------------------------------------------------------------------


@pytest.fixture
def site_url(settings):
    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, "SITE_URL": "https://partner.example"}


@pytest.mark.django_db
def test_invite_prints_an_absolute_link_that_opens_the_invitation_page(client, site_url):
    api_client = make_client(slug="bistro-app", name="Bistro App")
    url = run("lightspeed_invite", "bistro-app").strip()
    assert url.startswith("https://partner.example/lightspeed/invite/")
    response = client.get(urlsplit(url).path)
    assert response.status_code == 200
    assert "Continue to Lightspeed" in response.content.decode()
    assert invitation_data(url)["c"] == api_client.pk


@pytest.mark.django_db
def test_invite_carries_the_reference_and_max_age(site_url):
    make_client(slug="bistro-app")
    url = run("lightspeed_invite", "bistro-app", "--reference", "crm-1234", "--max-age", "3600").strip()
    data = invitation_data(url)
    assert data["r"] == "crm-1234"
    assert abs(data["e"] - (time.time() + 3600)) < 60


@pytest.mark.django_db
def test_invite_base_url_comes_before_site_url(site_url):
    make_client(slug="bistro-app")
    url = run("lightspeed_invite", "bistro-app", "--base-url", "http://127.0.0.1:8001/").strip()
    assert url.startswith("http://127.0.0.1:8001/lightspeed/invite/")
    assert "partner.example" not in url


@pytest.mark.django_db
def test_invite_base_url_makes_the_link_absolute_without_site_url():
    make_client(slug="bistro-app")
    url = run("lightspeed_invite", "bistro-app", "--base-url", "https://shop.example").strip()
    assert url.startswith("https://shop.example/lightspeed/invite/")


@pytest.mark.django_db
def test_invite_without_a_site_url_says_how_to_give_one():
    make_client(slug="bistro-app")
    with pytest.raises(CommandError, match=r"SITE_URL.*--base-url") as error:
        run("lightspeed_invite", "bistro-app")
    assert error.value.returncode == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "base_url", ["shop.example", "ftp://shop.example", "https://", "https://x.example/?a=1"]
)
def test_invite_refuses_a_base_url_that_is_not_one(base_url):
    make_client(slug="bistro-app")
    with pytest.raises(CommandError, match=r"must look like https://example\.com") as error:
        run("lightspeed_invite", "bistro-app", "--base-url", base_url)
    assert error.value.returncode == 2


@pytest.mark.django_db
def test_invite_sends_the_link_by_email(site_url, mailoutbox, settings):
    settings.DEFAULT_FROM_EMAIL = "connections@partner.example"
    make_client(slug="bistro-app", name="Bistro App")
    err = StringIO()
    out = StringIO()
    call_command(
        "lightspeed_invite",
        "bistro-app",
        "--max-age",
        "7200",
        "--email",
        " chef@bistro.example ",
        stdout=out,
        stderr=err,
    )
    url = out.getvalue().strip()
    assert err.getvalue().strip() == "Sent the invitation to chef@bistro.example."
    [mail] = mailoutbox
    assert mail.to == ["chef@bistro.example"]
    assert mail.from_email == "connections@partner.example"
    assert mail.subject == "Connect your Lightspeed account to Bistro App"
    assert url in mail.body.splitlines()
    assert "Bistro App asks for your permission" in mail.body
    assert "(UTC)" in mail.body  # the expiry names its time zone
    assert "&amp;" not in mail.body and "&#x27;" not in mail.body  # plain text, not HTML-escaped


@pytest.mark.django_db
@pytest.mark.parametrize("address", ["", "chef", "chef@", "a@b.example, c@d.example"])
def test_invite_refuses_a_bad_address_and_sends_nothing(site_url, mailoutbox, address):
    make_client(slug="bistro-app")
    out = StringIO()
    with pytest.raises(CommandError, match="--email must be an e-mail address") as error:
        call_command("lightspeed_invite", "bistro-app", "--email", address, stdout=out, stderr=StringIO())
    assert error.value.returncode == 2
    assert mailoutbox == [] and out.getvalue() == ""


@pytest.mark.django_db
def test_invite_prints_the_link_even_when_the_mail_server_fails(site_url, settings):
    if django.VERSION >= (6, 1):  # EMAIL_* settings are deprecated for MAILERS
        settings.MAILERS = {
            "default": {
                "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                "OPTIONS": {"host": "127.0.0.1", "port": 9, "timeout": 5},
            }
        }
    else:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 5
    make_client(slug="bistro-app")
    out = StringIO()
    with pytest.raises(CommandError, match=r"Could not send the e-mail to chef@bistro\.example") as error:
        call_command("lightspeed_invite", "bistro-app", "--email", "chef@bistro.example", stdout=out)
    assert error.value.returncode == 1
    assert out.getvalue().startswith("https://partner.example/lightspeed/invite/")


@pytest.mark.django_db
def test_invite_names_the_active_clients_for_an_unknown_slug(site_url):
    make_client(slug="bistro-app")
    with pytest.raises(CommandError, match=r"No API client with slug 'nope'.*bistro-app") as error:
        run("lightspeed_invite", "nope")
    assert error.value.returncode == 2


@pytest.mark.django_db
def test_invite_refuses_an_inactive_client(site_url):
    make_client(slug="retired", is_active=False)
    with pytest.raises(CommandError, match="not active"):
        run("lightspeed_invite", "retired")


@pytest.mark.django_db
@pytest.mark.parametrize("max_age", ["0", "-60", "soon", "1.5"])
def test_invite_rejects_a_bad_max_age(max_age, site_url):
    make_client(slug="bistro-app")
    with pytest.raises(CommandError, match="--max-age"):
        run("lightspeed_invite", "bistro-app", f"--max-age={max_age}")


# lightspeed_demo -------------------------------------------------------------------------------


@pytest.fixture
def debug(settings):
    settings.DEBUG = True


@pytest.mark.django_db
def test_demo_creates_the_admin_and_one_sandbox_client_per_flavour(debug):
    output = run("lightspeed_demo")
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password("admin")
    assert "admin / password admin" in output

    clients = {client.slug: client for client in ApiClient.objects.all()}
    assert sorted(clients) == sorted(DEMO_SLUGS)
    providers = {client.provider for client in clients.values()}
    assert providers == {"k-series", "k-series-v2", "o-series", "retail-r", "retail-x", "vendors"}
    for client in clients.values():
        assert client.environment == "sandbox"
        assert client.redirect_uri == "http://127.0.0.1:8000/lightspeed/callback/"
        client.full_clean()
        # Registered with the sandbox server of its flavour, with the same credentials.
        registered = SandboxClient.objects.get(client_id=client.client_id)
        assert registered.flavour == client.provider
        assert registered.secret_matches(client.client_secret)
        assert registered.redirect_uri == client.redirect_uri
        assert f"http://127.0.0.1:8000/lightspeed/connect/{client.slug}/" in output
    assert clients["sandbox-vendors"].scopes == "openid profile offline_access"
    assert "http://127.0.0.1:8000/admin/" in output
    assert "http://127.0.0.1:8000/lightspeed-sandbox/" in output


@pytest.mark.django_db
def test_demo_prints_invitation_links_that_work(debug, client):
    output = run("lightspeed_demo")
    links = re.findall(r"invitation link: http://127\.0\.0\.1:8000(/\S+)", output)
    assert len(links) == len(DEMO_SLUGS)
    assert client.get(links[0]).status_code == 200


@pytest.mark.django_db
def test_demo_can_run_again_without_duplicating_or_changing_secrets(debug):
    run("lightspeed_demo")
    secrets_before = {c.slug: c.client_secret for c in ApiClient.objects.all()}
    admin = get_user_model().objects.get(username="admin")
    admin.set_password("changed-by-the-user")
    admin.save()

    output = run("lightspeed_demo")
    assert ApiClient.objects.count() == len(DEMO_SLUGS)
    assert SandboxClient.objects.count() == len(DEMO_SLUGS)
    assert get_user_model().objects.filter(username="admin").count() == 1
    assert {c.slug: c.client_secret for c in ApiClient.objects.all()} == secrets_before
    assert get_user_model().objects.get(username="admin").check_password("changed-by-the-user")
    assert "already exists" in output


@pytest.mark.django_db
def test_demo_base_url_moves_every_redirect_uri(debug):
    run("lightspeed_demo")
    output = run("lightspeed_demo", "--base-url", "http://localhost:8123/")
    for client in ApiClient.objects.all():
        assert client.redirect_uri == "http://localhost:8123/lightspeed/callback/"
        assert SandboxClient.objects.get(client_id=client.client_id).redirect_uri == client.redirect_uri
    assert "http://localhost:8123/admin/" in output


@pytest.mark.django_db
@pytest.mark.parametrize("base_url", ["127.0.0.1:8000", "ftp://example.com", "http://example.com/?x=1"])
def test_demo_rejects_a_base_url_that_is_not_a_scheme_and_host(debug, base_url):
    with pytest.raises(CommandError, match="--base-url"):
        run("lightspeed_demo", "--base-url", base_url)
    assert not ApiClient.objects.exists()


@pytest.mark.django_db
def test_demo_refuses_to_create_a_well_known_superuser_without_debug(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG is off"):
        run("lightspeed_demo")
    assert not get_user_model().objects.exists()
    run("lightspeed_demo", "--force")
    assert get_user_model().objects.filter(username="admin").exists()


@pytest.mark.django_db
def test_demo_is_a_command_of_the_sandbox_app_only(debug, settings):
    """A site that installs the app without its sandbox has no ``lightspeed_demo`` command."""
    assert get_commands()["lightspeed_demo"] == "django_lightspeed_oauth.sandbox"
    assert get_commands()["refresh_lightspeed_tokens"] == "django_lightspeed_oauth"
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if not app.endswith(".sandbox")]
    assert "lightspeed_demo" not in get_commands()
    assert "refresh_lightspeed_tokens" in get_commands()
    with pytest.raises(CommandError, match="Unknown command: 'lightspeed_demo'"):
        run("lightspeed_demo")


# The demo's clients really connect ------------------------------------------------------------


def _form_fields(html: str) -> dict[str, str]:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return {"csrfmiddlewaretoken": match.group(1)}


def _form_action(html: str, page_url: str) -> str:
    match = re.search(r'<form method="post" action="([^"]*)"', html)
    return urljoin(page_url, match.group(1).replace("&amp;", "&")) if match and match.group(1) else page_url


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("demo", DEMO_CLIENTS, ids=[demo.slug for demo in DEMO_CLIENTS])
def test_every_demo_client_connects_through_the_sandbox(live_server, settings, client, demo):
    """Over real HTTP: staff starts the flow, the merchant allows, the callback stores the company."""
    settings.DEBUG = True
    settings.LIGHTSPEED_OAUTH = {
        **settings.LIGHTSPEED_OAUTH,
        "SANDBOX_URL": f"{live_server.url}/lightspeed-sandbox/",
    }
    run("lightspeed_demo", "--base-url", live_server.url)
    client.force_login(get_user_model().objects.get(username="admin"))

    browser = requests.Session()
    browser.cookies.set("sessionid", client.cookies["sessionid"].value)
    confirm = browser.get(f"{live_server.url}/lightspeed/connect/{demo.slug}/", timeout=30)
    assert confirm.status_code == 200, confirm.text[:500]
    consent = browser.post(
        confirm.url, data=_form_fields(confirm.text), headers={"Referer": confirm.url}, timeout=30
    )
    assert consent.status_code == 200, consent.text[:500]
    assert 'name="company"' in consent.text
    company_id = re.search(r'name="company" value="([^"]+)"', consent.text).group(1)

    done = browser.post(
        _form_action(consent.text, consent.url),
        data={**_form_fields(consent.text), "company": company_id, "decision": "allow"},
        headers={"Referer": consent.url},
        timeout=30,
    )
    assert done.status_code == 200, done.text[:1000]
    assert "Connected" in done.text
    company = ConnectedCompany.objects.get(client__slug=demo.slug)
    assert company.status == "active"
    assert company.get_access_token()
