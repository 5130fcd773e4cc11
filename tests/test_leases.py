"""The process's lease keeper: renews what it holds, retries a failed renewal, outlives failures."""

from __future__ import annotations

import threading
import time
from itertools import chain, repeat

import pytest

from django_lightspeed_oauth import leases
from django_lightspeed_oauth.models import ConnectedCompanyQuerySet


@pytest.fixture
def keeper_calls(monkeypatch):
    """A fresh keeper whose renewals are recorded (and fail once, when asked to)."""
    calls: list[list[str]] = []
    arrived = threading.Condition()
    failures = {"left": 0}

    def renew_leases(self, lock_ids, *, lease):
        with arrived:
            if failures["left"]:
                failures["left"] -= 1
                calls.append([])  # a failed attempt
                arrived.notify_all()
                raise ConnectionError("the database went away")
            calls.append(sorted(lock_ids))
            arrived.notify_all()
        return len(lock_ids)

    def wait_for(count: int, within: float = 10) -> None:
        deadline = time.monotonic() + within
        with arrived:
            while len(calls) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"only {len(calls)} renewal(s) after {within}s"
                arrived.wait(left)

    monkeypatch.setattr(ConnectedCompanyQuerySet, "renew_leases", renew_leases)
    monkeypatch.setattr(leases, "_keeper", None)
    return calls, wait_for, failures


def test_a_failed_renewal_is_tried_again_soon_not_after_a_whole_interval(monkeypatch, keeper_calls):
    calls, wait_for, failures = keeper_calls
    failures["left"] = 1
    # The first interval is short, every later one 30 s: only the retry after a failure can
    # bring the second attempt within the wait below.
    intervals = chain([0.05], repeat(30.0))
    monkeypatch.setattr(leases, "renew_interval", lambda: next(intervals))
    with leases.keep("lease-a"):
        wait_for(2)
    assert calls == [[], ["lease-a"]]


def test_a_lease_is_kept_no_longer_than_max_hold(monkeypatch, keeper_calls):
    calls, wait_for, _ = keeper_calls
    monkeypatch.setattr(leases, "renew_interval", lambda: 0.05)
    with leases.keep("young"), leases.keep("old"):
        keeper = leases._process_keeper()
        with keeper.changed:
            keeper.leases["old"] = time.monotonic() - leases.max_hold() - 1
        wait_for(len(calls) + 2)
    assert calls[-1] == ["young"]


def test_a_dead_keeper_is_replaced_and_its_leases_carried_over(monkeypatch, keeper_calls):
    calls, wait_for, _ = keeper_calls
    monkeypatch.setattr(leases, "renew_interval", lambda: 0.05)
    first = leases._process_keeper()
    with first.changed:
        first.leases["held"] = time.monotonic()
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    first.thread = dead  # as if it had died
    second = leases._process_keeper()
    assert second is not first and second.thread.is_alive()
    assert "held" in second.leases
    wait_for(1)
    assert calls[0] == ["held"]
    with second.changed:
        second.leases.clear()


def test_max_hold_covers_the_answers_deadline_a_last_read_and_storing(settings):
    settings.LIGHTSPEED_OAUTH = {"REFRESH_MAX_DURATION": 600, "REFRESH_READ_TIMEOUT": 120, "LOCK_TIMEOUT": 60}
    assert leases.max_hold() == 780
