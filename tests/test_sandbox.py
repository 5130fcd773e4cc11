"""Tests of the sandbox authorization servers, driven over HTTP as a site (and a merchant) would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone

from django_lightspeed_oauth.sandbox import register_client
from django_lightspeed_oauth.sandbox.models import (
    SandboxBehaviour,
    SandboxClient,
    SandboxGrant,
    SandboxToken,
    hash_secret,
)

from . import lightspeed_documented as documented

pytestmark = pytest.mark.django_db

PREFIX = "/lightspeed-sandbox/"
REDIRECT_URI = "https://partner.example/lightspeed/callback/?site=7"
STATE = "Abcdefghij0123456789xyz"  # 23 letters and digits: valid for every flavour
CLIENT_SECRET = "sandbox-secret"

# The URL contract: (authorize, token, identity) under the sandbox prefix, per flavour.
PATHS = {
    "k-series": ("k-series/oauth/authorize", "k-series/oauth/token", "k-series/f/data/businesses"),
    "k-series-v2": (
        "k-series-v2/realms/k-series/protocol/openid-connect/auth",
        "k-series-v2/realms/k-series/protocol/openid-connect/token",
        "k-series-v2/f/data/businesses",
    ),
    "o-series": ("o-series/authorize", "o-series/v1/token", "o-series/v1/companies/me"),
    "retail-r": (
        "retail-r/auth/oauth/authorize",
        "retail-r/auth/oauth/token",
        "retail-r/API/V3/Account.json",
    ),
    "retail-x": ("retail-x/connect", "retail-x/{prefix}/api/1.0/token", "retail-x/{prefix}/api/2.0/retailer"),
    "vendors": ("vendors/authorize", "vendors/oauth/token", "vendors/userinfo"),
}
FLAVOURS = list(PATHS)
SCOPES = {"vendors": "openid profile offline_access", "retail-x": "retailer:read products:read"}
ROTATING_FLAVOURS = [flavour for flavour in FLAVOURS if flavour != "o-series"]
BASIC_AUTH_FLAVOURS = {"k-series", "k-series-v2", "vendors"}

# What each identity endpoint answers once "Corner Café" (the second demo company) is connected.
EXPECTED_IDENTITY: dict[str, Any] = {
    # The Corner Café user also sees Northside Deli: a K-Series token covers both businesses.
    "k-series": [(41002, "Corner Café"), (41003, "Northside Deli")],
    "k-series-v2": [(42002, "Corner Café"), (42003, "Northside Deli")],
    "o-series": {"id": 53002, "name": "Corner Café"},
    "retail-r": {"@attributes": {"count": "1"}, "Account": {"accountID": "64002", "name": "Corner Café"}},
    "retail-x": {
        "data": {
            "id": "0a4b7c31-5f6e-11ec-8a2d-000000000002",
            "name": "Corner Café",
            "domain_prefix": "cornercafe",
        }
    },
    "vendors": {"sub": "7d1e2f30-0000-4000-8000-000000000002", "name": "Corner Café"},
}
CORNER_CAFE = {
    "k-series": "41002",
    "k-series-v2": "42002",
    "o-series": "53002",
    "retail-r": "64002",
    "retail-x": "0a4b7c31-5f6e-11ec-8a2d-000000000002",
    "vendors": "7d1e2f30-0000-4000-8000-000000000002",
}


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


VERIFIER = secrets.token_urlsafe(48)


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def basic(client_id: str, client_secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()


def register(flavour: str) -> SandboxClient:
    return register_client(flavour, f"{flavour}-client", CLIENT_SECRET, REDIRECT_URI, name="Partner App")


def authorize_url(flavour: str, **overrides: str | None) -> str:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": f"{flavour}-client",
        "redirect_uri": REDIRECT_URI,
        "scope": SCOPES.get(flavour, "orders-api items"),
        "state": STATE,
    }
    if flavour == "vendors":
        params |= {"code_challenge": s256(VERIFIER), "code_challenge_method": "S256"}
    params |= overrides
    query = urlencode({key: value for key, value in params.items() if value is not None})
    return f"{PREFIX}{PATHS[flavour][0]}?{query}"


def consent(client: Client, flavour: str, decision: str = "allow", **overrides: str | None) -> dict[str, str]:
    """Submit the consent page and return the query of the redirect back to the site."""
    response = client.post(
        authorize_url(flavour, **overrides), {"company": CORNER_CAFE[flavour], "decision": decision}
    )
    assert response.status_code == 302
    assert response["Location"].startswith("https://partner.example/lightspeed/callback/?site=7&")
    return query_of(response["Location"])


def token_path(flavour: str, domain_prefix: str = "cornercafe") -> str:
    return PREFIX + PATHS[flavour][1].format(prefix=domain_prefix)


def identity_path(flavour: str, domain_prefix: str = "cornercafe") -> str:
    return PREFIX + PATHS[flavour][2].format(prefix=domain_prefix)


def token_request(
    client: Client,
    flavour: str,
    params: dict[str, str],
    domain_prefix: str = "cornercafe",
    secret: str = CLIENT_SECRET,
) -> Any:
    """POST a token request the way the flavour's documentation says to."""
    path = token_path(flavour, domain_prefix)
    client_id = f"{flavour}-client"
    if flavour == "k-series":
        return client.post(f"{path}?{urlencode(params)}", HTTP_AUTHORIZATION=basic(client_id, secret))
    if flavour in BASIC_AUTH_FLAVOURS:
        body, headers = params, {"HTTP_AUTHORIZATION": basic(client_id, secret)}
    else:
        body, headers = params | {"client_id": client_id, "client_secret": secret}, {}
    return client.post(path, urlencode(body), content_type="application/x-www-form-urlencoded", **headers)


