"""Providers on plain values, without a database: options, URLs, token answers, registry."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from django_lightspeed_oauth.exceptions import (
    ConfigurationError,
    IdentityError,
    ProviderError,
    TransientTokenError,
)
from django_lightspeed_oauth.providers import (
    CustomProvider,
    Provider,
    TokenSet,
    get_provider,
    provider_choices,
    provider_classes,
)
from tests.settings import LIGHTSPEED_OAUTH

from .lightspeed_documented import K_SERIES_BUSINESSES, X_SERIES_RETAILER, X_SERIES_TOKEN

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SANDBOX = "http://testserver/lightspeed-sandbox"


def lightspeed_settings(**values):
    return override_settings(LIGHTSPEED_OAUTH={**LIGHTSPEED_OAUTH, **values})


class AcmeProvider(CustomProvider):
    """A site's own provider, registered through the PROVIDERS setting."""

    key = "acme"
    name = "Acme OAuth"


# Options ----------------------------------------------------------------------------------------


def test_valid_options_replace_the_flavour_defaults():
    provider = get_provider("k-series", {"token_params": "form", "state_length": 64, "scope_separator": ","})
    assert (provider.token_params, provider.state_length, provider.scope_separator) == ("form", 64, ",")
    assert get_provider("k-series").token_params == "query"  # the class is untouched


def test_an_unknown_option_is_named_with_the_known_ones():
    with pytest.raises(ProviderError) as caught:
        get_provider("k-series", {"tokenauth": "basic"})
    message = caught.value.message
    assert "unknown option 'tokenauth'" in message
    assert "token_auth" in message and "pkce" in message


@pytest.mark.parametrize(
    "option,value,expected",
    [
        ("token_auth", "digest", "token_auth: must be one of 'basic', 'body'"),
        ("token_params", "xml", "token_params: must be one of 'form', 'json', 'query'"),
        ("pkce", "sometimes", "pkce: must be one of 'required', 'optional', 'off'"),
        ("state_length", 7, "state_length: must be a whole number from 8 to 128"),
        ("state_length", 129, "state_length: must be a whole number from 8 to 128"),
        ("state_length", "32", "state_length: must be a whole number from 8 to 128"),
        ("state_length", True, "state_length: must be a whole number from 8 to 128"),
        ("scope_separator", "|", "scope_separator: must be one of"),
        ("scope_on_refresh", "yes", "scope_on_refresh: must be true or false"),
        ("access_token_key", "  ", "access_token_key: must be a non-empty string"),
        ("identity_url", "ftp://example.com/me", "identity_url: must be an absolute http(s) URL"),
        ("api_base_url", 42, "api_base_url: must be a non-empty string"),
    ],
)
def test_a_bad_option_value_says_what_is_allowed(option, value, expected):
    with pytest.raises(ProviderError) as caught:
        get_provider("custom", {option: value})
    assert caught.value.message.startswith("Invalid provider options: ")
    assert expected in caught.value.message


def test_every_bad_option_is_reported_at_once():
    with pytest.raises(ProviderError) as caught:
        Provider.validate_options({"pkce": "x", "state_length": 1, "nope": 1})
    assert caught.value.message.count(";") == 2


@pytest.mark.parametrize("options", [["pkce"], "pkce=off", 3])
def test_options_must_be_an_object(options):
    with pytest.raises(ProviderError, match="must be a JSON object"):
        get_provider("custom", options)


@pytest.mark.parametrize(
    "options", [{"scope_on_refresh": True}, {"token_params": "json"}, {"token_params": "query"}]
)
def test_retail_r_refuses_options_it_answers_with_invalid_grant(options):
    with pytest.raises(ProviderError, match="form-encoded"):
        get_provider("retail-r", options)


# Endpoints --------------------------------------------------------------------------------------

