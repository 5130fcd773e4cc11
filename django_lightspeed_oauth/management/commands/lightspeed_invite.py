"""``manage.py lightspeed_invite SLUG``: print an invitation link for one API client."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...models import ApiClient


def _positive_seconds(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise CommandError(f"--max-age must be a whole number of seconds, not {value!r}.") from None
    if seconds <= 0:
        raise CommandError(f"--max-age must be a positive number of seconds, not {seconds}.")
    return seconds


class Command(BaseCommand):
    help = (
        "Print a signed, expiring link a merchant can open, without a site login, to connect their "
        "Lightspeed account to an API client."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The API client's slug.")
        parser.add_argument(
            "--reference",
            default="",
            help="Your own label for the merchant, stored on the connected company.",
        )
        parser.add_argument(
            "--max-age",
            dest="max_age",
            default=None,
            help='Seconds the link stays valid (default: LIGHTSPEED_OAUTH["INVITATION_MAX_AGE"]).',
        )

    def handle(self, *args: Any, slug: str, reference: str, max_age: str | None, **options: Any) -> str:
        seconds = None if max_age is None else _positive_seconds(max_age)
        client = ApiClient.objects.filter(slug=slug).first()
        if client is None:
            known = ", ".join(ApiClient.objects.filter(is_active=True).values_list("slug", flat=True))
            raise CommandError(f"No API client with slug {slug!r}. Active clients: {known or 'none'}.")
        if not client.is_active:
            raise CommandError(f"The API client {slug!r} is not active: its invitation links would not work.")
        reference = reference.strip()
        if len(reference) > 255 or any(ord(c) < 32 for c in reference):
            raise CommandError("--reference must be at most 255 printable characters.")
        return client.invitation_url(reference=reference, max_age=seconds)
