"""Refreshing tokens safely: one refresher per company at a time, everywhere, on every database.

How: each company row carries ``token_version`` (bumped on every write of its tokens) and a lease
lock (``refresh_lock_id``, ``refresh_lock_until``). A refresher takes the lock with ONE conditional
UPDATE: "where pk = me and token_version = what I read and (no lock or its lease is over)". That
statement is atomic on SQLite, PostgreSQL and MySQL/MariaDB alike, so no Redis and no long
transaction are needed, and it can only succeed for someone holding the current refresh token.
The HTTP call runs outside any transaction; the new tokens are written in the next statement, which
also releases the lock. Whoever loses waits, re-reads, and uses the winner's token. A refresher that
dies leaves a lease that ends after LOCK_TIMEOUT seconds.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from django.db import DatabaseError, InterfaceError, OperationalError, connections, router
from django.db.models import signals as model_signals
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from . import leases, oauth, signals
from .conf import app_settings
from .crypto import fingerprint
from .exceptions import (
    BindingError,
    CompanyDisconnected,
    InvalidClient,
    InvalidGrant,
    ReauthorizationRequired,
    RefreshFailed,
    RefreshInProgress,
    TokenEndpointError,
    TransientTokenError,
)
from .models import ApiClient, ConnectedCompany, TokenEvent
from .providers import URL_PLACEHOLDER_VALUE

__all__ = ["CompanySession", "Outcome", "RefreshResult", "disconnect", "get_access_token", "refresh"]

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What one call of :func:`refresh` did; compares equal to its string value."""

    REFRESHED = "refreshed"  # new tokens stored by this call
    FRESH = "fresh"  # nothing needed, or done by another process meanwhile
    FAILED = "failed"  # a passing failure, or backing off after one
    REAUTHORIZATION_REQUIRED = "reauthorization_required"
    UNCERTAIN = "uncertain"  # the answer was lost: the refresh token may have been rotated


REFRESHED = Outcome.REFRESHED
FRESH = Outcome.FRESH
FAILED = Outcome.FAILED
REAUTHORIZATION_REQUIRED = Outcome.REAUTHORIZATION_REQUIRED
UNCERTAIN = Outcome.UNCERTAIN

# What a re-read needs: everything refresh decides on, the tokens, and the client for the request.
_REREAD_FIELDS = (
    "status",
    "refresh_lock_id",
    "access_token",
    "refresh_token",
    "expires_at",
    "refresh_expires_at",
    "token_version",
    "failure_count",
    "last_error",
    "next_attempt_at",
    "last_refreshed_at",
    "granted_scopes",
    "details",
    "token_type",
)


@dataclass
class RefreshResult:
    """What :func:`refresh` did for one company."""

    company: ConnectedCompany
    outcome: Outcome
    error: TokenEndpointError | None = None
    waited: bool = False  # another process held the lock
    #: conditional UPDATEs this call made to take the company's lease (0: none was needed); a
    #: lease a sweep took with its batch counts as one
    lock_attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome in (REFRESHED, FRESH)


def _in_transaction(company: ConnectedCompany) -> bool:
    """Whether the caller holds a transaction open (the test-case wrapper does not count)."""
    return in_callers_transaction(router.db_for_write(ConnectedCompany, instance=company))


def in_callers_transaction(alias: str) -> bool:
    """Whether this thread's connection ``alias`` is inside a caller's transaction (the atomic
    blocks of Django's TestCase do not count)."""
    connection = connections[alias]
    if not connection.in_atomic_block:
        return False
    # Django marks the atomic blocks TestCase opens with the private ``_from_testcase``, which its
    # atomic(durable=True) relies on too; no public API tells them apart. Without it, every refresh
    # inside a TestCase (a site's tests) would take the in-transaction path.
    # tests/test_django_internals.py breaks if Django stops marking them.
    return not all(getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)


def refresh(
    company: ConnectedCompany, *, force: bool = False, within: float | None = None, wait: bool = True
) -> RefreshResult:
    """Refresh ``company``'s tokens if they expire within ``within`` seconds (or ``force``).

    Safe to call from any number of threads, processes and machines at once. Updates ``company``
    in place. Inside a caller's ``transaction.atomic`` the refresh runs on its own connection, so
    that a rollback of the caller's work cannot throw the new (single-use) refresh token away.
    ``wait=False`` returns at once with outcome ``fresh`` and ``waited=True`` when another process
    holds the lock (what the refresh command wants).
    """
    if _in_transaction(company):
        return _in_own_connection(company, force=force, within=within, wait=wait)
    return _refresh(company, force=force, within=within, wait=wait)