def exchange(client: Client, flavour: str, code: str, **extra: str) -> Any:
    params = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    if flavour == "vendors":
        params["code_verifier"] = VERIFIER
    return token_request(client, flavour, params | extra)


def refresh(client: Client, flavour: str, refresh_token: str, **extra: str) -> Any:
    return token_request(
        client, flavour, {"grant_type": "refresh_token", "refresh_token": refresh_token} | extra
    )


def identity(client: Client, flavour: str, access_token: str, domain_prefix: str = "cornercafe") -> Any:
    return client.get(identity_path(flavour, domain_prefix), HTTP_AUTHORIZATION=f"Bearer {access_token}")


def connect(client: Client, flavour: str) -> dict[str, Any]:
    """Run a whole authorization and return the token response."""
    register(flavour)
    callback = consent(client, flavour)
    response = exchange(client, flavour, callback["code"])
    assert response.status_code == 200, response.content
    return response.json()


def switch(flavour: str, **switches: Any) -> SandboxBehaviour:
    return SandboxBehaviour.objects.update_or_create(flavour=flavour, defaults=switches)[0]


def assert_oauth_error(response: Any, error: str, status: int = 400) -> None:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == error
    assert response.json()["error_description"]


# The whole flow, per flavour


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_consent_page_offers_demo_companies_and_both_decisions(client: Client, flavour: str) -> None:
    register(flavour)

    response = client.get(authorize_url(flavour))

    assert response.status_code == 200
    html = response.content.decode()
    for name in ("Harbour Bistro", "Corner Café", "Northside Deli"):
        assert name in html
    assert len(re.findall(r'<input type="radio" name="company"', html)) == 3
    assert '<button type="submit" name="decision" value="allow">Allow</button>' in html
    assert '<button type="submit" name="decision" value="deny">Deny</button>' in html
    assert "csrfmiddlewaretoken" in html


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_allowed_authorization_connects_the_chosen_company(client: Client, flavour: str) -> None:
    register(flavour)

    callback = consent(client, flavour)
    assert callback["state"] == STATE
    assert callback["site"] == "7"  # the redirect URI's own query survives
    if flavour == "retail-x":
        assert callback["domain_prefix"] == "cornercafe"
    else:
        assert "domain_prefix" not in callback

    response = exchange(client, flavour, callback["code"])
    assert response.status_code == 200, response.content
    tokens = response.json()
    assert tokens["token_type"] == ("Bearer" if flavour == "retail-x" else "bearer")
    assert tokens["expires_in"] == 3600
    assert tokens["access_token"] and tokens["refresh_token"]
    assert tokens["access_token"] != tokens["refresh_token"]
    assert tokens["scope"] == query_of(authorize_url(flavour))["scope"]
    assert response["Cache-Control"] == "no-store"

    api = identity(client, flavour, tokens["access_token"])
    assert api.status_code == 200
    if flavour.startswith("k-series"):
        businesses = api.json()["_embedded"]["businessList"]
        assert [(b["businessId"], b["businessName"]) for b in businesses] == EXPECTED_IDENTITY[flavour]
    else:
        assert api.json() == EXPECTED_IDENTITY[flavour]


def test_consent_form_works_with_csrf_checks_enforced() -> None:
    browser = Client(enforce_csrf_checks=True)
    register("k-series")
    page = browser.get(authorize_url("k-series"))
    csrf_token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert csrf_token is not None

    forged = browser.post(authorize_url("k-series"), {"company": "41002", "decision": "allow"})
    allowed = browser.post(
        authorize_url("k-series"),
        {"company": "41002", "decision": "allow", "csrfmiddlewaretoken": csrf_token.group(1)},
    )

    assert forged.status_code == 403
    assert allowed.status_code == 302
    assert "code" in query_of(allowed["Location"])


def test_consent_without_a_company_asks_again(client: Client) -> None:
    register("o-series")

    response = client.post(authorize_url("o-series"), {"decision": "allow"})

    assert response.status_code == 400
    assert "Choose a company" in response.content.decode()
    assert not SandboxGrant.objects.exists()


