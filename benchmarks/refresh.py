"""Benchmark: refresh N expiring companies with the refresh command's function, against a real server.

What it does, in one run:

1. starts the local token server (``python -m django_lightspeed_oauth.testing.tokenserver``) in its own
   process, answering every token request after ``--latency-ms`` milliseconds, with single-use
   rotating refresh tokens (a double refresh would show up as an ``invalid_grant``);
2. creates a fresh database (a temporary SQLite file by default; PostgreSQL and MySQL/MariaDB
   databases named by ``--database-url`` are dropped and created again), migrates it and creates
   ``--n`` companies whose tokens expire in a minute (in a forked child, so that this set-up does not
   count in the peak memory);
3. runs :func:`django_lightspeed_oauth.refreshing.refresh_due` with ``--workers`` threads in
   each of ``--processes`` processes (forked; their sweeps claim disjoint batches of the due
   companies, as copies of the refresh command do) and measures wall time, refreshes per
   second, efficiency = (N x latency / (workers x processes)) / wall time (1.0: the pools are
   as fast as the token server lets them be), the CPU time of the refreshing processes per
   refresh (every thread counted, the lease keeper's too), how busy the machine's cores were
   (every process: what bounds several processes on a machine with few cores),
   database queries per refresh (every connection of every thread counted), attempts to take a
   company's lease per refresh, and peak RSS (the largest refreshing process);
4. refreshes the same tokens (the new ones) with a plain sequential loop over requests-oauthlib's
   ``OAuth2Session.refresh_token``, no database, as the baseline, and prints ours/baseline speed
   and CPU time per refresh (``cpu_ratio``: ours / the baseline's, measured in the same run).

The last line is exactly ``efficiency=E cpu_ms_per_refresh=C cpu_ratio=X queries_per_refresh=Q
lock_attempts_per_refresh=L peak_rss_mb=M baseline_ratio=R`` (the ratios are ``nan`` when the
baseline is skipped with ``--baseline-n 0``).

Run from the repository root::

    .venv/bin/python benchmarks/refresh.py --n 1000
    .venv/bin/python benchmarks/refresh.py --n 5000 \\
        --database-url postgres://postgres@127.0.0.1:5432/lightspeed_bench

Needs the ``benchmark`` extra (requests-oauthlib, psycopg) and dj-database-url.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="companies to refresh (default 5000)")
    parser.add_argument("--workers", type=int, default=16, help="worker threads per process (default 16)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="refreshing processes, each with --workers threads (default 1: this process)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=50.0, help="token server latency per request (default 50)"
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="default: a temporary SQLite file; a PostgreSQL or MySQL database "
        "named here is DROPPED and created again",
    )
    parser.add_argument(
        "--baseline-n",
        type=int,
        default=None,
        help="tokens for the sequential baseline (default: all N; 0: skip)",
    )
    parser.add_argument(
        "--sqlite-journal",
        choices=["wal", "delete"],
        default="wal",
        help="SQLite only: WAL with synchronous=NORMAL (what README.rst recommends "
        "for several workers; default) or SQLite's own rollback journal",
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    return parser.parse_args(argv)


# Database ------------------------------------------------------------------------------------------


def configure(database_url: str) -> dict:
    import dj_database_url
    from django.conf import settings

    database = dj_database_url.parse(database_url)
    if database["ENGINE"] == "django.db.backends.mysql":
        database.setdefault("OPTIONS", {})["charset"] = "utf8mb4"
    settings.configure(
        DEBUG=False,  # with DEBUG, Django keeps every query in memory
        SECRET_KEY="benchmark-only",
        USE_TZ=True,
        DATABASES={"default": database},
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django_lightspeed_oauth"],
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LIGHTSPEED_OAUTH={"ENCRYPTION_KEYS": ["p2Z3v8cJ3QkzJ1l0bDq0H6mVd1J8g3rX9c6sQ4uYw2A="]},
        LOGGING_CONFIG=None,
    )
    import django

    django.setup()
    return database


def use_sqlite_journal(mode: str) -> None:
    """Every SQLite connection in this process uses ``mode`` (WAL: synchronous=NORMAL too)."""
    from django.db.backends.signals import connection_created

    def on_connect(sender, connection, **kwargs) -> None:
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                cursor.execute(f"PRAGMA journal_mode={mode}")
                if mode == "wal":
                    cursor.execute("PRAGMA synchronous=NORMAL")

    connection_created.connect(on_connect, weak=False)


def recreate_database(database: dict, drop_only: bool = False) -> None:
    """Drop and create the PostgreSQL / MySQL database (SQLite: a fresh file is already new)."""
    engine, name = database["ENGINE"], database["NAME"]
    if engine.endswith("postgresql"):
        import psycopg

        with psycopg.connect(
            dbname="postgres",
            user=database.get("USER") or None,
            password=database.get("PASSWORD") or None,
            host=database.get("HOST") or None,
            port=database.get("PORT") or None,
            autocommit=True,
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            if not drop_only:
                conn.execute(f'CREATE DATABASE "{name}"')
    elif engine.endswith("mysql"):
        import MySQLdb

        conn = MySQLdb.connect(
            user=database.get("USER") or "root",
            password=database.get("PASSWORD") or "",
            host=database.get("HOST") or "127.0.0.1",
            port=int(database.get("PORT") or 3306),
        )
        cursor = conn.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        if not drop_only:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        conn.close()
    elif drop_only and name and os.path.exists(name):
        os.unlink(name)


def populate(n: int, token_url: str) -> None:
    """Migrate and create N companies expiring in a minute (run in a forked child)."""
    from django.core.management import call_command
    from django.db import connections, transaction
    from django.utils import timezone

    from django_lightspeed_oauth.models import ApiClient, ConnectedCompany

    call_command("migrate", verbosity=0)
    base = token_url.rsplit("/oauth/token", 1)[0]
    client = ApiClient(
        name="Benchmark",
        slug="benchmark",
        provider="custom",
        environment="production",
        client_id="bench-client",
        client_secret="bench-secret-" + secrets.token_hex(8),
        redirect_uri="https://bench.example.com/lightspeed/callback/",
        scopes="",
        authorize_url=base + "/authorize",
        token_url=token_url,
        provider_options={"token_auth": "body", "token_params": "form"},
    )
    client.full_clean()
    client.save()
    expires = timezone.now() + timedelta(seconds=60)
    for start in range(0, n, BATCH):
        ConnectedCompany.objects.bulk_create(
            [
                ConnectedCompany(
                    client=client, company_id=str(100_000 + i), name=f"Company {i}", expires_at=expires
                )
                for i in range(start, min(n, start + BATCH))
            ]
        )
    # Tokens are bound to their row's primary key, which bulk_create does not give on every database.
    with transaction.atomic():
        for pk in ConnectedCompany.objects.filter(client=client).values_list("pk", flat=True).iterator():
            ConnectedCompany.objects.write_tokens(
                pk,
                access_token="bench-access-" + secrets.token_urlsafe(16),
                refresh_token="bench-refresh-" + secrets.token_urlsafe(16),
            )
    connections.close_all()


# Counting queries ----------------------------------------------------------------------------------


class QueryCounter:
    """An execute_wrapper put on every database connection as it opens, in every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.base = 0

    def __call__(self, execute, sql, params, many, context):
        with self._lock:
            self.total += 1
        return execute(sql, params, many, context)

    def install(self) -> None:
        from django.db import connections
        from django.db.backends.signals import connection_created

        def on_connect(sender, connection, **kwargs) -> None:
            if self not in connection.execute_wrappers:
                connection.execute_wrappers.append(self)

        connection_created.connect(on_connect, weak=False)
        for connection in connections.all():
            if connection.connection is not None and self not in connection.execute_wrappers:
                connection.execute_wrappers.append(self)