def batch_lease_limit() -> float:
    """Seconds after it was taken that a lease taken ahead (a sweep leases a batch in one
    statement) may still be used for a token request: a quarter of the time the lease has left
    once the first renewal is due, so that it is renewed long before it could run out."""
    return max(0.0, app_settings.LOCK_TIMEOUT - leases.renew_interval()) / 4


def refresh_leased(
    company: ConnectedCompany,
    lock_id: str,
    *,
    leased_at: float,
    force: bool = False,
    within: float | None = None,
) -> RefreshResult:
    """:func:`refresh`, for a company whose lease the caller took already (a sweep leases its batch
    in one statement: see :meth:`~.models.ConnectedCompanyQuerySet.lease_batch`), under
    ``lock_id``, at ``leased_at`` (``time.monotonic()`` just before).

    A lease older than :func:`batch_lease_limit` (by this process's monotonic clock, the one
    exception to the database's clock deciding) is let go and :func:`refresh` takes a new one (a
    second lock attempt). A company that needs no request after all (refreshed meanwhile, say)
    lets the lease go and gets the outcome :func:`refresh` would give. Never waits for another
    holder (``wait=False``). Internal: its safety rests on the caller's ``leased_at``.
    """
    young = time.monotonic() - leased_at < batch_lease_limit()
    try:
        settled = _settled_and_readable(
            company, force=force, within=within, waited=False, seen_version=company.token_version
        )
    except BaseException:
        _let_go(company, lock_id)
        raise
    if settled is not None or not young or _in_transaction(company):
        _let_go(company, lock_id)
        if settled is not None:
            settled.lock_attempts = 1
            return settled
        result = refresh(company, force=force, within=within, wait=False)
        result.lock_attempts += 1
        return result
    result = _refresh_locked(company, lock_id, waited=False)
    result.lock_attempts = 1
    return result


def _let_go(company: ConnectedCompany, lock_id: str) -> None:
    """Release a lease no request was sent under; if the database refuses, it runs out on its own."""
    try:
        ConnectedCompany.objects.release_lease(company.pk, lock_id=lock_id)
    except DatabaseError:
        logger.warning("Could not release the refresh lock of company %s; it will run out", company.pk)


#: Seconds the own connection waits for a row lock before giving up (see _in_own_connection).
OWN_CONNECTION_LOCK_WAIT = 2