def test_token_lifetime_follows_the_setting(client: Client) -> None:
    with override_settings(LIGHTSPEED_OAUTH={"SANDBOX_TOKEN_LIFETIME": 120, "SANDBOX_ENABLED": True}):
        tokens = connect(client, "retail-r")

    assert tokens["expires_in"] == 120
    token = SandboxToken.objects.get(kind=SandboxToken.ACCESS)
    assert token.expires_at is not None
    assert abs((token.expires_at - timezone.now()).total_seconds() - 120) < 5


def test_codes_and_tokens_are_stored_only_as_hashes(client: Client) -> None:
    register("k-series")
    code = consent(client, "k-series")["code"]
    tokens = exchange(client, "k-series", code).json()

    grant = SandboxGrant.objects.get()
    assert grant.code_hash == hash_secret(code) != code
    stored = set(SandboxToken.objects.values_list("token_hash", flat=True))
    assert stored == {hash_secret(tokens["access_token"]), hash_secret(tokens["refresh_token"])}


# Deny and bad authorization requests


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_denied_authorization_returns_access_denied_with_state(client: Client, flavour: str) -> None:
    register(flavour)

    callback = consent(client, flavour, decision="deny")

    assert callback["error"] == "access_denied"
    assert callback["error_description"]
    assert callback["state"] == STATE
    assert "code" not in callback
    assert not SandboxGrant.objects.exists()


@pytest.mark.parametrize("method", ["get", "post"])
def test_wrong_redirect_uri_shows_an_error_page_without_redirecting(client: Client, method: str) -> None:
    register("k-series")
    url = authorize_url("k-series", redirect_uri="https://evil.example/steal")

    response = getattr(client, method)(
        url, {"company": "41002", "decision": "allow"} if method == "post" else None
    )

    assert response.status_code == 400
    assert "Location" not in response
    assert "redirect_uri does not match" in response.content.decode()
    assert not SandboxGrant.objects.exists()


def test_unknown_client_id_shows_an_error_page_without_redirecting(client: Client) -> None:
    register("k-series")

    response = client.get(authorize_url("k-series", client_id="nobody"))

    assert response.status_code == 400
    assert "Location" not in response
    assert "client_id is not a registered" in response.content.decode()


def test_client_of_another_flavour_is_unknown_here(client: Client) -> None:
    register("o-series")

    response = client.get(authorize_url("k-series", client_id="o-series-client"))

    assert response.status_code == 400
    assert "Location" not in response


def test_unsupported_response_type_is_sent_back_to_the_site(client: Client) -> None:
    register("retail-r")

    response = client.get(authorize_url("retail-r", response_type="token"))

    assert response.status_code == 302
    assert query_of(response["Location"])["error"] == "unsupported_response_type"


# Authorization codes


def test_authorization_code_is_single_use_and_a_replay_revokes_its_tokens(client: Client) -> None:
    register("k-series-v2")
    code = consent(client, "k-series-v2")["code"]
    tokens = exchange(client, "k-series-v2", code).json()

    replay = exchange(client, "k-series-v2", code)

    assert_oauth_error(replay, "invalid_grant")
    assert identity(client, "k-series-v2", tokens["access_token"]).status_code == 401
    assert_oauth_error(refresh(client, "k-series-v2", tokens["refresh_token"]), "invalid_grant")


def test_expired_authorization_code_is_rejected(client: Client) -> None:
    register("o-series")
    code = consent(client, "o-series")["code"]
    SandboxGrant.objects.update(code_expires_at=timezone.now() - timedelta(seconds=1))

    assert_oauth_error(exchange(client, "o-series", code), "invalid_grant")


def test_code_expires_a_minute_after_consent(client: Client) -> None:
    register("o-series")
    consent(client, "o-series")

    grant = SandboxGrant.objects.get()
    assert 55 <= (grant.code_expires_at - timezone.now()).total_seconds() <= 60


def test_redirect_uri_must_match_at_the_token_endpoint(client: Client) -> None:
    register("retail-r")
    code = consent(client, "retail-r")["code"]

    mismatch = exchange(client, "retail-r", code, redirect_uri="https://partner.example/other/")
    assert_oauth_error(mismatch, "invalid_grant")
    # The refused attempt did not burn the code.
    assert exchange(client, "retail-r", code).status_code == 200


def test_unknown_code_is_rejected(client: Client) -> None:
    register("retail-r")

    assert_oauth_error(exchange(client, "retail-r", "made-up-code"), "invalid_grant")


def test_unsupported_grant_type_is_rejected(client: Client) -> None:
    register("o-series")

    response = token_request(client, "o-series", {"grant_type": "password"})

    assert_oauth_error(response, "unsupported_grant_type")


def test_token_endpoint_answers_only_post(client: Client) -> None:
    register("o-series")

    assert client.get(token_path("o-series")).status_code == 405


