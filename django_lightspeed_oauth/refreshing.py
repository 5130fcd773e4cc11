"""Refreshing every company that is due, with a pool of workers, in constant memory.

The refresh command, the Celery tasks and the benchmark all call :func:`refresh_due` (a Celery
batch through :func:`refresh_batch`). Several copies may run at once, in several processes and on
several machines: each company's lease lock (see :mod:`.tokens`) makes sure only one of them
refreshes it; the others count it as fine ("busy").

So that copies do not all walk the same companies, a sweep works through *batches* it claims
(:func:`claim_batch`): up to ``SWEEP_BATCH_SIZE`` due companies that no other sweep holds, marked
with the sweep's claim id until a time set by the database's clock. A live sweep renews its claims
(:mod:`.leases`) and lets go of each batch when it is done (:func:`release_batch`); the claims of a
sweep that dies run out within ``SWEEP_CLAIM_LIFETIME`` and the next sweep takes those companies.
On PostgreSQL and MariaDB 10.6+ (MySQL 8) competing claims skip each other's rows (``SELECT ... FOR
UPDATE SKIP LOCKED``); on SQLite the claim is one ``UPDATE``, which the database runs one at a time.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Protocol

from django.db import DatabaseError, InterfaceError, OperationalError, connections, router, transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from . import leases
from .conf import app_settings
from .exceptions import LightspeedOAuthError
from .models import BATCH_LOCK_PREFIX_LENGTH, ApiClient, ConnectedCompany, batch_lock_id
from .tokens import (
    EVENT_FLUSH_INTERVAL,
    FAILED,
    FRESH,
    REAUTHORIZATION_REQUIRED,
    REFRESHED,
    UNCERTAIN,
    EventBatch,
    RefreshResult,
    batch_lease_limit,
    in_callers_transaction,
    refresh,
    refresh_leased,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_REAUTHORIZATION",
    "Batch",
    "CompanyResult",
    "Summary",
    "claim_batch",
    "claimed_companies",
    "due_companies",
    "refresh_batch",
    "refresh_due",
    "release_batch",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REAUTHORIZATION = 2
CHUNK_SIZE = 500
#: Seconds a claim refused by the database (a busy SQLite file, a dropped connection) is retried.
CLAIM_RETRY_WINDOW = 30
BUSY = "busy"
ERROR = "error"


@dataclass
class CompanyResult:
    """One line of a run: which company, what happened, and why if it went wrong."""

    pk: int
    company_id: str
    client: str
    outcome: str  # refreshed | fresh | busy | failed | uncertain | reauthorization_required | error | due
    message: str = ""
    lock_attempts: int = 0  # conditional UPDATEs made to take the company's lease


@dataclass
class Summary:
    """Counts of one run of :func:`refresh_due`."""

    considered: int = 0
    refreshed: int = 0
    fresh: int = 0
    busy: int = 0
    failed: int = 0
    uncertain: int = 0
    reauthorization_required: int = 0
    #: attempts to take a company's lease (one per company when sweeps do not collide)
    lock_attempts: int = 0
    #: batches this run claimed
    batches: int = 0
    dry_run: bool = False
    problems: list[CompanyResult] = field(default_factory=list)

    def add(self, result: CompanyResult) -> None:
        self.considered += 1
        self.lock_attempts += result.lock_attempts
        if result.outcome == REFRESHED:
            self.refreshed += 1
        elif result.outcome == FRESH:
            self.fresh += 1
        elif result.outcome == BUSY:
            self.busy += 1
        elif result.outcome == REAUTHORIZATION_REQUIRED:
            self.reauthorization_required += 1
            self.problems.append(result)
        elif result.outcome in (FAILED, ERROR):
            self.failed += 1
            self.problems.append(result)
        elif result.outcome == UNCERTAIN:
            self.uncertain += 1
            self.problems.append(result)

    def merge(self, other: Summary) -> None:
        """Add the counts of another run (another process of the same sweep)."""
        for name in (
            "considered",
            "refreshed",
            "fresh",
            "busy",
            "failed",
            "uncertain",
            "reauthorization_required",
            "lock_attempts",
            "batches",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.problems.extend(other.problems)

    @property
    def exit_code(self) -> int:
        if self.reauthorization_required:
            return EXIT_REAUTHORIZATION
        if self.failed or self.uncertain:
            return EXIT_FAILED
        return EXIT_OK

    def as_dict(self) -> dict:
        return {
            "considered": self.considered,
            "refreshed": self.refreshed,
            "fresh": self.fresh,
            "busy": self.busy,
            "failed": self.failed,
            "uncertain": self.uncertain,
            "reauthorization_required": self.reauthorization_required,
            "lock_attempts": self.lock_attempts,
            "batches": self.batches,
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "problems": [
                {
                    "company": p.pk,
                    "company_id": p.company_id,
                    "client": p.client,
                    "outcome": p.outcome,
                    "message": p.message,
                }
                for p in self.problems
            ],
        }


def due_companies(
    *,
    within: float | None = None,
    clients: Iterable[str] = (),
    company_ids: Iterable[str] = (),
    force: bool = False,
    pks: Iterable[int] | None = None,
) -> QuerySet:
    """Companies to refresh: expiring within ``within`` seconds and not backing off.

    With ``force``: every active or failing company in the filters, whatever its expiry. ``pks``
    (primary keys) keeps only those companies, when they are still due.
    """
    query = _due_filter(
        ConnectedCompany.objects.filter(client__is_active=True),
        within=within,
        company_ids=company_ids,
        force=force,
    )
    clients = list(clients)
    if clients:
        query = query.filter(client__slug__in=clients)
    if pks is not None:
        query = query.filter(pk__in=list(pks))
    return query


def _due_filter(
    query: QuerySet, *, within: float | None, company_ids: Iterable[str], force: bool
) -> QuerySet:
    now = timezone.now()
    within = app_settings.REFRESH_WITHIN if within is None else float(within)
    query = query.filter(status__in=[ConnectedCompany.Status.ACTIVE, ConnectedCompany.Status.FAILING])
    if not force:
        # The database's clock decides the back-off, as it does in the lease.
        query = query.filter(expires_at__lte=now + timedelta(seconds=within)).filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=Now())
        )
    ids = list(company_ids)
    if ids:
        match = Q(company_id__in=ids)
        numeric = [int(i) for i in ids if str(i).isdigit()]
        if numeric:
            match |= Q(pk__in=numeric)
        query = query.filter(match)
    return query


def _stream(query: QuerySet) -> Iterator[ConnectedCompany]:
    # Keyset pages rather than one open cursor: an open read cursor would hold SQLite's shared lock
    # and stop the workers from writing, and pages keep memory flat however many companies there are.
    last = 0
    while True:
        page = list(query.select_related("client").filter(pk__gt=last).order_by("pk")[:CHUNK_SIZE])
        if not page:
            return
        yield from page
        last = page[-1].pk


# Batches ------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """A sweep's claim on some due companies; ``claim_id`` marks them in the database."""

    claim_id: str
    pks: list[int]

    def __bool__(self) -> bool:
        return bool(self.pks)