ENDPOINTS = [
    (
        "k-series",
        "production",
        "https://api.lsk.lightspeed.app/oauth/authorize",
        "https://api.lsk.lightspeed.app/oauth/token",
        "https://api.lsk.lightspeed.app",
    ),
    (
        "k-series",
        "trial",
        "https://api.trial.lsk.lightspeed.app/oauth/authorize",
        "https://api.trial.lsk.lightspeed.app/oauth/token",
        "https://api.trial.lsk.lightspeed.app",
    ),
    (
        "k-series",
        "sandbox",
        f"{SANDBOX}/k-series/oauth/authorize",
        f"{SANDBOX}/k-series/oauth/token",
        f"{SANDBOX}/k-series",
    ),
    (
        "k-series-v2",
        "production",
        "https://auth.lsk-prod.app/realms/k-series/protocol/openid-connect/auth",
        "https://auth.lsk-prod.app/realms/k-series/protocol/openid-connect/token",
        "https://api.lsk.lightspeed.app",
    ),
    (
        "k-series-v2",
        "trial",
        "https://auth.lsk-demo.app/realms/k-series/protocol/openid-connect/auth",
        "https://auth.lsk-demo.app/realms/k-series/protocol/openid-connect/token",
        "https://api.trial.lsk.lightspeed.app",
    ),
    (
        "k-series-v2",
        "sandbox",
        f"{SANDBOX}/k-series-v2/realms/k-series/protocol/openid-connect/auth",
        f"{SANDBOX}/k-series-v2/realms/k-series/protocol/openid-connect/token",
        f"{SANDBOX}/k-series-v2",
    ),
    (
        "o-series",
        "production",
        "https://my.kounta.com/authorize",
        "https://api.kounta.com/v1/token",
        "https://api.kounta.com",
    ),
    (
        "o-series",
        "trial",
        "https://my.kounta.com/authorize",
        "https://api.kounta.com/v1/token",
        "https://api.kounta.com",
    ),
    (
        "o-series",
        "sandbox",
        f"{SANDBOX}/o-series/authorize",
        f"{SANDBOX}/o-series/v1/token",
        f"{SANDBOX}/o-series",
    ),
    (
        "retail-r",
        "production",
        "https://cloud.lightspeedapp.com/auth/oauth/authorize",
        "https://cloud.lightspeedapp.com/auth/oauth/token",
        "https://api.lightspeedapp.com/API/V3/Account/12345",
    ),
    (
        "retail-r",
        "trial",
        "https://cloud.lightspeedapp.com/auth/oauth/authorize",
        "https://cloud.lightspeedapp.com/auth/oauth/token",
        "https://api.lightspeedapp.com/API/V3/Account/12345",
    ),
    (
        "retail-r",
        "sandbox",
        f"{SANDBOX}/retail-r/auth/oauth/authorize",
        f"{SANDBOX}/retail-r/auth/oauth/token",
        f"{SANDBOX}/retail-r/API/V3/Account/12345",
    ),
    (
        "retail-x",
        "production",
        "https://secure.retail.lightspeed.app/connect",
        "https://shop1.retail.lightspeed.app/api/1.0/token",
        "https://shop1.retail.lightspeed.app/api",
    ),
    (
        "retail-x",
        "trial",
        "https://secure.retail.lightspeed.app/connect",
        "https://shop1.retail.lightspeed.app/api/1.0/token",
        "https://shop1.retail.lightspeed.app/api",
    ),
    (
        "retail-x",
        "sandbox",
        f"{SANDBOX}/retail-x/connect",
        f"{SANDBOX}/retail-x/shop1/api/1.0/token",
        f"{SANDBOX}/retail-x/shop1/api",
    ),
    (
        "vendors",
        "production",
        "https://accounts.lightspeed.app/authorize",
        "https://accounts.lightspeed.app/oauth/token",
        "https://lsapi-catalog.lightspeedapp.com",
    ),
    (
        "vendors",
        "trial",
        "https://accounts.lightspeed.app/authorize",
        "https://accounts.lightspeed.app/oauth/token",
        "https://lsapi-catalog.lightspeedapp.com",
    ),
    (
        "vendors",
        "sandbox",
        f"{SANDBOX}/vendors/authorize",
        f"{SANDBOX}/vendors/oauth/token",
        f"{SANDBOX}/vendors",
    ),
]


@pytest.mark.parametrize(
    "key,environment,authorize,token,api", ENDPOINTS, ids=[f"{e[0]}-{e[1]}" for e in ENDPOINTS]
)
def test_endpoints_for_every_provider_and_environment(key, environment, authorize, token, api):
    provider = get_provider(key)
    context = {"domain_prefix": "shop1", "accountID": "12345"}
    assert provider.endpoint("authorize", environment, context=context) == authorize
    assert provider.endpoint("token", environment, context=context) == token
    assert provider.endpoint("api", environment, context=context) == api


def test_every_builtin_provider_is_covered_by_the_endpoint_table():
    covered = {key for key, *_ in ENDPOINTS} | {"custom"}
    assert covered == set(provider_classes())