def _bound_lock_waits(alias: str) -> None:
    """Make this thread's connection give up quickly on a lock instead of waiting for ever."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT set_config('lock_timeout', %s, false)", [f"{OWN_CONNECTION_LOCK_WAIT}s"])
        elif connection.vendor == "mysql":
            cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", [OWN_CONNECTION_LOCK_WAIT])
        elif connection.vendor == "sqlite":
            cursor.execute(f"PRAGMA busy_timeout = {OWN_CONNECTION_LOCK_WAIT * 1000}")


def _in_own_connection(company: ConnectedCompany, **kwargs: Any) -> RefreshResult:
    box: dict[str, Any] = {}
    alias = router.db_for_write(ConnectedCompany, instance=company)

    def work() -> None:
        try:
            _bound_lock_waits(alias)
            box["result"] = _refresh(company, **kwargs)
        except DatabaseError:
            # Most likely the caller's own transaction holds the company's row (or, on SQLite, the
            # database's write lock): waiting longer would wait for ever.
            logger.warning("Refresh of company %s inside a transaction could not take its lock", company.pk)
            box["error"] = RefreshFailed(
                f"Company {company.company_id} could not be refreshed from inside a transaction "
                "that has written to the database (it would wait for its own lock): get the "
                "access token before the transaction, or outside it."
            )
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err
        finally:
            connections.close_all()

    worker = threading.Thread(target=work, name="lightspeed-refresh")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _retrying(write: Callable[[], int], *, seconds: float, what: str, company_pk: int) -> int:
    """Run one UPDATE (or a read), retrying on database errors (a busy SQLite file, a dropped
    connection, a restarting server).

    Safe because a failed statement changed nothing. Between attempts the connection is closed,
    unless a transaction is open, so that a broken connection is replaced.
    """
    deadline = time.monotonic() + seconds
    delay = 0.05
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError):
            # Busy or lost connection: may pass. A DataError or IntegrityError never would.
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("Database error while %s for company %s; retrying", what, company_pk)
            connection = connections[router.db_for_write(ConnectedCompany)]
            if not connection.in_atomic_block:
                connection.close()
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def _refresh(company: ConnectedCompany, *, force: bool, within: float | None, wait: bool) -> RefreshResult:
    """Take the lease and refresh, or wait for whoever holds it and use their token."""
    grace = leases.renew_interval()
    deadline = time.monotonic() + app_settings.LOCK_TIMEOUT + grace + 5
    seen_version = company.token_version
    waited = False
    attempts = 0
    while True:
        settled = _settled_and_readable(
            company, force=force, within=within, waited=waited, seen_version=seen_version
        )
        if settled is not None:
            settled.lock_attempts = attempts
            return settled
        lock_id = uuid.uuid4().hex
        attempts += 1
        if _take_lease(company, lock_id, force, grace):
            result = _refresh_locked(company, lock_id, waited)
            result.lock_attempts = attempts
            return result
        # Someone else holds the lease, or refreshed since we read the row.
        if waited:
            if time.monotonic() > deadline:
                # The holder may still be at work (its lease renewed): never a second request.
                raise RefreshInProgress(
                    f"Company {company.company_id} is being refreshed by another process that "
                    "did not finish in time."
                )
            time.sleep(0.05 + random.random() * 0.1)
        waited = True
        _reread(company)
        if company.token_version == seen_version and not company.refresh_lock_id and company.next_attempt_at:
            # Nobody holds the lease and nothing changed: the database says we are backing off.
            return RefreshResult(company, FAILED, waited=True, lock_attempts=attempts)
        if not wait and company.token_version == seen_version:
            return RefreshResult(company, FRESH, waited=True, lock_attempts=attempts)


def _settled_and_readable(company: ConnectedCompany, **kwargs: Any) -> RefreshResult | None:
    """:func:`_settled`; and before any request, the secrets it would send must verify as
    belonging to this company and this client's endpoints, or nothing is sent."""
    try:
        settled = _settled(company, **kwargs)
        if settled is None:
            company.client.client_secret  # noqa: B018 (decrypted and checked, or BindingError)
    except BindingError as err:
        _secret_refused(company, err)
        raise
    return settled


def _secret_refused(company: ConnectedCompany, err: BindingError) -> None:
    """Record (once, not at every sweep) that a secret was refused: moved, or its client's
    endpoints changed behind the app's back. No request was sent."""
    message = err.message
    if ConnectedCompany.objects.filter(pk=company.pk).exclude(last_error=message).update(last_error=message):
        logger.error("Company %s: a stored secret was refused, nothing sent: %s", company.pk, message)
        _event(company, TokenEvent.Kind.REFRESH_FAILED, message, {"error": "secret_refused"})
    else:
        logger.warning("Company %s: a stored secret was refused, nothing sent", company.pk)
    company.last_error = message


def _settled(
    company: ConnectedCompany, *, force: bool, within: float | None, waited: bool, seen_version: int
) -> RefreshResult | None:
    """The outcome when no refresh request is needed (or allowed), else None."""
    Status = ConnectedCompany.Status
    if company.status == Status.DISCONNECTED:
        raise CompanyDisconnected(f"Company {company.company_id} is disconnected.")
    if company.status == Status.REAUTHORIZATION_REQUIRED:
        return RefreshResult(company, REAUTHORIZATION_REQUIRED, waited=waited)
    if waited and company.token_version != seen_version:
        return RefreshResult(company, FRESH, waited=True)  # another process refreshed: use its token
    if company.status == Status.UNCERTAIN and not force:
        # A lost answer may have rotated the token: only staff decide to try it again.
        return RefreshResult(company, UNCERTAIN, waited=waited)
    if not force and not company.needs_refresh(within):
        return RefreshResult(company, FRESH, waited=waited)
    if not company.refresh_token:
        return _fail_for_good(company, None, "The company has no refresh token.")
    if not force and company.client.credentials_refused_at:
        # The client's own credentials were refused: asking again with them would be refused
        # too. The company's tokens stay as they are until staff fix the client.
        return RefreshResult(company, FAILED, error=_client_refused_error(company.client), waited=waited)
    return None


