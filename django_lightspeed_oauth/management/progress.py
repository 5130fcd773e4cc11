"""Progress of a long sweep: a bar redrawn in place on a terminal, a plain line now and then elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from django.utils.translation import gettext as _
from django.utils.translation import ngettext


class Stream(Protocol):
    """What Progress writes to: a text file, or a command's stdout / stderr wrapper."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> None: ...


class Progress:
    """Report ``done`` out of about ``total`` companies on ``stream``.

    On a terminal (``tty``) a bar with the counts and the rate is redrawn in place, at most every
    ``redraw`` seconds, and ends with a newline. Elsewhere (a log file, cron's mail) a plain line is
    written at most every ``interval`` seconds, so a short sweep writes nothing at all. ``total`` is
    counted before the sweep starts: companies may become due while it runs, so ``done`` may pass it.
    """

    def __init__(
        self,
        stream: Stream,
        total: int,
        *,
        tty: bool,
        interval: float = 10.0,
        redraw: float = 0.1,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.total = max(0, total)
        self.tty = tty
        self.interval = interval if not tty else redraw
        self.width = width
        self.clock = clock
        self.started = clock()
        self.last_written = self.started
        self.done = 0
        self.drawn = False

    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def text(self) -> str:
        total = max(self.total, self.done)
        counts = ngettext("%(done)d of %(total)d company", "%(done)d of %(total)d companies", total) % {
            "done": self.done,
            "total": total,
        }
        rate = _("%(rate).1f/s") % {"rate": self.rate()}
        if not self.tty:
            return _("Refreshing: %(counts)s done (%(rate)s)") % {"counts": counts, "rate": rate}
        filled = self.width if not total else round(self.width * self.done / total)
        bar = "#" * filled + "-" * (self.width - filled)
        return f"[{bar}] {counts}  {rate}"

    def update(self, done: int | None = None) -> None:
        """One more company done (or ``done`` in all)."""
        self.done = self.done + 1 if done is None else done
        now = self.clock()
        if now - self.last_written >= self.interval:
            self.write()
            self.last_written = now

    def write(self) -> None:
        if self.tty:
            self.stream.write("\r" + self.text() + "\x1b[K")
            self.drawn = True
        else:
            self.stream.write(self.text() + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """Draw the final state and end the bar's line (a terminal only, and only when it was drawn)."""
        if self.tty and self.drawn:
            self.write()
            self.stream.write("\n")
            self.stream.flush()
