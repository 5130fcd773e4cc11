"""A complete connect for every provider, asserting the exact requests sent to Lightspeed."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
import responses

from django_lightspeed_oauth import signals
from django_lightspeed_oauth.models import AuthorizationRequest, ConnectedCompany, TokenEvent
from django_lightspeed_oauth.testing import make_client

from .lightspeed_documented import (
    K_SERIES_BUSINESSES,
    K_SERIES_V1_TOKEN,
    K_SERIES_V2_TOKEN,
    O_SERIES_COMPANY,
    O_SERIES_TOKEN,
    R_SERIES_ACCOUNT,
    R_SERIES_TOKEN,
    VENDORS_TOKEN,
    X_SERIES_RETAILER,
    X_SERIES_TOKEN,
    k_series_businesses,
)

REDIRECT = "https://site.example.com/lightspeed/callback/"
TOKEN_ANSWER = {
    "access_token": "AT-1",
    "refresh_token": "RT-1",
    "expires_in": 3600,
    "token_type": "bearer",
    "scope": "a b",
}


def basic(client_id, secret):
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


# Each provider's documented token answer (see lightspeed_documented.py).
TOKEN_ANSWERS = {
    "k-series": K_SERIES_V1_TOKEN,
    "k-series-v2": K_SERIES_V2_TOKEN,
    "o-series": O_SERIES_TOKEN,
    "retail-r": R_SERIES_TOKEN,
    "vendors": VENDORS_TOKEN,
}


# provider, environment, authorize URL, token URL (no query), identity URL, identity answer,
# how the grant travels ("query" / "form"), client auth ("basic" / "body"), expected company id
CASES = [
    (
        "k-series",
        "production",
        "https://api.lsk.lightspeed.app/oauth/authorize",
        "https://api.lsk.lightspeed.app/oauth/token",
        "https://api.lsk.lightspeed.app/f/data/businesses",
        K_SERIES_BUSINESSES,
        "query",
        "basic",
        "1234",
    ),
    (
        "k-series",
        "trial",
        "https://api.trial.lsk.lightspeed.app/oauth/authorize",
        "https://api.trial.lsk.lightspeed.app/oauth/token",
        "https://api.trial.lsk.lightspeed.app/f/data/businesses",
        k_series_businesses((7, "Trial Bistro", [(70001, "Trial Bistro Bar")])),
        "query",
        "basic",
        "7",
    ),
    (
        "k-series-v2",
        "production",
        "https://auth.lsk-prod.app/realms/k-series/protocol/openid-connect/auth",
        "https://auth.lsk-prod.app/realms/k-series/protocol/openid-connect/token",
        "https://api.lsk.lightspeed.app/f/data/businesses",
        K_SERIES_BUSINESSES,
        "form",
        "basic",
        "1234",
    ),
    (
        "k-series-v2",
        "trial",
        "https://auth.lsk-demo.app/realms/k-series/protocol/openid-connect/auth",
        "https://auth.lsk-demo.app/realms/k-series/protocol/openid-connect/token",
        "https://api.trial.lsk.lightspeed.app/f/data/businesses",
        k_series_businesses((98, "V2 Demo", [(98001, "V2 Demo Terrace")])),
        "form",
        "basic",
        "98",
    ),
    (
        "o-series",
        "production",
        "https://my.kounta.com/authorize",
        "https://api.kounta.com/v1/token",
        "https://api.kounta.com/v1/companies/me",
        O_SERIES_COMPANY,
        "form",
        "body",
        "5678",
    ),
    (
        "retail-r",
        "production",
        "https://cloud.lightspeedapp.com/auth/oauth/authorize",
        "https://cloud.lightspeedapp.com/auth/oauth/token",
        "https://api.lightspeedapp.com/API/V3/Account.json",
        R_SERIES_ACCOUNT,
        "form",
        "body",
        "12345",
    ),
    (
        "vendors",
        "production",
        "https://accounts.lightspeed.app/authorize",
        "https://accounts.lightspeed.app/oauth/token",
        "https://accounts.lightspeed.app/userinfo",
        {"sub": "vendor-77", "name": "Acme Supplies"},
        "form",
        "basic",
        "vendor-77",
    ),
]


def start(staff_client, client):
    response = staff_client.post(f"/lightspeed/connect/{client.slug}/")
    assert response.status_code == 302
    return urlsplit(response["Location"])


@pytest.mark.django_db
@pytest.mark.parametrize(
    "provider,environment,authorize_url,token_url,identity_url,identity,params_in,auth,company_id",
    CASES,
    ids=[f"{c[0]}-{c[1]}" for c in CASES],
)
def test_connect_sends_exactly_what_the_provider_expects(
    staff_client,
    mocked,
    provider,
    environment,
    authorize_url,
    token_url,
    identity_url,
    identity,
    params_in,
    auth,
    company_id,
):
    client = make_client(
        provider=provider,
        environment=environment,
        client_id="cid-1",
        client_secret="csecret-1",
        redirect_uri=REDIRECT,
        scopes="orders-api offline_access",
    )
    location = start(staff_client, client)
    assert f"{location.scheme}://{location.netloc}{location.path}" == authorize_url
    query = dict(parse_qsl(location.query))
    state = query["state"]
    expected = {
        "response_type": "code",
        "client_id": "cid-1",
        "redirect_uri": REDIRECT,
        "scope": "orders-api offline_access",
        "state": state,
    }
    if provider == "vendors":
        assert query.pop("code_challenge_method") == "S256"
        assert len(query.pop("code_challenge")) == 43
        assert len(state) >= 20 and state.isalnum()
    if provider == "retail-r":  # PKCE optional: we send it
        assert query.pop("code_challenge_method") == "S256"
        query.pop("code_challenge")
    assert query == expected

    token_answer = TOKEN_ANSWERS[provider]
    mocked.add(responses.POST, token_url, json=token_answer)
    mocked.add(responses.GET, identity_url, json=identity)
    response = staff_client.get("/lightspeed/callback/", {"code": "the-code", "state": state}, follow=True)

    assert response.status_code == 200
    assert b"Connected" in response.content
    token_call, identity_call = mocked.calls
    sent = token_call.request
    assert sent.method == "POST"
    assert sent.url.split("?")[0] == token_url
    grant = {"grant_type": "authorization_code", "code": "the-code", "redirect_uri": REDIRECT}
    if provider in ("vendors", "retail-r"):
        verifier = sent.url if params_in == "query" else parse_qs(sent.body)["code_verifier"][0]
        assert 43 <= len(verifier) <= 128
        grant["code_verifier"] = verifier
    if auth == "basic":
        assert sent.headers["Authorization"] == basic("cid-1", "csecret-1")
    else:
        assert "Authorization" not in sent.headers
        grant.update(client_id="cid-1", client_secret="csecret-1")
    if params_in == "query":
        assert dict(parse_qsl(urlsplit(sent.url).query)) == grant
        assert not sent.body
    else:
        assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert dict(parse_qsl(sent.body)) == grant
        assert urlsplit(sent.url).query == ""
    if provider.startswith("k-series"):
        # "Get Businesses" is paginated: we ask for the first page and its size.
        assert identity_call.request.url == f"{identity_url}?page=0&size=200"
    else:
        assert identity_call.request.url == identity_url
    assert identity_call.request.headers["Authorization"] == f"Bearer {token_answer['access_token']}"

    company = ConnectedCompany.objects.get()
    assert company.company_id == company_id
    assert company.access_token == token_answer["access_token"]
    assert company.refresh_token == token_answer["refresh_token"]
    assert company.status == "active"
    assert TokenEvent.objects.filter(company=company, kind="connected").count() == 1
    assert AuthorizationRequest.objects.get().outcome == "connected"


X_TOKEN = {**X_SERIES_TOKEN, "domain_prefix": "mystore"}  # the documented answer, for store "mystore"
X_TOKEN_URL = "https://mystore.retail.lightspeed.app/api/1.0/token"
X_RETAILER_URL = "https://mystore.retail.lightspeed.app/api/2.0/retailer"


def x_series_client(scopes="retailer:read products:read"):
    return make_client(
        provider="retail-x",
        environment="production",
        client_id="x-id",
        client_secret="x-secret",
        redirect_uri=REDIRECT,
        scopes=scopes,
    )


def x_series_callback(staff_client, client, prefix="mystore"):
    query = dict(parse_qsl(start(staff_client, client).query))
    return staff_client.get(
        "/lightspeed/callback/",
        {"code": "c0de", "state": query["state"], "domain_prefix": prefix},
        follow=True,
    )


@pytest.mark.django_db
def test_retail_x_connects_the_retailer_named_by_its_documented_answers(staff_client, mocked):
    client = x_series_client()
    location = start(staff_client, client)
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        "https://secure.retail.lightspeed.app/connect"
    )
    query = dict(parse_qsl(location.query))
    assert len(query["state"]) >= 8
    assert query["scope"] == "retailer:read products:read"  # required since 2026-06-01
    mocked.add(responses.POST, X_TOKEN_URL, json=X_TOKEN)
    mocked.add(
        responses.GET,
        X_RETAILER_URL,
        json={"data": {**X_SERIES_RETAILER["data"], "domain_prefix": "mystore"}},
    )

    response = staff_client.get(
        "/lightspeed/callback/",
        {"code": "c0de", "state": query["state"], "domain_prefix": "mystore"},
        follow=True,
    )

    assert response.status_code == 200
    token_call, retailer_call = mocked.calls
    assert token_call.request.url == X_TOKEN_URL
    assert "Authorization" not in token_call.request.headers
    assert dict(parse_qsl(token_call.request.body)) == {
        "grant_type": "authorization_code",
        "code": "c0de",
        "redirect_uri": REDIRECT,
        "client_id": "x-id",
        "client_secret": "x-secret",
    }
    assert retailer_call.request.headers["Authorization"] == f"Bearer {X_TOKEN['access_token']}"
    company = ConnectedCompany.objects.get()
    assert company.company_id == X_SERIES_RETAILER["data"]["id"]  # the retailer's UUID
    assert company.name == X_SERIES_RETAILER["data"]["name"]
    assert company.details["domain_prefix"] == "mystore"
    assert company.refresh_token == X_TOKEN["refresh_token"]
    # The documented answer has an absolute `expires` and `expires_in`; expires_in is read.
    assert company.expires_at is not None


@pytest.mark.django_db
def test_retail_x_keeps_the_retailers_new_domain_prefix(staff_client, mocked):
    mocked.add(responses.POST, X_TOKEN_URL, json=X_TOKEN)
    mocked.add(
        responses.GET,
        X_RETAILER_URL,
        json={"data": {**X_SERIES_RETAILER["data"], "domain_prefix": "renamed"}},
    )
    assert x_series_callback(staff_client, x_series_client()).status_code == 200
    company = ConnectedCompany.objects.get()
    assert company.details["domain_prefix"] == "renamed"
    assert company.client.token_endpoint(company.url_context()) == (
        "https://renamed.retail.lightspeed.app/api/1.0/token"
    )


@pytest.mark.django_db
def test_retail_x_without_retailer_read_falls_back_to_the_prefix_with_a_warning(staff_client, mocked, caplog):
    mocked.add(responses.POST, X_TOKEN_URL, json=X_TOKEN)
    mocked.add(responses.GET, X_RETAILER_URL, status=403, json={"error": "insufficient_scope"})

    assert x_series_callback(staff_client, x_series_client("products:read")).status_code == 200

    company = ConnectedCompany.objects.get()
    assert (company.company_id, company.name) == ("mystore", "mystore")
    assert "retailer:read" in company.details["identity_warning"]
    assert "retailer:read" in caplog.text


@pytest.mark.django_db
def test_retail_x_adopts_a_company_stored_under_its_prefix(staff_client, mocked):
    from django_lightspeed_oauth.testing import make_company

    client = x_series_client()
    old = make_company(client, company_id="mystore", details={"domain_prefix": "mystore"})
    mocked.add(responses.POST, X_TOKEN_URL, json=X_TOKEN)
    mocked.add(
        responses.GET,
        X_RETAILER_URL,
        json={"data": {**X_SERIES_RETAILER["data"], "domain_prefix": "mystore"}},
    )

    assert x_series_callback(staff_client, client).status_code == 200

    company = ConnectedCompany.objects.get()
    assert company.pk == old.pk
    assert company.company_id == X_SERIES_RETAILER["data"]["id"]


@pytest.mark.django_db
def test_retail_x_refuses_a_token_answer_without_domain_prefix(staff_client, mocked):
    answer = {k: v for k, v in X_TOKEN.items() if k != "domain_prefix"}
    mocked.add(responses.POST, X_TOKEN_URL, json=answer)
    response = x_series_callback(staff_client, x_series_client())
    assert response.status_code == 502
    assert not ConnectedCompany.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("prefix", ["evil.com/x", "a..b", "-bad", "", "x" * 70, "ok?x=1"])
def test_retail_x_rejects_a_domain_prefix_that_is_not_a_store_name(staff_client, mocked, prefix):
    client = x_series_client()
    state = dict(parse_qsl(start(staff_client, client).query))["state"]
    response = staff_client.get(
        "/lightspeed/callback/", {"code": "c", "state": state, "domain_prefix": prefix}
    )
    assert response.status_code == 400
    assert not mocked.calls
    assert not ConnectedCompany.objects.exists()


@pytest.mark.django_db
def test_vendors_reads_the_company_from_the_id_token_without_a_userinfo_call(staff_client, mocked):
    client = make_client(
        provider="vendors",
        environment="production",
        redirect_uri=REDIRECT,
        scopes="openid profile offline_access",
    )
    state = dict(parse_qsl(start(staff_client, client).query))["state"]
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "v-1", "name": "Vendor One"}).encode())
    id_token = "e30." + claims.decode().rstrip("=") + ".sig"
    mocked.add(
        responses.POST,
        "https://accounts.lightspeed.app/oauth/token",
        json={**VENDORS_TOKEN, "id_token": id_token},
    )
    response = staff_client.get("/lightspeed/callback/", {"code": "c", "state": state}, follow=True)
    assert response.status_code == 200
    assert len(mocked.calls) == 1
    company = ConnectedCompany.objects.get()
    assert (company.company_id, company.name) == ("v-1", "Vendor One")


@pytest.mark.django_db
def test_custom_provider_follows_its_options(staff_client, mocked):
    client = make_client(
        provider="custom",
        environment="production",
        client_id="cc",
        client_secret="cs",
        redirect_uri=REDIRECT,
        scopes="read write",
        authorize_url="https://auth.example.com/oauth2/authorize",
        token_url="https://auth.example.com/oauth2/token",
        provider_options={
            "token_auth": "body",
            "token_params": "json",
            "pkce": "required",
            "state_length": 24,
            "scope_separator": ",",
            "access_token_key": "token",
            "refresh_token_key": "renew",
            "expires_in_key": "ttl",
            "identity_url": "https://api.example.com/me",
            "identity_id_key": "company.uid",
            "identity_name_key": "company.title",
        },
    )
    query = dict(parse_qsl(start(staff_client, client).query))
    assert query["scope"] == "read,write"
    assert len(query["state"]) == 24
    assert query["code_challenge_method"] == "S256"
    mocked.add(
        responses.POST, "https://auth.example.com/oauth2/token", json={"token": "T", "renew": "R", "ttl": 60}
    )
    mocked.add(
        responses.GET, "https://api.example.com/me", json={"company": {"uid": "u-9", "title": "Example"}}
    )

    response = staff_client.get("/lightspeed/callback/", {"code": "k", "state": query["state"]}, follow=True)

    assert response.status_code == 200
    sent = mocked.calls[0].request
    assert sent.headers["Content-Type"] == "application/json"
    body = json.loads(sent.body)
    assert body.pop("code_verifier")
    assert body == {
        "grant_type": "authorization_code",
        "code": "k",
        "redirect_uri": REDIRECT,
        "client_id": "cc",
        "client_secret": "cs",
    }
    company = ConnectedCompany.objects.get()
    assert (company.company_id, company.name, company.refresh_token) == ("u-9", "Example", "R")


@pytest.mark.django_db
def test_connecting_the_same_company_again_updates_its_row(staff_client, mocked, api_client):
    company_answer = k_series_businesses((1, "Bistro", []))
    mocked.add(responses.GET, "https://api.trial.lsk.lightspeed.app/f/data/businesses", json=company_answer)
    for n in (1, 2):
        state = dict(parse_qsl(start(staff_client, api_client).query))["state"]
        mocked.add(
            responses.POST,
            "https://api.trial.lsk.lightspeed.app/oauth/token",
            json={**TOKEN_ANSWER, "access_token": f"AT-{n}", "refresh_token": f"RT-{n}"},
        )
        assert (
            staff_client.get("/lightspeed/callback/", {"code": "c", "state": state}, follow=True).status_code
            == 200
        )
    company = ConnectedCompany.objects.get()
    assert company.access_token == "AT-2" and company.refresh_token == "RT-2"
    assert company.token_version == 1
    assert TokenEvent.objects.filter(company=company, kind="connected").count() == 2


@pytest.mark.django_db
def test_company_connected_signal_and_next_redirect(staff_client, mocked, api_client):
    received = []
    signals.company_connected.connect(
        lambda **kw: received.append(kw), weak=False, dispatch_uid="test-connected"
    )
    try:
        response = staff_client.post(
            "/lightspeed/connect/kseries/", {"next": "/admin/", "reference": "shop-12"}
        )
        state = dict(parse_qsl(urlsplit(response["Location"]).query))["state"]
        mocked.add(responses.POST, "https://api.trial.lsk.lightspeed.app/oauth/token", json=TOKEN_ANSWER)
        mocked.add(
            responses.GET,
            "https://api.trial.lsk.lightspeed.app/f/data/businesses",
            json=k_series_businesses((3, "B", [])),
        )
        response = staff_client.get("/lightspeed/callback/", {"code": "c", "state": state})
    finally:
        signals.company_connected.disconnect(dispatch_uid="test-connected")
    assert response.status_code == 302 and response["Location"] == "/admin/"
    (kwargs,) = received
    assert kwargs["company"].reference == "shop-12" and kwargs["created"] is True