def _reread(company: ConnectedCompany) -> None:
    """Read the row again; a dropped connection (a database restart) is retried, as reads may be."""

    def read() -> int:
        company.refresh_from_db(fields=_REREAD_FIELDS)
        return 1

    _retrying(read, seconds=app_settings.LOCK_TIMEOUT / 2, what="re-reading", company_pk=company.pk)


def _take_lease(company: ConnectedCompany, lock_id: str, force: bool, grace: float) -> bool:
    """Take a free lease; or one whose holder stopped renewing it (dead, frozen), in two steps."""
    manager = ConnectedCompany.objects
    lease = app_settings.LOCK_TIMEOUT
    version = company.token_version

    def take() -> int:
        if manager.take_lease(company.pk, version=version, lock_id=lock_id, lease=lease, force=force):
            return 1
        holder = company.refresh_lock_id
        if not holder or holder == lock_id:
            return 0
        # Both statements are writes: a database that refuses us now cannot start the grace
        # period, so a refresher it held up gets the first chance to store once it is back.
        manager.mark_expired_lease(company.pk, version=version, holder=holder)
        return manager.take_over_lease(
            company.pk, version=version, holder=holder, lock_id=lock_id, lease=lease, grace=grace
        )

    return bool(_retrying(take, seconds=lease / 2, what="taking the refresh lock", company_pk=company.pk))


@sensitive_variables()
def _refresh_locked(company: ConnectedCompany, lock_id: str, waited: bool) -> RefreshResult:
    """We hold the lease: ask the token endpoint once, then store what it said."""
    with leases.keep(lock_id):
        try:
            tokens = _request_new_tokens(company)
        except InvalidGrant as err:
            return _fail_for_good(company, err, err.message, lock_id=lock_id)
        except InvalidClient as err:
            return _client_refused(company, err, lock_id)
        except TokenEndpointError as err:
            if getattr(err, "maybe_spent", False) and company.client.get_provider().rotates_refresh_tokens:
                return _record_uncertain(company, err, lock_id)
            return _fail_for_now(company, err, lock_id)
        except BaseException:
            ConnectedCompany.objects.release_lease(company.pk, lock_id=lock_id)
            raise
        # Persist first: the old refresh token is spent, the new one exists nowhere else. The lease
        # is kept alive while storing is retried.
        stored = _store(company, tokens, lock_id)
    if not stored:
        company.refresh_from_db(fields=_REREAD_FIELDS)
        return RefreshResult(company, FRESH, waited=True)
    if tokens.unusable_access_token:
        return _access_token_unusable(company)
    return _refreshed(company, tokens, waited)


def _access_token_unusable(company: ConnectedCompany) -> RefreshResult:
    """The answer rotated the refresh token (kept) but its access token is not a token."""
    err = TransientTokenError(
        "The token endpoint's answer had a new refresh token (kept) but no usable access token; "
        "the next call refreshes again."
    )
    logger.warning("Company %s: %s", company.pk, err.message)
    _event(
        company,
        TokenEvent.Kind.REFRESH_FAILED,
        err.message,
        {"refresh_token": company.refresh_token_fingerprint},
    )
    signals.send(signals.token_refresh_failed, company=company, error=err, attempt=1)
    return RefreshResult(company, FAILED, error=err)


@sensitive_variables()
def _request_new_tokens(company: ConnectedCompany) -> Any:
    client = company.client
    return oauth.refresh_tokens(
        client.get_provider(),
        url=client.token_endpoint(company.url_context()),
        client_id=client.client_id,
        client_secret=client.client_secret,
        refresh_token=company.refresh_token,
        scopes=client.scopes,
    )


@sensitive_variables()
def _new_values(company: ConnectedCompany, tokens: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token or company.refresh_token,
        token_type=tokens.token_type,
        expires_at=tokens.expires_at,
        refresh_expires_at=tokens.refresh_expires_at or company.refresh_expires_at,
    )
    if tokens.scope:
        values["granted_scopes"] = tokens.scope
    details = _details_after_refresh(company, tokens)
    if details is not None:
        values["details"] = details
    return values


