"""A sweep leases the companies of a batch in one statement when it claims them.

Each leased company is refreshed under that lease, without a statement of its own to take it; a
company the statement could not lease (held elsewhere) and a lease grown too old before a worker
got to it go through the ordinary lease of ``tokens.refresh``; a company that needs no request
after all lets its batch lease go. Several sweeps in real processes against a real token server:
test_sweeps.py.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from django_lightspeed_oauth import refreshing, tokens
from django_lightspeed_oauth.models import (
    BATCH_LOCK_PREFIX_LENGTH,
    ConnectedCompany,
    ConnectedCompanyQuerySet,
    batch_lock_id,
)
from django_lightspeed_oauth.refreshing import claim_batch, refresh_due
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_client, make_company

pytestmark = pytest.mark.django_db

P, Q = "p" * BATCH_LOCK_PREFIX_LENGTH, "q" * BATCH_LOCK_PREFIX_LENGTH


def held_leases() -> dict[int, str]:
    return dict(ConnectedCompany.objects.exclude(refresh_lock_id="").values_list("pk", "refresh_lock_id"))


def sweep_due(n: int, **kwargs) -> tuple[refreshing.Summary, int]:
    """Sweep ``n`` due companies of one client: the summary, and how many refreshes the token
    endpoint answered."""
    client = make_client()
    for _ in range(n):
        make_company(client, expires_in=60)
    with FakeTokenEndpoint(client) as fake:
        summary = refresh_due(**kwargs)
    return summary, fake.refresh_count


@pytest.fixture
def extended(monkeypatch) -> list[int]:
    """Batch leases usable for 3 s; how many leases each extension statement extended."""
    monkeypatch.setattr(tokens, "batch_lease_limit", lambda: 3.0)
    monkeypatch.setattr(refreshing, "batch_lease_limit", lambda: 3.0)
    counts: list[int] = []
    extend = ConnectedCompanyQuerySet.extend_live_leases

    def counting_extend(queryset, *args, **kwargs):
        counts.append(extend(queryset, *args, **kwargs))
        return counts[-1]

    monkeypatch.setattr(ConnectedCompanyQuerySet, "extend_live_leases", counting_extend)
    return counts


@pytest.fixture
def slow_sweep():
    """Sweep N due companies behind a token endpoint that takes 0.25 s an answer."""

    def sweep(n: int, **kwargs) -> tuple[refreshing.Summary, int]:
        client = make_client()
        for _ in range(n):
            make_company(client, expires_in=60)
        with FakeTokenEndpoint(client) as fake:
            fake.delay = 0.25
            summary = refresh_due(**kwargs)
        return summary, fake.refresh_count

    return sweep


@pytest.fixture
def calls(monkeypatch):
    """How often each way of taking a lease ran (and the companies the batch statement leased)."""
    counted: dict[str, int] = {"take_lease": 0, "lease_batch": 0, "batch_leased": 0}
    take_lease, lease_batch = ConnectedCompanyQuerySet.take_lease, ConnectedCompanyQuerySet.lease_batch

    def counting_take(queryset, *args, **kwargs):
        counted["take_lease"] += 1
        return take_lease(queryset, *args, **kwargs)

    def counting_batch(queryset, *args, **kwargs):
        counted["lease_batch"] += 1
        leased = lease_batch(queryset, *args, **kwargs)
        counted["batch_leased"] += leased
        return leased

    monkeypatch.setattr(ConnectedCompanyQuerySet, "take_lease", counting_take)
    monkeypatch.setattr(ConnectedCompanyQuerySet, "lease_batch", counting_batch)
    return counted


def test_lease_batch_leases_the_free_due_companies_of_the_claim_each_under_its_own_lock_id():
    client = make_client()
    free = [make_company(client, expires_in=60) for _ in range(3)]
    held = make_company(client, expires_in=60)
    backing_off = make_company(client, expires_in=60, status=ConnectedCompany.Status.FAILING)
    uncertain = make_company(client, expires_in=60)
    batch = claim_batch(renew=False)
    assert set(batch.pks) == {c.pk for c in [*free, held, backing_off, uncertain]}
    manager = ConnectedCompany.objects
    manager.filter(pk=held.pk).update(refresh_lock_id="someone", refresh_lock_until=timezone.now())
    manager.filter(pk=backing_off.pk).update(next_attempt_at=timezone.now() + timedelta(hours=1))
    manager.filter(pk=uncertain.pk).update(status=ConnectedCompany.Status.UNCERTAIN)
    outside = make_company(client, expires_in=60)  # due, but not in the batch

    assert manager.lease_batch(batch.claim_id, prefix=P, lease=30, force=False) == 3

    assert held_leases() == {**{c.pk: batch_lock_id(P, c.pk) for c in free}, held.pk: "someone"}
    leased = manager.get(pk=free[0].pk)
    assert leased.refresh_lock_id == f"{P}{free[0].pk}"
    assert leased.refresh_lock_until > timezone.now() + timedelta(seconds=20)
    assert leased.refresh_lock_started_at is not None
    assert outside.pk not in held_leases()
    # Leased ones are not free any more; a forced sweep also leases the uncertain company and the
    # one backing off.
    assert manager.lease_batch(batch.claim_id, prefix=Q, lease=30, force=True) == 2
    forced = {uncertain.pk: batch_lock_id(Q, uncertain.pk), backing_off.pk: batch_lock_id(Q, backing_off.pk)}
    # Letting go of one prefix's leases leaves the others alone.
    assert manager.release_batch_leases(batch.claim_id, prefix=P) == 3
    assert held_leases() == {held.pk: "someone", **forced}


@pytest.mark.parametrize("length", [0, BATCH_LOCK_PREFIX_LENGTH - 1, BATCH_LOCK_PREFIX_LENGTH + 1])
def test_a_batch_lease_prefix_has_one_length_so_that_a_lock_id_reads_one_way(length):
    with pytest.raises(ValueError, match="prefix"):
        ConnectedCompany.objects.lease_batch("claim", prefix="x" * length, lease=30, force=False)


def test_the_lock_id_of_the_largest_primary_key_fits_the_field():
    # The longest a BigAutoField key is written: 19 digits and a sign. (A row with the largest
    # positive key would move MySQL's AUTO_INCREMENT counter to its end for every later test.)
    pk = -(2**63) + 1
    assert len(str(pk)) == len(str(2**63 - 1)) + 1
    client = make_client()
    company = make_company(client, expires_in=60, pk=pk)
    ConnectedCompany.objects.filter(pk=pk).update(sweep_claim_id="c")
    prefix = "f" * BATCH_LOCK_PREFIX_LENGTH
    assert ConnectedCompany.objects.lease_batch("c", prefix=prefix, lease=30, force=False) == 1
    assert held_leases() == {company.pk: batch_lock_id(prefix, pk)}
    assert len(batch_lock_id(prefix, pk)) == ConnectedCompany._meta.get_field("refresh_lock_id").max_length


def test_a_sweep_takes_one_lease_statement_per_batch_and_none_per_company(calls):
    summary, answered = sweep_due(7, batch_size=3)

    assert summary.refreshed == 7 == answered
    assert calls == {"take_lease": 0, "lease_batch": 3, "batch_leased": 7}
    assert summary.lock_attempts == 7
    assert held_leases() == {}
    assert set(ConnectedCompany.objects.values_list("token_version", flat=True)) == {1}


def test_a_company_held_elsewhere_when_its_batch_is_claimed_is_busy_and_its_holder_keeps_it(calls):
    client = make_client()
    mine = make_company(client, expires_in=60)
    other = make_company(client, expires_in=60)
    until = timezone.now() + timedelta(seconds=30)
    held = ConnectedCompany.objects.filter(pk=other.pk)
    held.update(refresh_lock_id="web-request", refresh_lock_until=until)
    with FakeTokenEndpoint(client) as fake:
        summary = refresh_due()

    assert (summary.refreshed, summary.busy) == (1, 1)
    assert fake.refresh_count == 1
    assert calls == {"take_lease": 1, "lease_batch": 1, "batch_leased": 1}  # the held one tried once
    assert held_leases() == {other.pk: "web-request"}
    assert ConnectedCompany.objects.get(pk=mine.pk).token_version == 1


def test_a_batch_lease_grown_old_is_let_go_and_taken_again(calls, monkeypatch):
    monkeypatch.setattr(tokens, "batch_lease_limit", lambda: 0.0)
    summary, answered = sweep_due(3)

    assert summary.refreshed == 3 == answered
    assert calls == {"take_lease": 3, "lease_batch": 1, "batch_leased": 3}
    assert summary.lock_attempts == 6  # the batch's lease and a new one, each
    assert held_leases() == {}


def test_the_default_batch_lease_limit_leaves_the_lease_time_to_be_renewed(settings):
    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, "LOCK_TIMEOUT": 60, "LOCK_RENEW_INTERVAL": None}
    assert tokens.batch_lease_limit() == 10.0  # (60 - 20) / 4: renewed at most 30 s into a 60 s lease


def test_a_leased_company_that_needs_no_request_lets_go_of_its_lease(calls):
    refused = make_client(credentials_refused_at=timezone.now(), credentials_error="invalid_client")
    no_token = make_company(make_client(), expires_in=60, refresh_token="")
    stuck = make_company(refused, expires_in=60)
    with FakeTokenEndpoint(refused) as fake:
        summary = refresh_due()

    assert fake.refresh_count == 0
    assert calls["batch_leased"] == 2  # both were leased, then let go
    assert summary.failed == 1 and summary.reauthorization_required == 1
    Status = ConnectedCompany.Status
    assert ConnectedCompany.objects.get(pk=no_token.pk).status == Status.REAUTHORIZATION_REQUIRED
    assert ConnectedCompany.objects.get(pk=stuck.pk).status == Status.ACTIVE
    assert held_leases() == {}


def test_a_leased_company_whose_secret_is_refused_lets_go_of_its_lease(calls):
    client = make_client()
    company = make_company(client, expires_in=60)
    # A ciphertext copied from another company's row: refused before anything is sent.
    other = make_company(client, expires_in=60)
    raw = ConnectedCompany.objects.filter(pk=other.pk).values_list("refresh_token", flat=True).get()
    ConnectedCompany.objects.filter(pk=company.pk).update(refresh_token=raw)
    ConnectedCompany.objects.filter(pk=other.pk).update(expires_at=timezone.now() + timedelta(hours=2))
    with FakeTokenEndpoint(client) as fake:
        summary = refresh_due()

    assert fake.refresh_count == 0
    assert calls["batch_leased"] == 1
    assert summary.failed == 1
    assert held_leases() == {}
    assert ConnectedCompany.objects.get(pk=company.pk).last_error


def test_a_stopped_sweep_lets_go_of_the_leases_of_companies_it_did_not_start():
    client = make_client()
    for _ in range(5):
        make_company(client, expires_in=60)
    stop = threading.Event()
    with FakeTokenEndpoint(client) as fake:
        summary = refresh_due(batch_size=5, on_result=lambda result: stop.set(), stop=stop)

    assert summary.refreshed == 1 == fake.refresh_count
    assert held_leases() == {}
    assert not ConnectedCompany.objects.exclude(sweep_claim_id="").exists()
    # The next sweep takes the rest at once.
    with FakeTokenEndpoint(client) as fake:
        assert refresh_due().refreshed == 4 == fake.refresh_count


def test_refresh_leased_counts_the_batch_lease_as_its_only_lock_attempt():
    client = make_client()
    company = make_company(client, expires_in=60)
    batch = claim_batch(renew=False)
    ConnectedCompany.objects.lease_batch(batch.claim_id, prefix=P, lease=30, force=False)
    company.refresh_from_db()
    with FakeTokenEndpoint(client) as fake:
        result = tokens.refresh_leased(
            company, batch_lock_id(P, company.pk), leased_at=refreshing.time.monotonic()
        )
    assert result.outcome == tokens.REFRESHED and result.lock_attempts == 1
    assert fake.refresh_count == 1
    assert held_leases() == {}


def test_a_sweep_renews_the_leases_of_a_batch_that_takes_long_so_that_its_workers_find_them_young(
    calls, extended, slow_sweep
):
    """Behind a slow token server a batch outlives half the usable age of its leases: the sweep
    renews them (one statement for the batch) instead of letting its workers take new ones."""
    summary, answered = slow_sweep(16)  # one after another: the batch takes 4 s, past the limit

    assert summary.refreshed == 16 == answered
    assert calls == {"take_lease": 0, "lease_batch": 1, "batch_leased": 16}
    # Each time, every company not started yet, fewer and fewer.
    assert extended and all(0 < count < 16 for count in extended)
    assert extended == sorted(extended, reverse=True)
    assert held_leases() == {}


def _held_batch(n: int, *, age: float, held_for: float | None = None) -> refreshing._Held:
    """A claimed batch of ``n`` due companies, leased ``age`` seconds ago (as a sweep sees it)."""
    client = make_client()
    for _ in range(n):
        make_company(client, expires_in=60)
    batch = claim_batch(renew=False)
    prefix = "b" * BATCH_LOCK_PREFIX_LENGTH
    ConnectedCompany.objects.lease_batch(batch.claim_id, prefix=prefix, lease=30, force=False)
    now = refreshing.time.monotonic()
    held = refreshing._Held(batch, n, set(), threading.Lock(), prefix, now - age)
    held.first_leased_at = now - (age if held_for is None else held_for)
    held.note_leases(list(ConnectedCompany.objects.filter(pk__in=batch.pks)))
    return held


def lease_ends() -> dict[int, object]:
    return dict(ConnectedCompany.objects.exclude(refresh_lock_id="").values_list("pk", "refresh_lock_until"))


def test_keeping_batch_leases_extends_the_pending_ones_once_half_their_usable_age_has_passed():
    held = _held_batch(3, age=6)
    first = ConnectedCompany.objects.get(pk=held.batch.pks[0])
    assert held.start(first) is not None  # a worker has this one: its lease is not the batch's
    before = lease_ends()
    leased_at = held.leased_at

    refreshing._keep_batch_leases([held], limit=10, hold_for=60)

    after = lease_ends()
    assert held.leased_at > leased_at
    assert after[first.pk] == before[first.pk]
    assert all(after[pk] > before[pk] for pk in held.batch.pks[1:])
    assert held.pending == set(held.batch.pks[1:])


def test_keeping_batch_leases_leaves_young_ones_alone():
    held = _held_batch(2, age=1)
    before, leased_at = lease_ends(), held.leased_at
    refreshing._keep_batch_leases([held], limit=10, hold_for=60)
    assert (lease_ends(), held.leased_at) == (before, leased_at)


@pytest.mark.parametrize(
    "case",
    ["one taken over", "one run out", "too late", "held long enough"],
)
def test_batch_leases_that_cannot_be_kept_are_let_go_and_none_is_used(case):
    age = 12 if case == "too late" else 6
    held = _held_batch(3, age=age, held_for=70 if case == "held long enough" else None)
    other = held.batch.pks[1]
    manager = ConnectedCompany.objects.filter(pk=other)
    if case == "one taken over":
        manager.update(refresh_lock_id="someone-else")
    elif case == "one run out":
        manager.update(refresh_lock_until=timezone.now() - timedelta(seconds=1))
    leased_at = held.leased_at

    refreshing._keep_batch_leases([held], limit=10, hold_for=60)

    assert held.leased_at == leased_at
    assert held.pending == set()
    companies = ConnectedCompany.objects.filter(pk__in=held.batch.pks)
    assert all(held.start(company) is None for company in companies)
    expected = {other: "someone-else"} if case == "one taken over" else {}
    assert held_leases() == expected


def test_a_failed_claim_attempt_is_undone_and_claimed_again_under_a_new_id(calls, monkeypatch):
    from django.db import OperationalError

    failures = iter([True])
    lease_batch = ConnectedCompanyQuerySet.lease_batch
    claim_ids: list[str] = []

    def failing_once(queryset, claim_id, **kwargs):
        claim_ids.append(claim_id)
        leased = lease_batch(queryset, claim_id, **kwargs)
        if next(failures, False):
            raise OperationalError("database is locked")  # after the leases were written
        return leased

    monkeypatch.setattr(ConnectedCompanyQuerySet, "lease_batch", failing_once)
    summary, answered = sweep_due(4)

    assert summary.refreshed == 4 == answered
    assert summary.busy == 0
    # The first attempt's leases were let go (else the second could lease none), the second's used.
    assert calls["batch_leased"] == 8 and calls["take_lease"] == 0
    assert len(claim_ids) == 2 and claim_ids[0] != claim_ids[1]
    assert held_leases() == {}
    assert not ConnectedCompany.objects.exclude(sweep_claim_id="").exists()


def test_leases_given_up_are_out_of_the_workers_reach_and_a_started_one_is_not_given_up():
    held = _held_batch(3, age=1)
    first, *others = ConnectedCompany.objects.filter(pk__in=held.batch.pks).order_by("pk")
    started = held.start(first)
    assert started is not None and started[0] == batch_lock_id(held.prefix, first.pk)

    gone = held.give_up()

    assert gone == [batch_lock_id(held.prefix, company.pk) for company in others]
    assert all(held.start(company) is None for company in [first, *others])
    assert held.give_up() == []


@pytest.mark.django_db(transaction=True)
def test_a_sweep_with_workers_keeps_its_batch_leases_young_while_it_waits(calls, extended, slow_sweep):
    """The feeder thread, waiting to hand out work, extends the batch's pending leases."""
    summary, answered = slow_sweep(32, workers=2)  # two at a time: 4 s, past the limit

    assert summary.refreshed == 32 == answered
    assert calls == {"take_lease": 0, "lease_batch": 1, "batch_leased": 32}
    assert extended and all(0 < count < 32 for count in extended)
    assert held_leases() == {}


