"""``manage.py rotate_lightspeed_keys``: re-encrypt every stored secret with the first key.

To replace a key (a rollout in phases, see README): add the new key after the old one
everywhere, then put it first everywhere, run this command, then remove the old key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models
from django.db.models.functions import Cast
from django.db.models.lookups import Exact
from django.utils.translation import gettext, ngettext

from ... import crypto
from ...exceptions import BindingError, DecryptionError, LightspeedOAuthError, UnboundSecretError
from ...models import ApiClient, AuthorizationRequest, ConnectedCompany

__all__ = ["Command", "rotate_keys"]

CHUNK_SIZE = 500
#: How often a company whose tokens keep changing under us is read again before we give up on it.
MAX_ATTEMPTS = 5

#: The models and their encrypted columns, in the order they are rotated.
ENCRYPTED_FIELDS: dict[type[models.Model], tuple[str, ...]] = {
    ApiClient: ("client_secret",),
    ConnectedCompany: ("access_token", "refresh_token"),
    AuthorizationRequest: ("code_verifier", "pending_tokens"),
}
#: What else a model's secrets are bound to (see ``secret_context`` on the models).
CONTEXT_FIELDS: dict[type[models.Model], tuple[str, ...]] = {ApiClient: ApiClient.SECRET_DESTINATION_FIELDS}


def _raw(name: str) -> Cast:
    # The column as stored (ciphertext): a plain TextField output skips the field's decryption.
    return Cast(name, output_field=models.TextField())


class _Rotation:
    def __init__(self, dry_run: bool, bind_unbound: bool) -> None:
        self.dry_run = dry_run
        self.bind_unbound = bind_unbound
        crypto.check_keys()  # every configured key is valid, or ConfigurationError now
        self.unreadable: dict[str, list[Any]] = {}
        self.refused: dict[str, list[Any]] = {}
        self.unbound: dict[str, list[Any]] = {}
        self.busy: list[Any] = []

    def plaintexts(
        self, model: type[models.Model], pk: Any, context: dict[str, Any], ciphertexts: tuple[str, ...]
    ) -> tuple[str, ...] | None:
        """The values in plain text, or None (and the row noted) if one cannot be read."""
        names = ENCRYPTED_FIELDS[model]
        values = []
        for name, value in zip(names, ciphertexts, strict=True):
            try:
                if not value:
                    values.append("")
                elif value.startswith(crypto.BOUND_PREFIX):
                    bound = crypto.binding(model._meta.label_lower, pk, name, context)
                    values.append(crypto.unseal(value, bound))
                elif self.bind_unbound:
                    values.append(crypto.decrypt(value))  # 0.1.0's format, bound from now on
                else:
                    self.unbound.setdefault(model.__name__, []).append(pk)
                    return None
            except BindingError:
                self.refused.setdefault(model.__name__, []).append(pk)
                return None
            except DecryptionError:
                self.unreadable.setdefault(model.__name__, []).append(pk)
                return None
        return tuple(values)

    def sealed(
        self, model: type[models.Model], pk: Any, context: dict[str, Any], plain: tuple[str, ...]
    ) -> dict[str, Any]:
        label = model._meta.label_lower
        return {
            name: crypto.Sealed(crypto.seal(value, crypto.binding(label, pk, name, context))) if value else ""
            for name, value in zip(ENCRYPTED_FIELDS[model], plain, strict=True)
        }

    def rows(self, model: type[models.Model], extra: tuple[str, ...] = ()):
        names = ENCRYPTED_FIELDS[model]
        context = CONTEXT_FIELDS.get(model, ())
        queryset = (
            model._default_manager.order_by("pk")
            .annotate(**{f"raw_{name}": _raw(name) for name in names})
            .values_list("pk", *extra, *context, *(f"raw_{name}" for name in names))
        )
        for pk, *rest in queryset.iterator(chunk_size=CHUNK_SIZE):
            head = rest[: len(extra)]
            values = dict(zip(context, rest[len(extra) : len(extra) + len(context)], strict=True))
            yield pk, head, values, tuple(rest[len(extra) + len(context) :])

    # Per model ------------------------------------------------------------------------------

    def rotate_simple(self, model: type[models.Model]) -> int:
        """No token version: each write is conditional on the ciphertexts (and context) we read."""
        names = ENCRYPTED_FIELDS[model]
        count = 0
        for pk, _, context, ciphertexts in self.rows(model):
            if all(not value or crypto.is_current(value) for value in ciphertexts):
                continue
            plain = self.plaintexts(model, pk, context, ciphertexts)
            if plain is None:
                continue
            count += 1
            if self.dry_run:
                continue
            # If someone saved a new value meanwhile, it is bound with the first key already. (A
            # context changed meanwhile needs no check: the value stays bound to the one we read.)
            unchanged = [Exact(_raw(name), value) for name, value in zip(names, ciphertexts, strict=True)]
            model._default_manager.filter(*unchanged, pk=pk).update(**self.sealed(model, pk, context, plain))
        return count

    def rotate_companies(self) -> int:
        count = 0
        for pk, (version,), _, ciphertexts in self.rows(ConnectedCompany, ("token_version",)):
            if self.rotate_company(pk, version, ciphertexts):
                count += 1
        return count

    def rotate_company(self, pk: Any, version: int, ciphertexts: tuple[str, ...]) -> bool:
        names = ENCRYPTED_FIELDS[ConnectedCompany]
        for _ in range(MAX_ATTEMPTS):
            if all(not value or crypto.is_current(value) for value in ciphertexts):
                return False
            plain = self.plaintexts(ConnectedCompany, pk, {}, ciphertexts)
            if plain is None:
                return False
            if self.dry_run:
                return True
            # A refresh bumps token_version: never write back tokens it has replaced.
            if ConnectedCompany.objects.filter(pk=pk, token_version=version).update(
                **self.sealed(ConnectedCompany, pk, {}, plain)
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


def _rows(found: dict[str, list[Any]]) -> str:
    return "; ".join(
        f"{name} {', '.join(str(pk) for pk in pks[:20])}{' ...' if len(pks) > 20 else ''}"
        for name, pks in found.items()
    )


def rotate_keys(
    dry_run: bool = False, report: Callable[[str, int], None] | None = None, *, bind_unbound: bool = False
) -> dict[str, int]:
    """Re-encrypt every stored secret with the first key in ``ENCRYPTION_KEYS``, bound to its row.

    Returns, per model name, how many rows were re-encrypted (with ``dry_run``: would be). Rows
    already encrypted with the first key are left alone, so running it again is cheap.
    ``report(model_name, count)`` is called as each model is done. ``bind_unbound`` also binds
    values still in 0.1.0's unbound format (written by a 0.1.0 process after migration 0006);
    without it they are reported.

    :raises DecryptionError: when some value cannot be decrypted with any configured key, or is
        refused (it does not belong to its row), or is unbound (after every other row was
        rotated); its ``counts`` attribute holds the result so far.
    :raises LightspeedOAuthError: when a company's tokens kept changing under us (run it again).
    """
    rotation = _Rotation(dry_run, bind_unbound)
    counts: dict[str, int] = {}
    for model in ENCRYPTED_FIELDS:
        if model is ConnectedCompany:
            counts[model.__name__] = rotation.rotate_companies()
        else:
            counts[model.__name__] = rotation.rotate_simple(model)
        if report is not None:
            report(model.__name__, counts[model.__name__])
    problems = []
    if rotation.unreadable:
        problems.append(
            f"{sum(len(pks) for pks in rotation.unreadable.values())} stored secret(s) cannot be "
            f'decrypted with any key in LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"] ({_rows(rotation.unreadable)}). '
            "Add the key they were written with back to the list and run the command again; do "
            "not remove any key until it succeeds."
        )
    if rotation.refused:
        problems.append(
            f"{sum(len(pks) for pks in rotation.refused.values())} stored secret(s) do not belong to "
            f"their row ({_rows(rotation.refused)}): copied from another row, or the row's endpoints "
            "were changed outside the app. They are not used; enter those secrets again (or connect "
            "those companies again)."
        )
    if rotation.unbound:
        problems.append(
            f"{sum(len(pks) for pks in rotation.unbound.values())} stored secret(s) are in version "
            f"0.1.0's unbound format ({_rows(rotation.unbound)}). If a 0.1.0 process wrote them after "
            "the upgrade, bind them with --bind-unbound."
        )
    if problems:
        error: LightspeedOAuthError = (
            UnboundSecretError(" ".join(problems))
            if rotation.unbound and not (rotation.unreadable or rotation.refused)
            else BindingError(" ".join(problems))
            if rotation.refused and not rotation.unreadable
            else DecryptionError(" ".join(problems))
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
        parser.add_argument(
            "--dry-run", action="store_true", help=gettext("Only count what would be re-encrypted.")
        )
        parser.add_argument(
            "--bind-unbound",
            action="store_true",
            help=gettext(
                "Also bind values still in version 0.1.0's format to their rows (values a 0.1.0 "
                "process wrote after the upgrade's migration). Only when you know where they came from."
            ),
        )

    def handle(self, *args: Any, dry_run: bool, bind_unbound: bool, **options: Any) -> None:
        verb = "to re-encrypt" if dry_run else "re-encrypted"

        def report(name: str, count: int) -> None:
            self.stdout.write(f"{name:<22} {count:>7} {verb}")

        try:
            counts = rotate_keys(dry_run=dry_run, report=report, bind_unbound=bind_unbound)
        except LightspeedOAuthError as err:
            # The message names rows and settings, never a secret.
            raise CommandError(err.message) from None
        total = sum(counts.values())
        if dry_run:
            self.stdout.write(
                ngettext(
                    "Dry run: %(total)d row would be re-encrypted; nothing written.",
                    "Dry run: %(total)d rows would be re-encrypted; nothing written.",
                    total,
                )
                % {"total": total}
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    ngettext(
                        "Done: %(total)d row re-encrypted. Every stored secret now uses the first key; "
                        "the keys after it can be removed.",
                        "Done: %(total)d rows re-encrypted. Every stored secret now uses the first key; "
                        "the keys after it can be removed.",
                        total,
                    )
                    % {"total": total}
                )
            )
