"""``manage.py lightspeed_purge``: delete spent authorization requests, old token events and dead
invitations, as the retention settings say (also run by ``refresh_lightspeed_tokens --every``)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils.translation import gettext as _

from ...purging import purge

__all__ = ["Command"]


class Command(BaseCommand):
    help = (
        "Delete authorization requests that are finished or expired (never one in progress) past "
        "AUTHORIZATION_REQUEST_RETENTION days, token events older than TOKEN_EVENT_RETENTION days, "
        "and invitations expired, revoked or used up more than INVITATION_RETENTION days ago."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help=_("Count what would be deleted; delete nothing.")
        )
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help=_("Print the counts as one JSON object.")
        )

    def handle(self, *args: Any, dry_run: bool, as_json: bool, **options: Any) -> None:
        result = purge(dry_run=dry_run)
        if as_json:
            self.stdout.write(json.dumps({**result.as_dict(), "dry_run": dry_run}, sort_keys=True))
            return
        if options["verbosity"] >= 1:
            counts = {
                "requests": result.authorization_requests,
                "events": result.token_events,
                "invitations": result.invitations,
            }
            if dry_run:
                line = _(
                    "Would delete %(requests)s authorization requests, %(events)s token events and "
                    "%(invitations)s invitations."
                )
            else:
                line = _(
                    "Deleted %(requests)s authorization requests, %(events)s token events and "
                    "%(invitations)s invitations."
                )
            self.stdout.write(line % counts)
