"""Settings of the demo site, read from the environment (django-environ); SQLite by default.

Every ``LIGHTSPEED_OAUTH`` key can be set with an environment variable of the same name prefixed
``LIGHTSPEED_OAUTH_``, e.g. ``LIGHTSPEED_OAUTH_ENCRYPTION_KEYS=key1,key2`` (a comma list) or
``LIGHTSPEED_OAUTH_SANDBOX_TOKEN_LIFETIME=120``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import environ

from django_lightspeed_oauth.conf import DEFAULTS

BASE_DIR = Path(__file__).resolve().parent.parent  # the testproject/ directory

env = environ.Env()
if env.bool("READ_DOT_ENV", default=False):
    environ.Env.read_env(BASE_DIR / ".env")

# The demo is meant to run on a laptop: DEBUG unless told otherwise.
DEBUG = env.bool("DEBUG", default=True)

# A throwaway key is fine for a local demo, never for a deployed site.
if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="testproject-insecure-dev-only-secret-key")
else:
    SECRET_KEY = env.str("SECRET_KEY")

# Django's default (empty) unless set; with DEBUG, Django then allows localhost and 127.0.0.1.
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_lightspeed_oauth",
    "django_lightspeed_oauth.sandbox",
    "testproject",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The merchant's pages in the browser's language (English, French, Dutch, German, Spanish).
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("charset", "utf8mb4")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # README's SQLite advice: the web server and the refresher beside it write to one file, and a
    # transaction that takes the write lock when it starts never meets "database is locked" halfway.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("transaction_mode", "IMMEDIATE")
    DATABASES["default"]["OPTIONS"].setdefault("timeout", 20)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
LANGUAGE_CODE = "en-us"
USE_I18N = True
# The languages the app is translated into.
LANGUAGES = [
    ("en", "English"),
    ("fr", "Français"),
    ("nl", "Nederlands"),
    ("de", "Deutsch"),
    ("es", "Español"),
]

STATIC_URL = "/static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "static")

LOGIN_URL = "/admin/login/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_lightspeed_oauth": {
            "handlers": ["console"],
            "level": env.str("LIGHTSPEED_LOG_LEVEL", default="INFO"),
        },
    },
}


# LIGHTSPEED_OAUTH ---------------------------------------------------------------------------------

#: Where ``make demo`` records the URL it serves the site at (``DEMO_PORT``...).
DEMO_URL_FILE = BASE_DIR / ".demo-url"


def demo_url() -> str:
    """Scheme and host of the demo site: ``DEMO_URL``, else what ``make demo`` last recorded.

    Commands run from another shell while the demo runs (``manage.py lightspeed_invite``,
    ``refresh_lightspeed_tokens``) then reach its sandbox and print its links, whatever its port.
    """
    url = env.str("DEMO_URL", default="")
    if not url and DEMO_URL_FILE.is_file():
        url = DEMO_URL_FILE.read_text(encoding="utf-8").strip()
    return (url or "http://127.0.0.1:8000").rstrip("/")


DEMO_URL = demo_url()

#: Values the demo uses where the app's default would be less convenient on a laptop.
DEMO_DEFAULTS: dict[str, Any] = {
    "SANDBOX_URL": f"{DEMO_URL}/lightspeed-sandbox/",
    "SITE_URL": DEMO_URL,
    # Short-lived sandbox tokens, so the demo shows refreshes happening within minutes; the
    # refresh margins shrink to match, or every token would always count as expiring.
    "SANDBOX_TOKEN_LIFETIME": 120,
    "REFRESH_WITHIN": 60,
    "REFRESH_MARGIN": 30,
}
ENV_PREFIX = "LIGHTSPEED_OAUTH_"


def _lightspeed_value(key: str, default: Any) -> Any:
    """Read ``LIGHTSPEED_OAUTH_<key>``, cast like the app's default for that key."""
    name = ENV_PREFIX + key
    if isinstance(default, bool):
        return env.bool(name)
    if isinstance(default, int):
        return env.int(name)
    if isinstance(default, float):
        return env.float(name)
    if isinstance(default, list):
        return env.list(name)
    if isinstance(default, tuple):  # e.g. HTTP_TIMEOUT=5,20
        return tuple(float(part) for part in env.list(name))
    return env.str(name)  # strings, and keys whose default is None (SITE_URL, SUCCESS_URL...)


def lightspeed_oauth_settings() -> dict[str, Any]:
    """The ``LIGHTSPEED_OAUTH`` dict: the demo's defaults, then every ``LIGHTSPEED_OAUTH_*`` variable.

    Only keys the app knows are passed on; a misspelt variable is reported here instead of being
    silently ignored.
    """
    values = dict(DEMO_DEFAULTS)
    for key, default in DEFAULTS.items():
        if ENV_PREFIX + key in env.ENVIRON:
            values[key] = _lightspeed_value(key, default)
    unknown = sorted(
        name
        for name in env.ENVIRON
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :] not in DEFAULTS
    )
    if unknown:
        warnings.warn(
            f"Ignoring unknown environment variables {', '.join(unknown)}; known LIGHTSPEED_OAUTH "
            f"keys: {', '.join(sorted(DEFAULTS))}.",
            stacklevel=2,
        )
    return values


LIGHTSPEED_OAUTH = lightspeed_oauth_settings()


# Celery (testproject/celery.py), used when CELERY_BROKER_URL is set ---------------------------------

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="celery")
# The refresh tasks acknowledge late (a dead worker's batch is redelivered): take one task at a time
# per worker process, so that a busy process does not hold batches that others could run.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE = {
    "refresh-lightspeed-tokens": {
        "task": "django_lightspeed_oauth.tasks.sweep_lightspeed_tokens",
        # The demo's tokens last two minutes (SANDBOX_TOKEN_LIFETIME): sweep every 30 seconds.
        "schedule": env.float("CELERY_SWEEP_EVERY", default=30.0),
    },
    "purge-lightspeed-data": {
        "task": "django_lightspeed_oauth.tasks.purge_lightspeed_data",
        "schedule": 3600.0,
    },
}
