"""The admin's overview of every connection: counts per API client, what expires soon, the last
24 hours of refreshes as a small server-side SVG chart, and the companies that need attention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncHour
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

from .models import ApiClient, ConnectedCompany, TokenEvent

Status = ConnectedCompany.Status
Kind = TokenEvent.Kind

#: Hours the chart covers, and the most companies listed as needing attention.
HOURS = 24
ATTENTION_LIMIT = 50


@dataclass
class Hour:
    start: datetime
    refreshed: int = 0
    failed: int = 0


def client_rows(now: datetime) -> list[ApiClient]:
    """Every API client with its companies counted by status and by what expires within the hour."""
    live = Q(companies__status__in=[Status.ACTIVE, Status.FAILING])
    return list(
        ApiClient.objects.order_by("name").annotate(
            active=Count("companies", filter=Q(companies__status=Status.ACTIVE)),
            failing=Count("companies", filter=Q(companies__status=Status.FAILING)),
            reauthorization=Count("companies", filter=Q(companies__status=Status.REAUTHORIZATION_REQUIRED)),
            disconnected=Count("companies", filter=Q(companies__status=Status.DISCONNECTED)),
            expiring=Count(
                "companies",
                filter=live
                & Q(companies__expires_at__gt=now, companies__expires_at__lte=now + timedelta(hours=1)),
            ),
            expired=Count("companies", filter=live & Q(companies__expires_at__lte=now)),
        )
    )


def hours(now: datetime) -> list[Hour]:
    """Refreshes and failed refreshes (re-authorization included) per hour of the last 24, oldest first."""
    end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=HOURS)
    buckets = [Hour(start + timedelta(hours=n)) for n in range(HOURS)]
    rows = (
        TokenEvent.objects.filter(
            created_at__gte=start,
            kind__in=[Kind.REFRESHED, Kind.REFRESH_FAILED, Kind.REAUTHORIZATION_REQUIRED],
        )
        .annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .values("hour", "kind")
        .annotate(n=Count("pk"))
    )
    for row in rows:
        index = int((row["hour"] - start).total_seconds() // 3600)
        if 0 <= index < HOURS:
            if row["kind"] == Kind.REFRESHED:
                buckets[index].refreshed += row["n"]
            else:
                buckets[index].failed += row["n"]
    return buckets


def needing_attention(now: datetime) -> list[ConnectedCompany]:
    """Failing, expired or re-authorization-required companies, the longest expired first."""
    return list(
        ConnectedCompany.objects.select_related("client")
        .filter(
            Q(status__in=[Status.FAILING, Status.REAUTHORIZATION_REQUIRED])
            | Q(status=Status.ACTIVE, expires_at__lte=now)
        )
        .order_by("expires_at", "pk")[:ATTENTION_LIMIT]
    )


def _number(value: float) -> str:
    return f"{value:.1f}"


def chart(buckets: list[Hour], *, width: int = 600, height: int = 140) -> SafeString:
    """A bar chart of ``buckets`` as inline SVG (no JavaScript): refreshes, with failures stacked on top."""
    top = max([b.refreshed + b.failed for b in buckets] + [1])
    plot_height = height - 30
    # The tallest bar stops below the "max per hour" label instead of running under it.
    scale = plot_height - 16
    slot = width / len(buckets)
    bar = max(2.0, slot - 4)
    bars = []
    for n, bucket in enumerate(buckets):
        x = n * slot + (slot - bar) / 2
        ok = scale * bucket.refreshed / top
        bad = scale * bucket.failed / top
        label = _("%(hour)s UTC: %(refreshed)d refreshed, %(failed)d failed") % {
            "hour": bucket.start.strftime("%H:00"),
            "refreshed": bucket.refreshed,
            "failed": bucket.failed,
        }
        bars.append(
            format_html(
                '<g><title>{}</title><rect class="ok" x="{}" y="{}" width="{}" height="{}"/>'
                '<rect class="bad" x="{}" y="{}" width="{}" height="{}"/></g>',
                label,
                *(_number(v) for v in (x, plot_height - ok, bar, ok, x, plot_height - ok - bad, bar, bad)),
            )
        )
    ticks = format_html_join(
        "",
        # Each label starts where its hour starts, so the first one is not cut at the left edge.
        '<text x="{}" y="{}" text-anchor="start">{}</text>',
        (
            (_number(n * slot), height - 12, bucket.start.strftime("%H:00"))
            for n, bucket in enumerate(buckets)
            if n % 6 == 0
        ),
    )
    total_ok = sum(b.refreshed for b in buckets)
    total_bad = sum(b.failed for b in buckets)
    title = _("Refreshes of the last 24 hours: %(refreshed)d refreshed, %(failed)d failed") % {
        "refreshed": total_ok,
        "failed": total_bad,
    }
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="ls-chart" role="img" viewBox="0 0 {} {}" '
        'width="{}" height="{}" aria-label="{}"><title>{}</title>'
        '<line x1="0" y1="{}" x2="{}" y2="{}" class="axis"/>{}{}'
        '<text x="{}" y="10" text-anchor="end">{}</text></svg>',
        width,
        height,
        width,
        height,
        title,
        title,
        plot_height,
        width,
        plot_height,
        SafeString("".join(bars)),
        ticks,
        width,
        _("max %(n)d per hour") % {"n": top},
    )


def overview_context(now: datetime | None = None) -> dict:
    now = now or timezone.now()
    buckets = hours(now)
    return {
        "clients": client_rows(now),
        "chart": chart(buckets),
        "refreshed_24h": sum(b.refreshed for b in buckets),
        "failed_24h": sum(b.failed for b in buckets),
        "attention": needing_attention(now),
        "attention_limit": ATTENTION_LIMIT,
        "now": timezone.localtime(now) if timezone.is_aware(now) else now,
    }
