"""Refresh: outcomes, failure classes, get_access_token, api_session, transactions."""

from __future__ import annotations

import inspect
import time
from datetime import timedelta

import pytest
import requests
import responses
from django.db import connection, transaction
from django.db.models.functions import Now
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_lightspeed_oauth import signals
from django_lightspeed_oauth.exceptions import (
    CompanyDisconnected,
    ReauthorizationRequired,
    RefreshFailed,
)
from django_lightspeed_oauth.models import ApiClient, ConnectedCompany, TokenEvent
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_company
from django_lightspeed_oauth.tokens import refresh

from .lightspeed_documented import X_SERIES_TOKEN, k_series_businesses

pytestmark = pytest.mark.django_db


@pytest.fixture
def received():
    """Collect every app signal sent during the test, by name."""
    got: dict[str, list] = {}
    names = ["token_refreshed", "token_refresh_failed", "reauthorization_required", "company_disconnected"]
    handlers = {}
    for name in names:

        def handler(name=name, **kwargs):
            got.setdefault(name, []).append(kwargs)

        handlers[name] = handler
        getattr(signals, name).connect(handler, weak=False, dispatch_uid=f"test-{name}")
    yield got
    for name in names:
        getattr(signals, name).disconnect(dispatch_uid=f"test-{name}")


def test_fresh_token_is_returned_without_a_query_or_a_request(mocked):
    company = make_company(expires_in=3600)
    with CaptureQueriesContext(connection) as queries:
        token = company.get_access_token()
    assert token == company.access_token
    assert len(queries) == 0
    assert not mocked.calls


def test_expiring_token_is_refreshed_rotated_and_logged(received):
    company = make_company(expires_in=60)
    old_refresh = company.refresh_token
    with FakeTokenEndpoint(company.client) as fake:
        token = company.get_access_token()
    assert token == fake.last_access_token
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert stored.access_token == token
    assert stored.refresh_token == fake.last_refresh_token != old_refresh
    assert stored.expires_at > timezone.now() + timedelta(minutes=50)
    assert stored.token_version == 1 and stored.refresh_lock_id == ""
    assert fake.requests[0]["params"] == {"grant_type": "refresh_token", "refresh_token": old_refresh}
    event = TokenEvent.objects.get(company=company, kind="refreshed")
    assert old_refresh not in str(event.details) and token not in str(event.details)
    assert event.details["rotated"] is True
    assert [kw["company"].pk for kw in received["token_refreshed"]] == [company.pk]


def test_refresh_without_a_new_refresh_token_keeps_the_old_one():
    company = make_company(expires_in=60)
    old_refresh = company.refresh_token
    with FakeTokenEndpoint(company.client, rotate=False) as fake:
        company.refresh()
        company.refresh(force=True)
    assert ConnectedCompany.objects.get(pk=company.pk).refresh_token == old_refresh
    assert fake.refresh_count == 2


def test_not_expiring_token_is_not_refreshed_unless_forced(mocked):
    company = make_company(expires_in=3600)
    assert company.refresh() == "fresh"
    assert not mocked.calls
    with FakeTokenEndpoint(company.client, mock=mocked) as fake:
        assert company.refresh(force=True) == "refreshed"
    assert fake.refresh_count == 1


@pytest.mark.parametrize("error", ["invalid_grant"])
def test_invalid_grant_means_reauthorization_and_no_more_attempts(received, error):
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with(error)
        with pytest.raises(ReauthorizationRequired):
            company.get_access_token()
        with pytest.raises(ReauthorizationRequired):
            company.get_access_token()
        assert company.refresh(force=True) == "reauthorization_required"
    assert len(fake.requests) == 1
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert stored.status == "reauthorization_required"
    assert "invalid_grant" in stored.last_error
    assert TokenEvent.objects.filter(company=company, kind="reauthorization_required").count() == 1
    assert len(received["reauthorization_required"]) == 1


def test_a_stale_copy_never_spends_the_rotated_away_refresh_token():
    company = make_company(expires_in=60)
    stale = ConnectedCompany.objects.get(pk=company.pk)
    with FakeTokenEndpoint(company.client) as fake:
        company.refresh()
        # Forge a stale copy that lost track of the rotation: the lock refuses it, it re-reads.
        assert stale.refresh(force=True) == "fresh"
    assert fake.refresh_count == 1
    assert stale.access_token == company.access_token