# Client authentication


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_wrong_client_secret_is_invalid_client(client: Client, flavour: str) -> None:
    register(flavour)
    code = consent(client, flavour)["code"]
    params = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}

    response = token_request(client, flavour, params, secret="wrong")

    assert_oauth_error(response, "invalid_client", status=401)


@pytest.mark.parametrize("flavour", sorted(BASIC_AUTH_FLAVOURS))
def test_basic_flavours_require_http_basic_client_authentication(client: Client, flavour: str) -> None:
    register(flavour)
    code = consent(client, flavour)["code"]
    params = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    credentials = {"client_id": f"{flavour}-client", "client_secret": CLIENT_SECRET}
    if flavour == "k-series":
        url, body = f"{token_path(flavour)}?{urlencode(params)}", credentials
    else:
        url, body = token_path(flavour), params | credentials

    response = client.post(url, urlencode(body), content_type="application/x-www-form-urlencoded")

    assert_oauth_error(response, "invalid_client", status=401)
    assert response["WWW-Authenticate"].startswith("Basic")


# Each flavour's own rules


def test_k_series_rejects_token_parameters_in_the_body(client: Client) -> None:
    register("k-series")
    code = consent(client, "k-series")["code"]
    params = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}

    response = client.post(
        token_path("k-series"),
        urlencode(params),
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=basic("k-series-client", CLIENT_SECRET),
    )

    assert_oauth_error(response, "invalid_request")
    assert "query" in response.json()["error_description"]
    assert exchange(client, "k-series", code).status_code == 200


def test_k_series_v2_reports_refresh_expires_in_as_documented(client: Client) -> None:
    # Lightspeed documents refresh_expires_in only as 0 (with offline_access): no other lifetime.
    register("k-series-v2")
    code = consent(client, "k-series-v2", scope="orders-api")["code"]
    online = exchange(client, "k-series-v2", code).json()
    offline_code = consent(client, "k-series-v2", scope="orders-api offline_access")["code"]
    offline = exchange(client, "k-series-v2", offline_code).json()

    assert online["refresh_expires_in"] == 0
    assert offline["refresh_expires_in"] == 0
    assert "refresh_expires_in" not in connect(client, "k-series")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_only_k_series_v1_refresh_tokens_expire_after_fourteen_days(client: Client, flavour: str) -> None:
    connect(client, flavour)
    refresh_token = SandboxToken.objects.get(kind=SandboxToken.REFRESH)
    if flavour == "k-series":
        lifetime = refresh_token.expires_at - refresh_token.created_at
        assert abs(lifetime.total_seconds() - 14 * 24 * 3600) < 60
    else:
        assert refresh_token.expires_at is None


def test_retail_x_refuses_an_authorization_without_scope(client: Client) -> None:
    register("retail-x")
    response = client.get(authorize_url("retail-x", scope=None))
    assert response.status_code == 302
    assert query_of(response["Location"])["error"] == "access_denied"


def test_retail_x_retailer_needs_the_retailer_read_scope(client: Client) -> None:
    register("retail-x")
    code = consent(client, "retail-x", scope="products:read")["code"]
    tokens = exchange(client, "retail-x", code).json()

    response = identity(client, "retail-x", tokens["access_token"])

    assert response.status_code == 403


def test_k_series_businesses_are_paginated_with_page_and_size(client: Client) -> None:
    tokens = connect(client, "k-series")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {tokens['access_token']}"}

    first = client.get(identity_path("k-series"), {"page": "0", "size": "1"}, **auth).json()
    second = client.get(identity_path("k-series"), {"page": "1", "size": "1"}, **auth).json()
    third = client.get(identity_path("k-series"), {"page": "2", "size": "1"}, **auth).json()

    assert [b["businessId"] for b in first["_embedded"]["businessList"]] == [41002]
    assert [b["businessId"] for b in second["_embedded"]["businessList"]] == [41003]
    assert third["_embedded"]["businessList"] == []


def test_o_series_takes_client_credentials_in_the_body_without_basic(client: Client) -> None:
    register("o-series")
    code = consent(client, "o-series")["code"]

    response = client.post(
        token_path("o-series"),
        urlencode({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}),
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=basic("o-series-client", CLIENT_SECRET),
    )

    assert_oauth_error(response, "invalid_client", status=401)
    assert "WWW-Authenticate" not in response


def test_o_series_refresh_does_not_rotate(client: Client) -> None:
    tokens = connect(client, "o-series")

    first = refresh(client, "o-series", tokens["refresh_token"])
    second = refresh(client, "o-series", tokens["refresh_token"])

    assert first.status_code == second.status_code == 200
    assert "refresh_token" not in first.json()
    assert first.json()["access_token"] != second.json()["access_token"] != tokens["access_token"]
    assert identity(client, "o-series", second.json()["access_token"]).json()["name"] == "Corner Café"


