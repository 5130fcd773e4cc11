"""Junk typed or linked by staff (NUL characters, lone surrogates, absurdly nested JSON) gets a 4xx or a
form error and changes nothing, on PostgreSQL (which cannot store a NUL) as on every database."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from django_lightspeed_oauth.exceptions import ProviderError
from django_lightspeed_oauth.models import ApiClient, AuthorizationRequest
from django_lightspeed_oauth.providers import provider_classes
from django_lightspeed_oauth.sandbox import register_client
from django_lightspeed_oauth.testing import make_client, make_company

pytestmark = pytest.mark.django_db

SECRET = "hostile-input-secret-0a1b2c"
NUL = "\x00"

# provider_options as typed in the admin: JSON text whose value cannot be stored or sent.
UNSTORABLE_OPTIONS = {
    "nul-in-a-value": '{"access_token_key": "token\\u0000"}',
    "surrogate-in-a-value": '{"access_token_key": "\\ud800"}',
    "nul-in-a-key": '{"\\u0000": "x"}',
    "surrogate-in-a-key": '{"\\udfff": "x"}',
    "nul-deep-inside": '{"grant_type": ["a", {"b": "\\u0000"}]}',
    "control-character": '{"grant_type": "refresh\\ntoken"}',
}
TOO_DEEP_OPTIONS = {
    # Deep enough that json.loads itself runs out of stack (RecursionError).
    "beyond-the-parser": "[" * 200_000 + "]" * 200_000,
    # Parses, but no provider option is nested: refused before it reaches an encoder or the database.
    "parses-but-absurd": '{"grant_type": ' + "[" * 900 + "]" * 900 + "}",
}


def form_data(client: ApiClient | None = None, **changes: str) -> dict[str, str]:
    data = {
        "name": client.name if client else "Hostile",
        "slug": client.slug if client else "hostile",
        "provider": "k-series",
        "environment": "trial",
        "client_id": client.client_id if client else "hostile-id",
        "client_secret": SECRET,
        "redirect_uri": "https://shop.example/lightspeed/callback/",
        "scopes": "orders-api",
        "authorize_url": "",
        "token_url": "",
        "provider_options": "{}",
        "is_active": "on",
    }
    return {**data, **changes}


def provider_options_errors(response) -> list[str]:
    assert response.status_code == 200, response.status_code
    response.content.decode()  # the page with the error was encoded: nothing unencodable in it
    return list(response.context["adminform"].form.errors["provider_options"])


@pytest.mark.parametrize("options", UNSTORABLE_OPTIONS.values(), ids=UNSTORABLE_OPTIONS.keys())
def test_unstorable_provider_options_are_a_form_error_on_add(admin_client: Client, options: str) -> None:
    response = admin_client.post(
        reverse("admin:lightspeed_oauth_apiclient_add"), form_data(provider_options=options)
    )

    assert provider_options_errors(response)
    assert not ApiClient.objects.exists()


@pytest.mark.parametrize("options", UNSTORABLE_OPTIONS.values(), ids=UNSTORABLE_OPTIONS.keys())
def test_unstorable_provider_options_are_a_form_error_on_change(admin_client: Client, options: str) -> None:
    client = make_client(provider="k-series", client_secret=SECRET)
    url = reverse("admin:lightspeed_oauth_apiclient_change", args=[client.pk])

    response = admin_client.post(url, form_data(client, name="Not saved", provider_options=options))

    assert provider_options_errors(response)
    client.refresh_from_db()
    assert client.name != "Not saved"
    assert client.provider_options == {}


@pytest.mark.parametrize("options", TOO_DEEP_OPTIONS.values(), ids=TOO_DEEP_OPTIONS.keys())
def test_deeply_nested_provider_options_are_a_form_error(admin_client: Client, options: str) -> None:
    response = admin_client.post(
        reverse("admin:lightspeed_oauth_apiclient_add"), form_data(provider_options=options)
    )

    errors = provider_options_errors(response)
    assert any("nested too deeply" in error for error in errors), errors
    assert not ApiClient.objects.exists()


def test_provider_option_text_must_be_printable() -> None:
    validate = provider_classes()["k-series"].validate_options
    for bad in ("tok\x00en", "\ud800", "line\nbreak", "del\x7f"):
        with pytest.raises(ProviderError, match="control characters or unpaired surrogates"):
            validate({"access_token_key": bad})
    assert validate({"access_token_key": "data.access_token"}) == {"access_token_key": "data.access_token"}


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("next_url", ["/after/\x00", "/a\x7fb", "/a\nb"], ids=["nul", "del", "newline"])
def test_a_next_page_with_a_control_character_is_a_400(
    staff_client: Client, api_client: ApiClient, method: str, next_url: str
) -> None:
    # The test client sends the NUL as %00, as a link would.
    url = reverse("lightspeed_oauth:connect", args=[api_client.slug])

    response = getattr(staff_client, method)(url, {"next": next_url})

    assert response.status_code == 400
    assert "The page to return to must be on this site." in response.content.decode()
    assert not AuthorizationRequest.objects.exists()


ADMIN_LISTS = [
    ("lightspeed_oauth", "apiclient", "environment"),
    ("lightspeed_oauth", "connectedcompany", "status"),
    ("lightspeed_oauth", "authorizationrequest", "outcome"),
    ("lightspeed_oauth", "tokenevent", "kind"),
    ("lightspeed_oauth", "invitation", "q"),
    ("lightspeed_sandbox", "sandboxclient", "flavour"),
    ("lightspeed_sandbox", "sandboxbehaviour", "refresh_error"),
]


@pytest.mark.parametrize(("app", "model", "parameter"), ADMIN_LISTS, ids=[m for _, m, _ in ADMIN_LISTS])
def test_an_admin_list_filtered_or_searched_with_a_nul_is_a_400(
    admin_client: Client, app: str, model: str, parameter: str
) -> None:
    make_company()
    url = reverse(f"admin:{app}_{model}_changelist")

    response = admin_client.get(url, {parameter: f"x{NUL}"})

    assert response.status_code == 400
    assert "contains a NUL character" in response.content.decode()
    assert admin_client.get(url, {"q": "x"}).status_code == 200


def test_the_sandbox_refuses_nul_characters_with_an_oauth_answer(client: Client) -> None:
    register_client("o-series", "o-client", SECRET, "https://shop.example/cb/")

    authorize = client.get(
        "/lightspeed-sandbox/o-series/authorize",
        {"client_id": f"o-client{NUL}", "response_type": "code", "redirect_uri": "https://shop.example/cb/"},
    )
    assert authorize.status_code == 400
    assert "NUL character" in authorize.content.decode()

    nonce = client.get(
        "/lightspeed-sandbox/o-series/authorize",
        {
            "client_id": "o-client",
            "response_type": "code",
            "redirect_uri": "https://shop.example/cb/",
            "state": "Abcdefghij0123456789",
            "nonce": NUL,
        },
    )
    assert nonce.status_code == 400

    token = client.post(
        "/lightspeed-sandbox/o-series/v1/token",
        {"grant_type": "refresh_token", "refresh_token": "x", "client_id": NUL, "client_secret": SECRET},
    )
    assert token.status_code == 400
    assert json.loads(token.content)["error"] == "invalid_request"

    # A Basic header decodes to whatever bytes it likes, NUL included.
    basic = client.post(
        "/lightspeed-sandbox/vendors/oauth/token",
        {"grant_type": "refresh_token", "refresh_token": "x"},
        HTTP_AUTHORIZATION="Basic AGE6Yg==",  # "\x00a:b"
    )
    assert basic.status_code == 401
    assert json.loads(basic.content)["error"] == "invalid_client"
