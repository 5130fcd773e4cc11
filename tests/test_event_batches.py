"""A sweep with several workers writes its token events in bulk: one query a refresh less.

Real concurrent sweeps (processes, a real token server, a SIGKILL) are in test_sweeps.py; these
tests pin down when collected events are written.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import parse_qsl

import pytest
from django.db import connection, connections
from django.db.backends.signals import connection_created
from django.db.models.signals import post_save
from django.test.utils import CaptureQueriesContext

from django_lightspeed_oauth import tokens
from django_lightspeed_oauth.models import ConnectedCompany, TokenEvent
from django_lightspeed_oauth.refreshing import refresh_due
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_client, make_company
from django_lightspeed_oauth.tokens import EVENT_FLUSH_INTERVAL, EventBatch


def _refreshed_events() -> int:
    return TokenEvent.objects.filter(kind=TokenEvent.Kind.REFRESHED).count()


class EventInserts:
    """Counts the INSERTs into the token event table, on every connection of every thread."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("INSERT") and "tokenevent" in sql.lower():
            with self._lock:
                self.count += 1
        return execute(sql, params, many, context)

    def on_connect(self, sender, connection, **kwargs) -> None:
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)


@pytest.fixture
def event_inserts():
    counter = EventInserts()
    connection_created.connect(counter.on_connect, weak=False, dispatch_uid="test-event-inserts")
    connection.execute_wrappers.append(counter)
    yield counter
    connection.execute_wrappers.remove(counter)
    connection_created.disconnect(dispatch_uid="test-event-inserts")


@pytest.mark.django_db
def test_collected_events_are_written_size_at_a_time_and_on_flush():
    company = make_company(expires_in=60)
    batch = EventBatch(size=3)
    with CaptureQueriesContext(connection) as queries, batch.collecting():
        for n in range(7):
            tokens._event(company, TokenEvent.Kind.REFRESHED, f"refresh {n}", {"n": n})
    assert TokenEvent.objects.count() == 6  # two full batches
    assert len(queries) == 2
    batch.flush()
    assert sorted(TokenEvent.objects.values_list("details__n", flat=True)) == list(range(7))
    # Outside the block, an event is written at once.
    tokens._event(company, TokenEvent.Kind.REFRESHED, "alone", {})
    assert TokenEvent.objects.count() == 8


@pytest.mark.django_db(transaction=True)
def test_a_sweep_with_workers_writes_every_event_in_fewer_inserts(event_inserts):
    client = make_client()
    companies = [make_company(client, expires_in=60) for _ in range(30)]
    with FakeTokenEndpoint(client) as fake:
        summary = refresh_due(workers=4)
    assert summary.refreshed == 30 == fake.refresh_count
    assert _refreshed_events() == 30
    assert set(TokenEvent.objects.values_list("company_id", flat=True)) == {c.pk for c in companies}
    assert 1 <= event_inserts.count < 30


@pytest.mark.django_db(transaction=True)
def test_a_sweep_with_one_worker_writes_each_event_as_it_goes(event_inserts):
    client = make_client()
    for _ in range(5):
        make_company(client, expires_in=60)
    with FakeTokenEndpoint(client):
        assert refresh_due(workers=1).refreshed == 5
    assert _refreshed_events() == 5 == event_inserts.count


@pytest.mark.django_db(transaction=True)
def test_post_save_receivers_hear_of_each_event_of_a_sweep():
    client = make_client()
    for _ in range(6):
        make_company(client, expires_in=60)
    heard = []
    lock = threading.Lock()

    def receiver(sender, instance, created, **kwargs):
        with lock:
            heard.append(instance.company_id)

    post_save.connect(receiver, sender=TokenEvent, weak=False, dispatch_uid="test-sweep-events")
    try:
        with FakeTokenEndpoint(client):
            assert refresh_due(workers=3).refreshed == 6
    finally:
        post_save.disconnect(sender=TokenEvent, dispatch_uid="test-sweep-events")
    assert len(heard) == 6 == _refreshed_events()


