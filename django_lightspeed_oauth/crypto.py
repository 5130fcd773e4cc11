"""Encryption of secrets at rest (client secrets, tokens, PKCE verifiers) with rotatable keys."""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models
from django.db.models.query_utils import DeferredAttribute

from .conf import app_settings
from .exceptions import ConfigurationError, DecryptionError

__all__ = [
    "EncryptedTextField",
    "Sealed",
    "configured_keys",
    "decrypt",
    "encrypt",
    "fingerprint",
    "rotate",
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
    """Encrypt ``plaintext`` with the first configured key."""
    return _current().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    """Decrypt with whichever configured key fits, or raise :class:`DecryptionError`."""
    try:
        return _current().decrypt(ciphertext.encode()).decode()
    except InvalidToken as err:
        raise DecryptionError(
            "A stored secret cannot be decrypted with any key in "
            'LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"]: was a key removed before '
            "`manage.py rotate_lightspeed_keys` ran?"
        ) from err


def rotate(ciphertext: str) -> str:
    """Re-encrypt ``ciphertext`` with the first configured key."""
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


class Sealed:
    """A secret as the database holds it (ciphertext), decrypted only when it is read.

    Loading a row never decrypts: a row that cannot be decrypted (a key this process lacks, say)
    can still be listed, counted and skipped, and only reading its secret raises
    :class:`DecryptionError`.
    """

    __slots__ = ("_plaintext", "ciphertext")

    def __init__(self, ciphertext: str) -> None:
        self.ciphertext = ciphertext
        self._plaintext: str | None = None

    def __repr__(self) -> str:
        return "<sealed secret>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sealed) and other.ciphertext == self.ciphertext

    def __hash__(self) -> int:
        return hash(self.ciphertext)

    def open(self) -> str:
        if self._plaintext is None:
            self._plaintext = decrypt(self.ciphertext)
        return self._plaintext


class _SecretAttribute(DeferredAttribute):
    """Reads of an encrypted field: a sealed value is decrypted on first read, per instance.

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
            return value.open()
        except DecryptionError as err:
            # Which row and which secret (never its value), so that a log line points at it.
            field = str(self.field.verbose_name).capitalize()
            where = f"{field} of {instance._meta.verbose_name} {instance.pk}"
            raise DecryptionError(f"{where}: {err.message}") from None


class EncryptedTextField(models.TextField):
    """A text field whose value is plain text in Python and ciphertext in the database.

    Rows load without decrypting; a value is decrypted when it is first read (see :class:`Sealed`).
    It cannot be searched or filtered on (every encryption of a value differs), so it is not
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
        # The stored value as it is: a sealed value that was never read is written back unchanged.
        if self.attname in model_instance.__dict__:
            return model_instance.__dict__[self.attname]
        return super().pre_save(model_instance, add)

    def get_prep_value(self, value):
        if isinstance(value, Sealed):
            return value.ciphertext
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(value)