@pytest.mark.parametrize(
    "failure,status,retry_after",
    [
        (503, 503, 120),
        (429, 429, 120),
        (500, 500, None),
        ("html", 200, None),
    ],
)
def test_transient_failures_back_off_and_keep_the_tokens(received, failure, status, retry_after):
    company = make_company(expires_in=120)  # within the margin, still valid
    before = (company.access_token, company.refresh_token)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with(failure)
        assert company.get_access_token() == before[0]  # still valid: the caller goes on
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert (stored.access_token, stored.refresh_token) == before
    assert stored.status == "failing" and stored.failure_count == 1
    assert stored.last_error
    wait = (stored.next_attempt_at - timezone.now()).total_seconds()
    assert wait > (retry_after or 50) - 5
    (sent,) = received["token_refresh_failed"]
    assert sent["attempt"] == 1 and sent["error"].status_code == status
    assert len(fake.requests) == 1  # never retried after it may have reached the server


def test_a_lost_answer_is_an_uncertain_outcome_not_retried_on_a_timer():
    company = make_company(expires_in=120)  # due, still valid
    uncertain = []
    signals.refresh_outcome_uncertain.connect(
        lambda **kw: uncertain.append(kw), weak=False, dispatch_uid="test-uncertain"
    )
    try:
        with FakeTokenEndpoint(company.client) as fake:
            fake.fail_with("timeout")  # a read timeout: the request went out
            assert company.get_access_token() == company.access_token  # still valid
            fake.fail_with(None)
            # Due, but the lost answer may have rotated the token: no automatic second try.
            assert company.refresh() == "uncertain"
            assert company.get_access_token() == company.access_token
            assert len(fake.requests) == 1
            # Staff decide: Refresh now (force) tries once more.
            assert company.refresh(force=True) == "refreshed"
    finally:
        signals.refresh_outcome_uncertain.disconnect(dispatch_uid="test-uncertain")
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert stored.status == "active"
    assert TokenEvent.objects.filter(company=company, kind="refresh_uncertain").count() == 1
    assert len(uncertain) == 1


@pytest.mark.parametrize("answer", [{"json": {"access_token": 12345}}, {"json": {"token_type": "bearer"}}])
def test_a_json_success_that_cannot_be_used_is_uncertain_on_a_refresh(mocked, answer):
    # A 2xx may have rotated the refresh token even when we cannot read the new one.
    company = make_company(expires_in=60)
    url = "https://api.trial.lsk.lightspeed.app/oauth/token"
    mocked.add(responses.POST, url, status=200, **answer)
    assert company.refresh() == "uncertain"


@pytest.mark.parametrize(
    ("headers", "body", "outcome", "status"),
    [
        # Says it is JSON (or looks like it) but cannot be read: the token endpoint answered, and
        # may have rotated the token.
        ({"Content-Type": "application/json"}, '{"access_token": "A", "refresh', "uncertain", "uncertain"),
        ({"Content-Type": "text/plain"}, "[" * 100_000, "uncertain", "uncertain"),
        # A proxy's maintenance page: the request never reached the token endpoint's logic.
        ({"Content-Type": "text/html"}, "<html>Back soon</html>", "failed", "failing"),
    ],
)
def test_an_unreadable_2xx_is_uncertain_only_when_it_came_as_json(mocked, headers, body, outcome, status):
    company = make_company(expires_in=60)
    url = "https://api.trial.lsk.lightspeed.app/oauth/token"
    mocked.add(responses.POST, url, status=200, body=body, headers=headers)
    assert company.refresh() == outcome
    assert ConnectedCompany.objects.get(pk=company.pk).status == status


def test_a_bare_401_is_a_failure_of_the_company_not_a_refused_client(mocked):
    company = make_company(expires_in=60)
    other = make_company(client=company.client, expires_in=60)
    url = "https://api.trial.lsk.lightspeed.app/oauth/token"
    mocked.add(responses.POST, url, status=401, body="")
    assert company.refresh() == "failed"
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert stored.status == "failing" and stored.next_attempt_at is not None
    assert "401" in stored.last_error
    assert ApiClient.objects.get(pk=company.client.pk).credentials_refused_at is None
    # The client's other companies are refreshed as usual.
    mocked.replace(
        responses.POST, url, json={"access_token": "A2", "refresh_token": "R2", "expires_in": 3600}
    )
    assert other.refresh() == "refreshed"


