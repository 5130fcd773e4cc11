"""``manage.py refresh_lightspeed_tokens``: refresh every company whose token expires soon."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

from django.core.management.base import BaseCommand, CommandError

from django_lightspeed_oauth.conf import app_settings
from django_lightspeed_oauth.management.selection import check_clients, check_companies
from django_lightspeed_oauth.refreshing import CompanyResult, Summary, refresh_due


class Command(BaseCommand):
    help = (
        "Refresh the tokens of connected companies that expire soon. Exit codes: 0 all fine, "
        "1 some refresh failed and will be retried, 2 some company needs re-authorization."
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
        try:
            while not stop.is_set():
                started = time.monotonic()
                self.run_once(options, stop)
                stop.wait(max(0.0, every - (time.monotonic() - started)))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.verbosity and not options["json"]:
            self.stdout.write("Stopped.")

    def run_once(self, options: dict, stop: threading.Event | None = None) -> Summary:
        progress = self.verbosity == 1 and not options["json"] and self.stderr.isatty()
        count = 0

        def on_result(result: CompanyResult) -> None:
            nonlocal count
            count += 1
            if options["json"]:
                return
            if self.verbosity >= 2 or options["dry_run"]:
                self.stdout.write(self.line(result))
            elif progress:
                self.stderr.write(f"\r{count} companies done", ending="")
                self.stderr.flush()

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
        if progress and count:
            self.stderr.write("")
        if options["json"]:
            self.stdout.write(json.dumps(summary.as_dict()))
        elif self.verbosity:
            self.write_summary(summary)
        return summary

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
            ("Needs re-authorization", summary.reauthorization_required, self.style.ERROR),
        ]
        for label, value, style in rows:
            text = f"{label:<24}{value:>8}"
            self.stdout.write(style(text) if style and value else text)
        for problem in summary.problems if self.verbosity < 2 else []:
            self.stdout.write(self.line(problem))
