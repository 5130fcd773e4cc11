"""Merchants racing for one invitation in real OS processes on the same database: a use is taken
by one conditional UPDATE, so no more flows start than the invitation allows.

The processes (this file run as ``python -m tests.test_invitation_race COMMAND ...``) post the
invitation page through Django's request handling at the same moment (a file barrier), on the
database DATABASE_URL names, set up as in :mod:`tests.test_concurrency`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from . import test_concurrency
from .test_concurrency import ROOT, SharedDatabase, finish

# The process tests' fixtures: the same shared database (a SQLite file, or the server's test database).
shared_db = test_concurrency.shared_db
sqlite_template = test_concurrency.sqlite_template

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def spawn(shared: SharedDatabase, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.test_invitation_race", *args],
        cwd=ROOT,
        env=shared.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    shared.procs.append(proc)
    return proc


@pytest.mark.parametrize("max_uses, merchants", [(1, 6), (3, 6)])
def test_racing_merchants_start_no_more_flows_than_the_invitation_allows(shared_db, max_uses, merchants):
    token = finish(spawn(shared_db, "seed", str(max_uses)))["token"]
    racers = [spawn(shared_db, "post", token, f"203.0.113.{n}") for n in range(merchants)]
    shared_db.release(merchants)
    statuses = sorted(finish(proc)["status"] for proc in racers)

    assert statuses == [302] * max_uses + [410] * (merchants - max_uses)
    assert finish(spawn(shared_db, "count", token)) == {"requests": max_uses, "uses": max_uses}


# The worker side (run in the subprocesses) ------------------------------------------------------


def worker(argv: list[str]) -> dict[str, Any]:
    from .test_concurrency import _setup_django, _wait_at_barrier

    _setup_django()
    from django.test import Client

    from django_lightspeed_oauth.models import AuthorizationRequest, Invitation, hash_invitation_token
    from django_lightspeed_oauth.testing import make_client

    command, args = argv[0], argv[1:]
    if command == "seed":
        client = make_client(slug="race", provider="k-series", environment="trial")
        _invitation, token = Invitation.objects.create_for(client, max_uses=int(args[0]))
        return {"token": token}
    invitation = Invitation.objects.get(token_hash=hash_invitation_token(args[0]))
    if command == "count":
        invitation.refresh_from_db()
        count = AuthorizationRequest.objects.filter(invitation=invitation).count()
        return {"requests": count, "uses": invitation.uses}
    if command == "post":
        browser = Client(REMOTE_ADDR=args[1])
        url = Invitation.url_for(args[0])
        _wait_at_barrier()
        return {"status": browser.post(url).status_code}
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1:])), flush=True)
