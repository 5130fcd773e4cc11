"""Keeping a live refresher's lease: one thread per process renews every lease it holds.

A refresher takes a company's lease for ``LOCK_TIMEOUT`` seconds (database clock). While its token
request is in flight, and while it stores the answer, this process renews the lease every
``LOCK_RENEW_INTERVAL`` seconds, in one UPDATE for all the leases it holds, up to
``REFRESH_MAX_DURATION`` after the lease was taken. A process that dies or is frozen renews nothing,
so its leases end within ``LOCK_TIMEOUT`` and another process may take over.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import DatabaseError, connections, router

from .conf import app_settings

__all__ = ["keep", "renew_interval"]

logger = logging.getLogger(__name__)


def renew_interval() -> float:
    """Seconds between renewals: ``LOCK_RENEW_INTERVAL``, or a third of ``LOCK_TIMEOUT``."""
    interval = app_settings.LOCK_RENEW_INTERVAL
    return interval if interval else app_settings.LOCK_TIMEOUT / 3


class _Keeper:
    """The process's renewal thread and the leases it keeps (lock ids)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock_ids: set[str] = set()
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self.run, name="lightspeed-lease-keeper", daemon=True)
        self.thread.start()

    def run(self) -> None:
        from .models import ConnectedCompany

        alias = router.db_for_write(ConnectedCompany)
        while True:
            with self.changed:
                while not self.lock_ids:
                    self.changed.wait()
            time.sleep(renew_interval())
            with self.changed:
                held = list(self.lock_ids)
            if not held:
                continue
            try:
                ConnectedCompany.objects.renew_leases(
                    held,
                    lease=app_settings.LOCK_TIMEOUT,
                    ceiling=app_settings.REFRESH_MAX_DURATION,
                )
            except DatabaseError as err:
                # The holders go on; their leases end unless a later renewal gets through.
                logger.warning("Could not renew %s refresh lease(s): %s", len(held), type(err).__name__)
            finally:
                # Hold no connection while sleeping (nor one a test database's teardown would wait on).
                connections[alias].close()


_keeper: _Keeper | None = None
_keeper_lock = threading.Lock()


def _process_keeper() -> _Keeper:
    global _keeper
    with _keeper_lock:
        # After a fork the parent's thread does not exist in the child: start one of its own.
        if _keeper is None or _keeper.pid != os.getpid():
            _keeper = _Keeper()
        return _keeper


@contextmanager
def keep(lock_id: str) -> Iterator[None]:
    """Renew the lease ``lock_id`` while the block runs."""
    keeper = _process_keeper()
    with keeper.changed:
        if not keeper.lock_ids:
            keeper.changed.notify_all()  # start counting the interval
        keeper.lock_ids.add(lock_id)
    try:
        yield
    finally:
        with keeper.changed:
            keeper.lock_ids.discard(lock_id)