@lightspeed_settings(SANDBOX_URL="http://localhost:9000/my-sandbox/")
def test_sandbox_urls_follow_the_sandbox_url_setting():
    assert get_provider("vendors").endpoint("token", "sandbox") == (
        "http://localhost:9000/my-sandbox/vendors/oauth/token"
    )


@pytest.mark.parametrize("environment", ["production", "trial", "sandbox"])
def test_an_override_url_replaces_the_providers_url_and_fills_placeholders(environment):
    provider = get_provider("retail-x")
    url = provider.endpoint(
        "token", environment, "https://{domain_prefix}.proxy.example.com/t", {"domain_prefix": "store-9"}
    )
    assert url == "https://store-9.proxy.example.com/t"


def test_the_custom_provider_has_no_urls_of_its_own():
    with pytest.raises(ConfigurationError, match="set the API client's token_url"):
        get_provider("custom").endpoint("token", "production")
    with pytest.raises(ConfigurationError, match="set the API client's authorize_url"):
        get_provider("custom").endpoint("authorize", "sandbox")


def test_api_base_url_option_replaces_the_api_url():
    provider = get_provider("k-series", {"api_base_url": "https://proxy.example.com"})
    assert provider.endpoint("api", "production") == "https://proxy.example.com"


@pytest.mark.parametrize(
    "prefix",
    [
        "evil.com/x",
        "evil.com",
        "a.b",
        "",
        "x" * 64,
        "shop?x=1",
        "shop#frag",
        "-bad",
        "bad-",
        "sh op",
        "ünïcode",
        "shop/../../admin",
        "user@evil",
        "shop\x00",
    ],
)
def test_a_placeholder_value_cannot_change_the_host_or_path(prefix):
    with pytest.raises(ConfigurationError, match=r"needs a valid \{domain_prefix\}"):
        get_provider("retail-x").endpoint("token", "production", context={"domain_prefix": prefix})


def test_a_missing_placeholder_value_is_refused():
    with pytest.raises(ConfigurationError, match=r"needs a valid \{domain_prefix\}"):
        get_provider("retail-x").endpoint("token", "production")


# Authorization ----------------------------------------------------------------------------------


def test_authorization_params_join_scopes_with_the_flavours_separator():
    provider = get_provider("custom", {"scope_separator": ","})
    params = provider.authorization_params(
        client_id="c", redirect_uri="https://s/cb", scopes="  a   b c ", state="S" * 32, code_challenge="ch"
    )
    assert params == {
        "response_type": "code",
        "client_id": "c",
        "redirect_uri": "https://s/cb",
        "scope": "a,b,c",
        "state": "S" * 32,
        "code_challenge": "ch",
        "code_challenge_method": "S256",
    }
    no_scope = provider.authorization_params(
        client_id="c", redirect_uri="r", scopes=" ", state="S" * 32, code_challenge=None
    )
    assert "scope" not in no_scope and "code_challenge" not in no_scope


@pytest.mark.parametrize(
    "key,uses_pkce", [("vendors", True), ("retail-r", True), ("k-series", False), ("retail-x", False)]
)
def test_which_flavours_use_pkce(key, uses_pkce):
    assert get_provider(key).uses_pkce is uses_pkce


def test_vendors_asks_for_a_state_of_twenty_characters_or_more():
    assert get_provider("vendors").state_length >= 20


# Token requests ---------------------------------------------------------------------------------


def test_basic_auth_and_query_parameters_for_k_series():
    provider = get_provider("k-series")
    request = provider.token_request(
        "https://t/token",
        client_id="id",
        client_secret="sec",
        grant={"grant_type": "refresh_token", "refresh_token": "R"},
    )
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"id:sec").decode()
    assert request.params == {"grant_type": "refresh_token", "refresh_token": "R"}
    assert request.data is None and request.json is None


def test_credentials_in_a_form_body_for_retail_x():
    provider = get_provider("retail-x")
    request = provider.token_request(
        "https://t/token",
        client_id="id",
        client_secret="sec",
        grant={"grant_type": "authorization_code", "code": "C"},
    )
    assert "Authorization" not in request.headers
    assert request.data == {
        "grant_type": "authorization_code",
        "code": "C",
        "client_id": "id",
        "client_secret": "sec",
    }
    assert request.params == {}


