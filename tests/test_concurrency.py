"""Issue 3: at most one refresh per company at a time, across threads, processes and databases.

Real OS processes (this file run as ``python -m tests.test_concurrency COMMAND ...``) refresh one
company on the SAME database as the test, against a real local token server
(:mod:`django_lightspeed_oauth.testing.tokenserver`) whose refresh tokens are single-use: a token used twice
revokes the whole family and answers ``invalid_grant``, so a double refresh cannot go unnoticed.

The database is the one DATABASE_URL names: SQLite (a temporary FILE database, migrated once per
module, since pytest-django's in-memory database is invisible to other processes), PostgreSQL or
MariaDB/MySQL (pytest-django's test database, with ``transaction=True`` so that the processes see
the rows the test commits, and its real NAME handed to them)::

    .venv/bin/pytest tests/test_concurrency.py -q -p no:cacheprovider
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/lightspeed .venv/bin/pytest tests/test_concurrency.py
    DATABASE_URL=mysql://root@127.0.0.1:3306/lightspeed .venv/bin/pytest tests/test_concurrency.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from django_lightspeed_oauth.testing import TokenServer, fingerprint

from .tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
LOCK_TIMEOUT = 3  # seconds; the killed-refresher test waits this long for the lease to end
LATENCY = 0.3  # seconds the token server takes: long enough for every process to collide

# transaction=True: the rows a test writes are committed, so that other processes can see them.
pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


# The processes -----------------------------------------------------------------------------------


@dataclass
class SharedDatabase:
    """How a subprocess reaches the test's database, and helpers to run the worker commands."""

    env: dict[str, str]
    barrier_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, *args: str, prefix: tuple[str, ...] = (), **extra_env: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tests.test_concurrency", *args],
            cwd=ROOT,
            env={**self.env, **extra_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 60, **extra_env: str) -> dict[str, Any]:
        return finish(self.spawn(*args, **extra_env), timeout)

    def seed(self, server: TokenServer, expires_in: float) -> dict[str, Any]:
        return self.run("seed", server.url, str(expires_in))

    def state(self, pk: int) -> dict[str, Any]:
        return self.run("state", str(pk))

    def release(self, expected: int, timeout: float = 30) -> None:
        """Wait until ``expected`` processes wait at the barrier, then let them all go at once."""
        self.wait_ready(expected, timeout)
        (self.barrier_dir / "go").touch()

    def wait_ready(self, expected: int, timeout: float = 30) -> None:
        """Wait until ``expected`` processes wait at the barrier (started, their row read)."""
        deadline = time.monotonic() + timeout
        while len(list(self.barrier_dir.glob("ready-*"))) < expected:
            for proc in self.procs:
                if proc.poll() not in (None, 0):
                    out, err = proc.communicate()
                    pytest.fail(f"a worker died before the barrier:\n{out}\n{err}")
            if time.monotonic() > deadline:
                pytest.fail("the workers did not reach the barrier in time")
            time.sleep(0.01)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def finish(proc: subprocess.Popen, timeout: float = 60) -> dict[str, Any]:
    """Wait for a worker; return the JSON object on the last line of its output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker {proc.args[3:]} timed out:\n{out}\n{err}")
    if proc.returncode != 0:
        pytest.fail(f"worker {proc.args[3:]} exited {proc.returncode}:\n{out}\n{err}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"worker {proc.args[3:]} printed no result:\n{out}\n{err}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory) -> Path | None:
    """A migrated SQLite file, made once per module and copied for each test."""
    from django.conf import settings

    if not settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        return None
    path = tmp_path_factory.mktemp("sqlite") / "template.sqlite3"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_concurrency", "migrate"],
        check=False,
        cwd=ROOT,
        env={**_base_env(), "LS_DB_NAME": str(path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return path


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["LS_LOCK_TIMEOUT"] = str(LOCK_TIMEOUT)
    return env


@pytest.fixture
def shared_db(tmp_path, sqlite_template) -> SharedDatabase:
    env = _base_env()
    if sqlite_template is not None:
        path = tmp_path / "shared.sqlite3"
        shutil.copy(sqlite_template, path)
        env["LS_DB_NAME"] = str(path)
    else:
        from django.db import connection

        # pytest-django's test database (test_...): the processes must use it, not the real one.
        env["LS_DB_NAME"] = connection.settings_dict["NAME"]
        connection.close()  # nothing of ours stays open while the workers run
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env["LS_BARRIER"] = str(barrier)
    shared = SharedDatabase(env=env, barrier_dir=barrier)
    yield shared
    shared.kill_all()


@pytest.fixture
def server():
    with TokenServer(latency=LATENCY, expires_in=3600) as token_server:
        yield token_server


# The tests ----------------------------------------------------------------------------------------


def assert_one_clean_refresh(
    server: TokenServer, state: dict[str, Any], seeded_refresh: str, tokens: set[str]
) -> None:
    stats = server.stats()
    assert stats["invalid_grants"] == 0, stats
    assert stats["refreshes"] == 1, stats
    assert stats["revoked_families"] == 0, stats
    assert tokens == {state["access_token"]}
    # The database holds the newest refresh token of the family: nothing was lost.
    family = server.family(fingerprint(seeded_refresh))
    assert family == {"id": family["id"], "current": state["refresh_token"], "refreshes": 1, "revoked": False}
    assert state["token_version"] == 1
    assert state["status"] == "active"
    assert state["lock"] == ""
    assert state["events"] == {"refreshed": 1}


def test_processes_and_commands_refresh_once(shared_db, server):
    """8 processes call get_access_token() and 2 run the refresh command, all at the same moment."""
    seeded = shared_db.seed(server, expires_in=60)  # within REFRESH_MARGIN: must be refreshed
    pk = str(seeded["pk"])
    callers = [shared_db.spawn("get-token", pk, "--barrier") for _ in range(8)]
    commands = [shared_db.spawn("command", pk, "--barrier") for _ in range(2)]
    shared_db.release(len(callers) + len(commands))

    results = [finish(proc) for proc in callers]
    summaries = [finish(proc) for proc in commands]
    state = shared_db.state(int(pk))

    assert_one_clean_refresh(server, state, seeded["refresh_token"], {result["token"] for result in results})
    assert len(results) == 8
    for summary in summaries:
        assert summary["exit_code"] == 0, summary
        assert summary["failed"] == summary["reauthorization_required"] == 0, summary
        assert summary["refreshed"] + summary["busy"] + summary["fresh"] == summary["considered"]
    # Exactly one of the ten did the refresh; the others used its token.
    assert sum(r["refreshed_here"] for r in results) + sum(s["refreshed"] for s in summaries) == 1


def test_threads_in_one_process_refresh_once(shared_db, server):
    """16 threads, each with its own instance and connection; half of them force a refresh."""
    seeded = shared_db.seed(server, expires_in=-5)  # already expired
    result = shared_db.run("threads", str(seeded["pk"]), "16")
    state = shared_db.state(seeded["pk"])
    assert result["errors"] == []
    assert_one_clean_refresh(server, state, seeded["refresh_token"], set(result["tokens"]))
    assert result["outcomes"].get("refreshed") == 1, result["outcomes"]


def test_the_harness_sees_a_double_refresh(shared_db, server):
    """The same run with the lock sabotaged: the server catches the reuse and revokes the grant."""
    seeded = shared_db.seed(server, expires_in=-5)
    result = shared_db.run("threads", str(seeded["pk"]), "8", LS_SABOTAGE="1")
    stats = server.stats()
    assert stats["refreshes"] == 1 and stats["invalid_grants"] >= 1, stats
    assert stats["revoked_families"] == 1  # (the row's final status depends on who wrote last)
    assert len(result["tokens"]) + len(result["errors"]) == 8


def test_failing_server_is_asked_once_not_by_every_caller(shared_db, server):
    """8 threads, 3 calls each, on a token that is still valid but due, while the server answers
    503 with Retry-After: they all get the current token, and the server is asked once."""
    seeded = shared_db.seed(server, expires_in=60)
    server.fail_status = 503
    server.latency = 0.05
    result = shared_db.run("get-many", str(seeded["pk"]), "8", "3")
    state = shared_db.state(seeded["pk"])
    assert result["errors"] == []
    assert set(result["tokens"]) == {state["access_token"]}  # the old one, still valid
    assert state["status"] == "failing"
    assert server.stats()["failures"] == 1, server.stats()


def test_new_refresh_token_survives_a_failed_write(shared_db, server):
    """The write of the new tokens fails once after the server rotated them (as SQLite's
    "database is locked" did under 16 workers in the benchmark): the new refresh token must not be
    lost, or the next refresh spends the old one and the merchant must connect again."""
    seeded = shared_db.seed(server, expires_in=-5)
    pk = str(seeded["pk"])
    first = shared_db.run("refresh", pk, LS_FAIL_TOKEN_WRITE="1")
    later = shared_db.run("get-token", pk, timeout=LOCK_TIMEOUT + 30)
    state = shared_db.state(int(pk))
    stats = server.stats()
    assert stats["invalid_grants"] == 0, (first, stats)
    family = server.family(fingerprint(seeded["refresh_token"]))
    assert family["current"] == state["refresh_token"] and not family["revoked"]
    assert later["token"] == state["access_token"] and state["status"] == "active"


def test_killed_refresher_blocks_only_for_the_lease(shared_db, server):
    """A refresher SIGKILLed mid-request leaves its lock; another process takes over after
    LOCK_TIMEOUT seconds and refreshes once, with the refresh token that was never spent."""
    seeded = shared_db.seed(server, expires_in=-5)
    pk = str(seeded["pk"])
    server.hang = True
    victim = shared_db.spawn("refresh", pk)
    deadline = time.monotonic() + 20
    while server.stats()["hung"] < 1:
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "the refresher never reached the token server"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    server.hang = False  # the hung request is dropped unanswered: its token was not spent

    survivor = shared_db.run("refresh", pk, timeout=LOCK_TIMEOUT + 30)
    state = shared_db.state(int(pk))

    assert victim.returncode == -signal.SIGKILL
    assert survivor["outcome"] == "refreshed"
    assert survivor["waited"] is True  # it found the dead refresher's lock
    (victim_at, _, first), (survivor_at, _, second) = server.history
    assert (first, second) == ("dropped", "refreshed")
    # The victim took the lease just before its request; the survivor had to wait for the lease
    # to run out, and not much longer (its own start-up included).
    assert LOCK_TIMEOUT - 0.5 <= survivor_at - victim_at <= LOCK_TIMEOUT + 5, survivor_at - victim_at
    assert_one_clean_refresh(server, state, seeded["refresh_token"], {survivor["token"]})
    assert server.stats()["dropped"] == 1


def _wait_for(condition, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _database_is_a_server() -> bool:
    from django.conf import settings

    return not settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")


def _faketime(offset: str) -> tuple[str, ...]:
    """A prefix running a command with the C library's clock moved by ``offset`` (Debian's
    faketime; ``make test`` installs it where it can)."""
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.fail("faketime is missing: apt-get install faketime (make test does it as root)")
    return (faketime, "-f", offset)


def test_a_process_whose_clock_runs_ahead_waits_for_a_live_refresher(shared_db, server):
    """A refresher waits for a slow token endpoint (longer than the lease, which it renews); a
    process whose clock is an hour ahead asks meanwhile: it must not take the lease over."""
    seeded = shared_db.seed(server, expires_in=60)
    pk = str(seeded["pk"])
    server.latency = LOCK_TIMEOUT + 1.5
    # The database's clock decides; where the database is a server, skew the whole C library.
    # The skewed process starts first and waits at the barrier with the old row read, so that a
    # slow start on a busy machine cannot bring it in after the refresh was stored.
    prefix = _faketime("+1h") if _database_is_a_server() else ()
    skewed = shared_db.spawn("get-token", pk, "--barrier", prefix=prefix, LS_SKEW_SECONDS="3600")
    shared_db.wait_ready(1)
    first = shared_db.spawn("refresh", pk)
    _wait_for(lambda: server.stats()["in_flight"] == 1, "the first refresh to reach the server")
    time.sleep(LOCK_TIMEOUT / 2)
    shared_db.release(1)

    done, late = finish(first), finish(skewed)
    state = shared_db.state(int(pk))

    assert done["outcome"] == "refreshed"
    assert_one_clean_refresh(server, state, seeded["refresh_token"], {done["token"], late["token"]})
    assert late["refreshed_here"] == 0


def test_a_dripping_answer_keeps_its_lease(shared_db, server):
    """The token endpoint rotates at once and sends its answer over twice the lease, a few bytes
    at a time; three processes ask meanwhile: one refresh request, the connection kept."""
    seeded = shared_db.seed(server, expires_in=60)
    pk = str(seeded["pk"])
    server.latency = 0
    server.drip = 2 * LOCK_TIMEOUT
    first = shared_db.spawn("refresh", pk)
    _wait_for(lambda: server.stats()["requests"] == 1, "the refresh to reach the server")
    time.sleep(LOCK_TIMEOUT + 0.5)  # past the first lease: only its renewal keeps it
    others = [shared_db.spawn("get-token", pk) for _ in range(3)]

    done = finish(first, timeout=60)
    tokens = {finish(proc, timeout=60)["token"] for proc in others}
    state = shared_db.state(int(pk))

    assert done["outcome"] == "refreshed"
    assert_one_clean_refresh(server, state, seeded["refresh_token"], tokens | {done["token"]})


def test_a_frozen_refresher_is_taken_over_and_does_not_overwrite_when_it_wakes(shared_db, server):
    """SIGSTOP a refresher past its lease: another process refreshes within the bound; the frozen
    one, resumed, finds a newer outcome and leaves it alone."""
    seeded = shared_db.seed(server, expires_in=-5)
    pk = str(seeded["pk"])
    server.hang = True
    frozen = shared_db.spawn("refresh", pk)
    _wait_for(lambda: server.stats()["hung"] == 1, "the refresher to reach the server")
    frozen.send_signal(signal.SIGSTOP)
    server.hang = False  # its request is dropped unanswered: that refresh token was not spent
    try:
        started = time.monotonic()
        survivor = shared_db.run("refresh", pk, timeout=LOCK_TIMEOUT + 30)
        took = time.monotonic() - started
    finally:
        frozen.send_signal(signal.SIGCONT)
    woken = finish(frozen)
    state = shared_db.state(int(pk))

    assert survivor["outcome"] == "refreshed" and survivor["waited"] is True
    assert took <= LOCK_TIMEOUT + 5, took
    assert woken["outcome"] == "fresh"  # it found the survivor's outcome and kept it
    assert_one_clean_refresh(server, state, seeded["refresh_token"], {survivor["token"]})


@pytest.fixture
def database_proxy():
    from django.db import connection

    if not _database_is_a_server():
        yield None
        return
    settings = connection.settings_dict
    proxy = TcpProxy(settings["HOST"] or "127.0.0.1", int(settings["PORT"] or _default_port()))
    yield proxy
    proxy.close()


def _default_port() -> int:
    from django.db import connection

    return 5432 if connection.vendor == "postgresql" else 3306


def _block_writes(shared_db, database_proxy):
    """Refuse the workers' database for a while: cut the proxy (a server database going away) or
    hold SQLite's write lock (a busy file)."""
    if database_proxy is not None:
        database_proxy.cut()
        return database_proxy.restore
    import sqlite3

    # Wait for the write lock rather than fail when it is taken: the workers write all the time
    # (a waiter's conditional UPDATE takes the lock even when it matches no row, the lease keeper
    # renews), and a worker preempted while holding it, on a loaded machine, holds it a while.
    blocker = sqlite3.connect(shared_db.env["LS_DB_NAME"], timeout=10, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    def release() -> None:
        blocker.execute("COMMIT")
        blocker.close()

    return release


def test_the_database_refusing_us_after_the_token_answer_loses_no_token(shared_db, server, database_proxy):
    """Right after the token endpoint rotated the token, the database refuses the refresher for
    twice the lease (a restart, a failover, a locked file). Others asking meanwhile give up with an
    error, never a second request; when the database is back the new tokens are stored, the
    status is not turned back, and the next caller gets the token."""
    seeded = shared_db.seed(server, expires_in=-5)
    pk = str(seeded["pk"])
    env = {"LS_DB_PORT": str(database_proxy.port)} if database_proxy else {}
    server.latency = 1.0
    command = shared_db.spawn("command", pk, **env)
    _wait_for(lambda: server.stats()["in_flight"] == 1, "the refresh to reach the server")
    release = _block_writes(shared_db, database_proxy)
    try:
        _wait_for(lambda: server.stats()["refreshes"] == 1, "the token answer")
        meanwhile = [shared_db.spawn("refresh", pk, **env) for _ in range(2)]
        time.sleep(2 * LOCK_TIMEOUT)
    finally:
        release()
    summary = finish(command, timeout=60)
    for proc in meanwhile:
        proc.communicate(timeout=60)  # they may fail: nobody may send a second request
    later = shared_db.run("get-token", pk)
    state = shared_db.state(int(pk))

    assert summary["refreshed"] == 1 and summary["exit_code"] == 0, summary
    assert_one_clean_refresh(server, state, seeded["refresh_token"], {later["token"]})


def test_a_database_restart_while_refreshes_are_in_flight_loses_nothing(shared_db, server, database_proxy):
    """Every connection to the database drops (a restart) while four processes refresh."""
    seeded = shared_db.seed(server, expires_in=-5)
    pk = str(seeded["pk"])
    env = {"LS_DB_PORT": str(database_proxy.port)} if database_proxy else {}
    server.latency = 1.0
    callers = [shared_db.spawn("get-token", pk, "--barrier", **env) for _ in range(4)]
    shared_db.release(len(callers))
    _wait_for(lambda: server.stats()["in_flight"] == 1, "the refresh to reach the server")
    release = _block_writes(shared_db, database_proxy)
    try:
        time.sleep(0.5)
    finally:
        release()
    results = [finish(proc, timeout=60) for proc in callers]
    state = shared_db.state(int(pk))

    assert_one_clean_refresh(server, state, seeded["refresh_token"], {r["token"] for r in results})


def test_token_server_command_line():
    """The server runs as its own process too (for other machines, benchmarks, other tools)."""
    import requests

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "django_lightspeed_oauth.testing.tokenserver",
            "--port",
            "0",
            "--latency-ms",
            "10",
            "--strict",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        token = {
            "grant_type": "refresh_token",
            "refresh_token": "seeded-token",
            "client_id": "id",
            "client_secret": "secret",
        }
        assert requests.post(url + "/oauth/token", data=token, timeout=5).status_code == 400
        assert requests.post(url + "/seed", data={"refresh_token": "seeded-token"}, timeout=5).ok
        answer = requests.post(url + "/oauth/token", data=token, timeout=5)
        assert answer.status_code == 200
        new = answer.json()["refresh_token"]
        reused = requests.post(url + "/oauth/token", data=token, timeout=5)
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
        # The whole family is revoked: the new token is refused too.
        after = requests.post(url + "/oauth/token", data={**token, "refresh_token": new}, timeout=5)
        assert after.json()["error"] == "invalid_grant"
        stats = requests.get(url + "/stats", timeout=5).json()
        assert stats["refreshes"] == 1 and stats["invalid_grants"] == 3
        assert stats["revoked_families"] == 1
        family = requests.get(url + "/family", params={"fingerprint": fingerprint(new)}, timeout=5).json()
        assert family["current"] == fingerprint(new) and family["revoked"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert proc.returncode == 0


# The worker side (run in the subprocesses) ------------------------------------------------------


def _setup_django() -> None:
    import django
    from django.conf import settings

    name = os.environ.get("LS_DB_NAME")
    if name:
        settings.DATABASES["default"]["NAME"] = name
        settings.DATABASES["default"].pop("TEST", None)
    if os.environ.get("LS_DB_PORT"):  # through the test's proxy, which it can cut
        settings.DATABASES["default"]["HOST"] = "127.0.0.1"
        settings.DATABASES["default"]["PORT"] = os.environ["LS_DB_PORT"]
    if os.environ.get("LS_SKEW_SECONDS"):
        _skew_clock(float(os.environ["LS_SKEW_SECONDS"]))
    overrides: dict[str, Any] = {}
    if os.environ.get("LS_LOCK_TIMEOUT"):
        overrides["LOCK_TIMEOUT"] = float(os.environ["LS_LOCK_TIMEOUT"])
        # Keep check E004's rule (three connects and a read must fit in the lease).
        overrides["HTTP_TIMEOUT"] = (0.5, max(0.5, overrides["LOCK_TIMEOUT"] - 2))
    settings.LIGHTSPEED_OAUTH = {**settings.LIGHTSPEED_OAUTH, **overrides}
    django.setup()
    if os.environ.get("LS_SABOTAGE"):
        _sabotage()
    if os.environ.get("LS_FAIL_TOKEN_WRITE"):
        _fail_first_token_write()


def _skew_clock(seconds: float) -> None:
    """This process's idea of the time runs ``seconds`` ahead (faketime does the same for the C
    library; this also works where the database's clock is this process's, as with SQLite)."""
    from datetime import timedelta

    from django.utils import timezone

    real = timezone.now
    timezone.now = lambda: real() + timedelta(seconds=seconds)


def _sabotage() -> None:
    """Refresh without the lock, to show that these tests see a double refresh when there is one."""
    from django_lightspeed_oauth import tokens

    def unlocked(company, *, force, within, wait):
        if not force and not company.needs_refresh(within):
            return tokens.RefreshResult(company, tokens.FRESH)
        return tokens._refresh_locked(company, "", False)

    tokens._refresh = unlocked


def _fail_first_token_write() -> None:
    """Make the first UPDATE that stores new tokens fail as a locked SQLite database does."""
    from django.db import OperationalError
    from django.db.models import QuerySet

    original = QuerySet.update
    failed = []

    def update(self, **values):
        if "access_token" in values and not failed:
            failed.append(True)
            raise OperationalError("database is locked")
        return original(self, **values)

    QuerySet.update = update


def _wait_at_barrier() -> None:
    barrier = Path(os.environ["LS_BARRIER"])
    (barrier / f"ready-{os.getpid()}").touch()
    go = barrier / "go"
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("barrier timeout")
        time.sleep(0.002)


def _state(pk: int) -> dict[str, Any]:
    from django.db.models import Count

    from django_lightspeed_oauth.models import ConnectedCompany, TokenEvent

    company = ConnectedCompany.objects.get(pk=pk)
    events = dict(
        TokenEvent.objects.filter(company=company)
        .values_list("kind")
        .annotate(n=Count("pk"))
        .values_list("kind", "n")
    )
    events.pop("connected", None)
    return {
        "access_token": company.access_token,
        "refresh_token": company.refresh_token_fingerprint,
        "token_version": company.token_version,
        "status": company.status,
        "lock": company.refresh_lock_id,
        "events": events,
    }


def worker(argv: list[str]) -> dict[str, Any]:
    command, args = argv[0], argv[1:]
    barrier = "--barrier" in args
    args = [a for a in args if a != "--barrier"]
    _setup_django()
    from django.core.management import call_command

    if command == "migrate":
        call_command("migrate", verbosity=0)
        return {"migrated": True}

    from django_lightspeed_oauth import tokens
    from django_lightspeed_oauth.models import ConnectedCompany
    from django_lightspeed_oauth.testing import make_client, make_company

    if command == "seed":
        url, expires_in = args[0], float(args[1])
        client = make_client(
            provider="custom",
            authorize_url=url + "/authorize",
            token_url=url + "/oauth/token",
            scopes="",
            provider_options={"token_auth": "body", "token_params": "form"},
        )
        company = make_company(client, expires_in=expires_in)
        return {"pk": company.pk, "refresh_token": company.refresh_token}
    pk = int(args[0])
    if command == "state":
        return _state(pk)
    # Load the company before the barrier: everyone then starts from the same, stale, row.
    company = ConnectedCompany.objects.select_related("client").get(pk=pk)
    if barrier:
        _wait_at_barrier()
    if command == "get-token":
        refreshed_here = _count_refreshes()
        token = company.get_access_token()
        return {"token": token, "refreshed_here": len(refreshed_here)}
    if command == "refresh":
        try:
            result = tokens.refresh(company)
        except Exception as err:
            return {"outcome": "exception", "error": f"{type(err).__name__}: {err}"}
        return {"outcome": result.outcome, "waited": result.waited, "token": company.access_token}
    if command == "command":
        from io import StringIO

        out = StringIO()
        try:
            call_command("refresh_lightspeed_tokens", "--company", str(pk), "--json", stdout=out)
        except SystemExit:
            pass
        return json.loads(out.getvalue().strip().splitlines()[-1])
    if command == "threads":
        return _threads(pk, int(args[1]))
    if command == "get-many":
        return _get_many(pk, int(args[1]), int(args[2]))
    raise SystemExit(f"unknown command {command!r}")


def _count_refreshes() -> list[int]:
    """A list that gets the thread id of every token_refreshed signal sent in this process."""
    import threading

    from django_lightspeed_oauth.signals import token_refreshed

    seen: list[int] = []

    def receiver(sender, company, **kwargs) -> None:
        seen.append(threading.get_ident())

    token_refreshed.connect(receiver, weak=False)
    return seen


def _threads(pk: int, n: int) -> dict[str, Any]:
    import threading
    from collections import Counter

    from django.db import connections

    from django_lightspeed_oauth import tokens
    from django_lightspeed_oauth.models import ConnectedCompany

    start = threading.Barrier(n)
    lock = threading.Lock()
    found: dict[str, Any] = {"tokens": [], "outcomes": Counter(), "errors": []}
    refreshed_by = _count_refreshes()

    def run(index: int) -> None:
        try:
            company = ConnectedCompany.objects.select_related("client").get(pk=pk)
            start.wait(timeout=30)
            if index % 2:
                outcome = tokens.refresh(company, force=True).outcome
            else:
                token = company.get_access_token()
                outcome = "refreshed" if threading.get_ident() in refreshed_by else "fresh"
            with lock:
                found["tokens"].append(token if index % 2 == 0 else company.access_token)
                found["outcomes"][outcome] += 1
        except Exception as err:
            with lock:
                found["errors"].append(f"{type(err).__name__}: {err}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found["outcomes"] = dict(found["outcomes"])
    return found


def _get_many(pk: int, n: int, calls: int) -> dict[str, Any]:
    import threading

    from django.db import connections

    from django_lightspeed_oauth.models import ConnectedCompany

    start = threading.Barrier(n)
    lock = threading.Lock()
    found: dict[str, Any] = {"tokens": [], "errors": []}

    def run() -> None:
        try:
            company = ConnectedCompany.objects.select_related("client").get(pk=pk)
            start.wait(timeout=30)
            for _ in range(calls):
                token = company.get_access_token()
                with lock:
                    found["tokens"].append(token)
        except Exception as err:
            with lock:
                found["errors"].append(f"{type(err).__name__}: {err}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1:])), flush=True)
