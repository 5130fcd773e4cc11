"""The statements a refresh runs are compiled once per database and write what the ORM would.

take_lease, store_refreshed and the token event's INSERT are built with marked values, compiled
once, and run with the real values swapped in (building them with the ORM for every refresh cost
more CPU than running them). These tests run on every database CI uses: a mark the database
backend changes (psycopg wraps integers in Int4, say) must not silently send every refresh down
the slow path, and the compiled statement must write exactly what the ORM's does.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.signals import post_save
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_lightspeed_oauth import models
from django_lightspeed_oauth.crypto import Sealed
from django_lightspeed_oauth.models import ConnectedCompany, TokenEvent
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_company
from django_lightspeed_oauth.tokens import refresh

pytestmark = pytest.mark.django_db

#: Every column a store writes, read back to compare the two paths.
STORED_FIELDS = [
    "access_token",
    "refresh_token",
    "token_type",
    "granted_scopes",
    "expires_at",
    "refresh_expires_at",
    "status",
    "failure_count",
    "last_error",
    "next_attempt_at",
    "token_version",
    "refresh_lock_id",
    "refresh_lock_until",
    "refresh_lock_started_at",
]


@pytest.fixture(autouse=True)
def _fresh_compilations():
    models._compiled_statements.clear()
    models._compiled_event_inserts.clear()
    yield
    models._compiled_statements.clear()
    models._compiled_event_inserts.clear()


def _compiled(name: str) -> list[models._Compiled]:
    return [c for key, c in models._compiled_statements.items() if key[0] == name]


def _leased(company: ConnectedCompany, lock_id: str) -> None:
    assert ConnectedCompany.objects.take_lease(
        company.pk, version=company.token_version, lock_id=lock_id, lease=30, force=False
    )


def _state(company: ConnectedCompany) -> dict:
    company.refresh_from_db()
    return {name: getattr(company, name) for name in STORED_FIELDS}


def _through_the_orm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        models, "_run_compiled", lambda queryset, key, build, values, unmarked: unmarked().run()
    )


def test_the_lease_statement_is_compiled_on_this_database():
    company = make_company(expires_in=60)
    with CaptureQueriesContext(connection) as queries:
        _leased(company, "a" * 32)
    assert len(queries) == 1
    compiled = _compiled("take_lease")
    assert len(compiled) == 1 and compiled[0].sql is not None, connection.vendor
    # The compiled statement keeps every condition: a second taker, or a stale version, fails.
    assert not ConnectedCompany.objects.take_lease(
        company.pk, version=company.token_version, lock_id="b" * 32, lease=30, force=False
    )
    other = make_company(expires_in=60, company_id="other")
    assert not ConnectedCompany.objects.take_lease(
        other.pk, version=other.token_version + 1, lock_id="c" * 32, lease=30, force=False
    )
    assert ConnectedCompany.objects.take_lease(
        other.pk, version=other.token_version, lock_id="c" * 32, lease=30, force=False
    )
    assert ConnectedCompany.objects.get(pk=other.pk).refresh_lock_id == "c" * 32


@pytest.mark.parametrize(
    "values",
    [
        {"expires_in": 3600, "refresh_expires_in": 86400, "granted_scopes": "orders items"},
        {"expires_in": None, "refresh_expires_in": None},
        {"expires_in": 60, "refresh_expires_in": None, "token_type": ""},
    ],
    ids=["every-value", "no-expiry", "empty-type"],
)
def test_a_compiled_store_writes_what_the_orm_writes(monkeypatch, values):
    now = timezone.now().replace(microsecond=123456)
    expires_in, refresh_in = values.pop("expires_in"), values.pop("refresh_expires_in")
    stored = {
        "access_token": "new-access",
        "refresh_token": "new-refresh",
        "token_type": "bearer",
        "expires_at": now + timedelta(seconds=expires_in) if expires_in else None,
        "refresh_expires_at": now + timedelta(seconds=refresh_in) if refresh_in else None,
        **values,
    }
    compiled_company = make_company(expires_in=60, company_id="compiled")
    orm_company = make_company(expires_in=60, company_id="orm")
    _leased(compiled_company, "d" * 32)
    _leased(orm_company, "e" * 32)

    assert ConnectedCompany.objects.store_refreshed(compiled_company.pk, lock_id="d" * 32, values=stored)
    compiled = _compiled("store_refreshed")
    assert len(compiled) == 1 and compiled[0].sql is not None, connection.vendor
    with monkeypatch.context() as patched:
        _through_the_orm(patched)
        assert ConnectedCompany.objects.store_refreshed(orm_company.pk, lock_id="e" * 32, values=stored)

    assert _state(compiled_company) == _state(orm_company)
    assert compiled_company.access_token == "new-access"
    assert compiled_company.refresh_token == "new-refresh"
    assert compiled_company.expires_at == stored["expires_at"]
    assert compiled_company.refresh_lock_id == ""
    # The secrets are bound to their own row, as the ORM's are.
    assert isinstance(ConnectedCompany.objects.get(pk=compiled_company.pk).__dict__["access_token"], Sealed)


def test_a_compiled_store_needs_the_lease():
    company = make_company(expires_in=60)
    _leased(company, "f" * 32)
    stored = {
        "access_token": "x-access",
        "refresh_token": "x-refresh",
        "token_type": "bearer",
        "expires_at": None,
    }
    assert not ConnectedCompany.objects.store_refreshed(company.pk, lock_id="g" * 32, values=stored)
    company.refresh_from_db()
    assert company.refresh_lock_id == "f" * 32
    assert company.access_token != "x-access"


def test_details_go_through_the_orm_and_are_stored():
    company = make_company(expires_in=60)
    _leased(company, "h" * 32)
    stored = {
        "access_token": "y-access",
        "refresh_token": "y-refresh",
        "token_type": "bearer",
        "expires_at": None,
        "details": {"domain_prefix": "renamed"},
    }
    assert ConnectedCompany.objects.store_refreshed(company.pk, lock_id="h" * 32, values=stored)
    assert [c.sql for c in _compiled("store_refreshed")] == [None]  # JSON has no mark: never compiled
    company.refresh_from_db()
    assert company.details == {"domain_prefix": "renamed"}
    assert company.access_token == "y-access"


def test_an_event_is_one_compiled_insert_equal_to_a_saved_one(django_user_model):
    company = make_company(expires_in=60)
    user = django_user_model.objects.create_user("staff-member")
    details = {"access_token": "sha256:abc", "nested": {"n": 1, "s": "é"}, "none": None}
    with CaptureQueriesContext(connection) as queries:
        TokenEvent.objects.record(
            company_id=company.pk,
            kind=TokenEvent.Kind.REFRESHED,
            message="Tokens refreshed.",
            details=details,
            actor=user,
        )
    assert len(queries) == 1
    assert models._compiled_event_inserts[connection.alias], connection.vendor
    saved = TokenEvent.objects.create(
        company=company,
        kind=TokenEvent.Kind.REFRESHED,
        message="Tokens refreshed.",
        details=details,
        actor=user,
    )
    recorded = TokenEvent.objects.exclude(pk=saved.pk).get()
    for name in ("company_id", "kind", "message", "details", "actor_id"):
        assert getattr(recorded, name) == getattr(saved, name), name
    assert abs(recorded.created_at - saved.created_at) < timedelta(seconds=5)


def test_post_save_receivers_of_events_still_hear_of_each_one():
    company = make_company(expires_in=60)
    heard = []

    def receiver(sender, instance, created, **kwargs):
        heard.append((instance.kind, created))

    post_save.connect(receiver, sender=TokenEvent, weak=False, dispatch_uid="test-compiled-events")
    try:
        TokenEvent.objects.record(
            company_id=company.pk, kind=TokenEvent.Kind.REFRESHED, message="m", details={}
        )
    finally:
        post_save.disconnect(sender=TokenEvent, dispatch_uid="test-compiled-events")
    assert heard == [(TokenEvent.Kind.REFRESHED, True)]
    assert TokenEvent.objects.filter(company=company).count() == 1


def test_a_refresh_runs_three_compiled_statements():
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client), CaptureQueriesContext(connection) as queries:
        assert refresh(company).outcome == "refreshed"
    assert len(queries) == 3, [q["sql"] for q in queries]
    assert [c.sql is not None for c in _compiled("take_lease")] == [True]
    assert [c.sql is not None for c in _compiled("store_refreshed")] == [True]
    assert models._compiled_event_inserts[connection.alias]


def test_stores_of_every_shape_in_turn_each_write_what_the_orm_writes(monkeypatch):
    """The compiled statements stay cached between stores of different shapes (a None expiry, new
    scopes or not): each shape must get its own statement."""
    now = timezone.now().replace(microsecond=654321)
    shapes = [
        {"expires_at": now + timedelta(hours=1), "refresh_expires_at": None},
        {"expires_at": None, "refresh_expires_at": now + timedelta(days=1), "granted_scopes": "a b"},
        {"expires_at": now + timedelta(hours=2), "refresh_expires_at": now + timedelta(days=2)},
        {"expires_at": None, "refresh_expires_at": None, "granted_scopes": "c"},
        {"expires_at": now + timedelta(hours=3), "refresh_expires_at": None},
    ]
    for n, shape in enumerate(shapes):
        stored = {"access_token": f"a-{n}", "refresh_token": f"r-{n}", "token_type": "bearer", **shape}
        compiled_company = make_company(expires_in=60, company_id=f"compiled-{n}")
        orm_company = make_company(expires_in=60, company_id=f"orm-{n}")
        _leased(compiled_company, f"{n}".ljust(32, "c"))
        _leased(orm_company, f"{n}".ljust(32, "o"))
        assert ConnectedCompany.objects.store_refreshed(
            compiled_company.pk, lock_id=f"{n}".ljust(32, "c"), values=stored
        )
        with monkeypatch.context() as patched:
            _through_the_orm(patched)
            assert ConnectedCompany.objects.store_refreshed(
                orm_company.pk, lock_id=f"{n}".ljust(32, "o"), values=stored
            )
        assert _state(compiled_company) == _state(orm_company), shape
        assert (
            compiled_company.access_token == f"a-{n}" and compiled_company.expires_at == shape["expires_at"]
        )
    # Four shapes (the last repeats the first), each compiled once.
    assert len(_compiled("store_refreshed")) == 4
    assert all(c.sql is not None for c in _compiled("store_refreshed"))