def test_json_body_when_the_options_ask_for_it():
    provider = get_provider("custom", {"token_params": "json", "token_auth": "body"})
    request = provider.token_request("https://t", client_id="i", client_secret="s", grant={"grant_type": "x"})
    assert request.json == {"grant_type": "x", "client_id": "i", "client_secret": "s"}
    assert request.data is None


@pytest.mark.parametrize("key", ["retail-r", "k-series", "k-series-v2", "vendors", "o-series"])
def test_refresh_sends_no_scope_unless_the_flavour_wants_it(key):
    grant = get_provider(key).refresh_grant(refresh_token="R", scopes="employee:all offline")
    assert grant == {"grant_type": "refresh_token", "refresh_token": "R"}


def test_scope_on_refresh_option_sends_the_joined_scopes():
    grant = get_provider("custom", {"scope_on_refresh": True, "scope_separator": "+"}).refresh_grant(
        refresh_token="R", scopes="a b"
    )
    assert grant["scope"] == "a+b"


def test_the_code_grant_carries_the_verifier_only_when_there_is_one():
    provider = get_provider("vendors")
    with_verifier = provider.code_grant(code="C", redirect_uri="r", code_verifier="V" * 43)
    assert with_verifier["code_verifier"] == "V" * 43
    assert "code_verifier" not in provider.code_grant(code="C", redirect_uri="r", code_verifier=None)


# Token answers ----------------------------------------------------------------------------------


def parse(payload, key="k-series", **options) -> TokenSet:
    return get_provider(key, options or None).parse_token_response(payload, now=NOW)


def test_expires_in_sets_the_expiry_from_now():
    tokens = parse(
        {
            "access_token": "A",
            "refresh_token": "R",
            "expires_in": 3600,
            "token_type": "Bearer",
            "scope": "a b",
        }
    )
    assert tokens.expires_at == NOW + timedelta(hours=1)
    assert (tokens.access_token, tokens.refresh_token, tokens.token_type, tokens.scope) == (
        "A",
        "R",
        "Bearer",
        "a b",
    )


def test_expires_in_may_be_a_string():
    assert parse({"access_token": "A", "expires_in": "60"}).expires_at == NOW + timedelta(seconds=60)


def test_retail_x_absolute_expires_epoch_is_used_without_expires_in():
    tokens = parse({"access_token": "A", "expires": 1_900_000_000, "domain_prefix": "shop1"}, key="retail-x")
    assert tokens.expires_at == datetime.fromtimestamp(1_900_000_000, UTC)
    assert tokens.extra["domain_prefix"] == "shop1"


def test_expires_in_wins_over_expires():
    tokens = parse({"access_token": "A", "expires_in": 60, "expires": 1_900_000_000}, key="retail-x")
    assert tokens.expires_at == NOW + timedelta(seconds=60)


def test_refresh_expires_in_sets_the_refresh_expiry():
    tokens = parse({"access_token": "A", "refresh_token": "R", "refresh_expires_in": 86400})
    assert tokens.refresh_expires_at == NOW + timedelta(days=1)
    assert parse({"access_token": "A", "refresh_expires_in": 0}).refresh_expires_at is None


@pytest.mark.parametrize(
    "payload",
    [
        {"access_token": "A"},
        {"access_token": "A", "refresh_token": ""},
        {"access_token": "A", "refresh_token": None},
    ],
)
def test_a_missing_refresh_token_means_keep_the_old_one(payload):
    tokens = parse(payload)
    assert tokens.refresh_token is None
    assert tokens.expires_at is None


@pytest.mark.parametrize(
    "payload", [{}, {"access_token": ""}, {"access_token": None}, {"access_token": 123}, {"token": "A"}]
)
def test_an_answer_without_an_access_token_is_transient(payload):
    with pytest.raises(TransientTokenError, match="has no usable 'access_token'"):
        parse(payload)


@pytest.mark.parametrize("access_token", [12345, "", "bad\ud800token", "has space", None])
def test_a_new_refresh_token_is_kept_when_the_access_token_is_unusable(access_token):
    now = datetime(2026, 11, 22, tzinfo=UTC)
    tokens = get_provider("k-series").parse_token_response(
        {"access_token": access_token, "refresh_token": "NEW"}, now=now
    )
    assert tokens.refresh_token == "NEW"
    assert tokens.access_token == "" and tokens.unusable_access_token
    assert tokens.expires_at == now  # expired: the next call refreshes with NEW


