"""``manage.py lightspeed_demo``: set up a demo site against the local sandbox servers (idempotent).

Creates the demo superuser ``admin`` / ``admin`` and one sandbox API client per Lightspeed flavour,
registered with the sandbox app under the same client id and secret. Development sites only.
The command belongs to the sandbox app: it exists only where ``django_lightspeed_oauth.sandbox`` is
installed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.urls import NoReverseMatch, reverse

from ....models import ApiClient
from ....providers import get_provider
from ...models import register_client

__all__ = ["DEMO_CLIENTS", "DemoClient", "DemoResult", "set_up_demo"]

DEMO_USERNAME = "admin"
DEMO_PASSWORD = "admin"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class DemoClient:
    """One demo API client: its slug, provider (= sandbox flavour), client id and scopes."""

    slug: str
    provider: str
    client_id: str
    scopes: str


#: One per flavour; client ids follow each product's own pattern (K-Series ids start with devp-).
DEMO_CLIENTS: tuple[DemoClient, ...] = (
    DemoClient("sandbox-k-series", "k-series", "devp-sandbox-demo", "financial-api orders-api items"),
    DemoClient(
        "sandbox-k-series-v2",
        "k-series-v2",
        "devp-v2-sandbox-demo",
        "openid offline_access financial-api orders-api items",
    ),
    DemoClient("sandbox-o-series", "o-series", "sandbox-o-series-demo", ""),
    DemoClient("sandbox-retail-r", "retail-r", "sandbox-retail-r-demo", "employee:all"),
    DemoClient("sandbox-retail-x", "retail-x", "sandbox-retail-x-demo", "retailer:read products:read"),
    DemoClient("sandbox-vendors", "vendors", "sandbox-vendors-demo", "openid profile offline_access"),
)


@dataclass
class DemoResult:
    """What :func:`set_up_demo` did, for the command to print."""

    user_created: bool
    clients: list[tuple[ApiClient, bool]]  # (client, created)
    base_url: str


def _clean_base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise CommandError(f"--base-url must be a scheme and host such as {DEFAULT_BASE_URL}, not {value!r}.")
    return value.rstrip("/")


def set_up_demo(base_url: str = DEFAULT_BASE_URL) -> DemoResult:
    """Create (or bring up to date) the demo user and sandbox API clients; safe to run again.

    An existing client keeps its secret; its redirect URI follows ``base_url``.
    """
    base_url = _clean_base_url(base_url)
    redirect_uri = base_url + reverse("lightspeed_oauth:callback")
    with transaction.atomic():
        user_model = get_user_model()
        user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: DEMO_USERNAME}).first()
        user_created = user is None
        if user_created:
            user_model._default_manager.create_superuser(
                **{user_model.USERNAME_FIELD: DEMO_USERNAME}, email="", password=DEMO_PASSWORD
            )
        clients = []
        for demo in DEMO_CLIENTS:
            existing = ApiClient.objects.filter(slug=demo.slug).first()
            created = existing is None
            client = existing or ApiClient(slug=demo.slug, client_secret=secrets.token_urlsafe(32))
            client.name = f"Sandbox {get_provider(demo.provider).name}"
            client.provider = demo.provider
            client.environment = ApiClient.Environment.SANDBOX
            client.client_id = demo.client_id
            client.redirect_uri = redirect_uri
            client.scopes = demo.scopes
            client.is_active = True
            client.full_clean()
            client.save()
            # The sandbox knows the same client, as Lightspeed would after registering it.
            register_client(
                demo.provider, client.client_id, client.client_secret, redirect_uri, name=client.name
            )
            clients.append((client, created))
    return DemoResult(user_created=user_created, clients=clients, base_url=base_url)


class Command(BaseCommand):
    help = (
        "Set up a demo: the superuser admin/admin and one sandbox API client per Lightspeed flavour, "
        "registered with the local sandbox servers. Safe to run again. Development sites only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--base-url",
            default=DEFAULT_BASE_URL,
            help=f"Scheme and host the site is served at (default {DEFAULT_BASE_URL}); "
            "redirect URIs and printed links start with it.",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="Run even with DEBUG off (it creates a superuser with a well-known password).",
        )

    def handle(self, *args: Any, base_url: str, force: bool, **options: Any) -> None:
        if not settings.DEBUG and not force:
            raise CommandError(
                f"DEBUG is off: lightspeed_demo creates the superuser {DEMO_USERNAME}/{DEMO_PASSWORD}, "
                "which belongs on a development site only. Use --force if this is one."
            )
        result = set_up_demo(base_url)
        base = result.base_url
        style = self.style
        if result.user_created:
            self.stdout.write(f"Created the demo superuser: login {DEMO_USERNAME} / password {DEMO_PASSWORD}")
        else:
            self.stdout.write(
                f"The user {DEMO_USERNAME!r} already exists (password unchanged; the demo's is "
                f"{DEMO_PASSWORD!r})."
            )
        self.stdout.write("")
        self.stdout.write(style.MIGRATE_HEADING("Sandbox API clients:"))
        for client, created in result.clients:
            connect = base + reverse("lightspeed_oauth:connect", kwargs={"slug": client.slug})
            invitation = client.invitation_url()
            if invitation.startswith("/"):
                invitation = base + invitation
            self.stdout.write(f"  {client.slug:<22} {'created' if created else 'updated'}: {client.name}")
            self.stdout.write(f"    connect (staff): {connect}")
            self.stdout.write(f"    invitation link: {invitation}")
        self.stdout.write("")
        self.stdout.write(style.MIGRATE_HEADING("Open:"))
        for label, name in (
            ("admin", "admin:index"),
            ("sandbox", "lightspeed_sandbox:index"),
            ("callback", "lightspeed_oauth:callback"),
        ):
            try:
                self.stdout.write(f"  {label:<9}{base}{reverse(name)}")
            except NoReverseMatch:
                self.stdout.write(f"  {label:<9}(not in this site's URLs: include them to use it)")
        self.stdout.write(
            style.SUCCESS(f"Demo ready. Log in to the admin as {DEMO_USERNAME} / {DEMO_PASSWORD}.")
        )
