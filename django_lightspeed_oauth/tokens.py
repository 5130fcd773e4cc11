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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from django.db import DatabaseError, InterfaceError, OperationalError, connections, router
from django.db.models import F, Q
from django.utils import timezone

from . import oauth, signals
from .conf import app_settings
from .crypto import fingerprint
from .exceptions import (
    CompanyDisconnected,
    InvalidClient,
    InvalidGrant,
    ReauthorizationRequired,
    RefreshFailed,
    RefreshInProgress,
    TokenEndpointError,
)
from .models import ApiClient, ConnectedCompany, TokenEvent
from .providers import URL_PLACEHOLDER_VALUE

__all__ = ["CompanySession", "RefreshResult", "disconnect", "get_access_token", "refresh"]

logger = logging.getLogger(__name__)

REFRESHED = "refreshed"
FRESH = "fresh"
FAILED = "failed"
REAUTHORIZATION_REQUIRED = "reauthorization_required"

# What a re-read needs: everything refresh decides on, the tokens, and the client for the request.
_REREAD_FIELDS = (
    "status",
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
    outcome: str  # refreshed | fresh | failed | reauthorization_required
    error: TokenEndpointError | None = None
    waited: bool = False  # another process held the lock

    @property
    def ok(self) -> bool:
        return self.outcome in (REFRESHED, FRESH)


def _in_transaction(company: ConnectedCompany) -> bool:
    """Whether the caller holds a transaction open (the test-case wrapper does not count)."""
    alias = router.db_for_write(ConnectedCompany, instance=company)
    connection = connections[alias]
    if not connection.in_atomic_block:
        return False
    # Django marks the atomic blocks TestCase opens, as atomic(durable=True) also relies on.
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
    """Run one UPDATE, retrying on database errors (a busy SQLite file, a dropped connection).

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
            delay = min(delay * 2, 1.0)


def _refresh(company: ConnectedCompany, *, force: bool, within: float | None, wait: bool) -> RefreshResult:
    manager = ConnectedCompany.objects
    lock_timeout = float(app_settings.LOCK_TIMEOUT)
    deadline = time.monotonic() + lock_timeout + 5
    seen_version = company.token_version
    waited = False
    while True:
        if company.status == ConnectedCompany.Status.DISCONNECTED:
            raise CompanyDisconnected(f"Company {company.company_id} is disconnected.")
        if company.status == ConnectedCompany.Status.REAUTHORIZATION_REQUIRED:
            return RefreshResult(company, REAUTHORIZATION_REQUIRED, waited=waited)
        if waited and company.token_version != seen_version:
            # Another process refreshed (or reconnected) while we waited: use its token.
            return RefreshResult(company, FRESH, waited=True)
        if not force and not company.needs_refresh(within):
            return RefreshResult(company, FRESH, waited=waited)
        if not company.refresh_token:
            return _fail_for_good(company, None, "The company has no refresh token.")
        now = timezone.now()
        if not force and company.next_attempt_at and company.next_attempt_at > now:
            # Backing off after a failure (maybe a Retry-After): do not ask the server again yet.
            return RefreshResult(company, FAILED, waited=waited)
        if not force and company.client.credentials_refused_at:
            # The client's own credentials were refused: asking again with them would be refused
            # too. The company's tokens stay as they are until staff fix the client.
            return RefreshResult(company, FAILED, error=_client_refused_error(company.client), waited=waited)

        lock_id = uuid.uuid4().hex

        def take_lock() -> int:
            # The lease starts when the statement runs, not before a retry's wait.
            start = timezone.now()
            query = manager.filter(pk=company.pk, token_version=company.token_version).filter(
                _lock_free(start)
            )
            if not force:
                # The back-off is part of the condition: a failure recorded (and the lock
                # released) since we read the row must stop us too.
                query = query.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=start))
            return query.update(
                refresh_lock_id=lock_id,  # noqa: B023 (called at once, in this iteration)
                refresh_lock_until=start + timedelta(seconds=lock_timeout),
            )

        taken = _retrying(
            take_lock, seconds=lock_timeout / 2, what="taking the refresh lock", company_pk=company.pk
        )
        if taken:
            return _refresh_locked(company, lock_id, waited)

        # Someone else holds the lock, or already refreshed since we read the row.
        if waited:
            if time.monotonic() > deadline:
                raise RefreshInProgress(
                    f"Company {company.company_id} is being refreshed by another process that "
                    "did not finish in time."
                )
            time.sleep(0.05 + random.random() * 0.1)
        waited = True
        company.refresh_from_db(fields=_REREAD_FIELDS)
        if not wait and company.token_version == seen_version:
            return RefreshResult(company, FRESH, waited=True)


def _lock_free(now) -> Q:
    return Q(refresh_lock_id="") | Q(refresh_lock_until__lt=now) | Q(refresh_lock_until=None)


def _refresh_locked(company: ConnectedCompany, lock_id: str, waited: bool) -> RefreshResult:
    client = company.client
    manager = ConnectedCompany.objects
    mine = manager.filter(pk=company.pk, refresh_lock_id=lock_id)
    try:
        provider = client.get_provider()
        url = client.token_endpoint(company.url_context())
        tokens = oauth.refresh_tokens(
            provider,
            url=url,
            client_id=client.client_id,
            client_secret=client.client_secret,
            refresh_token=company.refresh_token,
            scopes=client.scopes,
        )
    except InvalidGrant as err:
        return _fail_for_good(company, err, err.message, lock_id=lock_id)
    except InvalidClient as err:
        return _client_refused(company, err, lock_id)
    except TokenEndpointError as err:
        return _fail_for_now(company, err, lock_id)
    except BaseException:
        mine.update(refresh_lock_id="", refresh_lock_until=None)
        raise

    # Persist first: the old refresh token is spent, the new one exists nowhere else.
    now = timezone.now()
    new_refresh = tokens.refresh_token or company.refresh_token
    values = dict(
        access_token=tokens.access_token,
        refresh_token=new_refresh,
        token_type=tokens.token_type,
        expires_at=tokens.expires_at,
        refresh_expires_at=tokens.refresh_expires_at or company.refresh_expires_at,
        last_refreshed_at=now,
        status=ConnectedCompany.Status.ACTIVE,
        failure_count=0,
        last_error="",
        next_attempt_at=None,
        token_version=F("token_version") + 1,
        refresh_lock_id="",
        refresh_lock_until=None,
        updated_at=now,
    )
    if tokens.scope:
        values["granted_scopes"] = tokens.scope
    details = _details_after_refresh(company, tokens)
    if details is not None:
        values["details"] = details
    persist_for = max(30.0, 2 * float(app_settings.LOCK_TIMEOUT))
    try:
        stored = _retrying(
            lambda: mine.update(**values),
            seconds=persist_for,
            what="storing new tokens",
            company_pk=company.pk,
        )
        if not stored:
            # Our lease ran out (a token request slower than LOCK_TIMEOUT) and another process
            # took the lock. Keep the new tokens if nobody changed the tokens since we read them
            # (they are then the only valid ones); a disconnect or a new grant meanwhile wins.
            logger.error(
                "Refresh lock of company %s expired before its refresh finished; "
                "raise LIGHTSPEED_OAUTH['LOCK_TIMEOUT']",
                company.pk,
            )
            unchanged = manager.filter(pk=company.pk, token_version=company.token_version)
            if not _retrying(
                lambda: unchanged.update(**values),
                seconds=persist_for,
                what="storing new tokens",
                company_pk=company.pk,
            ):
                logger.error(
                    "Company %s was disconnected or connected again during its "
                    "refresh; the refreshed tokens were not kept",
                    company.pk,
                )
                company.refresh_from_db(fields=_REREAD_FIELDS)
                return RefreshResult(company, FRESH, waited=True)
    except DatabaseError:
        logger.critical(
            "New tokens of company %s could not be stored (new refresh token %s); "
            "the merchant may have to connect again",
            company.pk,
            fingerprint(new_refresh),
        )
        raise
    rotated = tokens.refresh_token is not None and tokens.refresh_token != company.refresh_token
    for name, value in values.items():
        if name != "token_version":
            setattr(company, name, value)
    company.token_version += 1
    logger.info("Refreshed company %s (client %s)", company.pk, client.slug)
    # The tokens are stored: nothing below may turn this into a failure.
    _event(
        company,
        TokenEvent.Kind.REFRESHED,
        "Tokens refreshed.",
        {
            "access_token": company.access_token_fingerprint,
            "refresh_token": company.refresh_token_fingerprint,
            "rotated": rotated,
            "expires_at": company.expires_at.isoformat() if company.expires_at else None,
        },
    )
    signals.send(signals.token_refreshed, company=company)
    if client.credentials_refused_at:
        client.clear_credentials_refusal()  # a forced refresh went through: the client works again
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
    ConnectedCompany.objects.filter(pk=company.pk, refresh_lock_id=lock_id).update(
        refresh_lock_id="", refresh_lock_until=None, last_error=err.message, updated_at=now
    )
    ApiClient.objects.filter(pk=client.pk).update(credentials_refused_at=now, credentials_error=err.message)
    client.credentials_refused_at = now
    client.credentials_error = err.message
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


def _fail_for_good(
    company: ConnectedCompany, err: TokenEndpointError | None, message: str, lock_id: str | None = None
) -> RefreshResult:
    now = timezone.now()
    query = ConnectedCompany.objects.filter(pk=company.pk, token_version=company.token_version)
    if lock_id:
        query = query.filter(refresh_lock_id=lock_id)
    values = dict(
        status=ConnectedCompany.Status.REAUTHORIZATION_REQUIRED,
        last_error=message,
        failure_count=F("failure_count") + 1,
        next_attempt_at=None,
        refresh_lock_id="",
        refresh_lock_until=None,
        updated_at=now,
    )
    if not query.update(**values):
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
    logger.warning("Refresh lock of company %s was taken over before its failure was recorded", company.pk)
    company.refresh_from_db(fields=_REREAD_FIELDS)
    return RefreshResult(company, FRESH, waited=True)


def _backoff(failures: int, err: TokenEndpointError) -> float:
    base = float(app_settings.RETRY_BACKOFF)
    delay = min(base * (2 ** max(0, failures - 1)), float(app_settings.RETRY_BACKOFF_MAX))
    if err.retry_after is not None:
        delay = max(delay, err.retry_after)
    return delay


def _fail_for_now(company: ConnectedCompany, err: TokenEndpointError, lock_id: str) -> RefreshResult:
    now = timezone.now()
    failures = company.failure_count + 1
    next_attempt = now + timedelta(seconds=_backoff(failures, err))
    if not ConnectedCompany.objects.filter(pk=company.pk, refresh_lock_id=lock_id).update(
        status=ConnectedCompany.Status.FAILING,
        failure_count=failures,
        last_error=err.message,
        next_attempt_at=next_attempt,
        refresh_lock_id="",
        refresh_lock_until=None,
        updated_at=now,
    ):
        return _lease_lost(company)
    company.status = ConnectedCompany.Status.FAILING
    company.failure_count = failures
    company.last_error = err.message
    company.next_attempt_at = next_attempt
    logger.warning("Refresh of company %s failed (attempt %s): %s", company.pk, failures, err.message)
    _event(
        company,
        TokenEvent.Kind.REFRESH_FAILED,
        err.message,
        {
            "error": err.error,
            "status_code": err.status_code,
            "attempt": failures,
            "next_attempt_at": next_attempt.isoformat(),
        },
    )
    signals.send(signals.token_refresh_failed, company=company, error=err, attempt=failures)
    return RefreshResult(company, FAILED, error=err)


def _event(company: ConnectedCompany, kind: str, message: str, details: dict[str, Any], actor=None) -> None:
    """Append to the company's history; the history must never fail what it records."""
    try:
        TokenEvent.objects.create(company=company, kind=kind, message=message, details=details, actor=actor)
    except DatabaseError:
        logger.exception("Could not record a %s event for company %s", kind, company.pk)


def get_access_token(company: ConnectedCompany) -> str:
    """See :meth:`ConnectedCompany.get_access_token`."""
    status = company.status
    if status == ConnectedCompany.Status.DISCONNECTED:
        raise CompanyDisconnected(f"Company {company.company_id} is disconnected.")
    if status == ConnectedCompany.Status.REAUTHORIZATION_REQUIRED:
        raise ReauthorizationRequired(f"Company {company.company_id} must authorize the API client again.")
    if company.access_token and not company.needs_refresh():
        return company.access_token  # the hot path: no query, no write
    result = refresh(company)
    if result.outcome == REAUTHORIZATION_REQUIRED:
        raise ReauthorizationRequired(f"Company {company.company_id} must authorize the API client again.")
    if company.access_token and not company.is_expired():
        return company.access_token
    raise RefreshFailed(
        f"The access token of company {company.company_id} has expired and could not be "
        f"refreshed: {company.last_error or 'unknown error'}"
    )


def disconnect(company: ConnectedCompany, *, user=None, message: str = "") -> None:
    """Erase the company's tokens (the history stays) and send ``company_disconnected``."""
    now = timezone.now()
    ConnectedCompany.objects.filter(pk=company.pk).update(
        status=ConnectedCompany.Status.DISCONNECTED,
        access_token="",
        refresh_token="",
        expires_at=None,
        refresh_expires_at=None,
        token_version=F("token_version") + 1,
        next_attempt_at=None,
        refresh_lock_id="",
        refresh_lock_until=None,
        updated_at=now,
    )
    company.refresh_from_db(fields=_REREAD_FIELDS)
    _event(company, TokenEvent.Kind.DISCONNECTED, message or "Disconnected; tokens erased.", {}, actor=user)
    signals.send(signals.company_disconnected, company=company, user=user)


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

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        url = self.resolve(url)
        kwargs.setdefault("timeout", self.default_timeout)
        headers = dict(kwargs.pop("headers", None) or {})
        version = self.company.token_version
        headers["Authorization"] = f"Bearer {self.company.get_access_token()}"
        response = super().request(method, url, *args, headers=headers, **kwargs)
        if response.status_code != 401:
            return response
        logger.info("API answered 401 for company %s; refreshing once", self.company.pk)
        if self.company.token_version == version:
            refresh(self.company, force=True)
        headers["Authorization"] = f"Bearer {self.company.get_access_token()}"
        return super().request(method, url, *args, headers=headers, **kwargs)