@pytest.mark.parametrize("refresh_token", ["bad\ud800", 42, "a b"])
def test_an_unusable_refresh_token_is_not_stored(refresh_token):
    assert parse({"access_token": "A", "refresh_token": refresh_token}).refresh_token is None


@pytest.mark.parametrize("payload", [[{"access_token": "A"}], "access_token", None, 42])
def test_an_answer_that_is_not_a_json_object_is_transient(payload):
    with pytest.raises(TransientTokenError, match="not an object"):
        parse(payload)


@pytest.mark.parametrize(
    "payload",
    [
        {"access_token": "A", "expires_in": 1e300},
        {"access_token": "A", "expires": 10**15},
        {"access_token": "A", "refresh_expires_in": 10**12},
    ],
)
def test_an_absurd_expiry_is_read_as_unknown_and_the_tokens_kept(payload):
    tokens = parse({**payload, "refresh_token": "R"}, key="retail-x")
    assert (tokens.access_token, tokens.refresh_token) == ("A", "R")
    assert tokens.expires_at is None and tokens.refresh_expires_at is None


@pytest.mark.parametrize("value", ["soon", "1e400", {"s": 1}, True])
def test_an_unreadable_expires_in_leaves_the_expiry_unknown(value):
    assert parse({"access_token": "A", "expires_in": value}).expires_at is None


@pytest.mark.parametrize("value", [-5, 0, "0"])
def test_an_expires_in_of_zero_or_less_is_expired_not_eternal(value):
    now = datetime(2026, 11, 22, tzinfo=UTC)
    tokens = get_provider("k-series").parse_token_response(
        {"access_token": "A", "expires_in": value}, now=now
    )
    assert tokens.expires_at == now


def test_custom_response_keys_are_read():
    tokens = parse(
        {"token": "T", "renew": "R", "ttl": 30},
        key="custom",
        access_token_key="token",
        refresh_token_key="renew",
        expires_in_key="ttl",
    )
    assert (tokens.access_token, tokens.refresh_token) == ("T", "R")
    assert tokens.expires_at == NOW + timedelta(seconds=30)


def test_extra_keeps_no_secret():
    tokens = parse(
        {
            "access_token": "A-secret",
            "refresh_token": "R-secret",
            "id_token": "I-secret",
            "expires_in": 60,
            "nested": {"x": 1},
            "businessId": 7,
        }
    )
    assert tokens.extra == {"expires_in": 60, "businessId": 7}
    assert "secret" not in repr(tokens)


# Identity ---------------------------------------------------------------------------------------


def test_k_series_reads_every_business_of_the_documented_answer():
    (identity,) = get_provider("k-series").read_identities(
        parse({"access_token": "A"}), {}, [K_SERIES_BUSINESSES]
    )
    assert (identity.company_id, identity.name) == ("1234", "My Business")
    assert identity.extra["business_locations"] == [
        {"blID": 1234567890, "blName": "My Business Location 1", "country": "GB", "timezone": "Europe/London"}
    ]


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {},
        [{"businessId": 42}],  # a bare list is not what Lightspeed sends
        {"_embedded": {"businessList": []}},
        {"_embedded": {"businessList": [{"businessId": ""}]}},
        {"_embedded": {"businessList": [{"businessId": True}]}},
        {"_embedded": {"businessList": [{"businessId": {"x": 1}}]}},
        {"_embedded": {"businessList": [{"businessId": "9" * 300}]}},
        {"_embedded": "nope"},
    ],
)
def test_an_identity_answer_without_a_usable_company_id_is_refused(payload):
    with pytest.raises(IdentityError):
        get_provider("k-series").read_identities(parse({"access_token": "A"}), {}, [payload])


def test_retail_x_refuses_a_token_for_another_store_than_the_callback_named():
    tokens = parse({"access_token": "A", "domain_prefix": "other"}, key="retail-x")
    with pytest.raises(IdentityError, match="another store"):
        get_provider("retail-x").read_identity(tokens, {"domain_prefix": "shop1"}, None)


def test_retail_x_reads_the_retailer_from_its_documented_answer():
    tokens = parse({**X_SERIES_TOKEN, "domain_prefix": "shop1"}, key="retail-x")
    provider = get_provider("retail-x")
    assert provider.identity_endpoint("production", {"domain_prefix": "shop1"}, tokens) == (
        "https://shop1.retail.lightspeed.app/api/2.0/retailer"
    )
    identity = provider.read_identity(tokens, {"domain_prefix": "shop1"}, X_SERIES_RETAILER)
    assert identity.company_id == X_SERIES_RETAILER["data"]["id"]
    assert identity.name == X_SERIES_RETAILER["data"]["name"]
    assert identity.previous_ids == ("shop1",)