def _claimable(
    *,
    within: float | None,
    clients: Iterable[str],
    company_ids: Iterable[str],
    force: bool,
    after: int,
    pks: Iterable[int] | None,
    client_pks: list[int] | None = None,
) -> QuerySet:
    """The due companies of :func:`due_companies` that no other sweep claims, with primary keys
    above ``after``; without joins, so that a locking read locks company rows
    only (a locked API client row would make competing sweeps skip all of its companies)."""
    if client_pks is None:
        client_pks = _active_client_pks(clients)
    query = ConnectedCompany.objects.all()
    if pks is not None:
        query = query.filter(pk__in=list(pks))
    return (
        _due_filter(query, within=within, company_ids=company_ids, force=force)
        .filter(client_id__in=client_pks, pk__gt=after)
        .filter(Q(sweep_claim_until__isnull=True) | Q(sweep_claim_until__lt=Now()))
        .order_by("pk")
    )


def _active_client_pks(clients: Iterable[str]) -> list[int]:
    """The API clients a sweep refreshes (read once per sweep, so that claims need no join)."""
    active = ApiClient.objects.filter(is_active=True)
    clients = list(clients)
    if clients:
        active = active.filter(slug__in=clients)
    return list(active.values_list("pk", flat=True))


def claim_batch(
    *,
    size: int | None = None,
    within: float | None = None,
    clients: Iterable[str] = (),
    company_ids: Iterable[str] = (),
    force: bool = False,
    after: int = 0,
    pks: Iterable[int] | None = None,
    renew: bool = True,
) -> Batch:
    """Claim up to ``size`` (default ``SWEEP_BATCH_SIZE``) due companies for this sweep.

    Takes the companies :func:`due_companies` selects with the same arguments, in primary key
    order from ``after`` on, that no other sweep has claimed (or whose claim ran out). Two sweeps
    claiming at once get disjoint batches. The claim lasts ``SWEEP_CLAIM_LIFETIME`` seconds by the
    database's clock; with ``renew`` this process renews it until :func:`release_batch` (a process
    that dies stops renewing, and its batch is free again within the lifetime). An empty batch
    (false) means nothing more is due after ``after``.

    A claim only spares other sweeps the work: refresh each company with
    :func:`~django_lightspeed_oauth.tokens.refresh`, whose lease is what guarantees one refresh.
    """
    batch, _ = _claim_batch(
        size=size,
        within=within,
        clients=clients,
        company_ids=company_ids,
        force=force,
        after=after,
        pks=pks,
        renew=renew,
        fetch=False,
        client_pks=None,
    )
    return batch


