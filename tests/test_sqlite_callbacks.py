"""Callbacks on a busy SQLite file: every spent code ends with stored tokens.

Real processes: the site (``runserver``, threaded, settings :mod:`tests.sqlite_site`) serves the app
and the sandbox's authorization servers from one SQLite FILE, while writer processes keep taking
SQLite's write lock (``BEGIN IMMEDIATE``, a write, a pause, ``COMMIT``) as other parts of a site do.
Staff members run whole flows over HTTP at the same time: confirm, consent in the sandbox, and the
callback, which exchanges the code (spending it) and stores the company.

Before, the store's transaction read and then wrote, and under Django's default (DEFERRED)
transactions it met ``database is locked`` as soon as a writer committed in between (18 of these 24
callbacks failed), and the merchant, whose code was spent, had to start over. Now its first statement
writes, so it waits for the lock, under DEFERRED as under ``"transaction_mode": "IMMEDIATE"``
(README's advice), and a store that still fails is retried from the tokens in memory (the tests
in one process below). This file is also the worker: ``python -m tests.test_sqlite_callbacks COMMAND ...``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import pytest
import requests
import responses

ROOT = Path(__file__).resolve().parent.parent
SLUG = "sandbox-o-series"  # a demo client of the sandbox (client authentication in the form body)
DRIVERS = 3  # staff members, each with a browser session, connecting at the same time
FLOWS_PER_DRIVER = 8
WRITERS = 3  # processes taking the write lock again and again
WRITE_HOLD = 0.05  # seconds a writer holds the lock each time, and then waits before the next

pytestmark = pytest.mark.processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(path: Path, site_url: str, transaction_mode: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.sqlite_site",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        LS_SQLITE_PATH=str(path),
        LS_SITE_URL=site_url,
        LS_SQLITE_TRANSACTION_MODE=transaction_mode,
        PYTHONUNBUFFERED="1",
    )
    return env


def _worker(env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_sqlite_callbacks", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _csrf(html: str) -> dict[str, str]:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, html[:500]
    return {"csrfmiddlewaretoken": match.group(1)}


def _connect_once(site_url: str, session_id: str, number: int) -> dict[str, Any]:
    """One whole flow, as a staff member's browser runs it; what the callback answered."""
    browser = requests.Session()
    browser.cookies.set("sessionid", session_id)
    confirm_url = f"{site_url}/lightspeed/connect/{SLUG}/?reference=busy-{number}"
    confirm = browser.get(confirm_url, timeout=60)
    assert confirm.status_code == 200, confirm.text[:500]
    headers = {"Referer": confirm.url}
    consent = browser.post(confirm.url, data=_csrf(confirm.text), headers=headers, timeout=60)
    assert consent.status_code == 200 and 'name="company"' in consent.text, consent.text[:500]
    company = re.search(r'name="company" value="([^"]+)"', consent.text)
    action = re.search(r'<form method="post" action="([^"]*)"', consent.text)
    assert company and action
    allowed = browser.post(
        urljoin(consent.url, action.group(1).replace("&amp;", "&")),
        data={**_csrf(consent.text), "company": company.group(1), "decision": "allow"},
        headers={"Referer": consent.url},
        allow_redirects=False,
        timeout=60,
    )
    assert allowed.status_code == 302 and "code=" in allowed.headers["Location"], allowed.text[:500]
    callback = browser.get(allowed.headers["Location"], allow_redirects=False, timeout=120)
    done = browser.get(urljoin(callback.url, callback.headers.get("Location", "")), timeout=60)
    return {
        "callback": callback.status_code,
        "to": callback.headers.get("Location", ""),
        "page": done.status_code,
        "connected": "Connected" in done.text,
    }


