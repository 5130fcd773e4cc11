"""Each stored secret is bound to its row and purpose: write access to the database is not enough
to send a secret elsewhere or to move it to another row."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from django_lightspeed_oauth import crypto
from django_lightspeed_oauth.exceptions import BindingError, DecryptionError, UnboundSecretError
from django_lightspeed_oauth.management.commands.rotate_lightspeed_keys import rotate_keys
from django_lightspeed_oauth.models import ApiClient, AuthorizationRequest, ConnectedCompany, TokenEvent
from django_lightspeed_oauth.refreshing import refresh_due
from django_lightspeed_oauth.testing import TokenServer, make_client, make_company
from tests.raw_db import decrypt_column, encryption_keys, raw_column
from tests.settings import LIGHTSPEED_OAUTH

pytestmark = pytest.mark.django_db


def sql(statement: str, params: list) -> None:
    """What someone with write access to the database (and nothing else) can do."""
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def sql_set(model, pk, column: str, value) -> None:
    table, column = connection.ops.quote_name(model._meta.db_table), connection.ops.quote_name(column)
    sql(f"UPDATE {table} SET {column} = %s WHERE id = %s", [value, pk])


def sql_copy(model, source_pk, target_pk, column: str, source_column: str = "") -> None:
    """Copy a stored ciphertext from one row (or column) to another, as SQL can."""
    sql_set(model, target_pk, column, raw_column(model, source_pk, source_column or column))


@pytest.fixture
def servers():
    """The client's real token server, and one somebody would like the secrets sent to."""
    with TokenServer() as ours, TokenServer() as theirs:
        yield ours, theirs


def server_client(server: TokenServer, **fields) -> ApiClient:
    return make_client(
        provider="custom",
        authorize_url=server.url + "/authorize",
        token_url=server.token_url,
        provider_options={"token_auth": "body", "token_params": "form"},
        **fields,
    )


# The client's destination ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("token_url", None),  # the other server's URL
        ("authorize_url", "https://elsewhere.example/authorize"),
        ("provider_options", '{"token_auth": "header", "token_params": "form"}'),
        ("environment", "production"),
    ],
)
def test_a_destination_changed_in_sql_makes_the_refresh_send_nothing(servers, column, value):
    ours, theirs = servers
    client = server_client(ours)
    company = make_company(client, expires_in=60)
    sql_set(ApiClient, client.pk, column, value if value is not None else theirs.token_url)

    summary = refresh_due(workers=1)

    assert (summary.refreshed, summary.failed) == (0, 1)
    assert "does not belong where it is" in summary.problems[0].message
    assert ours.stats()["requests"] == 0 and theirs.stats()["requests"] == 0
    row = ConnectedCompany.objects.get(pk=company.pk)
    assert f"Client secret of API client {client.pk}" in row.last_error
    assert row.token_version == 0 and row.refresh_lock_id == ""
    (event,) = TokenEvent.objects.filter(company=company)
    assert event.kind == TokenEvent.Kind.REFRESH_FAILED and event.details == {"error": "secret_refused"}
    assert client.client_secret not in row.last_error

    # The next sweep refuses again, without a second event for the same reason.
    assert refresh_due(workers=1).failed == 1
    assert TokenEvent.objects.filter(company=company).count() == 1
    assert theirs.stats()["requests"] == 0


def test_get_access_token_raises_the_binding_error_and_sends_nothing(servers):
    ours, theirs = servers
    client = server_client(ours)
    company = make_company(client, expires_in=-5)
    sql_set(ApiClient, client.pk, "token_url", theirs.token_url)
    company = ConnectedCompany.objects.select_related("client").get(pk=company.pk)

    with pytest.raises(BindingError) as caught:
        company.get_access_token()

    assert "enter the client secret again" in caught.value.message
    assert theirs.stats()["requests"] == 0


def test_a_destination_changed_by_the_app_with_the_secret_entered_again_works(servers):
    ours, theirs = servers
    client = server_client(ours, client_secret="secret-1")
    company = make_company(client, expires_in=60)
    # What the admin does (it asks for the secret when a destination changes).
    client = ApiClient.objects.get(pk=client.pk)
    client.token_url = theirs.token_url
    client.client_secret = "secret-1"
    client.save()

    assert refresh_due(workers=1).refreshed == 1
    assert theirs.stats()["refreshes"] == 1 and ours.stats()["requests"] == 0
    assert ConnectedCompany.objects.get(pk=company.pk).last_error == ""