def _claim_batch(
    *,
    size: int | None,
    within: float | None,
    clients: Iterable[str],
    company_ids: Iterable[str],
    force: bool,
    after: int,
    pks: Iterable[int] | None,
    renew: bool,
    fetch: bool,
    client_pks: list[int] | None,
    lease_prefix: str = "",
) -> tuple[Batch, list[ConnectedCompany]]:
    """:func:`claim_batch`; with ``fetch``, the claimed companies too (with as few queries as the
    database allows); with ``lease_prefix`` (and ``fetch``), the leases of the claimed companies
    too, taken in one statement before they are read (see :class:`_Held`)."""
    size = app_settings.SWEEP_BATCH_SIZE if size is None else int(size)
    if size < 1:
        raise ValueError("size must be at least 1")
    candidates = _claimable(
        within=within,
        clients=clients,
        company_ids=company_ids,
        force=force,
        after=after,
        pks=pks,
        client_pks=client_pks,
    ).values_list("pk", flat=True)
    alias = router.db_for_write(ConnectedCompany)
    features = connections[alias].features
    manager = ConnectedCompany.objects.using(alias)

    def attempt(claim_id: str) -> tuple[list[int], list[ConnectedCompany] | None]:
        claimed = {
            "sweep_claim_id": claim_id,
            "sweep_claim_until": Now() + timedelta(seconds=app_settings.SWEEP_CLAIM_LIFETIME),
        }

        def lease() -> None:
            if lease_prefix:
                lease_for = app_settings.LOCK_TIMEOUT
                manager.lease_batch(claim_id, prefix=lease_prefix, lease=lease_for, force=force)

        return _claim(manager, candidates.using(alias), features, claimed, claim_id, size, fetch, lease)

    deadline = time.monotonic() + CLAIM_RETRY_WINDOW
    while True:
        claim_id = uuid.uuid4().hex
        try:
            claimed_pks, companies = attempt(claim_id)
            break
        except (OperationalError, InterfaceError):
            # A busy SQLite file or a dropped connection, in the claim, the leases or the read-back:
            # undo what this attempt wrote, and try again under a new claim id.
            if not connections[alias].in_atomic_block:
                connections[alias].close()
            _undo_claim(manager, claim_id, lease_prefix)
            if time.monotonic() > deadline:
                raise
            logger.warning("Database error while claiming a sweep batch; retrying")
            time.sleep(0.1)
        except BaseException:
            _undo_claim(manager, claim_id, lease_prefix)
            raise
    batch = Batch(claim_id, claimed_pks)
    if batch and renew:
        leases.hold_claim(claim_id)
    if fetch and companies is None:
        companies = claimed_companies(batch)
    return batch, _share_clients(companies or [])


def _undo_claim(manager: Any, claim_id: str, lease_prefix: str) -> None:
    """Let go of what a failed attempt to claim a batch may have written (claims and leases run
    out on their own if the database refuses this too)."""
    try:
        if lease_prefix:
            manager.release_batch_leases(claim_id, prefix=lease_prefix)
        manager.release_claim(claim_id)
    except Exception:
        logger.warning("Could not undo the failed claim %s; it will run out", claim_id)


