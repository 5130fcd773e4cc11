"""Refreshing every company that is due, with a pool of workers, in constant memory.

The refresh command, the Celery tasks and the benchmark all call :func:`refresh_due` (a Celery
batch through :func:`refresh_batch`). Several copies
may run at once on several machines: each company's lease lock (see :mod:`.tokens`) makes sure only
one of them refreshes it; the others count it as fine ("busy").
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta

from django.db import connections
from django.db.models import Q, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from .conf import app_settings
from .exceptions import LightspeedOAuthError
from .models import ConnectedCompany
from .tokens import FAILED, FRESH, REAUTHORIZATION_REQUIRED, REFRESHED, UNCERTAIN, RefreshResult, refresh

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_REAUTHORIZATION",
    "CompanyResult",
    "Summary",
    "due_companies",
    "refresh_batch",
    "refresh_due",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REAUTHORIZATION = 2
CHUNK_SIZE = 500
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
    dry_run: bool = False
    problems: list[CompanyResult] = field(default_factory=list)

    def add(self, result: CompanyResult) -> None:
        self.considered += 1
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
    now = timezone.now()
    within = app_settings.REFRESH_WITHIN if within is None else float(within)
    query = ConnectedCompany.objects.filter(
        status__in=[ConnectedCompany.Status.ACTIVE, ConnectedCompany.Status.FAILING],
        client__is_active=True,
    )
    if not force:
        # The database's clock decides the back-off, as it does in the lease.
        query = query.filter(expires_at__lte=now + timedelta(seconds=within)).filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=Now())
        )
    clients = list(clients)
    if clients:
        query = query.filter(client__slug__in=clients)
    ids = list(company_ids)
    if ids:
        match = Q(company_id__in=ids)
        numeric = [int(i) for i in ids if str(i).isdigit()]
        if numeric:
            match |= Q(pk__in=numeric)
        query = query.filter(match)
    if pks is not None:
        query = query.filter(pk__in=list(pks))
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


def _refresh_one(
    company: ConnectedCompany, force: bool, within: float | None, wait: bool = False
) -> CompanyResult:
    line = CompanyResult(company.pk, company.company_id, company.client.slug, ERROR)
    try:
        result: RefreshResult = refresh(company, force=force, within=within, wait=wait)
    except LightspeedOAuthError as err:
        line.message = err.message
        logger.warning("Refresh of company %s stopped: %s", company.pk, err.message)
        return line
    except Exception as err:  # one broken company must not stop the others
        logger.exception("Unexpected error refreshing company %s", company.pk)
        line.message = f"unexpected {type(err).__name__}"
        return line
    line.outcome = BUSY if (result.outcome == FRESH and result.waited) else result.outcome
    if result.error is not None:
        line.message = result.error.message
    elif result.outcome == REAUTHORIZATION_REQUIRED:
        line.message = company.last_error
    return line


def refresh_due(
    *,
    within: float | None = None,
    clients: Iterable[str] = (),
    company_ids: Iterable[str] = (),
    force: bool = False,
    dry_run: bool = False,
    workers: int = 1,
    on_result: Callable[[CompanyResult], None] | None = None,
    stop: threading.Event | None = None,
    pks: Iterable[int] | None = None,
) -> Summary:
    """Refresh every due company with ``workers`` threads; call ``on_result`` for each one.

    ``within`` is in seconds (default REFRESH_WITHIN). A company refreshed (or being refreshed)
    by another process at the same time counts as ``busy``, which is fine. ``stop`` ends the run
    early: companies not started yet are left for the next run.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    summary = Summary(dry_run=dry_run)
    query = due_companies(within=within, clients=clients, company_ids=company_ids, force=force, pks=pks)
    report = on_result or (lambda result: None)
    margin = within if within is not None else app_settings.REFRESH_WITHIN

    if connections[query.db].in_atomic_block:
        # Worker threads have their own connections and cannot see the caller's uncommitted rows.
        workers = 1
    if dry_run or workers == 1:
        for company in _stream(query):
            if stop is not None and stop.is_set():
                break
            if dry_run:
                result = CompanyResult(
                    company.pk,
                    company.company_id,
                    company.client.slug,
                    "due",
                    f"expires {company.expires_at:%Y-%m-%d %H:%M:%S}" if company.expires_at else "no expiry",
                )
                summary.considered += 1
            else:
                result = _refresh_one(company, force, margin)
                summary.add(result)
            report(result)
        return summary

    # Bounded queue: the reader never gets more than a few pages ahead of the workers.
    jobs: queue.Queue = queue.Queue(maxsize=workers * 4)
    lock = threading.Lock()
    done = object()

    def work() -> None:
        try:
            while True:
                company = jobs.get()
                if company is done:
                    return
                result = _refresh_one(company, force, margin)
                with lock:
                    summary.add(result)
                    report(result)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=work, name=f"lightspeed-refresh-{n}", daemon=True) for n in range(workers)
    ]
    for thread in threads:
        thread.start()
    try:
        for company in _stream(query):
            if stop is not None and stop.is_set():
                break
            jobs.put(company)
    finally:
        for _ in threads:
            jobs.put(done)
        for thread in threads:
            thread.join()
    return summary


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