def test_batch_leases_the_database_refuses_to_extend_stay_as_they_are(monkeypatch):
    from django.db import OperationalError

    held = _held_batch(2, age=6)
    leased_at, pending = held.leased_at, set(held.pending)

    def refused(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(ConnectedCompanyQuerySet, "extend_live_leases", refused)
    refreshing._keep_batch_leases([held], limit=10, hold_for=60)

    # Nothing changed: the workers will find them old (and take their own) unless a later try works.
    assert (held.leased_at, held.pending) == (leased_at, pending)
    assert set(held_leases()) == pending


def test_a_stopped_sweep_stops_renewing_its_claim_even_when_its_leases_cannot_be_let_go(monkeypatch):
    from django.db import OperationalError

    from django_lightspeed_oauth import leases

    def refused(*args, **kwargs):
        raise OperationalError("the database went away")

    monkeypatch.setattr(ConnectedCompanyQuerySet, "release_leases", refused)
    client = make_client()
    for _ in range(3):
        make_company(client, expires_in=60)
    stop = threading.Event()
    claimed: list[str] = []
    claim = refreshing._claim_batch

    def noting_claim(**kwargs):
        batch, page = claim(**kwargs)
        claimed.append(batch.claim_id)
        return batch, page

    monkeypatch.setattr(refreshing, "_claim_batch", noting_claim)
    with FakeTokenEndpoint(client):
        summary = refresh_due(on_result=lambda result: stop.set(), stop=stop)

    assert summary.refreshed == 1
    assert claimed and not set(claimed) & leases._process_keeper().claims
    assert not ConnectedCompany.objects.exclude(sweep_claim_id="").exists()
    assert len(held_leases()) == 2  # left to run out