def test_api_session_forces_no_refresh_for_a_company_that_is_not_active(mocked):
    company = make_company(expires_in=3600)
    ConnectedCompany.objects.filter(pk=company.pk).update(status="uncertain")
    company.refresh_from_db()
    url = "https://api.trial.lsk.lightspeed.app/f/data/businesses"
    mocked.add(responses.GET, url, status=401)
    with FakeTokenEndpoint(company.client, mock=mocked) as fake:
        response = company.api_session().get("/f/data/businesses")
    assert response.status_code == 401
    # An uncertain company's refresh token may be spent: only staff's Refresh now may try it.
    assert fake.refresh_count == 0


def test_a_late_write_is_kept_over_a_failure_recorded_meanwhile():
    company = make_company(expires_in=60)
    ConnectedCompany.objects.filter(pk=company.pk).update(status="failing", failure_count=1)
    assert ConnectedCompany.objects.store_refreshed_late(
        company.pk, version=company.token_version, values={"access_token": "late", "refresh_token": "late"}
    )
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert stored.status == "active" and stored.refresh_token == "late" and stored.failure_count == 0


def test_a_new_refresh_token_beside_an_unusable_access_token_is_kept(mocked):
    company = make_company(expires_in=60)
    url = "https://api.trial.lsk.lightspeed.app/oauth/token"
    mocked.add(responses.POST, url, json={"access_token": "bad\ud800", "refresh_token": "NEW-RT"})
    assert company.refresh() == "failed"
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert stored.refresh_token == "NEW-RT"  # the old one is spent: this is the only valid one
    assert stored.access_token == "" and stored.is_expired()
    mocked.add(responses.POST, url, json={"access_token": "GOOD", "refresh_token": "NEWER", "expires_in": 60})
    assert stored.get_access_token() == "GOOD"
    assert (
        mocked.calls[-1].request.url.endswith("refresh_token=NEW-RT")
        or "NEW-RT" in mocked.calls[-1].request.url
    )


def test_an_expired_token_with_an_uncertain_outcome_raises_a_clear_error():
    company = make_company(expires_in=-10)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with("timeout")
        with pytest.raises(RefreshFailed, match="uncertain"):
            company.get_access_token()
    assert ConnectedCompany.objects.get(pk=company.pk).status == "uncertain"


def test_a_provider_that_does_not_rotate_retries_a_lost_answer_later(mocked):
    from django_lightspeed_oauth.testing import make_client

    company = make_company(make_client(provider="o-series"), expires_in=120)
    mocked.add(responses.POST, "https://api.kounta.com/v1/token", body=requests.ReadTimeout("slow"))
    company.get_access_token()
    assert ConnectedCompany.objects.get(pk=company.pk).status == "failing"


def test_expired_token_with_a_failing_refresh_raises_a_clear_error():
    company = make_company(expires_in=-10)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with(502)
        with pytest.raises(RefreshFailed, match="expired and could not be refreshed"):
            company.get_access_token()


@pytest.mark.parametrize("error", ["invalid_client", "unauthorized_client"])
def test_a_refused_client_is_recorded_on_the_client_and_its_companies_keep_their_grant(error):
    company = make_company(expires_in=60)
    sibling = make_company(company.client, expires_in=60)
    refused = []
    signals.client_credentials_refused.connect(
        lambda **kw: refused.append(kw), weak=False, dispatch_uid="test-refused"
    )
    try:
        with FakeTokenEndpoint(company.client) as fake:
            fake.fail_with(error)
            assert company.refresh() == "failed"
            # The sibling is not sent to a token endpoint that refuses the client anyway.
            sibling.client.refresh_from_db()
            assert sibling.refresh() == "failed"
            assert len(fake.requests) == 1
    finally:
        signals.client_credentials_refused.disconnect(dispatch_uid="test-refused")
    for row in ConnectedCompany.objects.filter(pk__in=[company.pk, sibling.pk]):
        assert row.status == "active"  # not "re-authorization required": the merchant did nothing
        assert row.token_version == 0 and row.refresh_token
    client = ApiClient.objects.get(pk=company.client.pk)
    assert client.credentials_refused_at is not None
    assert "client id and secret" in client.credentials_error
    (kwargs,) = refused
    assert kwargs["client"].pk == client.pk and kwargs["company"].pk == company.pk


