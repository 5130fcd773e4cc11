"""Issue 10: the Celery fan-out on a real broker, with real workers, a real database and token server.

``celery -A testproject worker`` (and ``beat``) run as real processes on RabbitMQ (``CELERY_BROKER_URL``,
default ``amqp://guest:guest@127.0.0.1:5672//``; ``.ci/run`` starts it), each test on a queue of its
own so that parallel runs do not share tasks. They use the test's database (pytest-django's, the rows
committed with ``transaction=True``) and refresh against the token server of
:mod:`django_lightspeed_oauth.testing.tokenserver`, whose refresh tokens are single-use: a token
used twice revokes its family and answers ``invalid_grant``, so a double refresh cannot go unnoticed.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Count

from django_lightspeed_oauth.models import ConnectedCompany, TokenEvent
from django_lightspeed_oauth.testing import TokenServer, fingerprint, make_client, make_company

ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
LOCK_TIMEOUT = 3  # seconds: the killed-worker test waits for the dead worker's lease to end
BATCH = "django_lightspeed_oauth.tasks.refresh_lightspeed_batch"
SWEEP = "django_lightspeed_oauth.tasks.sweep_lightspeed_tokens"
SUCCEEDED = re.compile(r"Task (\S+)\[([0-9a-f-]+)\] succeeded in [0-9.e-]+s: (\{.*\})\s*$")

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


# The broker, the workers ---------------------------------------------------------------------------


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue of this test's own on the broker, deleted afterwards."""
    from kombu import Connection

    name = f"lightspeed-oauth-test-{uuid.uuid4().hex[:12]}"
    with Connection(BROKER_URL, connect_timeout=5) as conn:
        try:
            conn.ensure_connection(max_retries=1)
        except Exception as err:
            pytest.fail(f"RabbitMQ is not reachable at {BROKER_URL} ({err}); .ci/run starts it")
        yield name
        conn.default_channel.queue_delete(name)


def waiting_messages(queue: str) -> int:
    """Messages in the queue that no worker holds (ready, not delivered)."""
    from kombu import Connection

    with Connection(BROKER_URL, connect_timeout=5) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


def _database_url() -> str:
    """DATABASE_URL naming the test's database (pytest-django's test_<name>, or its SQLite file)."""
    db = connection.settings_dict
    connection.close()  # nothing of ours stays open while the workers write
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    scheme = "postgres" if connection.vendor == "postgresql" else "mysql"
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT']}" if db["PORT"] else db["HOST"] or "127.0.0.1"
    return f"{scheme}://{credentials}@{host}/{quote(db['NAME'], safe='')}"


@dataclass
class Celery:
    """Worker and beat processes of testproject's Celery app, and a client that sends tasks."""

    queue: str
    env: dict[str, str]
    logs: Path
    procs: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)
    client: Any = None

    def _spawn(self, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = self.logs / f"{name}-{len(self.procs)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "testproject", *args, "--loglevel", "INFO"],
                cwd=ROOT / "testproject",
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the pool is killed with it
            )
        self.procs.append((proc, log))
        return proc, log

    def worker(self, concurrency: int = 2) -> Worker:
        name = f"w{len(self.procs)}-{uuid.uuid4().hex[:8]}@lightspeed-tests"
        proc, log = self._spawn(
            "worker",
            "worker",
            "-Q",
            self.queue,
            "-n",
            name,
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        )
        worker = Worker(proc, log)
        _wait_for(lambda: " ready." in worker.output(), "the worker to be ready", watching=worker)
        return worker

    def beat(self) -> Worker:
        proc, log = self._spawn("beat", "beat", "-s", str(self.logs / "beat-schedule"))
        return Worker(proc, log)

    def send(self, name: str, task_id: str | None = None, **kwargs: Any) -> str:
        return self.client.send_task(name, kwargs=kwargs, task_id=task_id).id

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def succeeded(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        """(task id, returned value) of every task ``name`` this process finished."""
        found = []
        for line in self.output().splitlines():
            match = SUCCEEDED.search(line)
            if match and match[1] == name:
                found.append((match[2], ast.literal_eval(match[3])))
        return found

    def stop(self) -> None:
        """Warm shutdown: the tasks it runs are finished, the others stay on the broker."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"the worker did not stop:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool, as when its machine dies."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def pool(self) -> list[int]:
        """Process ids of the worker's pool (the main process's children)."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == self.proc.pid:
                children.append(int(stat.parent.name))
        return children


