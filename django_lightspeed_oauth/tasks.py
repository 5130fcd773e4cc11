"""Celery tasks doing what ``refresh_lightspeed_tokens`` does, for sites that run Celery beat.

Importing this module requires Celery (``pip install "django-lightspeed-oauth[celery]"``); without
it, the import fails with an error that says so.

- :func:`sweep_lightspeed_tokens` (schedule it with beat) finds the due companies and sends one
  :func:`refresh_lightspeed_batch` task per ``CELERY_BATCH_SIZE`` of them, so that the refreshes
  spread over every worker of the pool::

      CELERY_BEAT_SCHEDULE = {
          "refresh-lightspeed-tokens": {
              "task": "django_lightspeed_oauth.tasks.sweep_lightspeed_tokens",
              "schedule": 300.0,
          },
      }

- :func:`refresh_lightspeed_tokens` runs the whole sweep inside one task, as the command does.
- :func:`purge_lightspeed_data` does what ``lightspeed_purge`` does (schedule it daily, say).

Both batch and sweep are acknowledged late and given back to the broker when their worker dies,
so a batch is redelivered and finished elsewhere. Delivered twice, a batch refreshes nothing twice:
each company's lease lets one refresher at a time in, and a company refreshed meanwhile is no
longer due.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from ._optional import require
from .conf import app_settings
from .purging import purge
from .refreshing import due_companies, refresh_batch, refresh_due

shared_task = require("celery", "celery", what="The Celery task django_lightspeed_oauth.tasks").shared_task

__all__ = [
    "purge_lightspeed_data",
    "refresh_lightspeed_batch",
    "refresh_lightspeed_tokens",
    "sweep_lightspeed_tokens",
]

logger = logging.getLogger(__name__)

#: Options of the tasks that must survive a dead worker and a duplicate delivery.
_AT_LEAST_ONCE = dict(acks_late=True, reject_on_worker_lost=True)


@shared_task(name="django_lightspeed_oauth.tasks.refresh_lightspeed_tokens", ignore_result=False)
def refresh_lightspeed_tokens(
    within: float | None = None, clients: list[str] | None = None, workers: int = 4
) -> dict:
    """Refresh every company due within ``within`` seconds; return the run's summary as a dict."""
    return refresh_due(within=within, clients=clients or (), workers=workers).as_dict()


def due_batches(
    *, within: float | None = None, clients: Iterable[str] = (), size: int
) -> Iterator[list[int]]:
    """The primary keys of the due companies, ``size`` at a time, read in keyset pages."""
    query = due_companies(within=within, clients=clients).order_by("pk").values_list("pk", flat=True)
    last = 0
    while True:
        batch = list(query.filter(pk__gt=last)[:size])
        if not batch:
            return
        yield batch
        last = batch[-1]


@shared_task(
    name="django_lightspeed_oauth.tasks.sweep_lightspeed_tokens", ignore_result=False, **_AT_LEAST_ONCE
)
def sweep_lightspeed_tokens(
    within: float | None = None,
    clients: list[str] | None = None,
    batch_size: int | None = None,
    workers: int = 4,
) -> dict:
    """Send one :func:`refresh_lightspeed_batch` task per batch of due companies.

    ``batch_size`` defaults to ``CELERY_BATCH_SIZE``; ``workers`` threads refresh each batch.
    Returns ``{"due": companies, "batches": tasks sent}``.
    """
    size = app_settings.CELERY_BATCH_SIZE if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    due = batches = 0
    for pks in due_batches(within=within, clients=clients or (), size=size):
        refresh_lightspeed_batch.apply_async(kwargs={"pks": pks, "within": within, "workers": workers})
        due += len(pks)
        batches += 1
    if batches:
        logger.info("Sent %s refresh batches for %s due companies", batches, due)
    return {"due": due, "batches": batches}


@shared_task(
    bind=True,
    name="django_lightspeed_oauth.tasks.refresh_lightspeed_batch",
    ignore_result=False,
    **_AT_LEAST_ONCE,
)
def refresh_lightspeed_batch(self, pks: list[int], within: float | None = None, workers: int = 4) -> dict:
    """Refresh the companies ``pks`` that are still due; return the summary as a dict."""
    if (self.request.delivery_info or {}).get("redelivered"):
        logger.info(
            "Refresh batch %s was delivered again (its worker may have died); finishing it", self.request.id
        )
    return refresh_batch(pks, within=within, workers=workers).as_dict()


@shared_task(name="django_lightspeed_oauth.tasks.purge_lightspeed_data", ignore_result=False)
def purge_lightspeed_data() -> dict:
    """Delete what the retention settings let go, as ``lightspeed_purge``; return the counts."""
    return purge().as_dict()