def _share_clients(companies: list[ConnectedCompany]) -> list[ConnectedCompany]:
    """Give the companies of a batch one API client object per client, as read with the batch, so
    that its secret is decrypted once per batch rather than once per company."""
    shared: dict[int, ApiClient] = {}
    for company in companies:
        company.client = shared.setdefault(company.client_id, company.client)
    return companies


def _claim(
    manager: Any,
    candidates: QuerySet,
    features: Any,
    claimed: dict[str, Any],
    claim_id: str,
    size: int,
    fetch: bool,
    lease: Callable[[], None],
) -> tuple[list[int], list[ConnectedCompany] | None]:
    """Mark a batch; its primary keys, and its companies where reading them back gave them
    (``lease`` runs just before they are read back)."""
    alias = manager.db
    nothing: tuple[list[int], list[ConnectedCompany] | None] = ([], [] if fetch else None)
    if features.has_select_for_update_skip_locked:
        # PostgreSQL, MariaDB 10.6+, MySQL 8: rows another sweep is claiming right now are skipped,
        # not waited for; the short transaction ends before any refresh starts.
        with transaction.atomic(using=alias):
            locking = candidates.select_for_update(skip_locked=True)[:size]
            if features.allow_sliced_subqueries_with_in:
                # PostgreSQL: one statement chooses, locks and marks the batch.
                if not manager.filter(pk__in=locking).update(**claimed):
                    return nothing
            else:
                pks = list(locking)
                if not pks:
                    return nothing
                manager.filter(pk__in=pks).update(**claimed)
                if not fetch:
                    return pks, None
    elif features.allow_sliced_subqueries_with_in:
        # SQLite: one statement chooses and marks the batch; SQLite runs writes one at a time.
        if not manager.filter(pk__in=candidates[:size]).update(**claimed):
            return nothing
    else:
        # Older MySQL/MariaDB: the claim is conditional on the batch still being free.
        chosen = list(candidates[:size])
        free = Q(sweep_claim_until__isnull=True) | Q(sweep_claim_until__lt=Now())
        if not chosen or not manager.filter(pk__in=chosen).filter(free).update(**claimed):
            return nothing
    mine = manager.filter(sweep_claim_id=claim_id).order_by("pk")
    if fetch:
        lease()
        # The read-back that says what was claimed brings the companies along (and which of them
        # were leased).
        companies = list(mine.select_related("client"))
        return [company.pk for company in companies], companies
    return list(mine.values_list("pk", flat=True)), None


def claimed_companies(batch: Batch) -> list[ConnectedCompany]:
    """The companies of ``batch`` still claimed by it, with their API clients, in primary key order."""
    if not batch:
        return []
    return list(
        ConnectedCompany.objects.select_related("client")
        .filter(sweep_claim_id=batch.claim_id, pk__in=batch.pks)
        .order_by("pk")
    )


def release_batch(batch: Batch | str) -> None:
    """Let go of a batch (a :class:`Batch` or its claim id): stop renewing it, clear its claim."""
    claim_id = batch if isinstance(batch, str) else batch.claim_id
    leases.drop_claim(claim_id)
    ConnectedCompany.objects.release_claim(claim_id)


