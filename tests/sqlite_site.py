"""Settings of the live site that tests/test_sqlite_callbacks.py runs as a real server process.

The test suite's settings, on the SQLite file ``LS_SQLITE_PATH`` (whatever database the suite itself
uses), with the sandbox at ``LS_SITE_URL``, a 20-second busy timeout and SQLite's
``transaction_mode`` from ``LS_SQLITE_TRANSACTION_MODE`` (empty: Django's default, DEFERRED).
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import LIGHTSPEED_OAUTH

# README's advice for SQLite: wait up to 20 s for the write lock (Python's default is 5).
_options: dict[str, object] = {"timeout": 20}
if os.environ.get("LS_SQLITE_TRANSACTION_MODE"):
    _options["transaction_mode"] = os.environ["LS_SQLITE_TRANSACTION_MODE"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["LS_SQLITE_PATH"],
        "OPTIONS": _options,
    }
}

LIGHTSPEED_OAUTH = {
    **LIGHTSPEED_OAUTH,
    "SANDBOX_URL": os.environ.get("LS_SITE_URL", "http://127.0.0.1:8000") + "/lightspeed-sandbox/",
}

# The server's log (the test reads it): errors with their traceback, and the app's warnings.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "django_lightspeed_oauth": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
