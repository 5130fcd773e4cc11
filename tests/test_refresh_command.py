"""The refresh_lightspeed_tokens and lightspeed_status commands."""

from __future__ import annotations

import json
import os
import signal
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from django_lightspeed_oauth.models import ConnectedCompany
from django_lightspeed_oauth.refreshing import refresh_due
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_client, make_company

pytestmark = pytest.mark.django_db


def run(*args):
    """Run the command; return (exit code, stdout)."""
    from io import StringIO

    out = StringIO()
    try:
        call_command("refresh_lightspeed_tokens", *args, stdout=out, stderr=StringIO())
    except SystemExit as exit:
        return exit.code, out.getvalue()
    return 0, out.getvalue()


def test_refreshes_only_what_expires_within_the_window():
    client = make_client()
    due = make_company(client, expires_in=600)
    later = make_company(client, expires_in=7200)
    with FakeTokenEndpoint(client) as fake:
        code, out = run("--within", "900")
    assert code == 0
    assert fake.refresh_count == 1
    assert ConnectedCompany.objects.get(pk=due.pk).token_version == 1
    assert ConnectedCompany.objects.get(pk=later.pk).token_version == 0
    assert "Refreshed" in out and "       1" in out


def test_dry_run_lists_and_changes_nothing():
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        code, out = run("--dry-run")
    assert code == 0 and fake.refresh_count == 0
    assert company.company_id in out and "Would refresh" in out


def test_json_summary_and_exit_code_for_transient_failures():
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with(503)
        code, out = run("--json")
    summary = json.loads(out)
    assert code == 1
    assert summary["failed"] == 1 and summary["exit_code"] == 1
    assert summary["problems"][0]["company_id"] == company.company_id
    # Backing off: the next run leaves it alone.
    with FakeTokenEndpoint(company.client) as fake:
        assert run("--json")[0] == 0
        assert fake.refresh_count == 0


def test_exit_code_2_when_a_company_needs_reauthorization():
    company = make_company(expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        fake.fail_with("invalid_grant")
        code, out = run("-v", "2")
    assert code == 2
    assert "reauthorization_required" in out and company.company_id in out


def test_filters_by_client_and_company_and_force():
    a, b = make_client(), make_client()
    make_company(a, expires_in=7200)
    cb = make_company(b, expires_in=60)
    with FakeTokenEndpoint(a) as fake_a, FakeTokenEndpoint(b, mock=fake_a._mock) as fake_b:
        run("--client", a.slug)  # nothing of a is due
        assert fake_a.refresh_count == 0
        run("--client", a.slug, "--force")
        assert fake_a.refresh_count == 1 and fake_b.refresh_count == 0
        run("--company", cb.company_id)
        assert fake_b.refresh_count == 1


@pytest.mark.django_db(transaction=True)
def test_workers_refresh_everything_once():
    client = make_client()
    companies = [make_company(client, expires_in=60) for _ in range(12)]
    with FakeTokenEndpoint(client) as fake:
        summary = refresh_due(workers=4)
    assert summary.refreshed == 12 and fake.refresh_count == 12
    assert all(ConnectedCompany.objects.get(pk=c.pk).token_version == 1 for c in companies)


def test_a_company_locked_by_another_process_counts_as_busy_and_fine():
    company = make_company(expires_in=60)
    ConnectedCompany.objects.filter(pk=company.pk).update(
        refresh_lock_id="x", refresh_lock_until=timezone.now() + timedelta(seconds=30)
    )
    with FakeTokenEndpoint(company.client) as fake:
        code, out = run("--json")
    assert code == 0 and json.loads(out)["busy"] == 1 and fake.refresh_count == 0


def test_every_runs_until_sigterm():
    company = make_company(expires_in=60)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    with FakeTokenEndpoint(company.client) as fake:
        timer.start()
        code, out = run("--every", "0.1")
    assert code == 0 and "Stopped." in out
    assert fake.refresh_count == 1


def test_every_purges_between_sweeps_once_per_interval(settings, monkeypatch):
    from django_lightspeed_oauth.management.commands import refresh_lightspeed_tokens
    from django_lightspeed_oauth.models import TokenEvent

    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, "PURGE_INTERVAL": 3600}
    company = make_company(expires_in=7200)
    old = TokenEvent.objects.create(
        company=company, kind=TokenEvent.Kind.REFRESHED, created_at=timezone.now() - timedelta(days=400)
    )
    purges = []
    real_purge = refresh_lightspeed_tokens.purge
    monkeypatch.setattr(refresh_lightspeed_tokens, "purge", lambda: purges.append(1) or real_purge())
    timer = threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    code, out = run("--every", "0.1")

    assert code == 0 and "Stopped." in out
    assert len(purges) == 1  # the first sweep purged; the next one is an hour away
    assert not TokenEvent.objects.filter(pk=old.pk).exists()


