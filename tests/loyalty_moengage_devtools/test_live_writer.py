"""The live writer is the ruler of the live benchmark and scheduler test: it must commit exactly
what its plan says, however late a busy machine wakes its threads."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from loyalty_moengage_devtools.live_writer import ENTRY_BASE, FIRST_POINTS, LiveWriter, Plan

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_program.sql"


def _rows(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT points FROM loyalty.points_ledger WHERE entry_id >= %s ORDER BY points", (ENTRY_BASE,))]


def test_the_writer_commits_its_whole_plan_even_when_its_thread_wakes_late(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
    # a tick longer than the plan's seconds: a thread that wakes late (by 0.7 s) must still commit all it owes
    plan = Plan(rate=40, seconds=1.0, tick=0.7, bursts={0.2: 7}, holds=[(0.1, 0.5)], rows_per_hold=2)
    writer = LiveWriter(loyalty_db, "tiny", plan).start()
    writer.join(10)
    assert not writer.errors
    assert writer.planned == 40 + 7 + 2
    assert writer.written == writer.planned
    assert _rows(loyalty_db) == sorted(writer.committed) == list(range(FIRST_POINTS, FIRST_POINTS + writer.planned))


def test_a_stopped_writer_commits_less_and_says_so(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute(FIXTURE.read_text())
    writer = LiveWriter(loyalty_db, "tiny", Plan(rate=20, seconds=30, tick=0.05)).start()
    time.sleep(0.5)
    writer.stop()
    writer.join(10)
    assert not writer.errors
    assert 0 < writer.written < writer.planned == 600
    assert len(_rows(loyalty_db)) == writer.written
