"""``manage.py lightspeed_invite SLUG``: print (and maybe e-mail) an invitation link for an API client."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_email
from django.urls import reverse
from django.utils.translation import gettext as _

from ...conf import app_settings
from ...mail import send_invitation
from ...models import ApiClient, Invitation
from ..selection import usage_error


def _positive_seconds(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise usage_error(
            _("--max-age must be a whole number of seconds, not %(value)r.") % {"value": value}
        ) from None
    if seconds <= 0:
        raise usage_error(
            _("--max-age must be a positive number of seconds, not %(value)s.") % {"value": seconds}
        )
    return seconds


def _base_url(value: str | None) -> str:
    base = value or app_settings.SITE_URL or ""
    parts = urlsplit(base)
    if not base:
        raise usage_error(
            _(
                'An invitation link must be absolute: set LIGHTSPEED_OAUTH["SITE_URL"] '
                '(e.g. "https://example.com") or pass --base-url.'
            )
        )
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise usage_error(
            _("The site URL must look like https://example.com, not %(value)r.") % {"value": base}
        )
    return base.rstrip("/")


class Command(BaseCommand):
    help = (
        "Create an invitation and print its link (shown only now): a merchant opens it, without a "
        "site login, to connect their Lightspeed account to an API client, once unless --max-uses "
        "says more, until it expires or is revoked in the admin; --email also sends it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help=_("The API client's slug."))
        parser.add_argument(
            "--reference",
            default="",
            help=_("Your own label for the merchant, stored on the connected company."),
        )
        parser.add_argument(
            "--max-age",
            dest="max_age",
            default=None,
            help=_('Seconds the link stays valid (default: LIGHTSPEED_OAUTH["INVITATION_MAX_AGE"]).'),
        )
        parser.add_argument(
            "--max-uses",
            dest="max_uses",
            default="1",
            metavar="N",
            help=_("How many connections the link may make (default: 1)."),
        )
        parser.add_argument(
            "--base-url",
            dest="base_url",
            default=None,
            metavar="URL",
            help=_('Scheme and host of the site (default: LIGHTSPEED_OAUTH["SITE_URL"]).'),
        )
        parser.add_argument(
            "--email",
            default=None,
            metavar="ADDRESS",
            help=_("Also send the link to this address (Django's mail framework, DEFAULT_FROM_EMAIL)."),
        )

    def handle(
        self,
        *args: Any,
        slug: str,
        reference: str,
        max_age: str | None,
        base_url: str | None,
        email: str | None,
        max_uses: str,
        **options: Any,
    ) -> None:
        seconds = None if max_age is None else _positive_seconds(max_age)
        try:
            uses = int(max_uses)
        except ValueError:
            uses = 0
        if not 1 <= uses <= 10000:
            raise usage_error(
                _("--max-uses must be a whole number from 1 to 10000, not %(value)r.") % {"value": max_uses}
            )
        base = _base_url(base_url)
        client = ApiClient.objects.filter(slug=slug).first()
        if client is None:
            known = ", ".join(ApiClient.objects.filter(is_active=True).values_list("slug", flat=True))
            raise usage_error(
                _("No API client with slug %(slug)r. Active clients: %(known)s.")
                % {"slug": slug, "known": known or _("none")}
            )
        if not client.is_active:
            raise usage_error(
                _("The API client %(slug)r is not active: its invitation links would not work.")
                % {"slug": slug}
            )
        reference = reference.strip()
        if len(reference) > 255 or any(ord(c) < 32 for c in reference):
            raise usage_error(_("--reference must be at most 255 printable characters."))
        if email is not None:
            email = email.strip()
            try:
                validate_email(email)
            except ValidationError:
                raise usage_error(
                    _("--email must be an e-mail address, not %(value)r.") % {"value": email}
                ) from None
        _invitation, token = Invitation.objects.create_for(
            client, reference=reference, max_age=seconds, max_uses=uses, email=email or ""
        )
        url = base + reverse("lightspeed_oauth:invite", kwargs={"token": token})
        self.stdout.write(url)
        if email:
            try:
                send_invitation(client, url, email, max_age=seconds)
            except Exception as exc:  # SMTP and backend errors alike: the link above still works
                raise CommandError(
                    _("Could not send the e-mail to %(address)s: %(error)s")
                    % {"address": email, "error": exc}
                ) from exc
            self.stderr.write(_("Sent the invitation to %(address)s.") % {"address": email})
