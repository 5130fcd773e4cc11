"""Data migrations: existing rows keep working after an upgrade."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

APP = "lightspeed_oauth"


@pytest.mark.django_db(transaction=True)
def test_retail_r_companies_of_0_1_0_get_the_account_id_their_api_base_needs():
    executor = MigrationExecutor(connection)
    executor.migrate([(APP, "0001_initial")])
    apps = executor.loader.project_state([(APP, "0001_initial")]).apps
    ApiClient = apps.get_model(APP, "ApiClient")
    ConnectedCompany = apps.get_model(APP, "ConnectedCompany")
    retail_r = ApiClient.objects.create(
        name="R", slug="r", provider="retail-r", client_id="r", redirect_uri="https://x.example/cb/"
    )
    k_series = ApiClient.objects.create(
        name="K", slug="k", provider="k-series", client_id="k", redirect_uri="https://x.example/cb/"
    )
    ConnectedCompany.objects.create(client=retail_r, company_id="12345")
    ConnectedCompany.objects.create(client=k_series, company_id="678")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes(APP))

    from django_lightspeed_oauth.models import ConnectedCompany as Current

    assert Current.objects.get(company_id="12345").details == {"accountID": "12345"}
    assert Current.objects.get(company_id="678").details == {}
    assert (
        Current.objects.get(company_id="12345")
        .client.get_provider()
        .api_url("production", Current.objects.get(company_id="12345").url_context())
        == "https://api.lightspeedapp.com/API/V3/Account/12345"
    )


@pytest.mark.django_db(transaction=True)
def test_secrets_of_0_1_0_are_bound_to_their_rows_and_unbound_again_when_reversed():
    from django_lightspeed_oauth import crypto
    from django_lightspeed_oauth.crypto import Sealed
    from tests.raw_db import decrypt_column, raw_column

    before = [(APP, "0005_invitations")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    apps = executor.loader.project_state(before).apps
    ApiClient = apps.get_model(APP, "ApiClient")
    ConnectedCompany = apps.get_model(APP, "ConnectedCompany")
    # As 0.1.0 wrote them: Fernet tokens, unbound.
    client = ApiClient.objects.create(
        name="K",
        slug="k",
        provider="custom",
        client_id="k",
        client_secret=Sealed(crypto.encrypt("secret-0.1.0")),
        redirect_uri="https://x.example/cb/",
        token_url="https://auth.example/token",
        provider_options={"token_auth": "body"},
    )
    company = ConnectedCompany.objects.create(
        client=client,
        company_id="1",
        access_token=Sealed(crypto.encrypt("access-0.1.0")),
        refresh_token=Sealed(crypto.encrypt("refresh-0.1.0")),
    )
    empty = ConnectedCompany.objects.create(client=client, company_id="2")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes(APP))

    from django_lightspeed_oauth.models import ApiClient as CurrentClient
    from django_lightspeed_oauth.models import ConnectedCompany as Current

    current = Current.objects.select_related("client").get(pk=company.pk)
    assert (current.access_token, current.refresh_token, current.client.client_secret) == (
        "access-0.1.0",
        "refresh-0.1.0",
        "secret-0.1.0",
    )
    assert raw_column(Current, company.pk, "refresh_token").startswith(crypto.BOUND_PREFIX)
    assert decrypt_column(CurrentClient, client.pk, "client_secret") == "secret-0.1.0"
    assert raw_column(Current, empty.pk, "access_token") == ""

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(before)
    assert crypto.decrypt(raw_column(Current, company.pk, "refresh_token")) == "refresh-0.1.0"
    assert crypto.decrypt(raw_column(CurrentClient, client.pk, "client_secret")) == "secret-0.1.0"
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes(APP))