def test_a_failing_purge_does_not_stop_the_sweeps(settings, monkeypatch, caplog):
    from django_lightspeed_oauth.management.commands import refresh_lightspeed_tokens

    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, "PURGE_INTERVAL": 0.1}

    def broken():
        raise RuntimeError("database went away")

    monkeypatch.setattr(refresh_lightspeed_tokens, "purge", broken)
    company = make_company(expires_in=60)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    with FakeTokenEndpoint(company.client) as fake:
        timer.start()
        code, out = run("--every", "0.1")
    assert code == 0 and "Stopped." in out
    assert fake.refresh_count == 1
    assert "The purge between refresh sweeps failed" in caplog.text


def test_without_a_purge_interval_the_loop_never_purges(settings, monkeypatch):
    from django_lightspeed_oauth.management.commands import refresh_lightspeed_tokens

    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, "PURGE_INTERVAL": None}
    monkeypatch.setattr(refresh_lightspeed_tokens, "purge", lambda: pytest.fail("purged"))
    make_company(expires_in=7200)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    code, _out = run("--every", "0.1")
    assert code == 0


def test_bad_arguments_are_refused():
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="workers"):
        call_command("refresh_lightspeed_tokens", "--workers", "0")
    with pytest.raises(CommandError, match="every"):
        call_command("refresh_lightspeed_tokens", "--every", "0")


def status():
    from io import StringIO

    out = StringIO()
    try:
        call_command("lightspeed_status", stdout=out)
    except SystemExit as exit:
        return exit.code, out.getvalue()
    return 0, out.getvalue()


def test_status_is_zero_when_healthy_and_one_when_something_needs_care():
    client = make_client(slug="shop")
    make_company(client, expires_in=3600)
    code, out = status()
    assert code == 0 and "All connections healthy" in out and "shop" in out
    make_company(client, expires_in=3600, status="reauthorization_required")
    code, out = status()
    assert code == 1 and "needs attention" in out


def test_status_names_a_client_whose_credentials_were_refused():
    client = make_client(slug="shop")
    company = make_company(client, expires_in=60)
    with FakeTokenEndpoint(client) as fake:
        fake.fail_with("invalid_client")
        company.refresh()
    code, out = status()
    assert code == 1
    assert "API client shop: Lightspeed refused its credentials" in out
    assert ConnectedCompany.objects.get(pk=company.pk).status == "active"


def test_the_sweep_reports_companies_of_a_refused_client_as_failed_without_asking_again():
    client = make_client(slug="shop")
    companies = [make_company(client, expires_in=60) for _ in range(3)]
    with FakeTokenEndpoint(client) as fake:
        fake.fail_with("invalid_client")
        companies[0].refresh()
        with pytest.raises(SystemExit) as exit:
            call_command("refresh_lightspeed_tokens", stdout=StringIO())
        assert len(fake.requests) == 1
    assert exit.value.code == 1