def test_refresh_resumes_once_the_refused_client_is_fixed():
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with("invalid_client")
        company.refresh()
        fake.fail_with(None)
        client = ApiClient.objects.get(pk=company.client.pk)
        client.client_secret = "the-corrected-secret"
        client.save()
        assert ApiClient.objects.get(pk=client.pk).credentials_refused_at is None
        fresh = ConnectedCompany.objects.select_related("client").get(pk=company.pk)
        assert fresh.refresh() == "refreshed"
    assert ConnectedCompany.objects.get(pk=company.pk).status == "active"


def test_saving_a_refused_client_without_changing_its_credentials_keeps_the_refusal():
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with("invalid_client")
        company.refresh()
    client = ApiClient.objects.get(pk=company.client.pk)
    client.name = "Renamed"
    client.save()
    assert ApiClient.objects.get(pk=client.pk).credentials_refused_at is not None


def test_a_forced_refresh_that_succeeds_clears_the_refusal():
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with("invalid_client")
        company.refresh()
        fake.fail_with(None)  # fixed at Lightspeed, nothing changed here
        assert company.refresh(force=True) == "refreshed"
    assert ApiClient.objects.get(pk=company.client.pk).credentials_refused_at is None


def test_invalid_grant_still_ends_the_companys_grant():
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with("invalid_grant")
        assert company.refresh() == "reauthorization_required"
    assert ApiClient.objects.get(pk=company.client.pk).credentials_refused_at is None


def test_a_renamed_retail_x_store_is_followed_on_refresh(mocked):
    from django_lightspeed_oauth.testing import make_client

    client = make_client(provider="retail-x", environment="production", scopes="retailer:read")
    company = make_company(client, expires_in=60, details={"domain_prefix": "oldname"})
    mocked.add(
        responses.POST,
        "https://oldname.retail.lightspeed.app/api/1.0/token",
        json={**X_SERIES_TOKEN, "domain_prefix": "newname"},
    )
    assert company.refresh() == "refreshed"
    assert ConnectedCompany.objects.get(pk=company.pk).details["domain_prefix"] == "newname"


def test_success_after_failures_resets_the_company(received):
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with(500)
        company.refresh()
        fake.fail_with(None)
        assert company.refresh(force=True) == "refreshed"
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert (stored.status, stored.failure_count, stored.last_error, stored.next_attempt_at) == (
        "active",
        0,
        "",
        None,
    )


def test_disconnect_erases_tokens_and_keeps_history(received, django_user_model):
    company = make_company()
    user = django_user_model.objects.create_user("op")
    company.disconnect(user=user)
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert (stored.status, stored.access_token, stored.refresh_token) == ("disconnected", "", "")
    assert TokenEvent.objects.get(company=company, kind="disconnected").actor == user
    assert received["company_disconnected"][0]["user"] == user
    with pytest.raises(CompanyDisconnected):
        stored.get_access_token()


def test_a_held_lock_makes_others_wait_and_use_the_winners_token(settings):
    company = make_company(expires_in=60)
    # Another process holds the lease for a while and then finishes.
    ConnectedCompany.objects.filter(pk=company.pk).update(
        refresh_lock_id="other", refresh_lock_until=timezone.now() + timedelta(seconds=30)
    )
    with FakeTokenEndpoint(company.client) as fake:
        result = refresh(company, wait=False)
    assert (result.outcome, result.waited) == ("fresh", True)
    assert fake.refresh_count == 0


def test_an_expired_lease_is_taken_over_after_one_renewal_interval(settings):
    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, "LOCK_TIMEOUT": 3, "LOCK_RENEW_INTERVAL": 0.3}
    company = make_company(expires_in=60)
    ConnectedCompany.objects.filter(pk=company.pk).update(
        refresh_lock_id="crashed",
        refresh_lock_until=Now() - timedelta(seconds=1),
        refresh_lock_started_at=Now() - timedelta(seconds=4),
    )
    started = time.monotonic()
    with FakeTokenEndpoint(company.client) as fake:
        assert company.refresh() == "refreshed"
    assert fake.refresh_count == 1
    assert time.monotonic() - started >= 0.3  # the grace a held-up (not dead) holder gets


