"""``manage.py rotate_lightspeed_keys``: re-encrypt every stored secret with the first key.

To replace a key: put the new key first in ``LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"]`` and keep the
old one after it, deploy that to every process, run this command, then remove the old key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models
from django.db.models.functions import Cast
from django.db.models.lookups import Exact

from ... import crypto
from ...exceptions import DecryptionError, LightspeedOAuthError
from ...models import ApiClient, AuthorizationRequest, ConnectedCompany

__all__ = ["Command", "rotate_keys"]

CHUNK_SIZE = 500
#: How often a company whose tokens keep changing under us is read again before we give up on it.
MAX_ATTEMPTS = 5

#: The models and their encrypted columns, in the order they are rotated.
ENCRYPTED_FIELDS: dict[type[models.Model], tuple[str, ...]] = {
    ApiClient: ("client_secret",),
    ConnectedCompany: ("access_token", "refresh_token"),
    AuthorizationRequest: ("code_verifier",),
}


def _raw(name: str) -> Cast:
    # The column as stored (ciphertext): a plain TextField output skips the field's decryption.
    return Cast(name, output_field=models.TextField())


class _Rotation:
    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        crypto.encrypt("")  # every configured key is valid, or ConfigurationError now
        # Only the first key encrypts: a value it can read needs no rewrite.
        self.first = Fernet(crypto.configured_keys()[0])
        self.unreadable: dict[str, list[Any]] = {}
        self.busy: list[Any] = []

    def is_current(self, ciphertext: str) -> bool:
        if not ciphertext:
            return True
        try:
            self.first.decrypt(ciphertext.encode())
        except InvalidToken:
            return False
        return True

    def plaintexts(
        self, model: type[models.Model], pk: Any, ciphertexts: tuple[str, ...]
    ) -> tuple[str, ...] | None:
        """The values in plain text, or None (and the row noted) if no key decrypts one."""
        try:
            return tuple(crypto.decrypt(value) if value else "" for value in ciphertexts)
        except DecryptionError:
            self.unreadable.setdefault(model.__name__, []).append(pk)
            return None

    def rows(self, model: type[models.Model], extra: tuple[str, ...] = ()):
        names = ENCRYPTED_FIELDS[model]
        queryset = (
            model._default_manager.order_by("pk")
            .annotate(**{f"raw_{name}": _raw(name) for name in names})
            .values_list("pk", *extra, *(f"raw_{name}" for name in names))
        )
        return queryset.iterator(chunk_size=CHUNK_SIZE)

    # Per model ------------------------------------------------------------------------------

    def rotate_simple(self, model: type[models.Model]) -> int:
        """One encrypted column, no version: the write is conditional on the ciphertext we read."""
        (name,) = ENCRYPTED_FIELDS[model]
        count = 0
        for pk, ciphertext in self.rows(model):
            if self.is_current(ciphertext):
                continue
            plain = self.plaintexts(model, pk, (ciphertext,))
            if plain is None:
                continue
            count += 1
            if self.dry_run:
                continue
            # If someone saved a new value meanwhile, it was encrypted with the first key already.
            model._default_manager.filter(Exact(_raw(name), ciphertext), pk=pk).update(**{name: plain[0]})
        return count

    def rotate_companies(self) -> int:
        count = 0
        for pk, version, *ciphertexts in self.rows(ConnectedCompany, ("token_version",)):
            if self.rotate_company(pk, version, tuple(ciphertexts)):
                count += 1
        return count

    def rotate_company(self, pk: Any, version: int, ciphertexts: tuple[str, ...]) -> bool:
        names = ENCRYPTED_FIELDS[ConnectedCompany]
        for _ in range(MAX_ATTEMPTS):
            if all(self.is_current(value) for value in ciphertexts):
                return False
            plain = self.plaintexts(ConnectedCompany, pk, ciphertexts)
            if plain is None:
                return False
            if self.dry_run:
                return True
            # A refresh bumps token_version: never write back tokens it has replaced.
            if ConnectedCompany.objects.filter(pk=pk, token_version=version).update(
                **dict(zip(names, plain, strict=True))
            ):
                return True
            row = (
                ConnectedCompany.objects.filter(pk=pk)
                .annotate(**{f"raw_{name}": _raw(name) for name in names})
                .values_list("token_version", *(f"raw_{name}" for name in names))
                .first()
            )
            if row is None:
                return False  # deleted meanwhile
            version, *rest = row
            ciphertexts = tuple(rest)
        self.busy.append(pk)
        return False


def rotate_keys(dry_run: bool = False, report: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Re-encrypt every stored secret with the first key in ``ENCRYPTION_KEYS``.

    Returns, per model name, how many rows were re-encrypted (with ``dry_run``: would be). Rows
    already encrypted with the first key are left alone, so running it again is cheap.
    ``report(model_name, count)`` is called as each model is done.

    :raises DecryptionError: when some value cannot be decrypted with any configured key (after
        every other row was rotated); its ``counts`` attribute holds the result so far.
    :raises LightspeedOAuthError: when a company's tokens kept changing under us (run it again).
    """
    rotation = _Rotation(dry_run)
    counts: dict[str, int] = {}
    for model in ENCRYPTED_FIELDS:
        if model is ConnectedCompany:
            counts[model.__name__] = rotation.rotate_companies()
        else:
            counts[model.__name__] = rotation.rotate_simple(model)
        if report is not None:
            report(model.__name__, counts[model.__name__])
    unreadable = {name: pks for name, pks in rotation.unreadable.items() if pks}
    if unreadable:
        rows = "; ".join(
            f"{name} {', '.join(str(pk) for pk in pks[:20])}{' ...' if len(pks) > 20 else ''}"
            for name, pks in unreadable.items()
        )
        error = DecryptionError(
            f"{sum(len(pks) for pks in unreadable.values())} stored secret(s) cannot be "
            f'decrypted with any key in LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"] ({rows}). Add the key '
            "they were written with back to the list and run the command again; do not remove "
            "any key until it succeeds."
        )
        error.counts = counts  # type: ignore[attr-defined]
        raise error
    if rotation.busy:
        busy = LightspeedOAuthError(
            f"The tokens of connected companies {', '.join(str(pk) for pk in rotation.busy)} kept "
            "changing while they were re-encrypted; run the command again."
        )
        busy.counts = counts  # type: ignore[attr-defined]
        raise busy
    return counts


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored client secret, token and PKCE verifier with the first key in "
        'LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"], so that the keys after it can be removed. Deploy the '
        "new key list to every process first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be re-encrypted.")

    def handle(self, *args: Any, dry_run: bool, **options: Any) -> None:
        verb = "to re-encrypt" if dry_run else "re-encrypted"

        def report(name: str, count: int) -> None:
            self.stdout.write(f"{name:<22} {count:>7} {verb}")

        try:
            counts = rotate_keys(dry_run=dry_run, report=report)
        except LightspeedOAuthError as err:
            # The message names rows and settings, never a secret.
            raise CommandError(err.message) from None
        total = sum(counts.values())
        if dry_run:
            self.stdout.write(f"Dry run: {total} row(s) would be re-encrypted; nothing written.")
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Done: {total} row(s) re-encrypted. Every stored secret now uses the first key; "
                    "the keys after it can be removed."
                )
            )
