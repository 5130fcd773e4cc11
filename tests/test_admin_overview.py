"""The admin's overview page: counts per API client, what expires soon, 24 hours of refreshes, attention."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from django_lightspeed_oauth.models import ConnectedCompany, TokenEvent
from django_lightspeed_oauth.overview import chart, hours
from django_lightspeed_oauth.testing import make_client, make_company

pytestmark = pytest.mark.django_db
Status = ConnectedCompany.Status
Kind = TokenEvent.Kind
OVERVIEW = "/admin/lightspeed_oauth/overview/"


def event(company, kind, hours_ago: float) -> None:
    e = TokenEvent.objects.create(company=company, kind=kind, message="", details={})
    TokenEvent.objects.filter(pk=e.pk).update(created_at=timezone.now() - timedelta(hours=hours_ago))


def cells(body: str, client_name: str) -> list[str]:
    row = body.split(f">{client_name}</a>")[1].split("</tr>")[0]
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def test_the_admin_index_links_to_the_overview(admin_client):
    body = admin_client.get(reverse("admin:index")).content.decode()
    assert f'href="{OVERVIEW}"' in body
    assert reverse("admin:lightspeed_oauth_overview_changelist") == OVERVIEW


def test_counts_per_client_by_status_and_expiry(admin_client):
    bistro, shop = make_client(name="Bistro"), make_client(name="Shop")
    make_company(bistro, expires_in=30 * 60)  # active, expiring within the hour
    make_company(bistro, expires_in=3 * 3600)  # active
    make_company(bistro, expires_in=-60)  # active but expired
    make_company(bistro, status=Status.FAILING, expires_in=20 * 60)
    make_company(bistro, status=Status.REAUTHORIZATION_REQUIRED)
    make_company(shop, status=Status.DISCONNECTED)

    body = admin_client.get(OVERVIEW).content.decode()

    # active, expiring within the hour, expired, failing, re-authorization, disconnected
    assert cells(body, "Bistro") == ["3", "2", "1", "1", "1", "0"]
    assert cells(body, "Shop") == ["0", "0", "0", "0", "0", "1"]
    assert re.search(r"\(UTC\)", body)  # the time the page is as of, with its time zone


def test_the_chart_shows_24_hours_of_refreshes_and_failures_as_svg(admin_client):
    company = make_company()
    for hours_ago in (0, 0, 5):
        event(company, Kind.REFRESHED, hours_ago)
    event(company, Kind.REFRESH_FAILED, 5)
    event(company, Kind.REAUTHORIZATION_REQUIRED, 1)
    event(company, Kind.REFRESHED, 30)  # older than the chart

    buckets = hours(timezone.now())
    assert len(buckets) == 24
    assert sum(b.refreshed for b in buckets) == 3 and sum(b.failed for b in buckets) == 2
    assert buckets[-1].refreshed == 2  # the current hour is the last bar

    body = admin_client.get(OVERVIEW).content.decode()
    svg = body.split('<svg xmlns="http://www.w3.org/2000/svg" class="ls-chart"')[1].split("</svg>")[0]
    assert svg.count('class="ok"') == 24 and svg.count('class="bad"') == 24
    assert "3 refreshed, 2 failed" in body
    assert "<script" not in body.split('id="overview-chart"')[1].split('id="overview-attention"')[0]


def test_an_empty_chart_draws_flat_bars():
    svg = chart(hours(timezone.now()))
    assert 'height="0.0"' in svg and "max 1 per hour" in svg


def test_companies_that_need_attention_are_listed_with_links(admin_client):
    client = make_client(name="Bistro")
    failing = make_company(client, name="Failing Co", status=Status.FAILING, last_error="503 from Lightspeed")
    lost = make_company(client, name="Lost Co", status=Status.REAUTHORIZATION_REQUIRED)
    expired = make_company(client, name="Late Co", expires_in=-600)
    make_company(client, name="Fine Co", expires_in=3600)
    make_company(client, name="Gone Co", status=Status.DISCONNECTED)

    body = admin_client.get(OVERVIEW).content.decode()
    attention = body.split('id="overview-attention"')[1]

    for company in (failing, lost, expired):
        assert reverse("admin:lightspeed_oauth_connectedcompany_change", args=[company.pk]) in attention
    assert "Fine Co" not in attention and "Gone Co" not in attention
    assert "503 from Lightspeed" in attention


def test_all_healthy_says_so(admin_client):
    make_company(make_client(), expires_in=3600)
    assert "every connection is healthy" in admin_client.get(OVERVIEW).content.decode()


def test_staff_need_the_view_permission_on_companies(client, django_user_model):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(OVERVIEW).status_code == 403
    assert OVERVIEW not in client.get(reverse("admin:index")).content.decode()
    user.user_permissions.add(Permission.objects.get(codename="view_connectedcompany"))
    assert client.get(OVERVIEW).status_code == 200


def test_the_tallest_bar_stays_below_the_label_and_the_first_hour_label_is_inside():
    buckets = hours(timezone.now())
    buckets[-1].refreshed = 4
    svg = chart(buckets, width=600, height=140)
    tops = [float(y) for y in re.findall(r'<rect class="ok" x="[\d.]+" y="([\d.]+)"', svg)]
    assert min(tops) >= 14  # the "max 4 per hour" label sits at y=10
    first_tick = re.search(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="(\w+)">', svg)
    assert first_tick is not None and first_tick.group(2) == "start" and float(first_tick.group(1)) >= 0