def test_api_session_sends_the_bearer_token_and_retries_once_after_401(mocked):
    company = make_company(expires_in=3600)
    first = company.access_token
    url = "https://api.trial.lsk.lightspeed.app/f/data/businesses"
    mocked.add(responses.GET, url, status=401)
    mocked.add(responses.GET, url, json=k_series_businesses((1, "Bistro", [])))
    with FakeTokenEndpoint(company.client, mock=mocked) as fake:
        response = company.api_session().get("/f/data/businesses")
    assert response.json() == k_series_businesses((1, "Bistro", []))
    api_calls = [c for c in mocked.calls if c.request.url == url]
    assert api_calls[0].request.headers["Authorization"] == f"Bearer {first}"
    assert api_calls[1].request.headers["Authorization"] == f"Bearer {fake.last_access_token}"
    assert fake.refresh_count == 1


@pytest.mark.django_db(transaction=True)
def test_new_tokens_survive_a_rollback_of_the_callers_transaction():
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                company.get_access_token()
                raise RuntimeError("the caller's work failed")
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert stored.refresh_token == fake.last_refresh_token
    assert stored.token_version == 1


def test_a_broken_signal_receiver_does_not_fail_a_stored_refresh(caplog):
    def broken(**kwargs):
        raise RuntimeError("receiver bug")

    signals.token_refreshed.connect(broken, weak=False, dispatch_uid="test-broken")
    try:
        company = make_company(expires_in=60)
        with FakeTokenEndpoint(company.client) as fake:
            assert company.get_access_token() == fake.last_access_token
    finally:
        signals.token_refreshed.disconnect(dispatch_uid="test-broken")
    assert ConnectedCompany.objects.get(pk=company.pk).refresh_token == fake.last_refresh_token
    assert "Receiver" in caplog.text


def test_a_company_backing_off_is_not_asked_for_again_until_its_next_attempt():
    company = make_company(expires_in=120)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with(429)
        assert company.refresh() == "failed"
        fake.fail_with(None)
        assert company.get_access_token() == company.access_token  # still valid: served as is
        assert company.refresh() == "failed"
        assert len(fake.requests) == 1
        ConnectedCompany.objects.filter(pk=company.pk).update(next_attempt_at=timezone.now())
        company.refresh_from_db()
        assert company.refresh() == "refreshed"


def test_saving_a_stale_instance_does_not_restore_a_spent_refresh_token():
    company = make_company(expires_in=60)
    stale = ConnectedCompany.objects.get(pk=company.pk)
    with FakeTokenEndpoint(company.client) as fake:
        company.refresh()
    stale.name = "Renamed in the admin"
    stale.save()
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert stored.name == "Renamed in the admin"
    assert stored.refresh_token == fake.last_refresh_token and stored.token_version == 1


def test_a_disconnect_during_a_refresh_whose_lease_ran_out_wins(monkeypatch):
    from django_lightspeed_oauth import oauth

    company = make_company(expires_in=60)
    real = oauth.refresh_tokens

    def slow_then_disconnected(*args, **kwargs):
        tokens = real(*args, **kwargs)
        ConnectedCompany.objects.get(pk=company.pk).disconnect()  # clears the lock meanwhile
        return tokens

    monkeypatch.setattr(oauth, "refresh_tokens", slow_then_disconnected)
    with FakeTokenEndpoint(company.client):
        company.refresh()
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert (stored.status, stored.refresh_token) == ("disconnected", "")


def test_an_over_long_scope_or_token_type_does_not_block_storing_new_tokens(mocked):
    company = make_company(expires_in=60)
    mocked.add(
        responses.POST,
        company.client.token_endpoint(),
        json={
            "access_token": "A2",
            "refresh_token": "R2",
            "expires_in": 3600,
            "token_type": "b" * 100,
            "scope": "s " * 1000,
        },
    )
    assert company.refresh() == "refreshed"
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert stored.refresh_token == "R2" and len(stored.granted_scopes) == 1000


@pytest.mark.django_db(transaction=True)
def test_refreshing_inside_a_transaction_that_holds_the_row_fails_clearly_without_a_request(
    settings,
):
    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, "LOCK_TIMEOUT": 4}
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        with pytest.raises(RefreshFailed, match="inside a transaction"):
            with transaction.atomic():
                ConnectedCompany.objects.filter(pk=company.pk).update(name="held")
                company.get_access_token()
    assert fake.refresh_count == 0
    assert ConnectedCompany.objects.get(pk=company.pk).refresh_lock_id == ""


