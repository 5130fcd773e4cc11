"""Encryption of secrets at rest (client secrets, tokens, PKCE verifiers) with rotatable keys.

Every stored secret is bound to its row and purpose: AES-256-GCM (an AEAD) with, as associated
data, the model, the row's primary key, the field's name and, for a client secret, the
provider, environment, URLs and options that decide where it is sent. A ciphertext copied to
another row, or a row whose destination was changed behind the app's back, fails to decrypt.
The AES key of each configured key is derived from it with HKDF-SHA256, so ``ENCRYPTION_KEYS``
keeps holding Fernet keys, rotatable as before. (0.1.0 stored unbound Fernet tokens: migration
0006 binds them; :func:`encrypt`/:func:`decrypt` remain for that.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import models
from django.db.models.query_utils import DeferredAttribute

from .conf import app_settings
from .exceptions import BindingError, ConfigurationError, DecryptionError, UnboundSecretError

__all__ = [
    "BOUND_PREFIX",
    "EncryptedTextField",
    "Sealed",
    "binding",
    "check_keys",
    "configured_keys",
    "decrypt",
    "encrypt",
    "fingerprint",
    "is_current",
    "rotate",
    "seal",
    "unseal",
]


def _derived_key(secret_key: str) -> bytes:
    # Only for development: a stable key derived from SECRET_KEY (check E001 forbids it without DEBUG).
    digest = hashlib.sha256(b"django-lightspeed-oauth:" + secret_key.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def configured_keys() -> tuple[str, ...]:
    """The keys in force, first one encrypting: ``ENCRYPTION_KEYS`` or one derived from SECRET_KEY."""
    keys = app_settings.ENCRYPTION_KEYS
    if keys:
        return keys
    if not settings.DEBUG:
        # Check E001 says so at start-up, but a WSGI process runs no checks: refuse at first use
        # rather than encrypt production secrets with a key that follows SECRET_KEY.
        raise ConfigurationError(
            'LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"] is empty and DEBUG is off: add a key, generated with '
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`."
        )
    return (_derived_key(settings.SECRET_KEY).decode(),)


@lru_cache(maxsize=8)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError) as err:
            raise ConfigurationError(
                f'LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"][{position - 1}] is not a valid Fernet key: '
                "generate one with `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`."
            ) from err
    return MultiFernet(fernets)


def _current() -> MultiFernet:
    return _fernet(configured_keys())


def encrypt(plaintext: str) -> str:
    """Encrypt ``plaintext`` with the first configured key, unbound (0.1.0's Fernet format)."""
    return _current().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    """Decrypt a Fernet token (0.1.0's format) with whichever configured key fits, or raise
    :class:`DecryptionError`."""
    try:
        return _current().decrypt(ciphertext.encode()).decode()
    except InvalidToken as err:
        raise DecryptionError(
            "A stored secret cannot be decrypted with any key in "
            'LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"]: was a key removed before '
            "`manage.py rotate_lightspeed_keys` ran?"
        ) from err


def rotate(ciphertext: str) -> str:
    """Re-encrypt a Fernet token (0.1.0's format) with the first configured key."""
    try:
        return _current().rotate(ciphertext.encode()).decode()
    except InvalidToken as err:
        raise DecryptionError(
            'A stored secret cannot be decrypted with any key in LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"].'
        ) from err


def fingerprint(secret: str) -> str:
    """A short, stable, one-way label for a secret, safe to show and log ("sha256:1a2b3c4d5e6f")."""
    if not secret:
        return ""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


# Bound secrets --------------------------------------------------------------------------------

#: Marks a bound ciphertext: ``lsb1:`` + base64url(key id (8) || nonce (12) || AES-GCM output).
BOUND_PREFIX = "lsb1:"
_KEY_ID_SIZE = 8
_NONCE_SIZE = 12


def _hkdf(key: bytes, purpose: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose).derive(key)


@lru_cache(maxsize=8)
def _aead_keys(keys: tuple[str, ...]) -> tuple[tuple[bytes, AESGCM], ...]:
    """(key id, cipher) per configured key, first one encrypting."""
    _fernet(keys)  # every key is a valid Fernet key, or a ConfigurationError naming it
    derived = []
    for key in keys:
        raw = base64.urlsafe_b64decode(key)
        key_id = _hkdf(raw, b"django-lightspeed-oauth/key-id/v1", _KEY_ID_SIZE)
        derived.append((key_id, AESGCM(_hkdf(raw, b"django-lightspeed-oauth/aes-256-gcm/v1", 32))))
    return tuple(derived)


def check_keys() -> None:
    """Raise :class:`ConfigurationError` unless every configured key is usable."""
    _aead_keys(configured_keys())


def binding(label: str, pk: Any, field: str, context: dict[str, Any] | None = None) -> bytes:
    """The associated data that ties a secret to ``field`` of row ``pk`` of model ``label``
    (``app_label.model_name``), and to ``context`` (what else must not change under it)."""
    if pk is None:
        raise ValueError("A secret can only be bound to a saved row (it has no primary key yet).")
    return json.dumps(
        [label, str(pk), field, context or {}], sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode()


def seal(plaintext: str, associated: bytes) -> str:
    """Encrypt ``plaintext`` with the first configured key, bound to ``associated``."""
    key_id, cipher = _aead_keys(configured_keys())[0]
    nonce = os.urandom(_NONCE_SIZE)
    body = cipher.encrypt(nonce, plaintext.encode(), associated)
    return BOUND_PREFIX + base64.urlsafe_b64encode(key_id + nonce + body).decode()


def _parts(ciphertext: str) -> tuple[bytes, bytes, bytes]:
    if not ciphertext.startswith(BOUND_PREFIX):
        raise UnboundSecretError(
            "A stored secret is in version 0.1.0's format, not bound to its row, and is refused: "
            "run `manage.py migrate lightspeed_oauth`, or `manage.py rotate_lightspeed_keys "
            "--bind-unbound` for values written by a 0.1.0 process after that migration."
        )
    try:
        raw = base64.urlsafe_b64decode(ciphertext[len(BOUND_PREFIX) :])
    except (binascii.Error, ValueError):
        raw = b""
    head = _KEY_ID_SIZE + _NONCE_SIZE
    if len(raw) <= head:
        raise BindingError("A stored secret is damaged (not a valid ciphertext).")
    return raw[:_KEY_ID_SIZE], raw[_KEY_ID_SIZE:head], raw[head:]


def unseal(ciphertext: str, associated: bytes) -> str:
    """Decrypt a bound ciphertext, checking that it belongs to ``associated``.

    :raises DecryptionError: no configured key wrote it (a key this process lacks).
    :raises BindingError: a configured key wrote it, for another row, field or destination.
    """
    key_id, nonce, body = _parts(ciphertext)
    candidates = [cipher for kid, cipher in _aead_keys(configured_keys()) if kid == key_id]
    if not candidates:
        raise DecryptionError(
            'A stored secret cannot be decrypted with any key in LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"]: '
            "was a key removed before `manage.py rotate_lightspeed_keys` ran, or is this process "
            "missing a key the others have?"
        )
    for cipher in candidates:
        try:
            return cipher.decrypt(nonce, body, associated).decode()
        except InvalidTag:
            continue
    raise BindingError(
        "A stored secret does not belong where it is: it was copied from another row, or the "
        "row's endpoints were changed outside the app (enter the client secret again in the admin "
        "if that change was meant); it is not used."
    )


def is_current(ciphertext: str) -> bool:
    """Whether ``ciphertext`` is bound and written with the first configured key."""
    if not ciphertext.startswith(BOUND_PREFIX):
        return False
    try:
        key_id = _parts(ciphertext)[0]
    except DecryptionError:
        return False
    return key_id == _aead_keys(configured_keys())[0][0]


def binding_of(instance: models.Model, field: str) -> bytes:
    """The binding of ``field`` of a model instance (see :meth:`secret_context` on models)."""
    context_of = getattr(instance, "secret_context", None)
    context = context_of(field) if context_of is not None else {}
    return binding(instance._meta.label_lower, instance.pk, field, context)


class Sealed:
    """A secret as the database holds it (ciphertext), decrypted only when it is read.

    Loading a row never decrypts: a row that cannot be decrypted (a key this process lacks, say)
    can still be listed, counted and skipped, and only reading its secret raises
    :class:`DecryptionError`. Each read checks the binding of the row as it is then.
    """

    __slots__ = ("_opened", "ciphertext")

    def __init__(self, ciphertext: str) -> None:
        self.ciphertext = ciphertext
        self._opened: tuple[bytes, str] | None = None

    def __repr__(self) -> str:
        return "<sealed secret>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sealed) and other.ciphertext == self.ciphertext

    def __hash__(self) -> int:
        return hash(self.ciphertext)

    def open(self, associated: bytes) -> str:
        if self._opened is None or self._opened[0] != associated:
            self._opened = (associated, unseal(self.ciphertext, associated))
        return self._opened[1]


class _SecretAttribute(DeferredAttribute):
    """Reads of an encrypted field: a sealed value is decrypted (and its binding checked) on read.

    A data descriptor (it has ``__set__``), so that it sees reads of a value already loaded.
    """

    def __set__(self, instance, value) -> None:
        instance.__dict__[self.field.attname] = value

    def __get__(self, instance, cls=None):
        if instance is None:
            return self
        value = super().__get__(instance, cls)
        if not isinstance(value, Sealed):
            return value
        try:
            return value.open(binding_of(instance, self.field.name))
        except DecryptionError as err:
            # Which row and which secret (never its value), so that a log line points at it.
            field = str(self.field.verbose_name).capitalize()
            where = f"{field} of {instance._meta.verbose_name} {instance.pk}"
            raise type(err)(f"{where}: {err.message}") from None


class EncryptedTextField(models.TextField):
    """A text field whose value is plain text in Python and a bound ciphertext in the database.

    Rows load without decrypting; a value is decrypted when it is first read (see :class:`Sealed`).
    A value is encrypted for its row when the instance is saved; a row that has no primary key
    yet is inserted first and its secrets written next, in one transaction (see
    ``BoundSecretsModel`` in models). ``QuerySet.update()`` takes only :class:`Sealed` values (from
    :func:`seal` and :func:`binding`) or "". It cannot be searched or filtered on, and is not
    editable in forms by default: a form that shows it would show the secret.
    """

    descriptor_class = _SecretAttribute

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("editable", False)
        kwargs.setdefault("blank", True)
        kwargs.setdefault("default", "")
        super().__init__(*args, **kwargs)

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        return Sealed(value)

    def pre_save(self, model_instance, add):
        if self.attname in model_instance.__dict__:
            value = model_instance.__dict__[self.attname]
        else:
            value = super().pre_save(model_instance, add)
        if isinstance(value, Sealed) or value is None or value == "":
            # A sealed value that was never replaced is written back as it is: re-binding it to
            # the row as it is now would bind it to whatever changed behind the app's back.
            return value
        if model_instance.pk is None:
            if getattr(model_instance, "_secrets_after_insert", False):
                return ""  # BoundSecretsModel.save() writes it once the row has its key
            raise ValueError(
                f"{model_instance._meta.label}.{self.name} can only be encrypted for a row with a "
                "primary key: use save() or objects.create() (not bulk_create)."
            )
        return Sealed(seal(str(value), binding_of(model_instance, self.name)))

    def get_prep_value(self, value):
        if isinstance(value, Sealed):
            return value.ciphertext
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        raise ValueError(
            f"{self.model._meta.label}.{self.name} is encrypted for its row: save the instance, or "
            "update() with a value from crypto.seal(value, crypto.binding(...)) wrapped in Sealed."
        )
