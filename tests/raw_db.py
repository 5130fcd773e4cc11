"""Helpers for tests that look beneath the encrypted fields."""

from __future__ import annotations

from django.db import connection
from django.test import override_settings

from tests.settings import LIGHTSPEED_OAUTH


def encryption_keys(*values: bytes | str) -> override_settings:
    """``override_settings`` with these ENCRYPTION_KEYS (the first encrypts)."""
    keys = [v.decode() if isinstance(v, bytes) else v for v in values]
    return override_settings(LIGHTSPEED_OAUTH={**LIGHTSPEED_OAUTH, "ENCRYPTION_KEYS": keys})


def raw_column(model, pk, column: str) -> str:
    """The column's value as the database holds it, bypassing the field."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {connection.ops.quote_name(column)} "
            f"FROM {connection.ops.quote_name(model._meta.db_table)} WHERE id = %s",
            [pk],
        )
        return cursor.fetchone()[0]


def decrypt_column(model, pk, column: str, *keys: bytes | str) -> str:
    """The column decrypted with ``keys`` alone (default: the test keys), its binding checked."""
    from contextlib import nullcontext

    from django_lightspeed_oauth import crypto

    raw = raw_column(model, pk, column)
    row = model._base_manager.get(pk=pk)
    with encryption_keys(*keys) if keys else nullcontext():
        return crypto.unseal(raw, crypto.binding_of(row, column))