def test_a_failure_recorded_after_we_read_the_row_still_stops_our_attempt(monkeypatch):
    company = make_company(expires_in=120)
    stale = ConnectedCompany.objects.get(pk=company.pk)  # read before the failure below
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with(503)
        assert company.refresh() == "failed"  # records next_attempt_at, releases the lock
        fake.fail_with(None)
        assert stale.next_attempt_at is None
        assert stale.refresh() == "failed"
    assert len(fake.requests) == 1


def test_api_session_never_sends_the_token_to_another_host(mocked):
    company = make_company(expires_in=3600)
    session = company.api_session()
    with pytest.raises(ValueError, match=r"only to https://api\.trial\.lsk\.lightspeed\.app"):
        session.get("https://collector.example.net/f/data/businesses")
    with pytest.raises(ValueError):
        session.get("http://api.trial.lsk.lightspeed.app/f/data/businesses")  # not https
    assert not mocked.calls
    url = "https://api.trial.lsk.lightspeed.app/f/data/businesses?page=2"
    mocked.add(responses.GET, url, json=[])
    assert session.get(url).json() == []


# The database's clock decides leases and back-off --------------------------------------------------


@pytest.fixture
def clock_ahead(monkeypatch):
    """This process's clock an hour ahead of the database's (and of every other process's)."""
    real = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real() + timedelta(hours=1))


def test_a_clock_ahead_does_not_see_a_live_lease_as_over(clock_ahead):
    company = make_company(expires_in=60)
    ConnectedCompany.objects.filter(pk=company.pk).update(
        refresh_lock_id="someone-else", refresh_lock_until=Now() + timedelta(seconds=30)
    )
    taken = ConnectedCompany.objects.take_lease(
        company.pk, version=company.token_version, lock_id="me", lease=30, force=False
    )
    assert not taken
    assert not ConnectedCompany.objects.mark_expired_lease(company.pk, version=0, holder="someone-else")


def test_a_lease_that_ran_out_is_taken_over_only_after_a_grace_period(clock_ahead):
    company = make_company(expires_in=60)
    ConnectedCompany.objects.filter(pk=company.pk).update(
        refresh_lock_id="gone", refresh_lock_until=Now() - timedelta(seconds=1), refresh_lock_started_at=Now()
    )
    manager = ConnectedCompany.objects
    assert not manager.take_lease(company.pk, version=0, lock_id="me", lease=30, force=False)
    assert manager.mark_expired_lease(company.pk, version=0, holder="gone")
    # Marked just now (database clock): a refresher held up by the database may still store.
    assert not manager.take_over_lease(company.pk, version=0, holder="gone", lock_id="me", lease=30, grace=30)
    assert manager.take_over_lease(company.pk, version=0, holder="gone", lock_id="me", lease=30, grace=0)
    assert manager.get(pk=company.pk).refresh_lock_id == "me"


def test_a_clock_ahead_does_not_cut_a_back_off_short(clock_ahead):
    company = make_company(expires_in=60, status="failing")
    ConnectedCompany.objects.filter(pk=company.pk).update(next_attempt_at=Now() + timedelta(minutes=5))
    company.refresh_from_db()
    with FakeTokenEndpoint(company.client) as fake:
        assert company.refresh() == "failed"
    assert fake.requests == []


def test_a_clock_behind_does_not_prolong_a_back_off(monkeypatch):
    company = make_company(expires_in=60, status="failing")
    ConnectedCompany.objects.filter(pk=company.pk).update(next_attempt_at=Now() - timedelta(seconds=1))
    company.refresh_from_db()
    real = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real() - timedelta(hours=1))
    with FakeTokenEndpoint(company.client) as fake:
        assert refresh(company, within=7200).outcome == "refreshed"
    assert len(fake.requests) == 1


def test_leases_are_written_with_the_database_clock(clock_ahead):
    company = make_company(expires_in=60)
    assert ConnectedCompany.objects.take_lease(
        company.pk, version=company.token_version, lock_id="me", lease=30, force=False
    )
    stored = ConnectedCompany.objects.get(pk=company.pk)
    ahead = timezone.now()
    # 30 s after the database's now, not after this process's (an hour ahead).
    assert timedelta(minutes=55) < ahead - stored.refresh_lock_until < timedelta(minutes=61)


