"""The sandbox's registered clients, authorizations, tokens and behaviour switches."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.db import models, transaction
from django.utils import timezone

from .flavours import FLAVOURS, DemoCompany, get_flavour

__all__ = [
    "SandboxBehaviour",
    "SandboxClient",
    "SandboxGrant",
    "SandboxToken",
    "hash_secret",
    "register_client",
]

FLAVOUR_CHOICES = [(flavour.slug, flavour.label) for flavour in FLAVOURS.values()]

#: Seconds an authorization code may wait before it is exchanged.
CODE_LIFETIME = 60


def hash_secret(value: str) -> str:
    """Return the SHA-256 hex digest under which a code or token is stored and looked up."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class SandboxClient(models.Model):
    """An API client registered with one sandbox server, as Lightspeed registers partners' clients."""

    flavour = models.CharField(max_length=20, choices=FLAVOUR_CHOICES)
    client_id = models.CharField(max_length=200, unique=True)
    # Kept readable: the sandbox compares it and signs ID tokens with it, like the real server.
    client_secret = models.CharField(max_length=200)
    # Not a URLField: redirect URIs on hosts without a dot (testserver, a container name) are fine here.
    redirect_uri = models.CharField(max_length=500)
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["flavour", "client_id"]
        verbose_name = "sandbox client"

    def __str__(self) -> str:
        return self.name or self.client_id

    def secret_matches(self, client_secret: str) -> bool:
        return secrets.compare_digest(self.client_secret.encode(), client_secret.encode())


def register_client(
    flavour: str, client_id: str, client_secret: str, redirect_uri: str, name: str = ""
) -> SandboxClient:
    """Register (or update) an API client with the sandbox server of ``flavour``.

    Idempotent: calling it again with the same ``client_id`` updates the other fields.

    :raises KeyError: when ``flavour`` is not one of the sandbox's flavours.
    """
    get_flavour(flavour)
    client, _ = SandboxClient.objects.update_or_create(
        client_id=client_id,
        defaults={
            "flavour": flavour,
            "client_secret": client_secret,
            "redirect_uri": redirect_uri,
            "name": name,
        },
    )
    return client


class SandboxGrant(models.Model):
    """One authorization a merchant gave: its code, and the family of tokens issued from it."""

    client = models.ForeignKey(SandboxClient, on_delete=models.CASCADE, related_name="grants")
    company_id = models.CharField(max_length=100)
    company_name = models.CharField(max_length=200)
    domain_prefix = models.CharField(max_length=100, blank=True)
    scope = models.CharField(max_length=500, blank=True)
    redirect_uri = models.CharField(max_length=500)
    code_hash = models.CharField(max_length=64, unique=True)
    code_challenge = models.CharField(max_length=128, blank=True)
    nonce = models.CharField(max_length=200, blank=True)
    code_expires_at = models.DateTimeField()
    code_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "sandbox grant"

    def __str__(self) -> str:
        return f"{self.client} -> {self.company_name}"

    @classmethod
    def start(cls, client: SandboxClient, company_id: str, **fields: str) -> tuple[SandboxGrant, str]:
        """Create a grant for the company the merchant picked; return it and its (unhashed) code."""
        flavour = get_flavour(client.flavour)
        company = flavour.company(company_id)
        if company is None:
            raise ValueError(f"{company_id!r} is not a {flavour.label} demo company")
        code = new_secret()
        grant = cls.objects.create(
            client=client,
            company_id=company.id,
            company_name=company.name,
            domain_prefix=company.domain_prefix,
            code_hash=hash_secret(code),
            code_expires_at=timezone.now() + timedelta(seconds=CODE_LIFETIME),
            **fields,
        )
        return grant, code

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()

    def company(self) -> DemoCompany:
        return DemoCompany(self.company_id, self.company_name, self.domain_prefix)

    def code_is_expired(self) -> bool:
        return self.code_expires_at <= timezone.now()

    def consume_code(self) -> bool:
        """Mark the code used; ``False`` when it already was (also by a concurrent request)."""
        updated = SandboxGrant.objects.filter(pk=self.pk, code_used_at__isnull=True).update(
            code_used_at=timezone.now()
        )
        return updated == 1

    def revoke(self) -> None:
        """Revoke the grant and every token issued from it."""
        now = timezone.now()
        with transaction.atomic():
            SandboxGrant.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now)
            self.tokens.filter(revoked_at__isnull=True).update(revoked_at=now)
        self.revoked_at = self.revoked_at or now

    def issue(self, kind: str, lifetime: int | None) -> tuple[SandboxToken, str]:
        """Issue a token of ``kind`` for ``lifetime`` seconds (``None``: forever); return it and its value."""
        raw = new_secret()
        expires_at = None if lifetime is None else timezone.now() + timedelta(seconds=lifetime)
        token = self.tokens.create(kind=kind, token_hash=hash_secret(raw), expires_at=expires_at)
        return token, raw


class SandboxToken(models.Model):
    """An access or refresh token; only its hash is stored."""

    ACCESS = "access"
    REFRESH = "refresh"
    KIND_CHOICES = [(ACCESS, "access token"), (REFRESH, "refresh token")]

    grant = models.ForeignKey(SandboxGrant, on_delete=models.CASCADE, related_name="tokens")
    kind = models.CharField(max_length=10, choices=KIND_CHOICES)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # A refresh token that was exchanged (and, on a rotating server, retired).
    used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "sandbox token"

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.token_hash[:8]}"

    @classmethod
    def find(cls, kind: str, raw: str) -> SandboxToken | None:
        if not raw:
            return None
        return (
            cls.objects.select_related("grant__client").filter(kind=kind, token_hash=hash_secret(raw)).first()
        )

    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    def is_revoked(self) -> bool:
        return self.revoked_at is not None or self.grant.revoked_at is not None

    def mark_used(self) -> bool:
        """Mark a refresh token used; ``False`` when it already was (also by a concurrent request)."""
        updated = SandboxToken.objects.filter(pk=self.pk, used_at__isnull=True).update(used_at=timezone.now())
        return updated == 1


class SandboxBehaviour(models.Model):
    """Switches that make one sandbox server misbehave on purpose, to test how a site copes."""

    REFRESH_ERROR_CHOICES = [
        ("", "none: refresh normally"),
        ("invalid_grant", "400 invalid_grant"),
        ("server_error", "500 HTML page"),
    ]

    flavour = models.CharField(max_length=20, choices=FLAVOUR_CHOICES, unique=True)
    deny_authorization = models.BooleanField(
        default=False, help_text="The consent page denies access at once, as if the merchant clicked Deny."
    )
    refresh_error = models.CharField(
        max_length=20,
        choices=REFRESH_ERROR_CHOICES,
        blank=True,
        default="",
        help_text="How the token endpoint answers refresh grants.",
    )
    delay_ms = models.PositiveIntegerField(
        default=0, help_text="Milliseconds the token endpoint waits before answering."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["flavour"]
        verbose_name = "sandbox behaviour"
        verbose_name_plural = "sandbox behaviours"

    def __str__(self) -> str:
        return f"{self.get_flavour_display()} behaviour"

    @classmethod
    def for_flavour(cls, flavour: str) -> SandboxBehaviour:
        behaviour, _ = cls.objects.get_or_create(flavour=flavour)
        return behaviour
