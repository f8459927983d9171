"""The progress of a long command's phases on stderr, so a minute of work is not a minute of silence.

On a terminal, one line redrawn in place: the phase, a bar when the total is known, done/total,
the rate and the time elapsed. Off a terminal (CI, a pipe, ``make demo | tee``) a redrawn line
is noise in the log, so plain lines instead: at most one every 30 s, and one when the phase
ends. ``TTY_COMPATIBLE=0``, ``NO_COLOR`` or ``TERM=dumb`` ask for the plain lines on a terminal
too; ``TTY_COMPATIBLE=1`` asks for the redrawn line off one. Standard library only: the product
and the development tools both use it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

#: Seconds between two plain lines of one phase (its end line aside).
PLAIN_EVERY = 30.0
#: Seconds between two redraws of the terminal line (a redraw per row would cost more than the rows).
REDRAW_EVERY = 0.1
BAR_WIDTH = 24


def interactive(stream: TextIO) -> bool:
    """Whether ``stream`` gets the redrawn line: a terminal, unless the conventions ask otherwise."""
    tty_compatible = os.environ.get("TTY_COMPATIBLE", "")
    if tty_compatible == "0" or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    if tty_compatible == "1":
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def elapsed_text(seconds: float) -> str:
    """``4.2 s``, ``1 min 05 s``: short enough for a status line."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"


class Progress:
    """One phase: ``advance`` or ``update`` as work is done, ``finish`` (or leave the ``with``) at its end.

    A heartbeat thread redraws while no work is reported (a long ``CREATE INDEX`` says nothing
    until it ends), so the elapsed time keeps moving and the 30 s plain lines still come.
    """

    def __init__(self, phase: str, *, total: int | None = None, unit: str = "", stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, heartbeat: bool = True,
                 plain_every: float = PLAIN_EVERY) -> None:
        self.phase = phase
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._interactive = interactive(self._stream)
        self._plain_every = plain_every
        self._started = clock()
        self._last_draw = self._started
        self._width = 0
        self._finished = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if self._interactive:
            self._draw(self._started)
        if heartbeat:
            self._beat = threading.Thread(target=self._heartbeat, name=f"progress {phase}", daemon=True)
            self._beat.start()

    def advance(self, n: int = 1) -> None:
        """``n`` more done (from any thread: a pool's done callbacks, say)."""
        with self._lock:
            self.done += n
            self._maybe_draw(self._clock())

    def update(self, done: int) -> None:
        with self._lock:
            self.done = done
            self._maybe_draw(self._clock())

    def finish(self, note: str = "") -> None:
        """The phase's end line (once), with ``note`` after it: what the phase made, say."""
        self._stop.set()
        with self._lock:
            if self._finished:
                return
            self._finished = True
            line = self._line(self._clock(), end=True) + (f"; {note}" if note else "")
            if self._interactive:
                self._write("\r" + line.ljust(self._width) + "\n")
            else:
                self._write(line + "\n")
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(1)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.finish("" if kind is None else f"stopped: {kind.__name__}")

    def _heartbeat(self) -> None:
        every = 1.0 if self._interactive else min(self._plain_every, 1.0)
        while not self._stop.wait(every):
            with self._lock:
                if not self._finished:
                    self._maybe_draw(self._clock())

    def _maybe_draw(self, now: float) -> None:
        if self._finished:
            return
        if self._interactive and now - self._last_draw >= REDRAW_EVERY:
            self._draw(now)
        elif not self._interactive and now - self._last_draw >= self._plain_every:
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._last_draw = now
        line = self._line(now, end=False)
        if self._interactive:
            self._write("\r" + line.ljust(self._width))
            self._width = max(self._width, len(line))
        else:
            self._write(line + "\n")

    def _line(self, now: float, *, end: bool) -> str:
        seconds = now - self._started
        head = self.phase
        if self._interactive and self.total:
            filled = min(BAR_WIDTH, BAR_WIDTH * self.done // self.total)
            head += " [" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"
        facts = []
        if self.total is not None:
            facts.append(f"{self.done:,}/{self.total:,} {self.unit}".rstrip())
        elif self.done:
            facts.append(f"{self.done:,} {self.unit}".rstrip())
        if self.done and seconds > 0:
            rate = self.done / seconds
            facts.append(f"{rate:,.{1 if rate < 10 else 0}f} {self.unit or 'items'}/s")
        facts.append(("done in " if end else "") + elapsed_text(seconds))
        return f"{head}: {', '.join(facts)}"

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: progress is never worth a failure
            pass