def test_a_destination_changed_by_the_app_without_the_secret_is_refused_too(servers):
    ours, theirs = servers
    client = server_client(ours)
    make_company(client, expires_in=60)
    client = ApiClient.objects.get(pk=client.pk)
    client.token_url = theirs.token_url
    client.save()  # the stored secret stays bound to the old URL

    assert refresh_due(workers=1).failed == 1
    assert theirs.stats()["requests"] == 0


# Moved ciphertexts -------------------------------------------------------------------------------


def test_a_refresh_token_copied_to_another_company_is_refused(servers):
    ours, _ = servers
    client = server_client(ours)
    source = make_company(client, expires_in=60)
    target = make_company(client, expires_in=60)
    sql_copy(ConnectedCompany, source.pk, target.pk, "refresh_token")

    summary = refresh_due(workers=1)

    assert (summary.refreshed, summary.failed) == (1, 1)
    (problem,) = summary.problems
    assert problem.pk == target.pk
    assert f"Refresh token of connected company {target.pk}" in problem.message
    assert ours.stats()["refreshes"] == 1  # the source's own refresh, nothing for the target
    assert "does not belong" in ConnectedCompany.objects.get(pk=target.pk).last_error


def test_tokens_swapped_between_companies_are_refused_both_ways(servers):
    ours, _ = servers
    client = server_client(ours)
    first, second = make_company(client, expires_in=-5), make_company(client, expires_in=-5)
    first_raw = raw_column(ConnectedCompany, first.pk, "access_token")
    sql_copy(ConnectedCompany, second.pk, first.pk, "access_token")
    sql_set(ConnectedCompany, second.pk, "access_token", first_raw)
    for company in (first, second):
        with pytest.raises(BindingError):
            ConnectedCompany.objects.get(pk=company.pk).access_token  # noqa: B018


def test_a_client_secret_copied_to_another_client_is_refused():
    first, second = make_client(), make_client()
    sql_set(ApiClient, second.pk, "client_secret", raw_column(ApiClient, first.pk, "client_secret"))
    with pytest.raises(BindingError):
        ApiClient.objects.get(pk=second.pk).client_secret  # noqa: B018
    assert ApiClient.objects.get(pk=first.pk).client_secret == first.client_secret


def test_a_field_moved_to_another_field_of_its_row_is_refused():
    company = make_company()
    sql_copy(ConnectedCompany, company.pk, company.pk, "refresh_token", "access_token")
    with pytest.raises(BindingError):
        ConnectedCompany.objects.get(pk=company.pk).refresh_token  # noqa: B018


# Writing -----------------------------------------------------------------------------------------


def test_a_new_row_is_bound_to_its_own_primary_key():
    company = make_company(access_token="access-1", refresh_token="refresh-1")
    assert decrypt_column(ConnectedCompany, company.pk, "refresh_token") == "refresh-1"
    assert raw_column(ConnectedCompany, company.pk, "refresh_token").startswith(crypto.BOUND_PREFIX)


def test_secrets_cannot_be_written_without_their_row():
    company = make_company()
    with pytest.raises(ValueError, match="encrypted for its row"), transaction.atomic():
        ConnectedCompany.objects.filter(pk=company.pk).update(access_token="plain")
    with pytest.raises(ValueError, match="bulk_create"), transaction.atomic():
        ConnectedCompany.objects.bulk_create([ConnectedCompany(client=company.client, access_token="x")])
    assert ConnectedCompany.objects.count() == 1


def test_companies_made_with_bulk_create_get_their_tokens_with_write_tokens():
    client = make_client()
    ConnectedCompany.objects.bulk_create([ConnectedCompany(client=client, company_id=n) for n in "012"])
    for company in ConnectedCompany.objects.all():
        n = company.company_id
        tokens = {"access_token": f"access-{n}", "refresh_token": f"refresh-{n}"}
        assert ConnectedCompany.objects.write_tokens(company.pk, **tokens)
    company = ConnectedCompany.objects.get(company_id="2")
    assert (company.access_token, company.refresh_token) == ("access-2", "refresh-2")
    assert decrypt_column(ConnectedCompany, company.pk, "refresh_token") == "refresh-2"


def test_rotation_keeps_the_binding():
    old, new = Fernet.generate_key(), Fernet.generate_key()
    with encryption_keys(old):
        first, second = make_company(), make_company(client=None)
    with encryption_keys(new, old):
        rotate_keys()
    with encryption_keys(new):
        moved = raw_column(ConnectedCompany, first.pk, "refresh_token")
        sql_set(ConnectedCompany, second.pk, "refresh_token", moved)
        with pytest.raises(BindingError):
            ConnectedCompany.objects.get(pk=second.pk).refresh_token  # noqa: B018
        assert ConnectedCompany.objects.get(pk=first.pk).refresh_token == first.refresh_token