class LockAttempts:
    """Counts the attempts to take a company's lease: each statement that tries to take one (a
    free one or one taken over), and each company a sweep's batch lease took."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0

    def install(self) -> None:
        from django_lightspeed_oauth.models import ConnectedCompanyQuerySet

        for name in ("take_lease", "take_over_lease"):
            original = getattr(ConnectedCompanyQuerySet, name)

            def counted(queryset, *args, _original=original, **kwargs):
                with self._lock:
                    self.total += 1
                return _original(queryset, *args, **kwargs)

            setattr(ConnectedCompanyQuerySet, name, counted)

        leased = ConnectedCompanyQuerySet.lease_batch

        def counted_rows(queryset, *args, **kwargs):
            taken = leased(queryset, *args, **kwargs)
            with self._lock:
                self.total += taken
            return taken

        ConnectedCompanyQuerySet.lease_batch = counted_rows  # type: ignore[method-assign]


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, every core (Linux only)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    fields = fields[:8]  # user .. steal; guest time is already counted in user and nice
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    return (sum(fields) - idle) / tick, sum(fields) / tick


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# Token server --------------------------------------------------------------------------------------


def start_token_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "django_lightspeed_oauth.testing.tokenserver",
            "--port",
            "0",
            "--latency-ms",
            str(latency_ms),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit("the token server did not start")
    return proc, url


def server_stats(url: str) -> dict:
    import requests

    return requests.get(url + "/stats", timeout=5).json()


# The two runs --------------------------------------------------------------------------------------


@dataclass
class Measured:
    """What the refreshing processes did, added up."""

    wall: float = 0.0
    cpu: float = 0.0  # seconds of process CPU time (user + system, every thread)
    queries: int = 0
    lock_attempts: int = 0
    peak_rss: float = 0.0  # MB, the largest process
    refreshed: int = 0
    fresh: int = 0
    busy: int = 0
    failed: int = 0
    reauthorization_required: int = 0
    problems: list = field(default_factory=list)

    def add(self, other: Measured) -> None:
        for name in ("cpu", "queries", "lock_attempts", "refreshed", "fresh", "busy", "failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reauthorization_required += other.reauthorization_required
        self.peak_rss = max(self.peak_rss, other.peak_rss)
        self.problems.extend(other.problems)


def sweep(workers: int) -> Measured:
    """Run refresh_due in this process (several such sweeps claim disjoint batches)."""
    from django_lightspeed_oauth import refreshing

    counter = QueryCounter()
    counter.install()
    attempts = LockAttempts()
    attempts.install()
    cpu = time.process_time()
    started = time.perf_counter()
    summary = refreshing.refresh_due(workers=workers)
    return Measured(
        wall=time.perf_counter() - started,
        cpu=time.process_time() - cpu,
        queries=counter.total,
        lock_attempts=attempts.total,
        peak_rss=rss_mb(),
        refreshed=summary.refreshed,
        fresh=summary.fresh,
        busy=summary.busy,
        failed=summary.failed,
        reauthorization_required=summary.reauthorization_required,
        problems=[f"company {p.pk}: {p.outcome} {p.message}" for p in summary.problems[:10]],
    )


def _sweep_child(workers: int, go, results) -> None:
    from django.db import connections

    go.wait()
    try:
        results.put(sweep(workers))
    finally:
        connections.close_all()


def run_ours(workers: int, processes: int) -> Measured:
    """Sweep in this process, or in ``processes`` forked ones started at the same moment."""
    if processes == 1:
        return sweep(workers)
    from django.db import connections

    connections.close_all()  # no connection of ours may be shared with a forked child
    context = multiprocessing.get_context("fork")
    go = context.Event()
    results = context.Queue()
    children = [context.Process(target=_sweep_child, args=(workers, go, results)) for _ in range(processes)]
    for child in children:
        child.start()
    started = time.perf_counter()
    go.set()
    total = Measured()
    for _ in children:
        total.add(results.get())
    total.wall = time.perf_counter() - started
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise SystemExit("a refreshing process failed")
    return total


def run_baseline(token_url: str, limit: int) -> tuple[float, float, int]:
    from requests_oauthlib import OAuth2Session

    from django_lightspeed_oauth.models import ApiClient, ConnectedCompany

    os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the local server is plain http
    os.environ.setdefault("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    client = ApiClient.objects.get(slug="benchmark")
    refresh_tokens = [
        c.refresh_token for c in ConnectedCompany.objects.order_by("pk").only("refresh_token")[:limit]
    ]
    session = OAuth2Session(client.client_id)
    started = time.perf_counter()
    cpu = time.process_time()
    for token in refresh_tokens:
        session.refresh_token(
            token_url,
            refresh_token=token,
            client_id=client.client_id,
            client_secret=client.client_secret,
            timeout=30,
        )
    return time.perf_counter() - started, time.process_time() - cpu, len(refresh_tokens)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmpdir = None
    url = args.database_url
    if not url:
        tmpdir = tempfile.mkdtemp(prefix="lightspeed-bench-")
        url = f"sqlite:///{tmpdir}/bench.sqlite3"
    server, server_url = start_token_server(args.latency_ms)
    token_url = server_url + "/oauth/token"
    database = configure(url)
    vendor = database["ENGINE"].rsplit(".", 1)[-1]
    if vendor == "sqlite3":
        use_sqlite_journal(args.sqlite_journal)
        vendor = f"sqlite3 ({args.sqlite_journal} journal)"
    try:
        recreate_database(database)
        # Set-up in a forked child: its memory must not count in our peak RSS.
        child = multiprocessing.get_context("fork").Process(target=populate, args=(args.n, token_url))
        started = time.perf_counter()
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit("set-up failed")
        print(f"set-up: {args.n} companies on {vendor} in {time.perf_counter() - started:.1f}s", flush=True)

        if args.processes < 1:
            raise SystemExit("--processes must be at least 1")
        rss_before = rss_mb()
        machine_before = machine_cpu()
        ours = run_ours(args.workers, args.processes)
        machine_after = machine_cpu()
        wall = ours.wall
        stats = server_stats(server_url)
        latency = args.latency_ms / 1000
        ideal = args.n * latency / (args.workers * args.processes)
        efficiency = ideal / wall
        refreshed = ours.refreshed
        per = max(1, refreshed)
        qpr = ours.queries / per
        cpu_ms = ours.cpu * 1000 / per
        print(
            f"ours: {refreshed}/{args.n} refreshed (fresh {ours.fresh}, busy {ours.busy}, "
            f"failed {ours.failed}, reauth {ours.reauthorization_required}) "
            f"with {args.processes} process(es) x {args.workers} workers in {wall:.2f}s = "
            f"{refreshed / wall:.1f} refreshes/s; ideal {ideal:.2f}s; {ours.queries} queries; "
            f"{ours.lock_attempts} lock attempts; CPU {ours.cpu:.2f}s = {cpu_ms:.2f} ms/refresh; "
            f"RSS {rss_before:.1f} MB before, {ours.peak_rss:.1f} MB peak",
            flush=True,
        )
        if machine_before and machine_after:
            busy = machine_after[0] - machine_before[0]
            total = machine_after[1] - machine_before[1]
            print(
                f"machine: {os.cpu_count()} cores, busy {100 * busy / max(total, 1e-9):.0f}% of the time "
                f"(every process: ours, the token server, the database)",
                flush=True,
            )
        print(
            f"token server: {stats['refreshes']} refreshes, {stats['invalid_grants']} "
            f"invalid_grant, max {stats['max_in_flight']} in flight",
            flush=True,
        )
        if stats["invalid_grants"] or refreshed != args.n or stats["refreshes"] != refreshed:
            print("WARNING: not every company was refreshed exactly once", flush=True)
            for problem in ours.problems[:10]:
                print(f"  {problem}", flush=True)

        ratio = cpu_ratio = float("nan")
        limit = args.n if args.baseline_n is None else args.baseline_n
        if limit > 0:
            base_wall, base_cpu, base_n = run_baseline(token_url, limit)
            ours_rate = refreshed / wall
            base_rate = base_n / base_wall
            ratio = ours_rate / base_rate
            base_cpu_ms = base_cpu * 1000 / max(1, base_n)
            cpu_ratio = cpu_ms / base_cpu_ms
            print(
                f"baseline: {base_n} sequential OAuth2Session.refresh_token calls in "
                f"{base_wall:.2f}s = {base_rate:.1f} refreshes/s; CPU {base_cpu_ms:.2f} ms/refresh",
                flush=True,
            )
        print(
            f"efficiency={efficiency:.2f} cpu_ms_per_refresh={cpu_ms:.2f} cpu_ratio={cpu_ratio:.2f} "
            f"queries_per_refresh={qpr:.2f} lock_attempts_per_refresh={ours.lock_attempts / per:.2f} "
            f"peak_rss_mb={ours.peak_rss:.1f} baseline_ratio={ratio:.2f}",
            flush=True,
        )
    finally:
        from django.db import connections

        connections.close_all()
        server.terminate()
        server.wait(timeout=10)
        if not args.keep_db:
            recreate_database(database, drop_only=True)
        if tmpdir and not args.keep_db:
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
