"""Settings for the test suite: SQLite in memory unless DATABASE_URL names another database."""

from __future__ import annotations

import os
import tempfile

import dj_database_url
import django

SECRET_KEY = "tests-only-secret-key-not-for-production"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_lightspeed_oauth",
    "django_lightspeed_oauth.sandbox",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

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

DATABASES = {"default": dj_database_url.parse(os.environ.get("DATABASE_URL", "sqlite://:memory:"))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory: in-memory SQLite shares one cache with table locks that concurrent
    # threads and processes cannot wait on, unlike a real SQLite deployment.
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"lightspeed-oauth-test-{os.getpid()}.sqlite3")
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    DATABASES["default"].setdefault("OPTIONS", {})["charset"] = "utf8mb4"
    DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STATIC_URL = "/static/"
LOGIN_URL = "/admin/login/"

LIGHTSPEED_OAUTH = {
    "ENCRYPTION_KEYS": [
        # Two test-only keys; the first encrypts.
        "p2Z3v8cJ3QkzJ1l0bDq0H6mVd1J8g3rX9c6sQ4uYw2A=",
        "Zb1o8X0bL6bq3dJ2f4VqYt7m9n1k5h3s2a8c6e4g0iM=",
    ],
    "SANDBOX_URL": "http://testserver/lightspeed-sandbox/",
    # The test run has DEBUG off (as Django's test runner forces); the sandbox serves the tests anyway.
    "SANDBOX_ENABLED": True,
}

# Django 6.1 deprecates the implicit default mailer (and the test run turns deprecations into errors).
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