def test_retail_r_rejects_a_json_token_request_with_invalid_grant(client: Client) -> None:
    register("retail-r")
    code = consent(client, "retail-r")["code"]
    body = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "client_id": "retail-r-client",
        "client_secret": CLIENT_SECRET,
    }

    response = client.post(token_path("retail-r"), json.dumps(body), content_type="application/json")

    assert_oauth_error(response, "invalid_grant")


def test_retail_r_rejects_scope_on_refresh_with_invalid_grant(client: Client) -> None:
    tokens = connect(client, "retail-r")

    with_scope = refresh(client, "retail-r", tokens["refresh_token"], scope="employee:all")
    without_scope = refresh(client, "retail-r", tokens["refresh_token"])

    assert_oauth_error(with_scope, "invalid_grant")
    assert without_scope.status_code == 200


@pytest.mark.parametrize("state", [None, "", "short7c"])
def test_retail_x_requires_a_state_of_at_least_8_characters(client: Client, state: str | None) -> None:
    register("retail-x")

    response = client.get(authorize_url("retail-x", state=state))

    assert response.status_code == 302
    callback = query_of(response["Location"])
    assert callback["error"] == "invalid_request"
    assert "8 characters" in callback["error_description"]
    assert "code" not in callback


def test_retail_x_accepts_an_8_character_state(client: Client) -> None:
    register("retail-x")

    assert consent(client, "retail-x", state="a-b_c.d!")["state"] == "a-b_c.d!"


@pytest.mark.parametrize("leaked", ["client_id", "client_secret"])
def test_retail_x_rejects_client_credentials_in_the_query(client: Client, leaked: str) -> None:
    register("retail-x")
    code = consent(client, "retail-x")["code"]
    body = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "client_id": "retail-x-client",
        "client_secret": CLIENT_SECRET,
    }
    query = urlencode({leaked: body[leaked]})

    response = client.post(
        f"{token_path('retail-x')}?{query}", urlencode(body), content_type="application/x-www-form-urlencoded"
    )

    assert_oauth_error(response, "invalid_request")


def test_retail_x_token_response_carries_domain_prefix_and_expiry(client: Client) -> None:
    tokens = connect(client, "retail-x")

    assert tokens["domain_prefix"] == "cornercafe"
    assert abs(tokens["expires"] - (time.time() + tokens["expires_in"])) < 5


def test_retail_x_token_is_refused_by_another_store(client: Client) -> None:
    tokens = connect(client, "retail-x")

    elsewhere = identity(client, "retail-x", tokens["access_token"], domain_prefix="harbourbistro")

    assert elsewhere.status_code == 401
    assert elsewhere.json()["error"] == "invalid_token"


def test_retail_x_code_must_be_exchanged_at_its_own_store(client: Client) -> None:
    register("retail-x")
    code = consent(client, "retail-x")["code"]
    params = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}

    response = token_request(client, "retail-x", params, domain_prefix="harbourbistro")

    assert_oauth_error(response, "invalid_grant")


@pytest.mark.parametrize(
    "overrides",
    [
        {"code_challenge": None, "code_challenge_method": None},
        {"code_challenge_method": None},
        {"code_challenge_method": "plain"},
        {"code_challenge": "too-short"},
    ],
)
def test_vendors_require_an_s256_pkce_challenge(client: Client, overrides: dict[str, str | None]) -> None:
    register("vendors")

    response = client.get(authorize_url("vendors", **overrides))

    assert response.status_code == 302
    callback = query_of(response["Location"])
    assert callback["error"] == "invalid_request"
    assert "code" not in callback


@pytest.mark.parametrize("state", [None, "abc123", "Abcdefghij-0123456789xyz"])
def test_vendors_require_a_state_of_20_letters_and_digits(client: Client, state: str | None) -> None:
    register("vendors")

    response = client.get(authorize_url("vendors", state=state))

    assert response.status_code == 302
    callback = query_of(response["Location"])
    assert callback["error"] == "invalid_request"
    assert "20 letters and digits" in callback["error_description"]


@pytest.mark.parametrize("verifier", [None, "x" * 43, secrets.token_urlsafe(48)])
def test_vendors_reject_a_code_verifier_that_does_not_match(client: Client, verifier: str | None) -> None:
    register("vendors")
    code = consent(client, "vendors")["code"]
    params = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    if verifier is not None:
        params["code_verifier"] = verifier

    response = token_request(client, "vendors", params)

    assert_oauth_error(response, "invalid_grant")


