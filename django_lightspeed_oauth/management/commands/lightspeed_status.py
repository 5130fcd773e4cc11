"""``manage.py lightspeed_status``: health of every connection; non-zero exit when one needs care."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

from django.core.management.base import BaseCommand
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from django_lightspeed_oauth.conf import app_settings
from django_lightspeed_oauth.management.selection import check_clients
from django_lightspeed_oauth.models import ApiClient, ConnectedCompany

Status = ConnectedCompany.Status


class Command(BaseCommand):
    help = (
        "Show connected companies per API client and status. Exits 1 when a company is "
        "failing, has an expired token, has an uncertain refresh outcome, or needs "
        "re-authorization, or when Lightspeed refused an API client's credentials."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--client",
            action="append",
            default=[],
            metavar="SLUG",
            help=_("Only this API client (repeatable; an unknown slug exits 2)."),
        )
        parser.add_argument("--json", action="store_true", help=_("Print JSON."))
        parser.add_argument(
            "--within",
            type=float,
            default=None,
            metavar="SECONDS",
            help=_("What counts as expiring soon (default REFRESH_WITHIN)."),
        )

    def handle(self, *args, **options) -> None:
        check_clients(options["client"])
        now = timezone.now()
        within = options["within"] if options["within"] is not None else app_settings.REFRESH_WITHIN
        soon = now + timedelta(seconds=float(within))
        clients = ApiClient.objects.order_by("name")
        if options["client"]:
            clients = clients.filter(slug__in=options["client"])
        live = Q(companies__status__in=[Status.ACTIVE, Status.FAILING])
        clients = clients.annotate(
            total=Count("companies"),
            active=Count("companies", filter=Q(companies__status=Status.ACTIVE)),
            failing=Count("companies", filter=Q(companies__status=Status.FAILING)),
            uncertain=Count("companies", filter=Q(companies__status=Status.UNCERTAIN)),
            reauthorization=Count("companies", filter=Q(companies__status=Status.REAUTHORIZATION_REQUIRED)),
            disconnected=Count("companies", filter=Q(companies__status=Status.DISCONNECTED)),
            expiring=Count(
                "companies", filter=live & Q(companies__expires_at__lte=soon, companies__expires_at__gt=now)
            ),
            expired=Count("companies", filter=live & Q(companies__expires_at__lte=now)),
        )
        rows = [
            {
                "client": c.slug,
                "provider": c.provider,
                "environment": c.environment,
                "active_client": c.is_active,
                "companies": c.total,
                "active": c.active,
                "failing": c.failing,
                "uncertain": c.uncertain,
                "reauthorization_required": c.reauthorization,
                "disconnected": c.disconnected,
                "expiring_soon": c.expiring,
                "expired": c.expired,
                "credentials_refused": c.credentials_refused_at is not None,
                "credentials_error": c.credentials_error,
            }
            for c in clients
        ]
        attention = [
            r
            for r in rows
            if r["failing"]
            or r["uncertain"]
            or r["reauthorization_required"]
            or r["expired"]
            or r["credentials_refused"]
        ]
        if options["json"]:
            self.stdout.write(json.dumps({"clients": rows, "needs_attention": bool(attention)}))
        else:
            self.write_table(rows, attention)
        if attention:
            sys.exit(1)

    def write_table(self, rows: list[dict], attention: list[dict]) -> None:
        columns = [
            ("client", "CLIENT", 24),
            ("provider", "PROVIDER", 12),
            ("environment", "ENV", 11),
            ("active", "ACTIVE", 7),
            ("expiring_soon", "EXPIRING", 9),
            ("expired", "EXPIRED", 8),
            ("failing", "FAILING", 8),
            ("uncertain", "UNCERTAIN", 10),
            ("reauthorization_required", "REAUTH", 7),
            ("disconnected", "GONE", 5),
        ]
        self.stdout.write(" ".join(f"{title:<{width}}" for _, title, width in columns).rstrip())
        for row in rows:
            text = " ".join(f"{row[key]!s:<{width}}" for key, _, width in columns).rstrip()
            flagged = row in attention
            self.stdout.write(self.style.ERROR(text) if flagged else text)
        for row in rows:
            if row["credentials_refused"]:
                self.stdout.write(
                    self.style.ERROR(
                        _(
                            "API client %(client)s: Lightspeed refused its credentials (%(error)s). "
                            "Fix the client id, secret or endpoints in the admin; its companies are "
                            "refreshed again once it is saved."
                        )
                        % {"client": row["client"], "error": row["credentials_error"]}
                    )
                )
        if not rows:
            self.stdout.write(_("No API clients."))
        elif attention:
            self.stdout.write(
                self.style.ERROR(
                    ngettext(
                        "%(count)d API client needs attention: see the failing, expired and "
                        "re-authorization columns.",
                        "%(count)d API clients need attention: see the failing, expired and "
                        "re-authorization columns.",
                        len(attention),
                    )
                    % {"count": len(attention)}
                )
            )
        else:
            self.stdout.write(self.style.SUCCESS(_("All connections healthy.")))
