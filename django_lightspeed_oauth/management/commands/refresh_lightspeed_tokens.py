"""``manage.py refresh_lightspeed_tokens``: refresh every company whose token expires soon."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.translation import gettext as _

from django_lightspeed_oauth.conf import app_settings
from django_lightspeed_oauth.management.progress import Progress
from django_lightspeed_oauth.management.selection import check_clients, check_companies
from django_lightspeed_oauth.purging import purge
from django_lightspeed_oauth.refreshing import CompanyResult, Summary, due_companies, refresh_due

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
            help="Refresh this many companies at once (threads; default 4).",
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