def test_vendors_issue_a_signed_id_token_for_openid(client: Client) -> None:
    tokens = connect(client, "vendors")

    header, payload, signature = tokens["id_token"].split(".")
    expected = hmac.new(CLIENT_SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    assert claims["sub"] == EXPECTED_IDENTITY["vendors"]["sub"]
    assert claims["name"] == "Corner Café"
    assert claims["aud"] == "vendors-client"
    assert claims["iss"] == "http://testserver/lightspeed-sandbox/vendors"
    assert time.time() < claims["exp"] <= time.time() + 3600 + 5


def test_vendors_issue_no_id_token_without_openid(client: Client) -> None:
    register("vendors")
    code = consent(client, "vendors", scope="profile offline_access")["code"]

    assert "id_token" not in exchange(client, "vendors", code).json()


def test_pkce_is_optional_but_verified_on_retail_r(client: Client) -> None:
    register("retail-r")
    code = consent(client, "retail-r", code_challenge=s256(VERIFIER), code_challenge_method="S256")["code"]

    assert_oauth_error(exchange(client, "retail-r", code), "invalid_grant")
    assert exchange(client, "retail-r", code, code_verifier=VERIFIER).status_code == 200


# Refresh token rotation


@pytest.mark.parametrize("flavour", ROTATING_FLAVOURS)
def test_refresh_rotates_the_refresh_token(client: Client, flavour: str) -> None:
    tokens = connect(client, flavour)

    refreshed = refresh(client, flavour, tokens["refresh_token"])

    assert refreshed.status_code == 200, refreshed.content
    new = refreshed.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert new["access_token"] != tokens["access_token"]
    assert new["expires_in"] == 3600
    answer = identity(client, flavour, new["access_token"]).json()
    if flavour.startswith("k-series"):
        answer = [(b["businessId"], b["businessName"]) for b in answer["_embedded"]["businessList"]]
    assert answer == EXPECTED_IDENTITY[flavour]
    assert refresh(client, flavour, new["refresh_token"]).status_code == 200


@pytest.mark.parametrize("flavour", ROTATING_FLAVOURS)
def test_reused_refresh_token_revokes_the_whole_family(client: Client, flavour: str) -> None:
    tokens = connect(client, flavour)
    new = refresh(client, flavour, tokens["refresh_token"]).json()

    reuse = refresh(client, flavour, tokens["refresh_token"])

    assert_oauth_error(reuse, "invalid_grant")
    assert_oauth_error(refresh(client, flavour, new["refresh_token"]), "invalid_grant")
    assert identity(client, flavour, new["access_token"]).status_code == 401
    assert identity(client, flavour, tokens["access_token"]).status_code == 401


def test_family_revocation_leaves_other_authorizations_alone(client: Client) -> None:
    first = connect(client, "k-series")
    second = exchange(client, "k-series", consent(client, "k-series")["code"]).json()
    refresh(client, "k-series", first["refresh_token"])

    refresh(client, "k-series", first["refresh_token"])

    assert identity(client, "k-series", second["access_token"]).status_code == 200
    assert refresh(client, "k-series", second["refresh_token"]).status_code == 200


def test_refresh_token_of_another_client_is_rejected(client: Client) -> None:
    tokens = connect(client, "k-series")
    register_client("k-series", "other-client", "other-secret", REDIRECT_URI)

    query = urlencode({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})

    response = client.post(
        f"{token_path('k-series')}?{query}", HTTP_AUTHORIZATION=basic("other-client", "other-secret")
    )

    assert_oauth_error(response, "invalid_grant")
    assert refresh(client, "k-series", tokens["refresh_token"]).status_code == 200


# Bearer endpoints


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer not-a-token", "Basic Zm9vOmJhcg=="])
def test_identity_endpoint_requires_a_valid_bearer_token(client: Client, authorization: str | None) -> None:
    connect(client, "o-series")
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}

    response = client.get(identity_path("o-series"), **headers)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_expired_access_token_is_refused(client: Client) -> None:
    tokens = connect(client, "vendors")
    SandboxToken.objects.filter(kind=SandboxToken.ACCESS).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    response = identity(client, "vendors", tokens["access_token"])

    assert response.status_code == 401
    assert "expired" in response.json()["error_description"]


def test_access_token_of_another_flavour_is_refused(client: Client) -> None:
    tokens = connect(client, "k-series")

    assert identity(client, "k-series-v2", tokens["access_token"]).status_code == 401


# Behaviour switches


def test_deny_switch_denies_at_once(client: Client) -> None:
    register("retail-r")
    switch("retail-r", deny_authorization=True)

    response = client.get(authorize_url("retail-r"))

    assert response.status_code == 302
    callback = query_of(response["Location"])
    assert callback["error"] == "access_denied"
    assert callback["state"] == STATE
    # Other flavours still ask the merchant.
    register("o-series")
    assert client.get(authorize_url("o-series")).status_code == 200


def test_refresh_error_switch_answers_invalid_grant(client: Client) -> None:
    tokens = connect(client, "k-series")
    behaviour = switch("k-series", refresh_error="invalid_grant")

    assert_oauth_error(refresh(client, "k-series", tokens["refresh_token"]), "invalid_grant")

    behaviour.refresh_error = ""
    behaviour.save()
    assert refresh(client, "k-series", tokens["refresh_token"]).status_code == 200