@pytest.mark.parametrize("transaction_mode", ["", "IMMEDIATE"], ids=["deferred", "immediate"])
def test_every_callback_stores_its_tokens_while_other_processes_write(tmp_path, transaction_mode):
    path = tmp_path / "busy.sqlite3"
    port = _free_port()
    site_url = f"http://127.0.0.1:{port}"
    env = _env(path, site_url, transaction_mode)
    seeded = _worker(env, "seed", site_url, str(DRIVERS))

    log = open(tmp_path / "server.log", "w")  # closed below, once the server has stopped
    server = subprocess.Popen(
        [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stop = tmp_path / "stop"
    writers: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{site_url}/lightspeed-sandbox/", timeout=5, allow_redirects=False)
                break
            except requests.ConnectionError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "the site did not start"
                time.sleep(0.2)
        writers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.test_sqlite_callbacks", "write", str(path), str(stop)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(WRITERS)
        ]
        with ThreadPoolExecutor(DRIVERS) as pool:
            runs = [
                pool.submit(
                    lambda session_id, driver: [
                        _connect_once(site_url, session_id, driver * FLOWS_PER_DRIVER + n)
                        for n in range(FLOWS_PER_DRIVER)
                    ],
                    session_id,
                    driver,
                )
                for driver, session_id in enumerate(seeded["sessions"])
            ]
            results = [result for run in runs for result in run.result(timeout=600)]
        stop.touch()
        writes = []
        for writer in writers:
            out, err = writer.communicate(timeout=60)
            assert writer.returncode == 0, out + err
            writes.append(json.loads(out.strip().splitlines()[-1])["writes"])
        state = _worker(env, "state")  # refreshes through the live sandbox
    finally:
        stop.touch()
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
        server.terminate()
        server.wait(timeout=30)
        log.close()
    server_log = (tmp_path / "server.log").read_text()

    flows = DRIVERS * FLOWS_PER_DRIVER
    failed = [r for r in results if not (r["callback"] == 302 and r["page"] == 200 and r["connected"])]
    assert failed == [], f"{len(failed)} of {flows} callbacks failed: {failed}\n{server_log[-3000:]}"
    # The writers really competed: each committed many times while the flows ran.
    assert min(writes) >= 10, writes
    # Every spent code (the sandbox's count) became stored tokens (the site's count), and the last
    # stored refresh token is the sandbox's current one: it refreshes.
    assert state["codes_spent"] == flows
    assert state["connected_requests"] == flows
    assert state["connected_events"] == flows
    assert state["other_outcomes"] == {}
    assert state["refreshed"] is True


# In one process: the retry itself, and where it must not happen ----------------------------------


def _flaky_store(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """Make the callback's store meet "database is locked" ``failures`` times, as SQLite does."""
    from django.db import OperationalError

    from django_lightspeed_oauth.models import ConnectedCompanyQuerySet

    original = ConnectedCompanyQuerySet.store_grant
    calls: list[int] = []

    def store_grant(self, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise OperationalError("database is locked")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ConnectedCompanyQuerySet, "store_grant", store_grant)
    return calls


def _callback_with_spent_code(staff_client: Any, mocked: Any, api_client: Any) -> Any:

    from .lightspeed_documented import k_series_businesses
    from .test_connect_flows import TOKEN_ANSWER

    mocked.add(
        responses.GET,
        "https://api.trial.lsk.lightspeed.app/f/data/businesses",
        json=k_series_businesses((1, "Bistro", [])),
    )
    mocked.add(responses.POST, "https://api.trial.lsk.lightspeed.app/oauth/token", json=TOKEN_ANSWER)
    started = staff_client.post(f"/lightspeed/connect/{api_client.slug}/")
    state = dict(parse_qsl(urlsplit(started["Location"]).query))["state"]
    return staff_client.get("/lightspeed/callback/", {"code": "c", "state": state}, follow=True)


@pytest.mark.django_db(transaction=True)  # the view's own transactions, as in production
def test_a_locked_database_is_retried_from_the_tokens_in_memory(
    staff_client, mocked, api_client, monkeypatch, caplog
):
    from django_lightspeed_oauth.models import AuthorizationRequest, ConnectedCompany, TokenEvent

    calls = _flaky_store(monkeypatch, failures=2)

    response = _callback_with_spent_code(staff_client, mocked, api_client)

    assert response.status_code == 200
    assert len(calls) == 3
    company = ConnectedCompany.objects.get()
    assert (company.access_token, company.refresh_token) == ("AT-1", "RT-1")
    assert AuthorizationRequest.objects.get().outcome == AuthorizationRequest.Outcome.CONNECTED
    assert TokenEvent.objects.filter(kind=TokenEvent.Kind.CONNECTED).count() == 1
    assert caplog.text.count("Database error while storing the company connected") == 2


@pytest.mark.django_db(transaction=True)  # the view's own transactions, as in production
def test_a_locked_database_while_consuming_the_state_is_retried(
    staff_client, mocked, api_client, monkeypatch
):
    """The first write of a callback (the state marked used, before the code is exchanged) meets
    "database is locked" as the store can: it is retried, and the connection completes."""
    from django.db import OperationalError
    from django.db.models import QuerySet

    from django_lightspeed_oauth.models import AuthorizationRequest, ConnectedCompany

    original = QuerySet.update
    failures: list[int] = []

    def update(self: Any, **kwargs: Any) -> int:
        if self.model is AuthorizationRequest and "used_at" in kwargs and len(failures) < 2:
            failures.append(1)
            raise OperationalError("database is locked")
        return original(self, **kwargs)

    monkeypatch.setattr(QuerySet, "update", update)
    response = _callback_with_spent_code(staff_client, mocked, api_client)

    assert response.status_code == 200 and len(failures) == 2
    assert ConnectedCompany.objects.get().access_token == "AT-1"
    assert AuthorizationRequest.objects.get().outcome == AuthorizationRequest.Outcome.CONNECTED


@pytest.mark.django_db  # the whole test inside a transaction: the caller's, which a failure spoils
def test_inside_the_callers_transaction_the_store_is_not_retried(
    staff_client, mocked, api_client, monkeypatch
):
    from django_lightspeed_oauth.models import AuthorizationRequest, ConnectedCompany

    calls = _flaky_store(monkeypatch, failures=1)

    response = _callback_with_spent_code(staff_client, mocked, api_client)

    assert response.status_code == 503
    assert "could not be saved" in response.content.decode()
    assert len(calls) == 1
    assert not ConnectedCompany.objects.exists()
    assert AuthorizationRequest.objects.get().outcome == AuthorizationRequest.Outcome.FAILED


# The worker side (run in subprocesses) ------------------------------------------------------------


def _seed(site_url: str, drivers: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from django_lightspeed_oauth.sandbox.management.commands.lightspeed_demo import set_up_demo

    call_command("migrate", verbosity=0)
    set_up_demo(site_url)
    admin = get_user_model().objects.get(username="admin")
    sessions = []
    for _ in range(drivers):
        client = Client()
        client.force_login(admin)
        sessions.append(client.cookies["sessionid"].value)
    return {"sessions": sessions}


def _write(path: str, stop: str) -> dict[str, Any]:
    """Take SQLite's write lock again and again until ``stop`` exists, as a busy site does."""
    connection = sqlite3.connect(path, timeout=60, isolation_level=None)
    connection.execute("CREATE TABLE IF NOT EXISTS busy_writer (id INTEGER PRIMARY KEY, at REAL)")
    writes = 0
    while not os.path.exists(stop):
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO busy_writer (at) VALUES (?)", (time.time(),))
        time.sleep(WRITE_HOLD)
        connection.execute("COMMIT")
        writes += 1
        time.sleep(WRITE_HOLD)
    connection.close()
    return {"writes": writes}


def _state() -> dict[str, Any]:
    from collections import Counter

    from django_lightspeed_oauth.models import AuthorizationRequest, ConnectedCompany, TokenEvent
    from django_lightspeed_oauth.sandbox.models import SandboxGrant

    outcomes = Counter(AuthorizationRequest.objects.values_list("outcome", flat=True))
    connected = outcomes.pop(AuthorizationRequest.Outcome.CONNECTED, 0)
    company = ConnectedCompany.objects.get(client__slug=SLUG)
    company.refresh(force=True)
    return {
        "codes_spent": SandboxGrant.objects.filter(code_used_at__isnull=False).count(),
        "connected_requests": connected,
        "connected_events": TokenEvent.objects.filter(kind=TokenEvent.Kind.CONNECTED).count(),
        "other_outcomes": dict(outcomes),
        "refreshed": company.status == ConnectedCompany.Status.ACTIVE and bool(company.get_access_token()),
    }


def main(argv: list[str]) -> None:
    command = argv[0]
    if command == "write":
        print(json.dumps(_write(argv[1], argv[2])))
        return
    import django

    django.setup()
    if command == "seed":
        print(json.dumps(_seed(argv[1], int(argv[2]))))
    elif command == "state":
        print(json.dumps(_state()))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
