"""What the refresh command prints: progress during a sweep, a line per --every sweep, silence when idle."""

from __future__ import annotations

import os
import re
import signal
import threading
from io import StringIO

import pytest
from django.core.management import call_command

from django_lightspeed_oauth.management.progress import Progress
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_client, make_company


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_is_redrawn_in_place_with_counts_and_rate():
    clock, out = Clock(), StringIO()
    progress = Progress(out, 4, tty=True, clock=clock, width=8)
    for _ in range(2):
        clock.now += 0.5
        progress.update()
    assert (
        out.getvalue()
        == "\r[##------] 1 of 4 companies  2.0/s\x1b[K\r[####----] 2 of 4 companies  2.0/s\x1b[K"
    )
    clock.now += 1.0
    progress.update()
    progress.update()  # within the redraw interval: not drawn until finish()
    progress.finish()
    assert out.getvalue().endswith("\r[########] 4 of 4 companies  2.0/s\x1b[K\n")


def test_elsewhere_a_plain_line_every_interval_and_nothing_for_a_short_sweep():
    clock, out = Clock(), StringIO()
    progress = Progress(out, 1000, tty=False, clock=clock, interval=10)
    for _ in range(300):
        clock.now += 0.01
        progress.update()
    progress.finish()
    assert out.getvalue() == ""  # three seconds: no line
    for _ in range(1000):
        clock.now += 0.01
        progress.update()
    lines = out.getvalue().splitlines()
    assert lines == [
        "Refreshing: 1000 of 1000 companies done (100.0/s)",
    ]
    assert "\r" not in out.getvalue()


def test_companies_that_became_due_during_the_sweep_raise_the_total():
    clock, out = Clock(), StringIO()
    progress = Progress(out, 1, tty=True, clock=clock, width=4)
    clock.now += 1
    progress.update(3)
    assert out.getvalue() == "\r[####] 3 of 3 companies  3.0/s\x1b[K"


pytestmark_db = pytest.mark.django_db


def command(*args: str, stderr: StringIO | None = None) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("refresh_lightspeed_tokens", *args, stdout=out, stderr=stderr or StringIO())
    except SystemExit as exit:
        return exit.code, out.getvalue()
    return 0, out.getvalue()


@pytestmark_db
def test_a_sweep_with_nothing_due_prints_nothing_at_verbosity_1():
    make_company(make_client(), expires_in=7200)
    err = Terminal()
    assert command(stderr=err) == (0, "")
    assert err.getvalue() == ""
    code, out = command("-v", "2")
    assert code == 0 and "Considered" in out  # more verbose: the table, even when empty


@pytestmark_db
def test_a_sweep_on_a_terminal_draws_the_bar_on_stderr_and_the_summary_on_stdout(monkeypatch):
    client = make_client()
    for _ in range(3):
        make_company(client, expires_in=60)
    monkeypatch.setattr(Progress, "__init__", _no_redraw_delay(Progress.__init__))
    err = Terminal()
    with FakeTokenEndpoint(client):
        code, out = command("--workers", "1", stderr=err)
    assert code == 0
    assert re.search(r"Refreshed\s+3", out)
    drawn = err.getvalue()
    assert drawn.endswith("\n") and "\r[" in drawn
    assert re.search(r"\] 3 of 3 companies  [0-9.]+/s\x1b\[K\n$", drawn)


def _no_redraw_delay(init):
    def patched(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "redraw": 0.0})

    return patched


@pytestmark_db
def test_every_prints_one_timestamped_line_per_sweep_that_had_work():
    client = make_client(slug="shop")
    make_company(client, expires_in=60)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    with FakeTokenEndpoint(client) as fake:
        fake.fail_with(503)
        timer.start()
        code, out = command("--every", "0.2")
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "Stopped."
    # The first sweep failed once and backs off: the sweeps after it had nothing due and said nothing.
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  1 due: 0 refreshed, 0 already fresh, 0 busy, 1 failed, "
        r"0 need re-authorization",
        lines[0],
    ), lines
    assert lines[1].startswith("  failed") and "shop" in lines[1]
    assert len(lines) == 3
