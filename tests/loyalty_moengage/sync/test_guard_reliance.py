"""Overlapping runs of a night and a failing guard: a withdrawal never takes events another run's
chunk left to the withdrawing run's staged batches (or awaiting rows), whatever the interleaving."""

from __future__ import annotations

import io
import threading
from datetime import date, timedelta
from types import SimpleNamespace

import psycopg
import pytest

from loyalty_moengage.night import Window
from loyalty_moengage.sync.send import guard
from loyalty_moengage_devtools.generator import generate
from tests.loyalty_moengage.sync.sync_env import transform_chunk

TZ = "Asia/Kolkata"
PROGRAM_ID = "gen"
NIGHT = date(2026, 3, 10)
# min_members too high for this program: every run's guard objects, and only an override passes.
PROGRAM = SimpleNamespace(id=PROGRAM_ID, min_members=10_000, reject_threshold=0.9, max_event_drop_pct=50.0,
                          anomaly_lookback_nights=7)


@pytest.fixture
def program(loyalty_db, tmp_path, monkeypatch):
    programs = tmp_path / "programs.yaml"
    programs.write_text(f"programs:\n  - id: {PROGRAM_ID}\n    time_zone: {TZ}\n")
    monkeypatch.setenv("LOYALTY_PROGRAMS_FILE", str(programs))
    generate(loyalty_db, program_id=PROGRAM_ID, members=300, days=2, seed=11, end_date=NIGHT + timedelta(days=1),
             time_zone=TZ, progress_to=io.StringIO())
    with psycopg.connect(loyalty_db) as conn:
        # Half the customers are cached as known to MoEngage: the other half's events wait in
        # awaiting_presence for their check (a real run defers the lookups).
        conn.execute("INSERT INTO moengage_sync.customer_presence (program_id, customer_id, present) "
                     "SELECT %s, relation_reference, true FROM loyalty.members WHERE program_id = %s "
                     "AND member_id %% 2 = 0", (PROGRAM_ID, PROGRAM_ID))
    return loyalty_db


def _transform(dsn: str, run_id: str) -> dict:
    return transform_chunk(program_id=PROGRAM_ID, window=Window.of_night(NIGHT, TZ), lo=0, hi=2**63 - 1,
                           label="all", run_id=run_id, send_users=False, loyalty_dsn=dsn, state_dsn=dsn,
                           lookup=lambda customers: set(customers))


def _guard(dsn: str, run_id: str, *, override: bool) -> dict:
    return guard.guard_night(dsn, program=PROGRAM, night=NIGHT, run_id=run_id, override=override)


def _sendable(dsn: str) -> tuple[int, int, int]:
    """(event keys, keys whose event will be sent: in a pending batch or a released awaiting row, awaiting)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE b.state = 'pending' OR a.released), count(a.event_id) "
            "FROM moengage_sync.event_keys k LEFT JOIN moengage_sync.batches b ON b.batch_id = k.batch_id "
            "LEFT JOIN moengage_sync.awaiting_presence a ON k.batch_id IS NULL AND a.program_id = k.program_id "
            "AND a.event_id = k.event_id").fetchone()


def test_a_failing_guard_keeps_what_another_runs_chunks_left_to_its_batches(program):
    a = _transform(program, "run-a")
    keyed, _, awaiting = _sendable(program)
    assert a["events_enqueued"] > 0 and 0 < awaiting < keyed
    b = _transform(program, "run-b")   # run B overlaps: everything is keyed by A's staged work already
    assert b["events_enqueued"] == 0 and b["events_already_sent"] == keyed
    with pytest.raises(guard.AnomalyError, match=r"0 batch\(es\) withdrawn, 1 kept"):
        _guard(program, "run-a", override=False)   # A's guard fails: it must not take B's events
    _guard(program, "run-b", override=True)        # B's passes (its params said so)
    assert _sendable(program) == (keyed, keyed, awaiting)


def test_a_chunk_whose_gate_saw_batches_withdrawn_before_it_wrote_enqueues_those_events_itself(program,
                                                                                                monkeypatch):
    from loyalty_moengage.sync.chunk import gate

    a = _transform(program, "run-a")
    keyed, _, _ = _sendable(program)
    read_known, reads = gate.read_known, []

    def read_then_withdraw(*args, **kwargs):
        known = read_known(*args, **kwargs)
        if not reads:
            with pytest.raises(guard.AnomalyError):
                _guard(program, "run-a", override=False)   # between B's gate and B's write
        reads.append(len(known.already_enqueued))
        return known

    monkeypatch.setattr(gate, "read_known", read_then_withdraw)
    b = _transform(program, "run-b")
    assert reads == [keyed, 0]     # the write found A's work gone, and the chunk read again
    assert b["events_enqueued"] == a["events_enqueued"] and b["events_already_sent"] == 0
    _guard(program, "run-b", override=True)
    assert _sendable(program)[:2] == (keyed, keyed)


def test_a_withdrawal_waits_for_the_chunk_transaction_that_relies_on_its_batches(program, monkeypatch):
    from loyalty_moengage.sync.report import stats

    _transform(program, "run-a")
    keyed, _, awaiting = _sendable(program)
    record_stats, in_write, go = stats.record_stats, threading.Event(), threading.Event()

    def pausing(conn, **kwargs):
        if kwargs["stage"] == "transform" and kwargs["run_id"] == "run-b":
            in_write.set()            # B's chunk transaction, its reliance written, not committed yet
            assert go.wait(30)
        record_stats(conn, **kwargs)

    monkeypatch.setattr(stats, "record_stats", pausing)
    errors: dict[str, BaseException] = {}

    def run(name, fn):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors[name] = exc

    chunk_b = threading.Thread(target=run, args=("b", lambda: _transform(program, "run-b")))
    chunk_b.start()
    assert in_write.wait(30)
    guard_a = threading.Thread(target=run, args=("a", lambda: _guard(program, "run-a", override=False)))
    guard_a.start()
    guard_a.join(1.5)
    waited = guard_a.is_alive()   # A's withdrawal waits for B's transaction
    go.set()
    chunk_b.join(30)
    guard_a.join(30)
    assert isinstance(errors.pop("a"), guard.AnomalyError) and errors == {}
    _guard(program, "run-b", override=True)
    assert _sendable(program) == (keyed, keyed, awaiting)
    assert waited
