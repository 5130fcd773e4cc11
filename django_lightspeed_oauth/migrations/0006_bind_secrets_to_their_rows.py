"""Bind every stored secret to its row and purpose (0.1.0 stored unbound Fernet tokens).

Each value is decrypted with the configured keys and written again as a bound ciphertext (see
``crypto``). A value no key decrypts is left as it is: it was unreadable before and stays so
(``rotate_lightspeed_keys`` names it). Reversing writes 0.1.0's format back.
"""

from __future__ import annotations

from django.db import migrations, models
from django.db.models.functions import Cast

from django_lightspeed_oauth import crypto
from django_lightspeed_oauth.exceptions import DecryptionError

#: Frozen here as they were when this migration was written (models may change later).
FIELDS = {
    "ApiClient": ("client_secret",),
    "ConnectedCompany": ("access_token", "refresh_token"),
    "AuthorizationRequest": ("code_verifier", "pending_tokens"),
}
CONTEXT = {"ApiClient": ("provider", "environment", "authorize_url", "token_url", "provider_options")}


def _rows(model, alias, names, context):
    raw = {f"raw_{name}": Cast(name, output_field=models.TextField()) for name in names}
    query = model._base_manager.using(alias).order_by("pk").annotate(**raw)
    for pk, *rest in query.values_list("pk", *context, *raw).iterator(chunk_size=500):
        yield pk, dict(zip(context, rest[: len(context)], strict=True)), rest[len(context) :]


def _rewrite(apps, schema_editor, convert) -> None:
    alias = schema_editor.connection.alias
    for model_name, names in FIELDS.items():
        model = apps.get_model("lightspeed_oauth", model_name)
        label = f"lightspeed_oauth.{model_name.lower()}"
        context_names = CONTEXT.get(model_name, ())
        for pk, context, values in _rows(model, alias, names, context_names):
            changes = {}
            for name, value in zip(names, values, strict=True):
                if not value:
                    continue
                new = convert(value, crypto.binding(label, pk, name, context))
                if new is not None:
                    changes[name] = crypto.Sealed(new)
            if changes:
                model._base_manager.using(alias).filter(pk=pk).update(**changes)


def bind(apps, schema_editor) -> None:
    def convert(value: str, associated: bytes) -> str | None:
        if value.startswith(crypto.BOUND_PREFIX):
            return None
        try:
            return crypto.seal(crypto.decrypt(value), associated)
        except DecryptionError:
            return None

    _rewrite(apps, schema_editor, convert)


def unbind(apps, schema_editor) -> None:
    def convert(value: str, associated: bytes) -> str | None:
        if not value.startswith(crypto.BOUND_PREFIX):
            return None
        try:
            return crypto.encrypt(crypto.unseal(value, associated))
        except DecryptionError:
            return None

    _rewrite(apps, schema_editor, convert)


class Migration(migrations.Migration):
    dependencies = [("lightspeed_oauth", "0005_invitations")]

    operations = [migrations.RunPython(bind, unbind, elidable=False)]
