"""Secrets at rest: nothing readable in the database, rotatable keys, no secret in a repr."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils import timezone

from django_lightspeed_oauth import crypto
from django_lightspeed_oauth.exceptions import ConfigurationError, DecryptionError
from django_lightspeed_oauth.models import (
    ApiClient,
    AuthorizationRequest,
    ConnectedCompany,
)
from django_lightspeed_oauth.providers import TokenSet, get_provider
from django_lightspeed_oauth.testing import make_client, make_company
from tests.raw_db import decrypt_column, encryption_keys, raw_column

SECRET = "client-secret-plain-4d1c"
ACCESS = "access-token-plain-9b2e"
REFRESH = "refresh-token-plain-7a3f"
VERIFIER = "pkce-verifier-plain-" + "v" * 40


def make_request(client, verifier=VERIFIER) -> AuthorizationRequest:
    return AuthorizationRequest.objects.create(
        client=client,
        state="s" * 32,
        code_verifier=verifier,
        expires_at=timezone.now() + timedelta(minutes=10),
    )


# Nothing readable at rest -----------------------------------------------------------------------


@pytest.mark.django_db
def test_no_secret_is_stored_in_plain_text():
    client = make_client(client_secret=SECRET)
    company = make_company(client, access_token=ACCESS, refresh_token=REFRESH)
    auth_request = make_request(client)

    stored = {
        SECRET: (ApiClient, client.pk, "client_secret"),
        ACCESS: (ConnectedCompany, company.pk, "access_token"),
        REFRESH: (ConnectedCompany, company.pk, "refresh_token"),
        VERIFIER: (AuthorizationRequest, auth_request.pk, "code_verifier"),
    }
    for plaintext, (model, pk, name) in stored.items():
        column = raw_column(model, pk, name)
        assert column.startswith(crypto.BOUND_PREFIX) and plaintext not in column
        assert decrypt_column(model, pk, name) == plaintext
    # Each value is encrypted with its own random IV: equal secrets do not look equal.
    other = make_client(client_secret=SECRET)
    first, second = (raw_column(ApiClient, pk, "client_secret") for pk in (client.pk, other.pk))
    assert first != second


@pytest.mark.django_db
def test_secrets_read_back_as_plain_text_in_python():
    company = make_company(make_client(client_secret=SECRET), access_token=ACCESS, refresh_token=REFRESH)
    company = ConnectedCompany.objects.select_related("client").get(pk=company.pk)
    assert (company.client.client_secret, company.access_token, company.refresh_token) == (
        SECRET,
        ACCESS,
        REFRESH,
    )


@pytest.mark.django_db
def test_an_empty_secret_stays_empty():
    company = make_company(access_token="", refresh_token="")
    assert raw_column(ConnectedCompany, company.pk, "refresh_token") == ""
    assert ConnectedCompany.objects.get(pk=company.pk).refresh_token == ""


# Key rotation -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_adding_a_new_first_key_keeps_old_data_readable_and_encrypts_new_data_with_it():
    key_a, key_b = Fernet.generate_key(), Fernet.generate_key()
    with encryption_keys(key_a):
        company = make_company(access_token=ACCESS, refresh_token=REFRESH)
        assert decrypt_column(ConnectedCompany, company.pk, "access_token", key_a) == ACCESS

    with encryption_keys(key_b, key_a):
        company = ConnectedCompany.objects.get(pk=company.pk)
        assert company.access_token == ACCESS and company.refresh_token == REFRESH
        company.access_token = "access-token-new"
        company.save(update_fields=["access_token"])
        assert decrypt_column(ConnectedCompany, company.pk, "access_token", key_b) == "access-token-new"
        with pytest.raises(DecryptionError):
            decrypt_column(ConnectedCompany, company.pk, "access_token", key_a)


@pytest.mark.django_db
def test_removing_a_key_before_rotating_fails_clearly_without_showing_the_secret():
    key_a, key_b = Fernet.generate_key(), Fernet.generate_key()
    with encryption_keys(key_a):
        company = make_company(access_token=ACCESS, refresh_token=REFRESH)

    with encryption_keys(key_b):
        loaded = ConnectedCompany.objects.get(pk=company.pk)  # loading does not decrypt
        with pytest.raises(DecryptionError) as caught:
            loaded.refresh_token  # noqa: B018

    message = str(caught.value)
    assert f"Refresh token of connected company {company.pk}" in message
    assert 'LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"]' in message
    assert "rotate_lightspeed_keys" in message
    assert ACCESS not in message and REFRESH not in message
    assert key_a.decode() not in message


def test_a_single_key_may_be_given_as_a_string():
    key = Fernet.generate_key().decode()
    with override_settings(LIGHTSPEED_OAUTH={"ENCRYPTION_KEYS": key}):
        assert Fernet(key).decrypt(crypto.encrypt("x").encode()) == b"x"


def test_without_keys_a_key_derived_from_secret_key_is_used_while_debugging():
    with override_settings(LIGHTSPEED_OAUTH={}, DEBUG=True):
        token = crypto.encrypt(ACCESS)
        assert ACCESS not in token
        assert crypto.decrypt(token) == ACCESS
    with override_settings(LIGHTSPEED_OAUTH={}, SECRET_KEY="another-secret-key", DEBUG=True):
        with pytest.raises(DecryptionError):
            crypto.decrypt(token)


def test_without_keys_and_without_debug_first_use_is_a_clear_configuration_error():
    # A WSGI process runs no system checks: E001 alone would not stop it.
    with override_settings(LIGHTSPEED_OAUTH={}, DEBUG=False):
        with pytest.raises(ImproperlyConfigured, match="ENCRYPTION_KEYS"):
            crypto.encrypt(ACCESS)


def test_an_invalid_key_names_the_setting_and_its_position():
    with encryption_keys(Fernet.generate_key(), "not-a-fernet-key"):
        with pytest.raises(ConfigurationError) as caught:
            crypto.encrypt("x")
    assert 'LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"][1] is not a valid Fernet key' in str(caught.value)
    assert "not-a-fernet-key" not in str(caught.value)


def test_rotate_re_encrypts_with_the_first_key():
    key_a, key_b = Fernet.generate_key(), Fernet.generate_key()
    with encryption_keys(key_a):
        old = crypto.encrypt(SECRET)
    with encryption_keys(key_b, key_a):
        new = crypto.rotate(old)
    assert Fernet(key_b).decrypt(new.encode()).decode() == SECRET
    with encryption_keys(key_b), pytest.raises(DecryptionError) as caught:
        crypto.rotate(old)
    assert SECRET not in str(caught.value)


# Nothing shows a secret -------------------------------------------------------------------------


@pytest.mark.django_db
def test_reprs_and_strs_never_show_a_secret():
    client = make_client(client_secret=SECRET)
    company = make_company(client, access_token=ACCESS, refresh_token=REFRESH)
    auth_request = make_request(client)
    tokens = TokenSet(access_token=ACCESS, refresh_token=REFRESH, expires_at=None, id_token="id-token-plain")
    provider = get_provider("k-series")
    request = provider.token_request(
        "https://api.lsk.lightspeed.app/oauth/token",
        client_id="cid",
        client_secret=SECRET,
        grant=provider.refresh_grant(refresh_token=REFRESH, scopes=""),
    )

    shown = " ".join(f"{obj!r} {obj!s}" for obj in (client, company, auth_request, tokens, request))

    for secret in (SECRET, ACCESS, REFRESH, VERIFIER, "id-token-plain"):
        assert secret not in shown
    assert client.slug in repr(client) and company.company_id in repr(company)
    assert "https://api.lsk.lightspeed.app/oauth/token" in repr(request)


# Fingerprints -----------------------------------------------------------------------------------


def test_a_fingerprint_is_short_stable_and_one_way():
    first = crypto.fingerprint(ACCESS)
    assert first == crypto.fingerprint(ACCESS)
    assert first.startswith("sha256:") and len(first) <= 20
    assert ACCESS not in first
    assert crypto.fingerprint(ACCESS + "x") != first
    assert crypto.fingerprint("") == ""


@pytest.mark.django_db
def test_a_fingerprint_does_not_change_when_the_key_does():
    key_a, key_b = Fernet.generate_key(), Fernet.generate_key()
    with encryption_keys(key_a):
        company = make_company(access_token=ACCESS)
        before = company.access_token_fingerprint
    with encryption_keys(key_b, key_a):
        company = ConnectedCompany.objects.get(pk=company.pk)
        assert company.access_token_fingerprint == before == crypto.fingerprint(ACCESS)