def test_the_rotate_command_reports_refused_rows_and_rotates_the_rest():
    old, new = Fernet.generate_key(), Fernet.generate_key()
    with encryption_keys(old):
        source, target = make_company(), make_company()
    sql_copy(ConnectedCompany, source.pk, target.pk, "access_token")
    with encryption_keys(new, old), pytest.raises(CommandError) as caught:
        call_command("rotate_lightspeed_keys", stdout=StringIO())
    assert f"ConnectedCompany {target.pk}" in str(caught.value)
    assert "do not belong to their row" in str(caught.value)
    assert decrypt_column(ConnectedCompany, source.pk, "access_token", new) == source.access_token


# Values from 0.1.0 -------------------------------------------------------------------------------


def test_an_unbound_value_written_after_the_upgrade_is_refused_until_bound_on_purpose():
    company = make_company(refresh_token="refresh-from-0.1.0")
    sql_set(ConnectedCompany, company.pk, "refresh_token", crypto.encrypt("refresh-from-0.1.0"))

    with pytest.raises(UnboundSecretError) as caught:
        ConnectedCompany.objects.get(pk=company.pk).refresh_token  # noqa: B018
    assert "--bind-unbound" in caught.value.message
    with pytest.raises(CommandError, match="unbound format"):
        call_command("rotate_lightspeed_keys", stdout=StringIO())

    out = StringIO()
    call_command("rotate_lightspeed_keys", "--bind-unbound", stdout=out)
    assert "ConnectedCompany" in out.getvalue()
    assert ConnectedCompany.objects.get(pk=company.pk).refresh_token == "refresh-from-0.1.0"


def test_a_key_this_process_lacks_is_not_called_a_binding_error():
    with encryption_keys(Fernet.generate_key()):
        company = make_company()
    with pytest.raises(DecryptionError) as caught:
        ConnectedCompany.objects.get(pk=company.pk).refresh_token  # noqa: B018
    assert not isinstance(caught.value, BindingError)
    assert "missing a key" in caught.value.message
    assert LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"][0] not in json.dumps(caught.value.message)


# The authorization flow --------------------------------------------------------------------------


def test_a_callback_after_the_token_url_changed_in_sql_sends_nothing(staff_client, api_client, mocked):
    from tests.test_callback_errors import CALLBACK, assert_error_page, assert_nothing_connected, start

    state = start(staff_client, api_client)
    sql_set(ApiClient, api_client.pk, "token_url", "https://collector.example/oauth/token")

    response = staff_client.get(CALLBACK, {"code": "c0de", "state": state})

    assert_error_page(response, 500, "misconfigured", "misconfigured")
    assert not mocked.calls
    assert_nothing_connected()


def test_a_pkce_verifier_moved_to_another_flow_is_refused(api_client):
    first, second = (
        AuthorizationRequest.objects.create(
            client=api_client,
            state=letter * 32,
            code_verifier=f"verifier-{letter}" * 5,
            expires_at=timezone.now() + timedelta(minutes=5),
        )
        for letter in "ab"
    )
    sql_copy(AuthorizationRequest, first.pk, second.pk, "code_verifier")
    with pytest.raises(BindingError):
        AuthorizationRequest.objects.get(pk=second.pk).code_verifier  # noqa: B018
    assert AuthorizationRequest.objects.get(pk=first.pk).code_verifier == "verifier-a" * 5


def test_staff_moving_a_client_in_the_admin_with_its_secret_rebinds_it(servers, admin_client):
    from tests.test_admin import client_form_data

    ours, theirs = servers
    client = server_client(ours, client_secret="secret-1")
    company = make_company(client, expires_in=60)
    url = f"/admin/lightspeed_oauth/apiclient/{client.pk}/change/"
    moved = dict(
        token_url=theirs.token_url,
        authorize_url=theirs.url + "/authorize",
        provider_options='{"token_auth": "body", "token_params": "form"}',
    )

    refused = admin_client.post(url, client_form_data(client, **moved))
    assert refused.status_code == 200  # the form asks for the secret: nothing saved
    assert ApiClient.objects.get(pk=client.pk).token_url == ours.token_url

    saved = admin_client.post(url, client_form_data(client, client_secret="secret-1", **moved))
    assert saved.status_code == 302
    assert refresh_due(workers=1).refreshed == 1
    assert theirs.stats()["refreshes"] == 1 and ours.stats()["requests"] == 0
    assert ConnectedCompany.objects.get(pk=company.pk).token_version == 1
