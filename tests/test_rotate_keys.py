"""rotate_lightspeed_keys: every stored secret moves to the first key, and nothing is lost."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from django_lightspeed_oauth import crypto
from django_lightspeed_oauth.exceptions import DecryptionError
from django_lightspeed_oauth.management.commands import (
    rotate_lightspeed_keys as command,
)
from django_lightspeed_oauth.management.commands.rotate_lightspeed_keys import (
    rotate_keys,
)
from django_lightspeed_oauth.models import (
    ApiClient,
    AuthorizationRequest,
    ConnectedCompany,
)
from django_lightspeed_oauth.testing import make_client, make_company
from tests.raw_db import decrypt_column, encryption_keys, raw_column

pytestmark = pytest.mark.django_db

OLD, NEW = Fernet.generate_key(), Fernet.generate_key()


def decrypt_with(key: bytes, model, pk, column: str) -> str:
    return decrypt_column(model, pk, column, key)


@pytest.fixture
def old_data():
    """One of each secret, written while OLD was the only key."""
    with encryption_keys(OLD):
        client = make_client(client_secret="secret-1")
        company = make_company(client, access_token="access-1", refresh_token="refresh-1")
        disconnected = make_company(client, access_token="", refresh_token="")
        auth_request = AuthorizationRequest.objects.create(
            client=client,
            state="s" * 32,
            code_verifier="verifier-1",
            expires_at=timezone.now() + timedelta(minutes=5),
        )
    return client, company, disconnected, auth_request


def test_after_rotation_every_secret_decrypts_with_the_new_key_alone(old_data):
    client, company, disconnected, auth_request = old_data
    with encryption_keys(NEW, OLD):
        counts = rotate_keys()
    assert counts == {"ApiClient": 1, "ConnectedCompany": 1, "AuthorizationRequest": 1}

    assert decrypt_with(NEW, ApiClient, client.pk, "client_secret") == "secret-1"
    assert decrypt_with(NEW, ConnectedCompany, company.pk, "access_token") == "access-1"
    assert decrypt_with(NEW, ConnectedCompany, company.pk, "refresh_token") == "refresh-1"
    assert decrypt_with(NEW, AuthorizationRequest, auth_request.pk, "code_verifier") == "verifier-1"
    assert raw_column(ConnectedCompany, disconnected.pk, "access_token") == ""
    with encryption_keys(NEW):  # the old key can go
        company = ConnectedCompany.objects.select_related("client").get(pk=company.pk)
        assert (company.access_token, company.refresh_token, company.client.client_secret) == (
            "access-1",
            "refresh-1",
            "secret-1",
        )
        assert AuthorizationRequest.objects.get().code_verifier == "verifier-1"


def test_rotation_does_not_count_as_a_token_change(old_data):
    _, company, _, _ = old_data
    with encryption_keys(NEW, OLD):
        rotate_keys()
        company_after = ConnectedCompany.objects.get(pk=company.pk)
    assert company_after.token_version == company.token_version
    assert company_after.updated_at == company.updated_at


def test_running_it_again_rewrites_nothing(old_data):
    client, _, _, _ = old_data
    with encryption_keys(NEW, OLD):
        rotate_keys()
        before = raw_column(ApiClient, client.pk, "client_secret")
        assert rotate_keys() == {"ApiClient": 0, "ConnectedCompany": 0, "AuthorizationRequest": 0}
    assert raw_column(ApiClient, client.pk, "client_secret") == before


def test_dry_run_counts_and_writes_nothing(old_data):
    client, company, _, _ = old_data
    before = raw_column(ConnectedCompany, company.pk, "refresh_token")
    with encryption_keys(NEW, OLD):
        assert rotate_keys(dry_run=True) == {"ApiClient": 1, "ConnectedCompany": 1, "AuthorizationRequest": 1}
    assert raw_column(ConnectedCompany, company.pk, "refresh_token") == before
    assert decrypt_with(OLD, ApiClient, client.pk, "client_secret") == "secret-1"


def test_a_refresh_during_rotation_is_not_overwritten(old_data, monkeypatch):
    _, company, _, _ = old_data
    real_decrypt = crypto.unseal
    refreshed = []

    def decrypt_while_a_refresh_lands(value, associated):
        if not refreshed:
            refreshed.append(True)
            # Another process refreshes between our read and our write (with the new key first).
            ConnectedCompany.objects.store_refreshed_late(
                company.pk,
                version=company.token_version,
                values={"access_token": "access-2", "refresh_token": "refresh-2"},
            )
        return real_decrypt(value, associated)

    with encryption_keys(NEW, OLD):
        # ApiClient first: let the refresh land on the company's read instead.
        monkeypatch.setattr(
            command, "ENCRYPTED_FIELDS", {ConnectedCompany: command.ENCRYPTED_FIELDS[ConnectedCompany]}
        )
        monkeypatch.setattr(crypto, "unseal", decrypt_while_a_refresh_lands)
        rotate_keys()

    with encryption_keys(NEW):  # secrets are decrypted when read, with the keys then in force
        company = ConnectedCompany.objects.get(pk=company.pk)
        assert (company.access_token, company.refresh_token) == ("access-2", "refresh-2")
    assert company.token_version == 1


def test_an_api_client_secret_changed_during_rotation_is_not_overwritten(old_data, monkeypatch):
    client, _, _, _ = old_data
    real_decrypt = crypto.unseal

    def decrypt_while_staff_change_the_secret(value, associated):
        plain = real_decrypt(value, associated)
        if plain == "secret-1":
            staff = ApiClient.objects.get(pk=client.pk)
            staff.client_secret = "secret-2"
            staff.save()
        return plain

    with encryption_keys(NEW, OLD):
        monkeypatch.setattr(crypto, "unseal", decrypt_while_staff_change_the_secret)
        rotate_keys()
    assert decrypt_with(NEW, ApiClient, client.pk, "client_secret") == "secret-2"


def test_rows_no_key_can_decrypt_are_reported_without_their_secret(old_data):
    client, company, _, _ = old_data
    lost_key = Fernet.generate_key()
    with encryption_keys(lost_key):
        lost = make_company(client, access_token="lost-access", refresh_token="lost-refresh")

    with encryption_keys(NEW, OLD), pytest.raises(DecryptionError) as caught:
        rotate_keys()

    message = caught.value.message
    assert 'LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"]' in message
    assert f"ConnectedCompany {lost.pk}" in message
    assert "lost-access" not in message and "lost-refresh" not in message
    # Everything readable was still rotated.
    assert caught.value.counts == {"ApiClient": 1, "ConnectedCompany": 1, "AuthorizationRequest": 1}
    assert decrypt_with(NEW, ConnectedCompany, company.pk, "access_token") == "access-1"
    assert decrypt_with(lost_key, ConnectedCompany, lost.pk, "access_token") == "lost-access"


def test_rotation_streams_more_rows_than_one_chunk(monkeypatch):
    monkeypatch.setattr(command, "CHUNK_SIZE", 3)
    with encryption_keys(OLD):
        client = make_client()
        companies = [make_company(client) for _ in range(8)]
    with encryption_keys(NEW, OLD):
        assert rotate_keys()["ConnectedCompany"] == 8
    for company in companies:
        assert decrypt_with(NEW, ConnectedCompany, company.pk, "access_token") == (company.access_token)


# The command ------------------------------------------------------------------------------------


def test_the_command_prints_one_line_per_model(old_data):
    out = StringIO()
    with encryption_keys(NEW, OLD):
        call_command("rotate_lightspeed_keys", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["ApiClient", "1", "re-encrypted"]
    assert lines[1].split() == ["ConnectedCompany", "1", "re-encrypted"]
    assert lines[2].split() == ["AuthorizationRequest", "1", "re-encrypted"]
    assert "3 rows re-encrypted" in lines[3]


def test_the_command_dry_run_says_nothing_was_written(old_data):
    out = StringIO()
    with encryption_keys(NEW, OLD):
        call_command("rotate_lightspeed_keys", "--dry-run", stdout=out)
    assert "ApiClient" in out.getvalue() and "1 to re-encrypt" in out.getvalue()
    assert "nothing written" in out.getvalue()
    assert decrypt_with(OLD, ApiClient, old_data[0].pk, "client_secret") == "secret-1"


def test_the_command_fails_clearly_when_a_key_is_missing(old_data):
    out = StringIO()
    with encryption_keys(NEW), pytest.raises(CommandError) as caught:
        call_command("rotate_lightspeed_keys", stdout=out)
    message = str(caught.value)
    assert "cannot be decrypted" in message and "ENCRYPTION_KEYS" in message
    for secret in ("secret-1", "access-1", "refresh-1", "verifier-1"):
        assert secret not in message and secret not in out.getvalue()


def test_the_command_refuses_an_invalid_key():
    with (
        override_settings(LIGHTSPEED_OAUTH={"ENCRYPTION_KEYS": ["nope"]}),
        pytest.raises(CommandError, match=r'\["ENCRYPTION_KEYS"\]\[0\] is not a valid'),
    ):
        call_command("rotate_lightspeed_keys", stdout=StringIO())