@sensitive_variables()
def _store(company: ConnectedCompany, tokens: Any, lock_id: str) -> bool:
    """Store the new tokens; False when a newer outcome won meanwhile (nothing was overwritten)."""
    values = _new_values(company, tokens)
    manager = ConnectedCompany.objects
    persist_for = app_settings.REFRESH_MAX_DURATION
    try:
        if _retrying(
            lambda: manager.store_refreshed(company.pk, lock_id=lock_id, values=values),
            seconds=persist_for,
            what="storing new tokens",
            company_pk=company.pk,
        ):
            _apply(company, values)
            return True
        # Our lease ended (the process was frozen, or the database refused us for longer than the
        # lease). Keep the tokens only if nothing happened since: a newer outcome always wins.
        logger.error("Refresh lock of company %s was lost before its new tokens were stored", company.pk)
        if _retrying(
            lambda: manager.store_refreshed_late(company.pk, version=company.token_version, values=values),
            seconds=persist_for,
            what="storing new tokens",
            company_pk=company.pk,
        ):
            _apply(company, values)
            return True
    except DatabaseError:
        logger.critical(
            "New tokens of company %s could not be stored (new refresh token %s); "
            "the merchant may have to connect again",
            company.pk,
            fingerprint(values["refresh_token"]),
        )
        raise
    logger.error(
        "Company %s changed during its refresh (another outcome was stored); the refreshed tokens "
        "were not kept",
        company.pk,
    )
    return False


