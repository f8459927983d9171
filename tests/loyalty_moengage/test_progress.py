"""progress.Progress: a redrawn line on a terminal, throttled plain lines elsewhere, the conventions."""

from __future__ import annotations

import io
import time

import pytest

from loyalty_moengage.progress import PLAIN_EVERY, Progress, elapsed_text, interactive


class Stream(io.StringIO):
    """A text stream that says whether it is a terminal."""

    def __init__(self, *, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _no_conventions(monkeypatch):
    for name in ("TTY_COMPATIBLE", "NO_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)


def test_a_terminal_gets_one_line_redrawn_with_bar_counts_rate_and_elapsed():
    stream, clock = Stream(tty=True), Clock()
    p = Progress("COPY loyalty.members", total=1000, unit="rows", stream=stream, clock=clock, heartbeat=False)
    clock.now += 1.0
    p.advance(250)
    clock.now += 1.0
    p.advance(250)
    p.finish()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")          # one line, redrawn with \r
    frames = text.rstrip("\n").split("\r")[1:]
    assert frames[1].startswith("COPY loyalty.members [######......") and "250/1,000 rows, 250 rows/s, 1.0 s" in frames[1]
    assert "[############............]: 500/1,000 rows, 250 rows/s, 2.0 s" in frames[2]
    assert frames[-1].rstrip().endswith("500/1,000 rows, 250 rows/s, done in 2.0 s")


def test_a_terminal_is_redrawn_at_most_ten_times_a_second():
    stream, clock = Stream(tty=True), Clock()
    p = Progress("rows", total=10_000, stream=stream, clock=clock, heartbeat=False)
    for _ in range(1000):
        clock.now += 0.001          # a second of 1,000 quick updates
        p.advance(10)
    p.finish()
    assert 9 <= stream.getvalue().count("\r") <= 13


def test_off_a_terminal_plain_lines_at_most_every_30_s_and_the_phase_end():
    stream, clock = Stream(tty=False), Clock()
    p = Progress("VACUUM ANALYZE", total=11, unit="tables", stream=stream, clock=clock, heartbeat=False)
    for _ in range(11):
        clock.now += 7.0            # 77 s in all
        p.advance()
    p.finish("statistics fresh")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == ["VACUUM ANALYZE: 5/11 tables, 0.1 tables/s, 35.0 s",
                     "VACUUM ANALYZE: 10/11 tables, 0.1 tables/s, 1 min 10 s",
                     "VACUUM ANALYZE: 11/11 tables, 0.1 tables/s, done in 1 min 17 s; statistics fresh"]


def test_a_short_phase_off_a_terminal_says_only_its_end():
    stream, clock = Stream(tty=False), Clock()
    with Progress("simulating 10 members", stream=stream, clock=clock, heartbeat=False):
        clock.now += 0.4
    assert stream.getvalue() == "simulating 10 members: done in 0.4 s\n"


def test_the_heartbeat_speaks_while_nothing_is_reported():
    stream = Stream(tty=False)
    p = Progress("CREATE INDEX", stream=stream, plain_every=0.05)
    time.sleep(1.3)                 # the heartbeat wakes at least once a second
    p.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2 and lines[0].startswith("CREATE INDEX: ") and lines[-1].startswith("CREATE INDEX: done in")


def test_an_error_inside_the_phase_is_named_in_its_end_line():
    stream = Stream(tty=False)
    with pytest.raises(KeyError):
        with Progress("COPY", stream=stream, heartbeat=False):
            raise KeyError("x")
    assert stream.getvalue().rstrip().endswith("; stopped: KeyError")


@pytest.mark.parametrize(("env", "tty", "expected"), [
    ({}, True, True), ({}, False, False),
    ({"TTY_COMPATIBLE": "0"}, True, False), ({"NO_COLOR": "1"}, True, False), ({"TERM": "dumb"}, True, False),
    ({"TTY_COMPATIBLE": "1"}, False, True), ({"NO_COLOR": ""}, True, True),
])
def test_the_conventions_choose_plain_lines_or_the_redrawn_line(monkeypatch, env, tty, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert interactive(Stream(tty=tty)) is expected


def test_tty_compatible_0_makes_a_terminal_get_plain_lines(monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    stream, clock = Stream(tty=True), Clock()
    p = Progress("COPY", total=4, stream=stream, clock=clock, heartbeat=False)
    clock.now += PLAIN_EVERY
    p.advance(2)
    p.finish()
    assert "\r" not in stream.getvalue() and "[" not in stream.getvalue()
    assert stream.getvalue().splitlines()[-1] == "COPY: 2/4, 0.1 items/s, done in 30.0 s"


def test_elapsed_text():
    assert (elapsed_text(4.24), elapsed_text(65), elapsed_text(3600)) == ("4.2 s", "1 min 05 s", "60 min 00 s")
