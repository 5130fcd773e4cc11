"""The demo site's Celery app, for ``celery -A testproject worker`` and ``celery -A testproject beat``.

Run from the ``testproject/`` directory with ``CELERY_BROKER_URL`` set (RabbitMQ, e.g.
``amqp://guest:guest@127.0.0.1:5672//``). Beat sends ``sweep_lightspeed_tokens`` every
``CELERY_SWEEP_EVERY`` seconds (settings.py); the workers refresh the batches it fans out.
"""

from __future__ import annotations

import os

from celery import Celery
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

if not settings.CELERY_BROKER_URL:
    raise ImproperlyConfigured(
        "The demo's Celery app needs a broker: set CELERY_BROKER_URL, "
        "e.g. CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672//"
    )

app = Celery("testproject")
# Every CELERY_* Django setting configures the app (CELERY_BROKER_URL -> broker_url...).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
