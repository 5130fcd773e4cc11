"""Issue 10: sweeps in several processes and on several hosts share the work and repeat none of it.

Real OS processes (this file run as ``python -m tests.test_sweeps COMMAND ...``) run
``refresh_lightspeed_tokens`` over the same due companies on the SAME database as the test (set up
as in :mod:`tests.test_concurrency`), against the real token server that revokes a whole family
when a refresh token is used twice. Each sweep's ``--json`` summary counts its lock attempts.

The several-hosts test runs the sweeps in network namespaces (``ip netns``), each with its own
address and a veth pair to this host, reaching the database through a TCP proxy on the host's end
of the pair (PostgreSQL and MariaDB listen on 127.0.0.1 only) and the token server on the same
address. It needs root and iproute2, as CI has. On SQLite the namespaces share the database file
(one disk), so only the server databases make it the production case.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

import pytest

from django_lightspeed_oauth.testing import TokenServer

from .tcp_proxy import TcpProxy
from .test_concurrency import (
    LOCK_TIMEOUT,
    ROOT,
    SharedDatabase,
    _database_is_a_server,
    _default_port,
    finish,
)
from .test_concurrency import shared_db as shared_db  # fixtures
from .test_concurrency import sqlite_template as sqlite_template

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

N = 2000
LATENCY = 0.005  # seconds per token answer: short, so that the sweeps' own work is what is measured
TABLE = "lightspeed_oauth_connectedcompany"


def spawn(db: SharedDatabase, *args: str, prefix: tuple[str, ...] = (), **env: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "tests.test_sweeps", *args],
        cwd=ROOT,
        env={**db.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db.procs.append(proc)
    return proc


def run(db: SharedDatabase, *args: str, timeout: float = 120) -> dict[str, Any]:
    return finish(spawn(db, *args), timeout)


@pytest.fixture
def server():
    with TokenServer(latency=LATENCY, expires_in=3600) as token_server:
        yield token_server


@pytest.fixture
def sweep_db(shared_db):
    """The shared database, in WAL mode where it is SQLite (README's advice for several processes)."""
    if not _database_is_a_server():
        with sqlite3.connect(shared_db.env["LS_DB_NAME"]) as file:
            file.execute("PRAGMA journal_mode=WAL")
    return shared_db


def refreshed_count(db: SharedDatabase) -> int:
    """Companies whose new tokens are stored (read without Django's models, as often as needed)."""
    return _count(db, f"SELECT COUNT(*) FROM {TABLE} WHERE token_version > 0")


def refreshed_events_count(db: SharedDatabase) -> int:
    """ "refreshed" token events written (each is written just after its company's tokens)."""
    return _count(db, "SELECT COUNT(*) FROM lightspeed_oauth_tokenevent WHERE kind = 'refreshed'")


def _count(db: SharedDatabase, sql: str) -> int:
    if not _database_is_a_server():
        with sqlite3.connect(db.env["LS_DB_NAME"], timeout=10) as file:
            return file.execute(sql).fetchone()[0]
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def assert_each_refreshed_once(db: SharedDatabase, server: TokenServer, n: int) -> dict[str, Any]:
    stats = server.stats()
    assert stats["invalid_grants"] == 0, stats
    assert stats["revoked_families"] == 0, stats
    assert stats["refreshes"] == n == stats["families"], stats
    state = run(db, "state")
    assert state["versions"] == {"1": n}, state  # every company refreshed, none twice
    assert state["statuses"] == {"active": n}, state
    assert state["refreshed_events"] == n, state
    assert state["leases"] == 0, state
    return state


def assert_shared(summaries: list[dict[str, Any]], n: int) -> None:
    """The sweeps together refreshed each company once, each took part, and few locks collided."""
    for summary in summaries:
        assert summary["exit_code"] == 0 and summary["failed"] == 0, summary
        assert summary["refreshed"] > 0, summaries  # every sweep had its share of the work
    assert sum(s["refreshed"] for s in summaries) == n, summaries
    attempts = sum(s["lock_attempts"] for s in summaries)
    assert attempts / n < 1.2, summaries
    # Batches, not every company: the sweeps walked N companies between them, not N each.
    assert sum(s["considered"] for s in summaries) < 1.2 * n, summaries


def test_two_sweeps_share_2000_companies_and_refresh_each_once(sweep_db, server):
    seeded = run(sweep_db, "seed-many", server.url, str(N))
    sweeps = [spawn(sweep_db, "sweep", "--barrier", "--workers", "4") for _ in range(2)]
    sweep_db.release(len(sweeps))
    summaries = [finish(proc, timeout=600) for proc in sweeps]

    assert seeded["companies"] == N
    assert_shared(summaries, N)
    state = assert_each_refreshed_once(sweep_db, server, N)
    assert state["claimed"] == 0  # every batch was let go


def test_three_sweeps_one_of_them_in_two_processes_share_the_work(sweep_db, server):
    """``--processes 2`` and a third sweep beside it: three sweeps, one command's two children."""
    run(sweep_db, "seed-many", server.url, str(N))
    pair = spawn(sweep_db, "sweep", "--barrier", "--workers", "3", "--processes", "2")
    single = spawn(sweep_db, "sweep", "--barrier", "--workers", "3")
    sweep_db.release(2)
    both, alone = finish(pair, timeout=600), finish(single, timeout=600)

    assert_shared([both, alone], N)
    assert both["refreshed"] > alone["refreshed"] / 2  # two processes did more than a share each
    state = assert_each_refreshed_once(sweep_db, server, N)
    assert state["claimed"] == 0


def test_a_sweep_killed_half_way_has_its_batch_finished_within_the_lease(sweep_db, server):
    """SIGKILL a sweep in the middle, with some of its token requests in flight (unanswered, so
    their refresh tokens are not spent) and batches claimed: two sweeps started after it finish
    every company it held once its claims and leases run out, each company refreshed once."""
    n = 600
    run(sweep_db, "seed-many", server.url, str(n))
    victim = spawn(sweep_db, "sweep", "--workers", "4", "--batch-size", "100")
    _wait_for(lambda: server.stats()["refreshes"] >= n // 3, "the victim to get going", victim)
    server.hang = True  # from now on its requests reach the server and wait there, unanswered
    # Kill it once every answer it did get is stored, with its event: what is lost is claims and
    # leases only.
    _wait_for(
        lambda: (
            server.stats()["in_flight"] == server.stats()["hung"] >= 1
            and refreshed_count(sweep_db) == server.stats()["refreshes"]
            and refreshed_events_count(sweep_db) == server.stats()["refreshes"]
        ),
        "the victim's answers to be stored",
        victim,
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    left = n - refreshed_count(sweep_db)
    server.hang = False  # the hung requests are dropped unanswered
    assert left > 100  # it died with a claimed batch (and more) to go

    survivors = [spawn(sweep_db, "sweep", "--workers", "4", "--every", "0.5") for _ in range(2)]
    _wait_for(lambda: refreshed_count(sweep_db) == n, "the survivors to finish", *survivors, timeout=60)
    took = time.monotonic() - killed_at
    for proc in survivors:
        proc.send_signal(signal.SIGTERM)
    for proc in survivors:
        finish(proc, timeout=60)

    assert victim.returncode == -signal.SIGKILL
    # Its claims end LOCK_TIMEOUT after the last renewal, its leases LOCK_TIMEOUT and a third of
    # it later (the grace before a take-over); the rest is the survivors' start-up.
    assert took <= LOCK_TIMEOUT * 4 / 3 + 8, took
    assert server.stats()["dropped"] >= 1
    assert_each_refreshed_once(sweep_db, server, n)


# Several hosts ------------------------------------------------------------------------------------


def _ip(*args: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Hosts:
    """Network namespaces, each a "host" with its own address and a veth pair to this machine."""

    def __init__(self, count: int) -> None:
        if shutil.which("ip") is None:
            pytest.fail("iproute2's ip is missing: apt-get install iproute2")
        if os.geteuid() != 0:
            pytest.fail("network namespaces need root (CI runs as root)")
        self.tag = f"{os.getpid() % 100000}"
        base = f"10.{random.randint(64, 127)}.{random.randint(0, 255)}"
        self.names: list[str] = []
        self.addresses: list[str] = []  # each namespace's own address
        self.gateways: list[str] = []  # this machine's end of each pair
        self.count = count
        self.base = base

    def __enter__(self) -> Hosts:
        try:
            for i in range(self.count):
                name, outside, inside = f"ls{self.tag}h{i}", f"lso{self.tag}{i}", f"lsi{self.tag}{i}"
                gateway, address = f"{self.base}.{4 * i + 1}", f"{self.base}.{4 * i + 2}"
                _ip("netns", "add", name)
                self.names.append(name)
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", name)
                _ip("addr", "add", f"{gateway}/30", "dev", outside)
                _ip("link", "set", outside, "up")
                _ip("addr", "add", f"{address}/30", "dev", inside, namespace=name)
                _ip("link", "set", inside, "up", namespace=name)
                _ip("link", "set", "lo", "up", namespace=name)
                _ip("route", "add", "default", "via", gateway, namespace=name)
                self.gateways.append(gateway)
                self.addresses.append(address)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for i, name in enumerate(self.names):
            subprocess.run(["ip", "link", "del", f"lso{self.tag}{i}"], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_sweeps_on_several_hosts_share_one_database(sweep_db):
    """Two "hosts" (network namespaces, their own addresses) each run a sweep against the one
    database, reached over the network, and one token server: each company refreshed once."""
    n = 600
    with ExitStack() as stack:
        hosts = stack.enter_context(Hosts(2))
        # Everything the hosts reach is on this machine's end of the first pair; the second host
        # gets there by its default route.
        here = hosts.gateways[0]
        server = stack.enter_context(TokenServer(host=here, latency=LATENCY, expires_in=3600))
        env: dict[str, str] = {"LS_REPORT_ADDRESS": here}
        if _database_is_a_server():
            from django.db import connection

            target = connection.settings_dict
            proxy = TcpProxy(target["HOST"] or "127.0.0.1", int(target["PORT"] or _default_port()), here)
            stack.callback(proxy.close)
            env |= {"LS_DB_HOST": here, "LS_DB_PORT": str(proxy.port)}
        run(sweep_db, "seed-many", server.url, str(n))
        sweeps = [
            spawn(sweep_db, "sweep", "--barrier", "--workers", "4", prefix=("ip", "netns", "exec", h), **env)
            for h in hosts.names
        ]
        sweep_db.release(len(sweeps))
        summaries = [finish(proc, timeout=300) for proc in sweeps]

        assert [s["address"] for s in summaries] == hosts.addresses  # each ran on its own host
        if _database_is_a_server():
            assert {s["database_host"] for s in summaries} == {here}
        assert_shared(summaries, n)
        assert_each_refreshed_once(sweep_db, server, n)


def _wait_for(condition, what: str, *procs: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"a sweep ended while waiting for {what}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# The worker side (run in the subprocesses) ------------------------------------------------------


def _setup() -> None:
    from django.conf import settings

    from .test_concurrency import _setup_django

    if os.environ.get("LS_DB_HOST"):
        # Another "host": the database through the proxy on this machine's end of its veth pair
        # (_setup_django would point LS_DB_PORT at 127.0.0.1).
        settings.DATABASES["default"]["HOST"] = os.environ["LS_DB_HOST"]
        settings.DATABASES["default"]["PORT"] = os.environ.pop("LS_DB_PORT")
    _setup_django()


def _seed_many(url: str, n: int) -> dict[str, Any]:
    import secrets
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from django_lightspeed_oauth.models import ConnectedCompany
    from django_lightspeed_oauth.testing import make_client

    client = make_client(
        provider="custom",
        authorize_url=url + "/authorize",
        token_url=url + "/oauth/token",
        scopes="",
        provider_options={"token_auth": "body", "token_params": "form"},
    )
    expires = timezone.now() + timedelta(seconds=60)  # due (within REFRESH_WITHIN)
    # One by one (a stored secret is bound to its row's primary key), in one transaction.
    with transaction.atomic():
        for i in range(n):
            ConnectedCompany.objects.create(
                client=client,
                company_id=str(500_000 + i),
                name=f"Sweep company {i}",
                access_token="sweep-access-" + secrets.token_urlsafe(12),
                refresh_token="sweep-refresh-" + secrets.token_urlsafe(12),
                expires_at=expires,
            )
    return {"companies": ConnectedCompany.objects.count()}


def _state() -> dict[str, Any]:
    from django.db.models import Count

    from django_lightspeed_oauth.models import ConnectedCompany, TokenEvent

    companies = ConnectedCompany.objects.order_by()

    def counts(field: str) -> dict[str, int]:
        rows = companies.values_list(field).annotate(n=Count("pk")).values_list(field, "n")
        return {str(value): n for value, n in rows}

    return {
        "versions": counts("token_version"),
        "statuses": counts("status"),
        "refreshed_events": TokenEvent.objects.filter(kind=TokenEvent.Kind.REFRESHED).count(),
        "leases": companies.exclude(refresh_lock_id="").count(),
        "claimed": companies.exclude(sweep_claim_id="").count(),
    }


def _sweep(args: list[str]) -> dict[str, Any]:
    import socket
    from io import StringIO

    from django.core.management import call_command
    from django.db import connection
    from django.test import override_settings

    from .test_concurrency import _wait_at_barrier

    settings_override: dict[str, Any] = {}
    if "--batch-size" in args:
        at = args.index("--batch-size")
        settings_override["SWEEP_BATCH_SIZE"] = int(args[at + 1])
        del args[at : at + 2]
    if "--barrier" in args:
        args.remove("--barrier")
        _wait_at_barrier()
    from django.conf import settings

    out = StringIO()
    with override_settings(LIGHTSPEED_OAUTH={**settings.LIGHTSPEED_OAUTH, **settings_override}):
        try:
            call_command("refresh_lightspeed_tokens", *args, "--json", stdout=out)
        except SystemExit:
            pass
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    report = os.environ.get("LS_REPORT_ADDRESS")
    if report:
        # This process's own address on the way to the host: which "host" it ran on.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((report, 9))
            summary["address"] = probe.getsockname()[0]
        summary["database_host"] = connection.settings_dict["HOST"]
    return summary


def worker(argv: list[str]) -> dict[str, Any]:
    command, args = argv[0], argv[1:]
    _setup()
    if command == "seed-many":
        return _seed_many(args[0], int(args[1]))
    if command == "state":
        return _state()
    if command == "sweep":
        return _sweep(args)
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1:])), flush=True)