@pytest.fixture
def celery(queue, tmp_path) -> Iterator[Celery]:
    from celery import Celery as CeleryApp

    keys = settings.LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DEBUG": "0",
        "SECRET_KEY": "celery-tests-only-secret-key",
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": BROKER_URL,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        # The workers decrypt what the test wrote.
        "LIGHTSPEED_OAUTH_ENCRYPTION_KEYS": ",".join(keys),
        "LIGHTSPEED_OAUTH_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
        # Check E004's rule: three connects and a read fit in the lease.
        "LIGHTSPEED_OAUTH_HTTP_TIMEOUT": f"0.5,{LOCK_TIMEOUT - 2}",
    }
    logs = tmp_path / "celery"
    logs.mkdir()
    client = CeleryApp("lightspeed-oauth-tests", broker=BROKER_URL, set_as_current=False)
    client.conf.task_default_queue = queue
    running = Celery(queue=queue, env=env, logs=logs, client=client)
    try:
        yield running
    finally:
        running.stop_all()
        client.close()


def _wait_for(
    condition: Callable[[], Any], what: str, timeout: float = 60, watching: Worker | None = None
) -> None:
    """Wait until ``condition()`` is true; fail at once if the ``watching`` process dies."""
    deadline = time.monotonic() + timeout
    while not condition():
        if watching is not None and watching.proc.poll() is not None:
            pytest.fail(f"the process died waiting for {what}:\n{watching.output()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# The companies -------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[TokenServer]:
    with TokenServer(latency=0.05, expires_in=3600) as token_server:
        yield token_server


def seed(
    server: TokenServer, due: int, not_due: int = 0
) -> tuple[list[ConnectedCompany], list[ConnectedCompany]]:
    client = make_client(
        provider="custom",
        authorize_url=server.url + "/authorize",
        token_url=server.url + "/oauth/token",
        scopes="",
        provider_options={"token_auth": "body", "token_params": "form"},
    )
    due_ones = [make_company(client, expires_in=60) for _ in range(due)]
    others = [make_company(client, expires_in=7200) for _ in range(not_due)]
    connection.close()
    return due_ones, others


def assert_each_refreshed_once(server: TokenServer, companies: list[ConnectedCompany]) -> None:
    """One refresh request per company, each with its own token, none refused, nothing lost."""
    stats = server.stats()
    assert stats["invalid_grants"] == 0, stats
    assert stats["revoked_families"] == 0, stats
    assert stats["refreshes"] == len(companies), stats
    refreshed = dict(
        TokenEvent.objects.filter(kind=TokenEvent.Kind.REFRESHED)
        .values_list("company")
        .annotate(n=Count("pk"))
        .values_list("company", "n")
    )
    for company in companies:
        row = ConnectedCompany.objects.get(pk=company.pk)
        family = server.family(fingerprint(company.refresh_token))
        assert family is not None, f"company {company.pk} was never refreshed"
        assert family["refreshes"] == 1 and not family["revoked"], family
        # The database holds the newest token of the family: nothing was lost.
        assert family["current"] == row.refresh_token_fingerprint
        assert (row.status, row.refresh_lock_id, row.token_version) == ("active", "", 1)
        assert refreshed.get(company.pk) == 1
    assert not TokenEvent.objects.exclude(kind__in=["connected", "refreshed"]).exists()


# The tests -----------------------------------------------------------------------------------------


def test_beat_fans_the_sweep_out_and_every_due_company_is_refreshed_once(celery, server):
    """Beat sends the sweep (every second: sweeps overlap the batches of earlier ones); the sweep
    sends batches of CELERY_BATCH_SIZE; two workers with two processes each refresh them."""
    due, not_due = seed(server, due=30, not_due=4)
    celery.env["LIGHTSPEED_OAUTH_CELERY_BATCH_SIZE"] = "7"
    celery.env["LIGHTSPEED_OAUTH_REFRESH_WITHIN"] = "900"
    celery.env["CELERY_SWEEP_EVERY"] = "1"
    workers = [celery.worker(concurrency=2), celery.worker(concurrency=2)]
    beat = celery.beat()
    _wait_for(lambda: server.stats()["refreshes"] >= len(due), "the refreshes", watching=beat)
    beat.stop()
    for worker in workers:
        worker.stop()

    assert waiting_messages(celery.queue) == 0
    sweeps = [result for worker in workers for _, result in worker.succeeded(SWEEP)]
    assert {"due": 30, "batches": 5} in sweeps, sweeps  # 7 + 7 + 7 + 7 + 2
    batches = [result for worker in workers for _, result in worker.succeeded(BATCH)]
    assert sum(batch["refreshed"] for batch in batches) == len(due), batches
    assert all(batch["exit_code"] == 0 for batch in batches), batches
    assert all(len(worker.succeeded(BATCH)) > 0 for worker in workers), "one worker did all the work"
    assert_each_refreshed_once(server, due)
    for company in not_due:
        assert ConnectedCompany.objects.get(pk=company.pk).token_version == 0
        assert server.family(fingerprint(company.refresh_token)) is None


def test_a_batch_delivered_twice_refreshes_nothing_twice(celery, server):
    """The same batch three times at once (twice with the same task id), then once more after:
    each company is refreshed once, and the copies that came second count it as done."""
    due, _ = seed(server, due=12)
    server.latency = 0.2  # the copies run side by side
    worker = celery.worker(concurrency=3)
    pks = [company.pk for company in due]
    same = str(uuid.uuid4())
    ids = [celery.send(BATCH, same, pks=pks, within=900, workers=2) for _ in range(2)]
    ids.append(celery.send(BATCH, pks=pks, within=900, workers=2))
    _wait_for(lambda: len(worker.succeeded(BATCH)) == 3, "the three copies", watching=worker)
    late = celery.send(BATCH, pks=pks, within=900)
    _wait_for(lambda: len(worker.succeeded(BATCH)) == 4, "the late copy", watching=worker)
    worker.stop()

    results = worker.succeeded(BATCH)
    assert sorted(task_id for task_id, _ in results) == sorted([*ids, late])
    assert sum(result["refreshed"] for _, result in results) == len(due), results
    for _, result in results:
        assert result["failed"] == result["uncertain"] == result["reauthorization_required"] == 0, result
    # The late copy finds nothing due any more.
    assert next(result for task_id, result in results if task_id == late)["considered"] == 0
    assert_each_refreshed_once(server, due)


def test_a_batch_whose_worker_is_killed_is_finished_by_another_worker(celery, server):
    """SIGKILL a worker (and its pool) in the middle of a batch, while its token request hangs: the
    broker gives the batch to another worker, which skips what was refreshed, waits out the dead
    worker's lease on the company it was refreshing, and refreshes the rest, each once."""
    due, _ = seed(server, due=8)
    server.latency = 0.3  # time to stop the server before the batch is done
    victim = celery.worker(concurrency=1)
    batch = celery.send(BATCH, pks=[company.pk for company in due], within=900, workers=1)
    _wait_for(lambda: server.stats()["refreshes"] >= 3, "the first refreshes", watching=victim)
    server.hang = True  # the next request waits unanswered, its refresh token unspent
    _wait_for(lambda: server.stats()["hung"] == 1, "a request in flight", watching=victim)
    done_by_victim = server.stats()["refreshes"]
    victim.kill()
    server.hang = False  # the hung request is dropped: its refresh token was never used

    survivor = celery.worker(concurrency=1)
    _wait_for(lambda: survivor.succeeded(BATCH), "the redelivered batch", watching=survivor)
    survivor.stop()

    assert victim.succeeded(BATCH) == []
    [(task_id, result)] = survivor.succeeded(BATCH)
    assert task_id == batch
    assert "delivered again" in survivor.output()
    left = len(due) - done_by_victim
    assert (result["considered"], result["refreshed"], result["exit_code"]) == (left, left, 0), result
    assert waiting_messages(celery.queue) == 0
    assert server.stats()["dropped"] == 1
    assert_each_refreshed_once(server, due)


def test_a_batch_whose_pool_process_is_killed_is_given_back_and_finished(celery, server):
    """SIGKILL the pool process running a batch (as the out-of-memory killer would), the worker
    itself staying up: the worker gives the batch back to the broker (task_reject_on_worker_lost)
    instead of failing it, and it is finished, each company refreshed once."""
    due, _ = seed(server, due=8)
    server.latency = 0.3  # time to stop the server before the batch is done
    worker = celery.worker(concurrency=1)
    [pool_process] = worker.pool()
    batch = celery.send(BATCH, pks=[company.pk for company in due], within=900, workers=1)
    _wait_for(lambda: server.stats()["refreshes"] >= 3, "the first refreshes", watching=worker)
    server.hang = True
    _wait_for(lambda: server.stats()["hung"] == 1, "a request in flight", watching=worker)
    done_before = server.stats()["refreshes"]
    os.kill(pool_process, signal.SIGKILL)
    server.hang = False

    _wait_for(lambda: worker.succeeded(BATCH), "the batch given back", watching=worker)
    worker.stop()

    [(task_id, result)] = worker.succeeded(BATCH)
    assert task_id == batch
    assert "WorkerLostError" in worker.output() and "delivered again" in worker.output()
    left = len(due) - done_before
    assert (result["considered"], result["refreshed"], result["exit_code"]) == (left, left, 0), result
    assert server.stats()["dropped"] == 1
    assert_each_refreshed_once(server, due)