def test_retail_x_without_the_retailer_answers_falls_back_to_the_prefix():
    tokens = parse({**X_SERIES_TOKEN, "domain_prefix": "shop1"}, key="retail-x")
    identity = get_provider("retail-x").read_identity(tokens, {"domain_prefix": "shop1"}, None)
    assert identity.company_id == "shop1"
    assert "retailer:read" in identity.warning


def test_retail_r_identity_is_the_account_resource_outside_the_account_base():
    provider = get_provider("retail-r")
    assert provider.identity_endpoint("production", {}, parse({"access_token": "A"})) == (
        "https://api.lightspeedapp.com/API/V3/Account.json"
    )


# Registry ---------------------------------------------------------------------------------------


def test_the_registry_holds_every_builtin_flavour():
    assert set(provider_classes()) == {
        "k-series",
        "k-series-v2",
        "o-series",
        "retail-r",
        "retail-x",
        "vendors",
        "custom",
    }
    assert ("retail-x", "Retail X-Series") in provider_choices()


def test_an_unknown_provider_key_names_the_known_ones():
    with pytest.raises(ProviderError) as caught:
        get_provider("k-series-v9")
    assert "Unknown provider 'k-series-v9'" in caught.value.message
    assert "retail-r" in caught.value.message


@lightspeed_settings(PROVIDERS=["tests.test_providers.AcmeProvider"])
def test_the_providers_setting_adds_a_site_provider():
    assert provider_classes()["acme"] is AcmeProvider
    assert isinstance(get_provider("acme"), AcmeProvider)
    assert "k-series" in provider_classes()


@pytest.mark.parametrize(
    "path,message",
    [
        ("tests.test_providers.NoSuchProvider", "cannot be imported"),
        ("no_such_package.Provider", "cannot be imported"),
        ("notadottedpath", "cannot be imported"),
        ("tests.test_providers.NOW", "is not a Provider subclass with a key"),
        ("django_lightspeed_oauth.providers.Provider", "is not a Provider subclass with a key"),
    ],
)
def test_a_bad_providers_entry_is_a_configuration_error(path, message):
    with lightspeed_settings(PROVIDERS=[path]), pytest.raises(ConfigurationError) as caught:
        provider_classes()
    assert 'LIGHTSPEED_OAUTH["PROVIDERS"]' in caught.value.message
    assert repr(path) in caught.value.message and message in caught.value.message


@pytest.mark.parametrize(
    "template",
    ["https://x.example.com/{a-b}/token", "https://x/{}/t", "https://x/{/t", "https://x/{domain_prefix!r}"],
)
def test_a_url_with_a_stray_brace_is_refused_clearly(template):
    with pytest.raises(ConfigurationError, match="brace"):
        get_provider("custom").fill(template, {"domain_prefix": "shop"})
    with pytest.raises(ProviderError, match="brace"):
        get_provider("custom", {"identity_url": template})


@pytest.mark.parametrize(
    "key,answer",
    [
        ("k-series", "K_SERIES_V1_TOKEN"),
        ("k-series-v2", "K_SERIES_V2_TOKEN"),
        ("o-series", "O_SERIES_TOKEN"),
        ("retail-r", "R_SERIES_TOKEN"),
        ("retail-x", "X_SERIES_TOKEN"),
        ("vendors", "VENDORS_TOKEN"),
    ],
)
def test_every_documented_token_answer_is_read(key, answer):
    from . import lightspeed_documented

    payload = getattr(lightspeed_documented, answer)
    now = datetime(2026, 11, 22, tzinfo=UTC)
    tokens = get_provider(key).parse_token_response(payload, now=now)
    assert (tokens.access_token, tokens.refresh_token) == (payload["access_token"], payload["refresh_token"])
    assert tokens.expires_at == now + timedelta(seconds=payload["expires_in"])
    # K-Series V2 reports refresh_expires_in 0 with offline_access: that says nothing of a lifetime.
    assert tokens.refresh_expires_at is None
    assert "access_token" not in tokens.extra and "refresh_token" not in tokens.extra