class _Held:
    """A claimed batch being worked on: released when its last company is done.

    The sweep leases the batch's companies when it claims them, in one statement
    (:meth:`~.models.ConnectedCompanyQuerySet.lease_batch`) rather than one per company. A worker
    refreshes a company it leased (still ``pending``: no worker started it) under that lease
    (:func:`.tokens.refresh_leased`), any other through :func:`.tokens.refresh`, which takes its
    own. Pending leases are kept young by :func:`_keep_batch_leases`, or let go.
    """

    def __init__(
        self,
        batch: Batch,
        size: int,
        open_batches: set[_Held],
        guard: threading.Lock,
        prefix: str = "",
        leased_at: float = 0.0,
    ) -> None:
        self.batch = batch
        self.left = size
        self.open_batches = open_batches
        self.guard = guard
        #: the lock id prefix of the batch's leases ("" when none were taken)
        self.prefix = prefix
        #: time.monotonic() just before the pending leases were taken or last extended
        self.leased_at = leased_at
        #: time.monotonic() just before they were taken
        self.first_leased_at = leased_at
        #: companies (primary keys) leased by the batch that no worker has started
        self.pending: set[int] = set()

    def note_leases(self, companies: list[ConnectedCompany]) -> None:
        """Remember which of the companies read back carry this batch's lease."""
        if self.prefix:
            self.pending = {c.pk for c in companies if c.refresh_lock_id == batch_lock_id(self.prefix, c.pk)}

    def start(self, company: ConnectedCompany) -> tuple[str, float] | None:
        """A worker takes ``company``: (lock id, time taken) of its pending lease, or None (none
        was taken, or it was let go)."""
        with self.guard:
            if company.pk not in self.pending:
                return None
            self.pending.discard(company.pk)
            return batch_lock_id(self.prefix, company.pk), self.leased_at

    def give_up(self) -> list[str]:
        """Take the pending leases away from the workers, so that they may be let go: a worker that
        starts one of these companies from now on takes its own lease. Returns their lock ids."""
        with self.guard:
            gone = sorted(self.pending)
            self.pending.clear()
        return [batch_lock_id(self.prefix, pk) for pk in gone]

    def done(self) -> None:
        with self.guard:
            self.left -= 1
            if self.left > 0 or self not in self.open_batches:
                return
            self.open_batches.discard(self)
        _release_quietly(self.batch)


def _keep_batch_leases(batches: Iterable[_Held], limit: float, hold_for: float) -> None:
    """Keep the pending leases of ``batches`` usable (younger than ``limit``, see
    :func:`.tokens.batch_lease_limit`): once half that old, extend them in one statement; let
    them go instead when one of them is no longer live (its claim and lease ran out, another
    refresher took it over), when the feeder came too late, or after ``hold_for`` seconds, so
    that a slow batch does not hold companies nobody has started. Their workers then take their
    own leases."""
    manager = ConnectedCompany.objects
    for held in batches:
        # The guard is held throughout, so that no worker starts one of these companies meanwhile:
        # each lease listed is then either extended with the others or let go before any is used.
        with held.guard:
            now = time.monotonic()
            lock_ids = [batch_lock_id(held.prefix, pk) for pk in sorted(held.pending)]
            if not lock_ids or now - held.leased_at < limit / 2:
                continue
            keep = now - held.leased_at < limit and now - held.first_leased_at < hold_for
            before = time.monotonic()
            try:
                lease = app_settings.LOCK_TIMEOUT
                if keep and manager.extend_live_leases(lock_ids, lease=lease) == len(lock_ids):
                    held.leased_at = before
                    continue
                held.pending.clear()
                manager.release_leases(lock_ids)
            except DatabaseError:
                # Not extended: the workers find them old and take their own; unreleased ones
                # run out. A broken connection is replaced at the next statement.
                logger.warning("Could not keep the leases of sweep batch %s", held.batch.claim_id)
                connection = connections[router.db_for_write(ConnectedCompany)]
                if not connection.in_atomic_block:
                    connection.close()


def _release_quietly(batch: Batch, lease_ids: list[str] | None = None) -> None:
    """Let go of a batch and of the leases ``lease_ids`` it did not use (each runs out on its own
    if the database refuses)."""
    if lease_ids:
        try:
            ConnectedCompany.objects.release_leases(lease_ids)
        except Exception:
            logger.warning(
                "Could not let go of %s unused lease(s) of sweep batch %s; they will run out",
                len(lease_ids),
                batch.claim_id,
            )
    try:
        release_batch(batch)  # stops renewing the claim first, whatever the database says
    except Exception:
        # The claim runs out on its own; nothing is lost.
        logger.warning("Could not release sweep batch %s; its claim will run out", batch.claim_id)


