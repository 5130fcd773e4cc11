"""A Celery task doing what ``refresh_lightspeed_tokens`` does, for sites that run Celery beat.

Importing this module requires Celery (``pip install "django-lightspeed-oauth[celery]"``); without
it, the import fails with an error that says so. Schedule
it like any shared task, e.g. every 5 minutes::

    CELERY_BEAT_SCHEDULE = {
        "refresh-lightspeed-tokens": {
            "task": "django_lightspeed_oauth.tasks.refresh_lightspeed_tokens",
            "schedule": 300.0,
        },
    }

Running it on several workers at once is safe: each company's lock lets one of them refresh it.
"""

from __future__ import annotations

from ._optional import require
from .refreshing import refresh_due

shared_task = require("celery", "celery", what="The Celery task django_lightspeed_oauth.tasks").shared_task

__all__ = ["refresh_lightspeed_tokens"]


@shared_task(name="django_lightspeed_oauth.tasks.refresh_lightspeed_tokens", ignore_result=False)
def refresh_lightspeed_tokens(
    within: float | None = None, clients: list[str] | None = None, workers: int = 4
) -> dict:
    """Refresh every company due within ``within`` seconds; return the run's summary as a dict."""
    return refresh_due(within=within, clients=clients or (), workers=workers).as_dict()
