"""``manage.py refresh_lightspeed_tokens``: refresh every company whose token expires soon."""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections, router
from django.utils import timezone
from django.utils.translation import gettext as _

from django_lightspeed_oauth.conf import app_settings
from django_lightspeed_oauth.management.progress import Progress
from django_lightspeed_oauth.management.selection import check_clients, check_companies
from django_lightspeed_oauth.models import ConnectedCompany
from django_lightspeed_oauth.purging import purge
from django_lightspeed_oauth.refreshing import (
    ERROR,
    CompanyResult,
    Summary,
    due_companies,
    refresh_due,
)

logger = logging.getLogger(__name__)


class _Unstyled:
    """A command's stderr written to as is: no added newline, no error colour."""

    def __init__(self, wrapper) -> None:
        self.wrapper = wrapper

    def write(self, text: str) -> None:
        self.wrapper.write(text, style_func=str, ending="")

    def flush(self) -> None:
        self.wrapper.flush()


class Command(BaseCommand):
    help = (
        "Refresh the tokens of connected companies that expire soon. Exit codes: 0 all fine, "
        "1 some refresh failed and will be retried, or its outcome is uncertain (staff must act), "
        "2 some company needs re-authorization."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--within",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Refresh tokens that expire within this many seconds "
            f"(default LIGHTSPEED_OAUTH['REFRESH_WITHIN'], "
            f"{app_settings.REFRESH_WITHIN}).",
        )
        parser.add_argument(
            "--client", action="append", default=[], metavar="SLUG", help="Only this API client (repeatable)."
        )
        parser.add_argument(
            "--company",
            action="append",
            default=[],
            metavar="ID",
            help="Only this company (Lightspeed company id or primary key; repeatable).",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="Refresh even tokens that are not expiring, ignoring back-off.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="List what would be refreshed; change nothing."
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=4,
            metavar="N",
            help="Refresh this many companies at once (threads; default 4), in each process.",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            metavar="P",
            help="Share each sweep between P processes (each with --workers threads; default 1).",
        )
        parser.add_argument("--json", action="store_true", help="Print one JSON summary instead of text.")
        parser.add_argument(
            "--every",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Run again every SECONDS until stopped (SIGTERM or Ctrl-C).",
        )

    def handle(self, *args, **options) -> None:
        if options["workers"] < 1:
            raise CommandError("--workers must be at least 1.")
        if options["processes"] < 1:
            raise CommandError("--processes must be at least 1.")
        if options["processes"] > 1 and _in_memory_database():
            raise CommandError(
                "--processes needs a database the processes share: this one is an in-memory SQLite "
                "database, of which every process would have its own copy."
            )
        if options["within"] is not None and options["within"] < 0:
            raise CommandError("--within must be zero or more seconds.")
        every = options["every"]
        if every is not None and every <= 0:
            raise CommandError("--every must be a positive number of seconds.")
        check_companies(options["company"], check_clients(options["client"]))
        self.verbosity = options["verbosity"]
        if every is None:
            summary = self.run_once(options)
            if summary.exit_code:
                sys.exit(summary.exit_code)
            return
        self.loop(options, every)

    def loop(self, options: dict, every: float) -> None:
        stop = threading.Event()

        def request_stop(signum, frame) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        next_purge = time.monotonic()
        try:
            while not stop.is_set():
                started = time.monotonic()
                self.run_once(options, stop)
                if started >= next_purge and not stop.is_set() and not options["dry_run"]:
                    next_purge = started + self.purge_between_sweeps()
                stop.wait(max(0.0, every - (time.monotonic() - started)))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.verbosity and not options["json"]:
            self.stdout.write("Stopped.")

    def purge_between_sweeps(self) -> float:
        """Run lightspeed_purge's work (every PURGE_INTERVAL seconds); return when to run it again.

        A purge that fails is logged and tried again at the next interval: it never stops the
        refreshes.
        """
        interval = app_settings.PURGE_INTERVAL
        if interval is None:
            return float("inf")
        try:
            result = purge()
        except Exception:
            logger.exception("The purge between refresh sweeps failed; it is tried again later")
            return interval
        if self.verbosity >= 2:
            self.stdout.write(
                f"Purged {result.authorization_requests} authorization requests, "
                f"{result.token_events} token events and {result.invitations} invitations."
            )
        return interval

    def run_once(self, options: dict, stop: threading.Event | None = None) -> Summary:
        quiet = options["json"] or options["dry_run"] or self.verbosity != 1
        progress = None if quiet else self.progress(options)

        def on_result(result: CompanyResult) -> None:
            if options["json"]:
                return
            if self.verbosity >= 2 or options["dry_run"]:
                self.stdout.write(self.line(result))
            elif progress is not None:
                progress.update()

        if options["processes"] > 1 and not options["dry_run"]:
            summary = sweep_in_processes(options, on_result, stop)
        else:
            summary = refresh_due(
                within=options["within"],
                clients=options["client"],
                company_ids=options["company"],
                force=options["force"],
                dry_run=options["dry_run"],
                workers=options["workers"],
                on_result=on_result,
                stop=stop,
            )
        if progress is not None:
            progress.finish()
        if options["json"]:
            self.stdout.write(json.dumps(summary.as_dict()))
        elif not self.verbosity or (self.verbosity == 1 and not summary.considered and not summary.dry_run):
            pass  # a quiet sweep: nothing was due
        elif options["every"] is not None and not summary.dry_run:
            self.write_sweep_line(summary)
        else:
            self.write_summary(summary)
        return summary

    def progress(self, options: dict) -> Progress:
        """A progress report on stderr for about as many companies as are due now."""
        total = due_companies(
            within=options["within"],
            clients=options["client"],
            company_ids=options["company"],
            force=options["force"],
        ).count()
        return Progress(_Unstyled(self.stderr), total, tty=self.stderr.isatty())

    def write_sweep_line(self, summary: Summary) -> None:
        """One timestamped line per sweep of ``--every`` (then the companies with problems)."""
        stamp = timezone.localtime().strftime("%Y-%m-%d %H:%M:%S %Z") if settings.USE_TZ else ""
        text = _(
            "%(considered)d due: %(refreshed)d refreshed, %(fresh)d already fresh, %(busy)d busy, "
            "%(failed)d failed, %(reauthorization)d need re-authorization"
        ) % {
            "considered": summary.considered,
            "refreshed": summary.refreshed,
            "fresh": summary.fresh,
            "busy": summary.busy,
            "failed": summary.failed,
            "reauthorization": summary.reauthorization_required,
        }
        style = (
            self.style.ERROR
            if summary.reauthorization_required
            else self.style.WARNING
            if summary.failed
            else self.style.SUCCESS
        )
        self.stdout.write(style(f"{stamp}  {text}".strip()))
        for problem in summary.problems if self.verbosity < 2 else []:
            self.stdout.write("  " + self.line(problem))

    @staticmethod
    def line(result: CompanyResult) -> str:
        text = f"{result.outcome:<25} {result.client:<20} {result.company_id:<20}"
        return f"{text} {result.message}".rstrip()

    def write_summary(self, summary: Summary) -> None:
        if summary.dry_run:
            self.stdout.write(f"{'Would refresh':<24}{summary.considered:>8}")
            return
        rows = [
            ("Considered", summary.considered, None),
            ("Refreshed", summary.refreshed, self.style.SUCCESS),
            ("Already fresh", summary.fresh, None),
            ("Busy (other process)", summary.busy, None),
            ("Failed, will retry", summary.failed, self.style.WARNING),
            ("Outcome uncertain", summary.uncertain, self.style.ERROR),
            ("Needs re-authorization", summary.reauthorization_required, self.style.ERROR),
        ]
        for label, value, style in rows:
            text = f"{label:<24}{value:>8}"
            self.stdout.write(style(text) if style and value else text)
        for problem in summary.problems if self.verbosity < 2 else []:
            self.stdout.write(self.line(problem))