def test_refresh_error_switch_answers_a_500_html_page(client: Client) -> None:
    tokens = connect(client, "retail-x")
    switch("retail-x", refresh_error="server_error")

    response = refresh(client, "retail-x", tokens["refresh_token"])

    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")
    assert b"Internal Server Error" in response.content
    # Code exchanges are not affected.
    register("retail-x")
    assert exchange(client, "retail-x", consent(client, "retail-x")["code"]).status_code == 200


def test_delay_switch_slows_the_token_endpoint(client: Client) -> None:
    tokens = connect(client, "o-series")
    switch("o-series", delay_ms=300)

    started = time.monotonic()
    response = refresh(client, "o-series", tokens["refresh_token"])

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


# Index page, registration, admin


def test_index_lists_flavours_clients_and_switches_without_secrets(admin_client: Client) -> None:
    register("retail-x")

    response = admin_client.get(PREFIX)

    assert response.status_code == 200
    html = response.content.decode()
    for label in ("K-Series", "K-Series V2", "O-Series", "R-Series", "X-Series", "Vendors"):
        assert label in html
    assert "retail-x-client" in html
    assert "http://testserver/lightspeed-sandbox/retail-x/{domain_prefix}/api/1.0/token" in html
    assert CLIENT_SECRET not in html
    assert 'name="retail-x-refresh_error"' in html


def test_index_form_changes_a_flavours_switches(admin_client: Client) -> None:
    response = admin_client.post(
        PREFIX,
        {
            "flavour": "vendors",
            "vendors-deny_authorization": "on",
            "vendors-refresh_error": "server_error",
            "vendors-delay_ms": "250",
        },
    )

    assert response.status_code == 302
    behaviour = SandboxBehaviour.objects.get(flavour="vendors")
    assert (behaviour.deny_authorization, behaviour.refresh_error, behaviour.delay_ms) == (
        True,
        "server_error",
        250,
    )
    assert "Saved." in admin_client.get(response["Location"]).content.decode()


def test_index_form_rejects_an_absurd_delay(admin_client: Client) -> None:
    response = admin_client.post(
        PREFIX, {"flavour": "vendors", "vendors-refresh_error": "", "vendors-delay_ms": "3600000"}
    )

    assert response.status_code == 400
    assert SandboxBehaviour.objects.get(flavour="vendors").delay_ms == 0


def test_register_client_is_idempotent() -> None:
    register_client("k-series", "devp-abc", "one", "https://a.example/cb")
    client = register_client("k-series-v2", "devp-abc", "two", "https://b.example/cb", name="Renamed")

    assert SandboxClient.objects.count() == 1
    stored = SandboxClient.objects.get()
    assert (stored.pk, stored.flavour, stored.client_secret, stored.redirect_uri, stored.name) == (
        client.pk,
        "k-series-v2",
        "two",
        "https://b.example/cb",
        "Renamed",
    )


def test_register_client_rejects_an_unknown_flavour() -> None:
    with pytest.raises(KeyError, match="c-series"):
        register_client("c-series", "id", "secret", "https://a.example/cb")
    assert not SandboxClient.objects.exists()


def test_admin_lists_clients_without_their_secret(admin_client: Client) -> None:
    register("o-series")
    SandboxBehaviour.for_flavour("o-series")

    clients = admin_client.get("/admin/lightspeed_sandbox/sandboxclient/")
    change = admin_client.get(
        f"/admin/lightspeed_sandbox/sandboxclient/{SandboxClient.objects.get().pk}/change/"
    )
    behaviours = admin_client.get("/admin/lightspeed_sandbox/sandboxbehaviour/")

    assert clients.status_code == change.status_code == behaviours.status_code == 200
    assert "o-series-client" in clients.content.decode()
    assert CLIENT_SECRET not in clients.content.decode() + change.content.decode()
    assert "Restaurant O-Series" in behaviours.content.decode()


def test_admin_keeps_the_secret_when_left_blank(admin_client: Client) -> None:
    sandbox_client = register("o-series")

    response = admin_client.post(
        f"/admin/lightspeed_sandbox/sandboxclient/{sandbox_client.pk}/change/",
        {
            "flavour": "o-series",
            "name": "Renamed",
            "client_id": "o-series-client",
            "client_secret": "",
            "redirect_uri": REDIRECT_URI,
        },
    )

    assert response.status_code == 302
    sandbox_client.refresh_from_db()
    assert (sandbox_client.name, sandbox_client.client_secret) == ("Renamed", CLIENT_SECRET)


# The sandbox answers in the shapes of Lightspeed's documented examples --------------------------

