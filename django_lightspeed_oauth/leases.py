"""Keeping a live refresher's lease: one thread per process renews every lease it holds.

A refresher takes a company's lease for ``LOCK_TIMEOUT`` seconds (database clock). While its token
request is in flight, and while it stores the answer, this process renews the lease every
``LOCK_RENEW_INTERVAL`` seconds, in one UPDATE for all the leases it holds, for at most
:func:`max_hold` seconds after the lease was taken. A process that dies or is frozen renews nothing,
so its leases end within ``LOCK_TIMEOUT`` and another process may take over.

The same thread renews the claims of the sweep batches this process works on (see
:func:`.refreshing.claim_batch`), every third of ``SWEEP_CLAIM_LIFETIME`` at most.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections, router

from .conf import app_settings

__all__ = ["drop_claim", "hold_claim", "keep", "max_hold", "renew_interval"]

logger = logging.getLogger(__name__)


def renew_interval() -> float:
    """Seconds between renewals: ``LOCK_RENEW_INTERVAL``, or a third of ``LOCK_TIMEOUT``."""
    interval = app_settings.LOCK_RENEW_INTERVAL
    return interval if interval else app_settings.LOCK_TIMEOUT / 3


def max_hold() -> float:
    """Seconds a lease is kept after it was taken, at most.

    A refresh gives up on its token answer ``REFRESH_MAX_DURATION`` after sending the request, and
    a single read may block ``REFRESH_READ_TIMEOUT`` past that; ``LOCK_TIMEOUT`` more leaves room
    to store the answer. A thread stuck beyond that loses its lease ``LOCK_TIMEOUT`` later.
    """
    return app_settings.REFRESH_MAX_DURATION + app_settings.REFRESH_READ_TIMEOUT + app_settings.LOCK_TIMEOUT


#: Seconds before a renewal that failed is tried again (the database went away for a moment).
RETRY_AFTER_FAILURE = 0.25


class _Keeper:
    """The process's renewal thread, the leases it keeps (lock id -> monotonic time taken) and the
    batch claims it keeps."""

    def __init__(self, leases: dict[str, float] | None = None, claims: set[str] | None = None) -> None:
        self.pid = os.getpid()
        self.leases: dict[str, float] = dict(leases or {})
        self.claims: set[str] = set(claims or ())
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self.run, name="lightspeed-lease-keeper", daemon=True)
        self.thread.start()

    def run(self) -> None:
        from .models import ConnectedCompany

        alias = router.db_for_write(ConnectedCompany)
        wait = renew_interval()
        while True:
            with self.changed:
                while not self.leases and not self.claims:
                    self.changed.wait()
                if self.claims:
                    wait = min(wait, app_settings.SWEEP_CLAIM_LIFETIME / 3)
            time.sleep(wait)
            wait = renew_interval()
            now = time.monotonic()
            with self.changed:
                held = [lock_id for lock_id, taken in self.leases.items() if now - taken < max_hold()]
                claims = list(self.claims)
            if not held and not claims:
                continue
            try:
                if held:
                    ConnectedCompany.objects.renew_leases(held, lease=app_settings.LOCK_TIMEOUT)
                if claims:
                    ConnectedCompany.objects.renew_claims(claims, lifetime=app_settings.SWEEP_CLAIM_LIFETIME)
            except Exception as err:
                # The holders go on; their leases end unless a renewal gets through in time.
                logger.warning(
                    "Could not renew %s refresh lease(s) and %s batch claim(s): %s",
                    len(held),
                    len(claims),
                    type(err).__name__,
                )
                wait = min(RETRY_AFTER_FAILURE, wait)
            finally:
                # Hold no connection while sleeping (nor one a test database's teardown would wait on).
                try:
                    connections[alias].close()
                except Exception:
                    logger.debug("Closing the lease keeper's connection failed", exc_info=True)


_keeper: _Keeper | None = None
_keeper_lock = threading.Lock()


def _process_keeper() -> _Keeper:
    global _keeper
    with _keeper_lock:
        # After a fork the parent's thread does not exist in the child; a thread that died (it
        # should not) is replaced, and the leases it kept move to the new one.
        if _keeper is None or _keeper.pid != os.getpid() or not _keeper.thread.is_alive():
            same = _keeper is not None and _keeper.pid == os.getpid()
            _keeper = _Keeper(_keeper.leases, _keeper.claims) if same and _keeper else _Keeper()
        return _keeper


@contextmanager
def keep(lock_id: str) -> Iterator[None]:
    """Renew the lease ``lock_id`` while the block runs (for at most :func:`max_hold` seconds)."""
    keeper = _process_keeper()
    with keeper.changed:
        if not keeper.leases and not keeper.claims:
            keeper.changed.notify_all()  # start counting the interval
        keeper.leases[lock_id] = time.monotonic()
    try:
        yield
    finally:
        with keeper.changed:
            keeper.leases.pop(lock_id, None)


def hold_claim(claim_id: str) -> None:
    """Renew the batch claim ``claim_id`` until :func:`drop_claim` (or until this process ends)."""
    keeper = _process_keeper()
    with keeper.changed:
        if not keeper.leases and not keeper.claims:
            keeper.changed.notify_all()
        keeper.claims.add(claim_id)


def drop_claim(claim_id: str) -> None:
    """Stop renewing the batch claim ``claim_id``."""
    keeper = _process_keeper()
    with keeper.changed:
        keeper.claims.discard(claim_id)
