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