def _refresh_one(
    company: ConnectedCompany,
    force: bool,
    within: float | None,
    wait: bool = False,
    lease: tuple[str, float] | None = None,
) -> CompanyResult:
    """Refresh one company for a sweep; ``lease``: (lock id, time taken) of a lease it holds."""
    line = CompanyResult(company.pk, company.company_id, company.client.slug, ERROR)
    try:
        if lease is None:
            result: RefreshResult = refresh(company, force=force, within=within, wait=wait)
        else:
            result = refresh_leased(company, lease[0], leased_at=lease[1], force=force, within=within)
    except LightspeedOAuthError as err:
        line.message = err.message
        logger.warning("Refresh of company %s stopped: %s", company.pk, err.message)
        return line
    except Exception as err:  # one broken company must not stop the others
        logger.exception("Unexpected error refreshing company %s", company.pk)
        line.message = f"unexpected {type(err).__name__}"
        return line
    line.outcome = BUSY if (result.outcome == FRESH and result.waited) else result.outcome
    line.lock_attempts = result.lock_attempts
    if result.error is not None:
        line.message = result.error.message
    elif result.outcome == REAUTHORIZATION_REQUIRED:
        line.message = company.last_error
    return line


class StopSignal(Protocol):
    """What ends a run early: a :class:`threading.Event`, or a :mod:`multiprocessing` one."""

    def is_set(self) -> bool: ...


