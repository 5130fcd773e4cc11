"""Sweep batches: claiming due companies so that sweeps in other processes and hosts take others.

The concurrent sweeps themselves (real processes, a real token server) are in test_sweeps.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_lightspeed_oauth import refreshing
from django_lightspeed_oauth.conf import app_settings
from django_lightspeed_oauth.exceptions import ConfigurationError
from django_lightspeed_oauth.models import ConnectedCompany
from django_lightspeed_oauth.refreshing import claim_batch, claimed_companies, refresh_due, release_batch
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_client, make_company
from tests.settings import LIGHTSPEED_OAUTH

pytestmark = pytest.mark.django_db


def claims() -> dict[int, str]:
    return dict(ConnectedCompany.objects.exclude(sweep_claim_id="").values_list("pk", "sweep_claim_id"))


def test_two_claims_take_disjoint_batches_of_due_companies_only():
    client = make_client()
    due = [make_company(client, expires_in=60).pk for _ in range(5)]
    make_company(client, expires_in=7200)  # not due
    make_company(client, expires_in=60, status=ConnectedCompany.Status.REAUTHORIZATION_REQUIRED)

    first = claim_batch(size=3, renew=False)
    second = claim_batch(size=3, renew=False)
    third = claim_batch(size=3, renew=False)

    assert first.pks == due[:3] and second.pks == due[3:] and not third
    assert claims() == dict.fromkeys(first.pks, first.claim_id) | dict.fromkeys(second.pks, second.claim_id)
    assert [c.pk for c in claimed_companies(first)] == first.pks
    release_batch(first)
    assert set(claims()) == set(second.pks)
    # Released companies may be claimed again at once.
    assert claim_batch(size=10, renew=False).pks == first.pks


def _claim_with_companies(client_pk: int, after: int = 0):
    return refreshing._claim_batch(
        size=3,
        within=None,
        clients=(),
        company_ids=(),
        force=False,
        after=after,
        pks=None,
        renew=False,
        fetch=True,
        client_pks=[client_pk],
    )


def test_a_sweep_claims_a_batch_and_reads_it_back_in_few_queries():
    client = make_client()
    due = [make_company(client, expires_in=60).pk for _ in range(4)]
    with CaptureQueriesContext(connection) as queries:
        batch, companies = _claim_with_companies(client.pk)
    assert batch.pks == [c.pk for c in companies] == due[:3]
    assert companies[0].client is companies[2].client  # one client object per batch
    # PostgreSQL: one UPDATE that picks, locks (SKIP LOCKED) and marks; SQLite: one UPDATE; then
    # the read-back. MariaDB/MySQL cannot use LIMIT in the subquery: a locking SELECT first.
    writes = [q["sql"] for q in queries if q["sql"].startswith("UPDATE")]
    assert len(writes) == 1, writes
    assert len([q for q in queries if q["sql"].startswith(("SELECT", "UPDATE"))]) == (
        3 if connection.vendor == "mysql" else 2
    )
    if connection.vendor == "postgresql":
        assert "FOR UPDATE SKIP LOCKED" in writes[0]
    with CaptureQueriesContext(connection) as queries:
        empty, none = _claim_with_companies(client.pk, after=due[-1])
    assert not empty and none == []
    assert len([q for q in queries if q["sql"].startswith(("SELECT", "UPDATE"))]) == 1  # no read-back


def test_a_claim_that_ran_out_may_be_taken_by_another_sweep():
    company = make_company(expires_in=60)
    dead = claim_batch(renew=False)
    assert dead.pks == [company.pk] and not claim_batch(renew=False)
    # The dead sweep's claim runs out (the database's clock decides).
    ran_out = timezone.now() - timedelta(seconds=1)
    ConnectedCompany.objects.filter(pk=company.pk).update(sweep_claim_until=ran_out)
    taken = claim_batch(renew=False)
    assert taken.pks == [company.pk] and taken.claim_id != dead.claim_id
    # The dead sweep's late release or renewal does not touch the new claim.
    release_batch(dead)
    ConnectedCompany.objects.renew_claims([dead.claim_id], lifetime=60)
    assert claims() == {company.pk: taken.claim_id}


def test_claims_follow_the_sweep_filters_and_start_after_a_key():
    one, other = make_client(), make_client()
    mine = [make_company(one, expires_in=60).pk for _ in range(3)]
    make_company(other, expires_in=60)
    assert claim_batch(clients=[one.slug], after=mine[0], renew=False).pks == mine[1:]
    assert claim_batch(company_ids=[str(mine[0])], renew=False).pks == [mine[0]]
    far = make_company(one, expires_in=7200)
    assert claim_batch(force=True, clients=[one.slug], renew=False).pks == [far.pk]


def test_a_sweep_claims_in_batches_counts_one_lock_attempt_per_refresh_and_lets_go():
    client = make_client()
    for _ in range(7):
        make_company(client, expires_in=60)
    with FakeTokenEndpoint(client) as fake:
        summary = refresh_due(batch_size=3)
    assert summary.refreshed == 7 == fake.refresh_count
    assert summary.batches == 3
    assert summary.lock_attempts == 7
    assert summary.as_dict()["lock_attempts"] == 7
    assert claims() == {}


def test_a_company_claimed_by_a_live_sweep_is_left_to_it():
    client = make_client()
    theirs = make_company(client, expires_in=60)
    mine = make_company(client, expires_in=60)
    other_sweep = claim_batch(size=1, renew=False)
    assert other_sweep.pks == [theirs.pk]
    with FakeTokenEndpoint(client) as fake:
        summary = refresh_due()
    assert summary.considered == summary.refreshed == 1 and fake.refresh_count == 1
    assert ConnectedCompany.objects.get(pk=mine.pk).token_version == 1
    assert ConnectedCompany.objects.get(pk=theirs.pk).token_version == 0
    assert claims() == {theirs.pk: other_sweep.claim_id}


@pytest.mark.parametrize(
    ("key", "value"),
    [("SWEEP_BATCH_SIZE", 0), ("SWEEP_BATCH_SIZE", "100"), ("SWEEP_CLAIM_LIFETIME", -1)],
)
def test_a_bad_sweep_setting_is_a_clear_error(key, value):
    with override_settings(LIGHTSPEED_OAUTH={**LIGHTSPEED_OAUTH, key: value}):
        with pytest.raises(ConfigurationError, match=key):
            getattr(app_settings, key)


def test_the_claim_lifetime_defaults_to_the_lease():
    with override_settings(LIGHTSPEED_OAUTH={**LIGHTSPEED_OAUTH, "LOCK_TIMEOUT": 42}):
        assert app_settings.SWEEP_CLAIM_LIFETIME == 42