@sensitive_variables()
def _apply(company: ConnectedCompany, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(company, name, value)
    company.status = ConnectedCompany.Status.ACTIVE
    company.failure_count = 0
    company.last_error = ""
    company.next_attempt_at = None
    company.token_version += 1
    company.last_refreshed_at = timezone.now()
    company.refresh_lock_id = ""
    company.refresh_lock_until = None


def _refreshed(company: ConnectedCompany, tokens: Any, waited: bool) -> RefreshResult:
    logger.info("Refreshed company %s (client %s)", company.pk, company.client.slug)
    # The tokens are stored: nothing below may turn this into a failure.
    _event(
        company,
        TokenEvent.Kind.REFRESHED,
        "Tokens refreshed.",
        {
            "access_token": company.access_token_fingerprint,
            "refresh_token": company.refresh_token_fingerprint,
            "rotated": tokens.refresh_token is not None,
            "expires_at": company.expires_at.isoformat() if company.expires_at else None,
        },
    )
    signals.send(signals.token_refreshed, company=company)
    if company.client.credentials_refused_at:
        company.client.clear_credentials_refusal()  # a forced refresh went through: it works again
    return RefreshResult(company, REFRESHED, waited=waited)


def _details_after_refresh(company: ConnectedCompany, tokens: Any) -> dict[str, Any] | None:
    """New details when the token answer renamed the store (a Retail X-Series domain prefix)."""
    current = (company.details or {}).get("domain_prefix")
    renamed = tokens.extra.get("domain_prefix")
    if not current or not isinstance(renamed, str) or renamed == current:
        return None
    if not URL_PLACEHOLDER_VALUE.match(renamed):
        return None
    logger.info("Company %s: the store's domain prefix changed", company.pk)
    return {**company.details, "domain_prefix": renamed}


def _client_refused_error(client: ApiClient) -> InvalidClient:
    return InvalidClient(
        f"The API client {client.slug!r} was refused by Lightspeed ({client.credentials_error}); "
        "its companies are not refreshed until the client is fixed in the admin.",
        error="invalid_client",
    )


def _client_refused(company: ConnectedCompany, err: InvalidClient, lock_id: str) -> RefreshResult:
    """The client's credentials were refused: record it on the client, keep the company as it is."""
    client = company.client
    now = timezone.now()
    ConnectedCompany.objects.release_lease(company.pk, lock_id=lock_id, last_error=err.message)
    ApiClient.objects.filter(pk=client.pk).update(credentials_refused_at=now, credentials_error=err.message)
    client.credentials_error = err.message  # before the time: other threads test the time
    client.credentials_refused_at = now
    company.last_error = err.message
    logger.error("API client %s: Lightspeed refused its credentials: %s", client.slug, err.message)
    _event(
        company,
        TokenEvent.Kind.REFRESH_FAILED,
        err.message,
        {"error": err.error, "status_code": err.status_code, "client_refused": True},
    )
    signals.send(signals.client_credentials_refused, client=client, company=company, error=err)
    return RefreshResult(company, FAILED, error=err)


def _record_uncertain(company: ConnectedCompany, err: TokenEndpointError, lock_id: str) -> RefreshResult:
    message = (
        f"{err.message} The request may have reached Lightspeed, which then rotated the refresh "
        "token: not retried automatically. Use Refresh now once; if Lightspeed answers that the "
        "grant is invalid, the merchant must connect again."
    )
    if not ConnectedCompany.objects.record_uncertain(company.pk, lock_id=lock_id, message=message):
        return _lease_lost(company)
    company.status = ConnectedCompany.Status.UNCERTAIN
    company.last_error = message
    company.failure_count += 1
    logger.error("Refresh of company %s has an uncertain outcome: %s", company.pk, err.message)
    _event(
        company,
        TokenEvent.Kind.REFRESH_UNCERTAIN,
        message,
        {"error": err.error, "status_code": err.status_code},
    )
    signals.send(signals.refresh_outcome_uncertain, company=company, error=err)
    return RefreshResult(company, UNCERTAIN, error=err)


def _fail_for_good(
    company: ConnectedCompany, err: TokenEndpointError | None, message: str, lock_id: str | None = None
) -> RefreshResult:
    if not ConnectedCompany.objects.record_reauthorization(
        company.pk, version=company.token_version, lock_id=lock_id, message=message
    ):
        return _lease_lost(company)
    company.status = ConnectedCompany.Status.REAUTHORIZATION_REQUIRED
    company.last_error = message
    company.failure_count += 1
    company.next_attempt_at = None
    logger.warning("Company %s needs re-authorization: %s", company.pk, message)
    _event(
        company,
        TokenEvent.Kind.REAUTHORIZATION_REQUIRED,
        message,
        {"error": err.error if err else "", "status_code": err.status_code if err else None},
    )
    signals.send(signals.reauthorization_required, company=company, error=err)
    return RefreshResult(company, REAUTHORIZATION_REQUIRED, error=err)


def _lease_lost(company: ConnectedCompany) -> RefreshResult:
    # Another process took the company over after our lease ended; its outcome is the one that
    # counts, so report nothing and take the row as it is now.
    logger.warning("Refresh lock of company %s was taken over before its outcome was recorded", company.pk)
    company.refresh_from_db(fields=_REREAD_FIELDS)
    return RefreshResult(company, FRESH, waited=True)


def _backoff(failures: int, err: TokenEndpointError) -> float:
    base = app_settings.RETRY_BACKOFF
    delay = min(base * (2 ** max(0, failures - 1)), app_settings.RETRY_BACKOFF_MAX)
    if err.retry_after is not None:
        delay = max(delay, err.retry_after)
    return delay


def _fail_for_now(company: ConnectedCompany, err: TokenEndpointError, lock_id: str) -> RefreshResult:
    failures = company.failure_count + 1
    delay = _backoff(failures, err)
    if not ConnectedCompany.objects.record_transient_failure(
        company.pk, lock_id=lock_id, message=err.message, retry_in=delay
    ):
        return _lease_lost(company)
    company.status = ConnectedCompany.Status.FAILING
    company.failure_count = failures
    company.last_error = err.message
    company.next_attempt_at = timezone.now() + timedelta(seconds=delay)  # approximate: the row has it
    logger.warning("Refresh of company %s failed (attempt %s): %s", company.pk, failures, err.message)
    _event(
        company,
        TokenEvent.Kind.REFRESH_FAILED,
        err.message,
        {"error": err.error, "status_code": err.status_code, "attempt": failures, "retry_in": delay},
    )
    signals.send(signals.token_refresh_failed, company=company, error=err, attempt=failures)
    return RefreshResult(company, FAILED, error=err)


#: The user on whose behalf token events are recorded in this context (the admin's "Refresh now").
acting_user: ContextVar[Any] = ContextVar("lightspeed_oauth_acting_user", default=None)


@contextmanager
def acting_as(user: Any) -> Iterator[None]:
    """Record the token events of the block as triggered by ``user`` (e.g. a staff member)."""
    token = acting_user.set(user)
    try:
        yield
    finally:
        acting_user.reset(token)


def _event(company: ConnectedCompany, kind: str, message: str, details: dict[str, Any], actor=None) -> None:
    """Append to the company's history; the history must never fail what it records."""
    actor = actor if actor is not None else acting_user.get()
    batch = _event_batch.get()
    if batch is not None:
        batch.add(TokenEvent(company_id=company.pk, kind=kind, message=message, details=details, actor=actor))
        return
    try:
        TokenEvent.objects.record(
            company_id=company.pk, kind=kind, message=message, details=details, actor=actor
        )
    except DatabaseError:
        logger.exception("Could not record a %s event for company %s", kind, company.pk)


class EventBatch:
    """Token events written ``size`` at a time, in one INSERT, rather than one INSERT each.

    A sweep with several workers collects the events of its refreshes here (see
    :meth:`collecting`): a query less per refresh. Collected events are written when ``size`` of
    them are waiting, or when the oldest has waited :data:`EVENT_FLUSH_INTERVAL` seconds (checked
    as events come in, and by the sweep while it hands out work and waits for its workers), and
    when the sweep ends (:meth:`close`; an event that comes later is written at once). The tokens
    are stored before their event is collected, as before; a process killed outright loses the
    events of its last half second or so, never tokens. Where ``pre_save`` or ``post_save``
    receivers listen for token events, each is saved on its own, so that they hear of it.
    """

    def __init__(self, size: int = 100) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._pending: list[TokenEvent] = []
        self._since = 0.0  # monotonic time the oldest pending event was added
        self._closed = False

    def add(self, event: TokenEvent) -> None:
        listened = model_signals.pre_save.has_listeners(TokenEvent) or model_signals.post_save.has_listeners(
            TokenEvent
        )
        due = False
        with self._lock:
            collect = not (listened or self._closed)
            if collect:
                if not self._pending:
                    self._since = time.monotonic()
                self._pending.append(event)
                due = len(self._pending) >= self.size or self._waited(EVENT_FLUSH_INTERVAL)
        if not collect:
            _save_each([event])
        elif due:
            self.flush()

    def _waited(self, seconds: float) -> bool:
        return bool(self._pending) and time.monotonic() - self._since >= seconds

    def flush(self, older_than: float | None = None) -> None:
        """Write the events collected so far; with ``older_than``, only if the oldest of them has
        waited that many seconds."""
        with self._lock:
            if older_than is not None and not self._waited(older_than):
                return
            events, self._pending = self._pending, []
        if events:
            _write_events(events)

    def close(self) -> None:
        """Write what was collected; events added after this are written at once."""
        with self._lock:
            self._closed = True
        self.flush()

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Collect the token events this thread records in the block, instead of writing each."""
        token = _event_batch.set(self)
        try:
            yield
        finally:
            _event_batch.reset(token)


def _write_events(events: list[TokenEvent]) -> None:
    """One INSERT for ``events``; if it fails, each on its own (a company deleted since its
    refresh, a busy database), so that one bad event does not take the others with it."""
    try:
        TokenEvent.objects.bulk_create(events)
    except Exception as err:  # the history must never fail what it records
        logger.warning(
            "Could not record %s token events at once (%s); one by one", len(events), type(err).__name__
        )
        connection = connections[router.db_for_write(TokenEvent)]
        if not connection.in_atomic_block:
            connection.close()  # a broken connection is replaced
        _save_each(events)


def _save_each(events: list[TokenEvent]) -> None:
    """Save each event on its own (``post_save`` receivers hear of it); one that cannot be
    written does not stop the others."""
    for event in events:
        event.pk, event._state.adding = None, True  # a failed bulk INSERT may have numbered it
        try:
            event.save(force_insert=True)
        except Exception:
            logger.exception("Could not record a %s event for company %s", event.kind, event.company_id)


#: Seconds a sweep waiting for its workers lets collected events wait before it writes them.
EVENT_FLUSH_INTERVAL = 0.5
#: Where this context's token events go instead of one INSERT each (see EventBatch.collecting).
_event_batch: ContextVar[EventBatch | None] = ContextVar("lightspeed_oauth_event_batch", default=None)


def get_access_token(company: ConnectedCompany) -> str:
    """See :meth:`ConnectedCompany.get_access_token`."""
    status = company.status
    if status == ConnectedCompany.Status.DISCONNECTED:
        raise CompanyDisconnected(f"Company {company.company_id} is disconnected.")
    if status == ConnectedCompany.Status.REAUTHORIZATION_REQUIRED:
        raise ReauthorizationRequired(f"Company {company.company_id} must authorize the API client again.")
    if company.access_token and not company.needs_refresh():
        return company.access_token  # the hot path: no query, no write
    version = company.token_version
    result = refresh(company)
    if result.outcome == REAUTHORIZATION_REQUIRED:
        raise ReauthorizationRequired(f"Company {company.company_id} must authorize the API client again.")
    if company.access_token and (company.token_version != version or not company.is_expired()):
        # Just stored (by us or by the process we waited for), or still valid.
        return company.access_token
    if result.outcome == UNCERTAIN:
        raise RefreshFailed(
            f"The access token of company {company.company_id} has expired and the outcome of its "
            "last refresh is uncertain (the answer was lost); staff must use Refresh now: "
            f"{company.last_error}"
        )
    raise RefreshFailed(
        f"The access token of company {company.company_id} has expired and could not be "
        f"refreshed: {company.last_error or 'unknown error'}"
    )


def disconnect(company: ConnectedCompany, *, user=None, message: str = "") -> None:
    """Erase the company's tokens (the history stays) and send ``company_disconnected``."""
    ConnectedCompany.objects.disconnect(company.pk)
    company.refresh_from_db(fields=_REREAD_FIELDS)
    _event(company, TokenEvent.Kind.DISCONNECTED, message or "Disconnected; tokens erased.", {}, actor=user)
    signals.send(signals.company_disconnected, company=company, user=user)


#: requests.Session.request's parameters after method and url, in order.
_REQUEST_OPTIONS = (
    "params",
    "data",
    "headers",
    "cookies",
    "files",
    "auth",
    "timeout",
    "allow_redirects",
    "proxies",
    "hooks",
    "stream",
    "verify",
    "cert",
    "json",
)


class CompanySession(requests.Session):
    """A session for one company's Lightspeed API.

    Relative URLs are joined to the provider's API base URL for the client's environment; every
    request carries a fresh bearer token; a 401 triggers one forced refresh and one retry.
    """

    def __init__(self, company: ConnectedCompany) -> None:
        super().__init__()
        self.company = company
        client = company.client
        self.base_url = client.get_provider().api_url(client.environment, company.url_context())
        self.headers["User-Agent"] = oauth.USER_AGENT
        self.headers["Accept"] = "application/json"
        self.default_timeout = oauth._timeout()

    def resolve(self, url: str) -> str:
        """The absolute URL for ``url``; refuses another host, which must never see the token."""
        url = str(url)
        if "://" not in url:
            return urljoin(self.base_url.rstrip("/") + "/", url.lstrip("/"))
        if urlsplit(url)[:2] != urlsplit(self.base_url)[:2]:
            raise ValueError(
                f"api_session() sends the company's token only to {self.base_url}; "
                "use a plain requests session for other hosts."
            )
        return url

    def request(self, method, url, *args, **kwargs):
        # Options passed by position (params, data, headers...) by name, so that the headers this
        # adds never collide with the caller's.
        kwargs.update(zip(_REQUEST_OPTIONS, args, strict=False))
        args = ()
        url = self.resolve(url)
        kwargs.setdefault("timeout", self.default_timeout)
        headers = dict(kwargs.pop("headers", None) or {})
        version = self.company.token_version
        headers["Authorization"] = f"Bearer {self.company.get_access_token()}"
        response = super().request(method, url, *args, headers=headers, **kwargs)
        if response.status_code != 401:
            return response
        logger.info("API answered 401 for company %s; refreshing once", self.company.pk)
        # Force a refresh only for a company that is refreshing well: one that is failing,
        # uncertain or waiting for the merchant gets nothing from forcing, and an uncertain one
        # could spend a refresh token twice.
        if self.company.token_version == version and self.company.status == ConnectedCompany.Status.ACTIVE:
            refresh(self.company, force=True)
        headers["Authorization"] = f"Bearer {self.company.get_access_token()}"
        return super().request(method, url, *args, headers=headers, **kwargs)