def _sweep_in_background(workers: int) -> tuple[threading.Thread, threading.Event]:
    """Start refresh_due in a thread; the event is set when it has returned."""
    finished = threading.Event()

    def sweep() -> None:
        try:
            refresh_due(workers=workers)
        finally:
            connections.close_all()
            finished.set()

    thread = threading.Thread(target=sweep)
    thread.start()
    return thread, finished


class SlowForOne(FakeTokenEndpoint):
    """Answers at once, except for one refresh token, whose answer takes ``slow_for`` seconds."""

    slow_token = ""
    slow_for = 0.0

    def _answer(self, request):
        body = request.body.decode() if isinstance(request.body, bytes) else (request.body or "")
        if (
            dict(parse_qsl(request.url.partition("?")[2] + "&" + body)).get("refresh_token")
            == self.slow_token
        ):
            time.sleep(self.slow_for)
        return super()._answer(request)


@pytest.mark.django_db(transaction=True)
def test_events_are_written_while_a_slow_refresh_holds_up_the_sweep():
    client = make_client()
    slow = make_company(client, expires_in=60)
    quick = make_company(client, expires_in=60)
    fake = SlowForOne(client)
    fake.slow_token, fake.slow_for = slow.refresh_token, EVENT_FLUSH_INTERVAL * 8
    with fake:
        thread, finished = _sweep_in_background(workers=2)
        deadline = time.monotonic() + EVENT_FLUSH_INTERVAL * 6
        while not TokenEvent.objects.filter(company_id=quick.pk).exists():
            assert time.monotonic() < deadline, "the quick refresh's event was not written in time"
            time.sleep(0.05)
        assert not finished.is_set()  # written while the slow refresh was still going
        thread.join(timeout=30)
    assert finished.is_set()
    assert _refreshed_events() == 2


@pytest.mark.django_db(transaction=True)
def test_an_event_of_a_deleted_company_does_not_take_the_others_with_it():
    kept = make_company(expires_in=60)
    gone = make_company(kept.client, expires_in=60)
    batch = EventBatch(size=10)
    with batch.collecting():
        tokens._event(kept, TokenEvent.Kind.REFRESHED, "kept", {})
        tokens._event(gone, TokenEvent.Kind.REFRESHED, "gone", {})
    ConnectedCompany.objects.filter(pk=gone.pk).delete()
    batch.flush()
    assert list(TokenEvent.objects.values_list("company_id", "message")) == [(kept.pk, "kept")]


@pytest.mark.django_db(transaction=True)
def test_events_are_written_every_half_second_while_the_sweep_hands_out_work():
    """A steady sweep that never gathers 100 events still writes them as it goes."""
    client = make_client()
    companies = [make_company(client, expires_in=60) for _ in range(16)]
    fake = SlowForAll(client)
    fake.slow_for = EVENT_FLUSH_INTERVAL / 2
    seen: list[tuple[int, int]] = []  # (refreshed, with their event) while the sweep ran
    with fake:
        thread, finished = _sweep_in_background(workers=2)
        while not finished.wait(0.1):
            refreshed = ConnectedCompany.objects.filter(token_version=1).count()
            seen.append((refreshed, _refreshed_events()))
        thread.join()
    assert _refreshed_events() == 16
    # Half way through (8 of 16 refreshed, some 2 seconds in), most of them have their event.
    halfway = [events for refreshed, events in seen if refreshed >= len(companies) // 2 and refreshed < 16]
    assert halfway and max(halfway) >= 4, seen


class SlowForAll(FakeTokenEndpoint):
    slow_for = 0.0

    def _answer(self, request):
        time.sleep(self.slow_for)
        return super()._answer(request)


@pytest.mark.django_db
def test_an_event_added_after_the_batch_closed_is_written_at_once():
    company = make_company(expires_in=60)
    batch = EventBatch(size=10)
    with batch.collecting():
        tokens._event(company, TokenEvent.Kind.REFRESHED, "before", {})
        assert TokenEvent.objects.count() == 0
        batch.close()
        assert TokenEvent.objects.count() == 1
        tokens._event(company, TokenEvent.Kind.REFRESHED, "after", {})  # a worker that ran late
        assert TokenEvent.objects.count() == 2