def refresh_due(
    *,
    within: float | None = None,
    clients: Iterable[str] = (),
    company_ids: Iterable[str] = (),
    force: bool = False,
    dry_run: bool = False,
    workers: int = 1,
    on_result: Callable[[CompanyResult], None] | None = None,
    stop: StopSignal | None = None,
    batch_size: int | None = None,
    pks: Iterable[int] | None = None,
) -> Summary:
    """Refresh every due company with ``workers`` threads; call ``on_result`` for each one.

    ``within`` is in seconds (default REFRESH_WITHIN). The run claims the due companies batch by
    batch (``batch_size``, default SWEEP_BATCH_SIZE; see :func:`claim_batch`), so that runs in other
    processes and on other hosts take other batches. A company refreshed (or being refreshed) by
    another process at the same time counts as ``busy``, which is fine. ``stop`` ends the run
    early: companies not started yet are left for the next run.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    summary = Summary(dry_run=dry_run)
    clients, company_ids = list(clients), list(company_ids)
    pks = None if pks is None else list(pks)
    query = due_companies(within=within, clients=clients, company_ids=company_ids, force=force, pks=pks)
    report = on_result or (lambda result: None)
    margin = within if within is not None else app_settings.REFRESH_WITHIN
    guard = threading.Lock()
    open_batches: set[_Held] = set()

    if connections[query.db].in_atomic_block:
        # Worker threads have their own connections and cannot see the caller's uncommitted rows.
        workers = 1
    if dry_run:
        for company in _stream(query):
            if stop is not None and stop.is_set():
                break
            expires = f"expires {company.expires_at:%Y-%m-%d %H:%M:%S}" if company.expires_at else "no expiry"
            summary.considered += 1
            report(CompanyResult(company.pk, company.company_id, company.client.slug, "due", expires))
        return summary

    def companies() -> Iterator[tuple[ConnectedCompany, _Held | None]]:
        if pks is not None or in_callers_transaction(query.db):
            # A batch handed out by a fan-out (a Celery batch task) is already this run's own, and
            # a redelivered one must not wait for the claims of a worker that died. Claims written
            # in the caller's transaction would lock the rows the refreshes (on their own
            # connection) must write. Either way: walk the companies without claiming.
            for company in _stream(query):
                yield company, None
            return
        after = 0
        client_pks = _active_client_pks(clients)
        while True:
            prefix = secrets.token_hex(BATCH_LOCK_PREFIX_LENGTH // 2)
            leased_at = time.monotonic()
            batch, page = _claim_batch(
                size=batch_size,
                within=within,
                clients=clients,
                company_ids=company_ids,
                force=force,
                after=after,
                pks=pks,
                renew=True,
                fetch=True,
                client_pks=client_pks,
                lease_prefix=prefix,
            )
            if not batch:
                return
            summary.batches += 1
            after = batch.pks[-1]
            held = _Held(batch, len(page), open_batches, guard, prefix, leased_at)
            held.note_leases(page)
            with guard:
                open_batches.add(held)
            if not page:
                held.left = 1
                held.done()
            for company in page:
                yield company, held

    # Several workers write their token events in bulk (one query a refresh less); a single one,
    # which may run inside the caller's transaction, writes each as it goes.
    events = EventBatch() if workers > 1 else None

    def handle(company: ConnectedCompany, held: _Held | None) -> None:
        lease = held.start(company) if held is not None else None
        if events is None:
            result = _refresh_one(company, force, margin, lease=lease)
        else:
            with events.collecting():
                result = _refresh_one(company, force, margin, lease=lease)
        with guard:
            summary.add(result)
            report(result)
        if held is not None:
            held.done()

    lease_limit = batch_lease_limit()

    def keep_leases_young() -> None:
        with guard:
            batches = list(open_batches)
        _keep_batch_leases(batches, lease_limit, app_settings.LOCK_TIMEOUT)

    def idle() -> None:
        keep_leases_young()
        if events is not None:
            events.flush(older_than=EVENT_FLUSH_INTERVAL)

    try:
        if workers == 1:
            for company, held in companies():
                if stop is not None and stop.is_set():
                    break
                keep_leases_young()
                handle(company, held)
            return summary
        every = max(0.05, min(EVENT_FLUSH_INTERVAL, lease_limit / 4))
        _with_workers(workers, companies(), handle, stop, idle=idle, every=every)
        return summary
    finally:
        if events is not None:
            events.close()
        # A stopped run (or an error) leaves batches half done: free them for the next sweep.
        with guard:
            unfinished = list(open_batches)
            open_batches.clear()
        for held in unfinished:
            # A worker may still be running (the sweep interrupted while it waited for them).
            _release_quietly(held.batch, held.give_up())


def _with_workers(
    workers: int,
    jobs_in: Iterator[tuple[ConnectedCompany, _Held | None]],
    handle: Callable[[ConnectedCompany, _Held | None], None],
    stop: StopSignal | None,
    idle: Callable[[], None] | None = None,
    every: float = EVENT_FLUSH_INTERVAL,
) -> None:
    """Run ``handle`` on each job with ``workers`` threads; ``idle`` is called after each job
    handed out, and every ``every`` seconds while this thread waits for them."""
    # Bounded queue: the reader never gets more than a few companies ahead of the workers.
    jobs: queue.Queue = queue.Queue(maxsize=workers * 2)
    done = object()

    def work() -> None:
        try:
            while True:
                job = jobs.get()
                if job is done:
                    return
                handle(*job)
        finally:
            connections.close_all()

    def put(job: object) -> None:
        while True:
            try:
                jobs.put(job, timeout=every)
                placed = True
            except queue.Full:
                placed = False
            if idle is not None:
                idle()
            if placed:
                return

    threads = [
        threading.Thread(target=work, name=f"lightspeed-refresh-{n}", daemon=True) for n in range(workers)
    ]
    for thread in threads:
        thread.start()
    try:
        for job in jobs_in:
            if stop is not None and stop.is_set():
                break
            put(job)
    finally:
        for _ in threads:
            put(done)
        for thread in threads:
            while thread.is_alive():
                thread.join(every)
                if idle is not None:
                    idle()


def refresh_batch(pks: Iterable[int], *, within: float | None = None, workers: int = 1) -> Summary:
    """Refresh the companies of one batch (primary keys) that are still due; wait for busy ones.

    What a Celery batch task runs. It may run twice for the same batch (a duplicate delivery, or a
    redelivery after its worker died): a company refreshed since the batch was made is no longer
    due and is skipped, and one being refreshed elsewhere is waited for, then counted as fresh,
    never refreshed again. A company whose refresher died is taken over once its lease ends, so
    the batch is finished, not left to the next sweep.
    """
    pks = list(pks)
    busy: list[int] = []

    def note(result: CompanyResult) -> None:
        if result.outcome == BUSY:
            busy.append(result.pk)

    first = refresh_due(within=within, workers=workers, pks=pks, on_result=note)
    if not busy:
        return first
    # Second pass over what another process held: wait for it (its lease bounds the wait), then
    # use its outcome; a dead holder's company is refreshed here once its lease is over.
    summary = replace(first, considered=first.considered - first.busy, busy=0, problems=list(first.problems))
    margin = within if within is not None else app_settings.REFRESH_WITHIN
    for company in _stream(ConnectedCompany.objects.filter(pk__in=busy)):
        summary.add(_refresh_one(company, False, margin, wait=True))
    return summary