def test_a_late_write_never_turns_a_newer_outcome_back():
    company = make_company(expires_in=60)
    version = company.token_version
    ConnectedCompany.objects.filter(pk=company.pk).update(status="reauthorization_required")
    stored = ConnectedCompany.objects.store_refreshed_late(
        company.pk, version=version, values={"access_token": "late", "refresh_token": "late"}
    )
    assert not stored
    assert ConnectedCompany.objects.get(pk=company.pk).status == "reauthorization_required"


def test_a_late_write_never_overwrites_a_live_holder():
    company = make_company(expires_in=60)
    ConnectedCompany.objects.filter(pk=company.pk).update(
        refresh_lock_id="other", refresh_lock_until=Now() + timedelta(seconds=30)
    )
    assert not ConnectedCompany.objects.store_refreshed_late(
        company.pk, version=company.token_version, values={"access_token": "late"}
    )


def test_a_live_lease_is_renewed_and_a_marked_one_taken_back():
    company = make_company(expires_in=60)
    ConnectedCompany.objects.filter(pk=company.pk).update(
        refresh_lock_id="mine", refresh_lock_until=Now() + timedelta(seconds=1), refresh_lock_started_at=Now()
    )
    assert ConnectedCompany.objects.renew_leases(["mine"], lease=60) == 1
    left = ConnectedCompany.objects.get(pk=company.pk).refresh_lock_until - timezone.now()
    assert left > timedelta(seconds=55)
    # A waiter marked the lease as run out; the holder renews before the grace ends: it is back.
    ConnectedCompany.objects.filter(pk=company.pk).update(refresh_lock_until=Now() - timedelta(seconds=1))
    assert ConnectedCompany.objects.mark_expired_lease(
        company.pk, version=company.token_version, holder="mine"
    )
    assert ConnectedCompany.objects.renew_leases(["mine"], lease=60) == 1
    stored = ConnectedCompany.objects.get(pk=company.pk)
    assert stored.refresh_lock_started_at is not None
    assert not ConnectedCompany.objects.take_over_lease(
        company.pk, version=company.token_version, holder="mine", lock_id="waiter", lease=60, grace=0
    )
    assert ConnectedCompany.objects.get(pk=company.pk).refresh_lock_id == "mine"
    # Another's lease is never renewed.
    assert ConnectedCompany.objects.renew_leases(["someone-else"], lease=60) == 0


@pytest.mark.django_db
def test_api_session_takes_request_options_by_position_too(mocked):
    """Headers passed by position are sent with the token, not refused as a second ``headers``."""
    from django_lightspeed_oauth.tokens import _REQUEST_OPTIONS

    assert list(inspect.signature(requests.Session.request).parameters)[3:] == list(_REQUEST_OPTIONS)
    company = make_company(expires_in=3600)
    url = "https://api.trial.lsk.lightspeed.app/f/data/businesses"
    mocked.add(responses.GET, url + "?page=2", json=[])
    response = company.api_session().request("GET", url, {"page": "2"}, None, {"X-Trace": "abc"})
    assert response.json() == []
    sent = mocked.calls[-1].request.headers
    assert sent["X-Trace"] == "abc" and sent["Authorization"] == f"Bearer {company.access_token}"


def test_the_compiled_lease_statement_takes_only_the_right_company_at_its_version(db):
    # take_lease compiles its UPDATE once and swaps the values in: every call must still say
    # which company, which token version and which lock id, and nothing else.
    first, second = make_company(expires_in=60), make_company(expires_in=60)
    manager = ConnectedCompany.objects
    assert not manager.take_lease(
        first.pk, version=first.token_version + 1, lock_id="a", lease=30, force=False
    )
    assert manager.take_lease(first.pk, version=first.token_version, lock_id="a", lease=30, force=False)
    assert not manager.take_lease(first.pk, version=first.token_version, lock_id="b", lease=30, force=False)
    with CaptureQueriesContext(connection) as queries:
        assert manager.take_lease(second.pk, version=second.token_version, lock_id="c", lease=30, force=False)
    assert len(queries) == 1
    assert [manager.get(pk=c.pk).refresh_lock_id for c in (first, second)] == ["a", "c"]
    # A queryset with conditions of its own keeps them.
    third = make_company(expires_in=60)
    assert not manager.filter(pk=first.pk).take_lease(
        third.pk, version=third.token_version, lock_id="d", lease=30, force=False
    )
    assert manager.get(pk=third.pk).refresh_lock_id == ""