def _in_memory_database() -> bool:
    connection = connections[router.db_for_write(ConnectedCompany)]
    return connection.vendor == "sqlite" and bool(getattr(connection, "is_in_memory_db", bool)())


def sweep_in_processes(
    options: dict[str, Any], on_result: Callable[[CompanyResult], None], stop: threading.Event | None
) -> Summary:
    """One sweep shared by ``--processes`` forked processes, each claiming its own batches.

    This process only hands out the work and adds up what the children report, so that it holds
    no thread and no database connection when it forks.
    """
    context = multiprocessing.get_context("fork")
    messages: Any = context.Queue()
    child_stop = context.Event()
    connections.close_all()
    children = [
        context.Process(
            target=_sweep_child,
            args=(index, options, messages, child_stop),
            name=f"lightspeed-sweep-{index}",
            daemon=True,
        )
        for index in range(options["processes"])
    ]
    for child in children:
        child.start()
    summary = Summary()
    reported: set[int] = set()
    suspects: set[int] = set()
    while len(reported) < len(children):
        if stop is not None and stop.is_set():
            child_stop.set()
        try:
            kind, index, payload = messages.get(timeout=0.2)
        except queue.Empty:
            # A child that ended without its summary (killed): what it reported is counted, and
            # the companies it held are free again when their claims and leases run out.
            for index, child in enumerate(children):
                if index in reported or child.exitcode is None:
                    continue
                if index in suspects:
                    reported.add(index)
                    summary.failed += 1
                    summary.problems.append(
                        CompanyResult(
                            0, "", "", ERROR, f"sweep process {index} ended with exit code {child.exitcode}"
                        )
                    )
                suspects.add(index)
            continue
        if kind == "result":
            on_result(payload)
        else:
            summary.merge(payload)
            reported.add(index)
    for child in children:
        child.join()
    return summary


def _sweep_child(index: int, options: dict[str, Any], messages: Any, stop: Any) -> None:
    """One process of :func:`sweep_in_processes`: a sweep with its own workers and batches."""

    def request_stop(signum, frame) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    try:
        summary = refresh_due(
            within=options["within"],
            clients=options["client"],
            company_ids=options["company"],
            force=options["force"],
            workers=options["workers"],
            on_result=lambda result: messages.put(("result", index, result)),
            stop=stop,
        )
        messages.put(("summary", index, summary))
    finally:
        connections.close_all()
        messages.close()
        messages.join_thread()