DOCUMENTED_TOKENS = {
    "k-series": documented.K_SERIES_V1_TOKEN,
    "k-series-v2": documented.K_SERIES_V2_TOKEN,
    "o-series": documented.O_SERIES_TOKEN,
    "retail-r": documented.R_SERIES_TOKEN,
    "retail-x": documented.X_SERIES_TOKEN,
    "vendors": documented.VENDORS_TOKEN,
}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_token_answers_have_the_documented_fields(client: Client, flavour: str) -> None:
    answer = connect(client, flavour)
    documented_fields = documented.shape(DOCUMENTED_TOKENS[flavour])
    assert {
        key: documented.shape(answer[key]) for key in documented_fields if key in answer
    } == documented_fields
    assert set(answer) - set(documented_fields) <= {"scope", "id_token"}


def test_k_series_businesses_answer_has_the_documented_shape(client: Client) -> None:
    tokens = connect(client, "k-series")
    answer = identity(client, "k-series", tokens["access_token"]).json()
    assert documented.shape(answer) == documented.shape(documented.K_SERIES_BUSINESSES)


@pytest.mark.parametrize(
    "flavour,example",
    [
        ("o-series", documented.O_SERIES_COMPANY),
        ("retail-r", documented.R_SERIES_ACCOUNT),
        ("retail-x", documented.X_SERIES_RETAILER),
    ],
)
def test_identity_answers_have_the_documented_shape(client: Client, flavour: str, example: Any) -> None:
    tokens = connect(client, flavour)
    answer = identity(client, flavour, tokens["access_token"]).json()
    assert documented.shape(answer) == documented.shape(example)


# The production guard: off without DEBUG unless SANDBOX_ENABLED says so, switches for staff only


def sandbox_enabled(value: bool | None):
    from tests.settings import LIGHTSPEED_OAUTH

    return override_settings(LIGHTSPEED_OAUTH={**LIGHTSPEED_OAUTH, "SANDBOX_ENABLED": value})


@pytest.mark.parametrize(
    ("debug", "setting"), [(False, None), (False, False), (True, False)], ids=["no-debug", "off", "off-debug"]
)
def test_every_sandbox_page_is_404_unless_enabled(
    client: Client, django_user_model: Any, debug: bool, setting: bool | None
) -> None:
    tokens = connect(client, "retail-r")
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    with override_settings(DEBUG=debug), sandbox_enabled(setting):
        assert client.get(authorize_url("retail-r")).status_code == 404
        assert refresh(client, "retail-r", tokens["refresh_token"]).status_code == 404
        assert identity(client, "retail-r", tokens["access_token"]).status_code == 404
        assert client.get(PREFIX).status_code == 404
        response = client.post(PREFIX, {"flavour": "retail-r", "retail-r-deny_authorization": "on"})
        assert response.status_code == 404
    assert not SandboxBehaviour.objects.filter(flavour="retail-r", deny_authorization=True).exists()
    # Nothing was spent by the refused refresh.
    assert refresh(client, "retail-r", tokens["refresh_token"]).status_code == 200


@override_settings(DEBUG=True)
def test_with_debug_the_sandbox_serves_by_default(client: Client) -> None:
    with sandbox_enabled(None):
        tokens = connect(client, "o-series")
        assert identity(client, "o-series", tokens["access_token"]).status_code == 200


def test_anonymous_visitors_are_sent_to_log_in_and_cannot_flip_a_switch(client: Client) -> None:
    response = client.get(PREFIX)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/lightspeed-sandbox/")

    response = client.post(
        PREFIX, {"flavour": "vendors", "vendors-deny_authorization": "on", "vendors-delay_ms": "60000"}
    )

    assert response.status_code == 302
    assert not SandboxBehaviour.objects.filter(flavour="vendors").exclude(delay_ms=0).exists()
    assert not SandboxBehaviour.objects.filter(flavour="vendors", deny_authorization=True).exists()


def test_staff_without_the_change_permission_see_the_switches_but_cannot_flip_them(
    client: Client, django_user_model: Any
) -> None:
    switch("vendors", delay_ms=250)
    client.force_login(django_user_model.objects.create_user("viewer", password="pw", is_staff=True))

    page = client.get(PREFIX)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="vendors-delay_ms"' not in html
    assert "250 ms" in html

    response = client.post(PREFIX, {"flavour": "vendors", "vendors-refresh_error": "invalid_grant"})

    assert response.status_code == 403
    assert SandboxBehaviour.objects.get(flavour="vendors").refresh_error == ""


def test_the_delay_switch_never_holds_an_unauthenticated_request(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = connect(client, "vendors")
    switch("vendors", delay_ms=60_000)
    slept: list[float] = []
    monkeypatch.setattr("django_lightspeed_oauth.sandbox.views.time.sleep", slept.append)

    params = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    response = token_request(client, "vendors", params, secret="wrong")

    assert_oauth_error(response, "invalid_client", status=401)
    assert slept == []
    # An authenticated client is slowed as the switch says.
    assert refresh(client, "vendors", tokens["refresh_token"]).status_code == 200
    assert slept == [60.0]
