"""Lost answers settled by MoEngage's own evidence: receipts read back through the Get User API."""

from __future__ import annotations

import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest

from loyalty_moengage_devtools.generator import generate
from tests.loyalty_moengage.sync.sync_env import RECEIPT_ATTRIBUTE, WORKSPACE, sync_env

TZ = "Asia/Kolkata"
PROGRAM = "gen"


def _today() -> date:
    return datetime.now(timezone.utc).astimezone(ZoneInfo(TZ)).date()


@pytest.fixture
def program(loyalty_db):
    generate(loyalty_db, program_id=PROGRAM, members=300, days=4, seed=7, end_date=_today(), time_zone=TZ)
    return loyalty_db


def _settings(wait: float = 1.0):
    from loyalty_moengage.sync.outbox.receipts import ReceiptSettings

    return ReceiptSettings(attribute=RECEIPT_ATTRIBUTE, wait_seconds=wait)


def _enqueue(dsn: str, night: date, run_id: str = "run-s") -> None:
    """One night in the outbox, its customers checked through the Get User API (so they can carry receipts)."""
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.night import Window
    from loyalty_moengage.sync.send.guard import release_night
    from loyalty_moengage.sync.send.lookups import check_awaiting
    from tests.loyalty_moengage.sync.sync_env import transform_chunk

    transform_chunk(program_id=PROGRAM, window=Window.of_night(night, TZ), lo=0, hi=2**63 - 1, label="all",
                    run_id=run_id, send_users=False, loyalty_dsn=dsn, state_dsn=dsn,
                    lookup=MoEngageHook(moengage_conn_id="moengage_default").existing_customers)
    with psycopg.connect(dsn) as conn:
        release_night(conn, PROGRAM, night)
    check_awaiting(dsn, program_id=PROGRAM, up_to_night=night, run_id=run_id, key="presence-test",
                   lookup=MoEngageHook(moengage_conn_id="moengage_default").existing_customers)


def _load(dsn: str, night: date, *, receipts=None, run_id: str = "run-s", attempt: int = 1):
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.send.load import load_slot

    return load_slot(program_id=PROGRAM, slot=0, night=night, run_id=run_id, state_dsn=dsn, attempt=attempt,
                     hook=MoEngageHook(moengage_conn_id="moengage_default"), receipts=receipts or _settings(),
                     claim_size=1)


def _settle(dsn: str, night: date, *, settings=None, timeout: float | None = None):
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.send.settle import settle

    with psycopg.connect(dsn) as conn:
        return settle(conn, program_id=PROGRAM, hook=MoEngageHook(moengage_conn_id="moengage_default"),
                      settings=settings or _settings(), up_to_night=night, run_id="run-settle", timeout=timeout)


def _states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM moengage_sync.batches GROUP BY state").fetchall())


def _received(sandbox) -> Counter:
    return Counter((e["customer_id"], e["action"], e["current_time"],
                    orjson.dumps(e["attributes"], option=orjson.OPT_SORT_KEYS)) for e in sandbox.state.events(WORKSPACE))


def _event_keys(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM moengage_sync.event_keys").fetchone()[0]


def test_every_events_post_carries_a_receipt_on_a_customer_of_its_batch(program, tmp_path):
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        _enqueue(program, night)
        stats = _load(program, night)
        users = sandbox.state.users(WORKSPACE)
        origins = sandbox.state.user_origins(WORKSPACE)
        bodies = [r for r in sandbox.state.requests(WORKSPACE) if r.get("events")]
    with psycopg.connect(program) as conn:
        rows = conn.execute("SELECT batch_id, receipt_carrier, receipt_token, body FROM moengage_sync.batches "
                            "WHERE kind = 'events'").fetchall()
    assert stats["receipts"] == len(rows) == len(bodies) >= 1
    assert len({carrier for _, carrier, _, _ in rows}) == len(rows)   # one carrier per POST
    for batch_id, carrier, token, body in rows:
        assert token.startswith(f"b{batch_id}.")
        assert users[carrier][RECEIPT_ATTRIBUTE] == token
        assert carrier in {el["customer_id"] for el in orjson.loads(bytes(body))["elements"]}
    assert set(origins.values()) == {"seed"}   # a receipt never creates a profile


def test_a_lost_answer_is_settled_by_its_receipt(program, tmp_path):
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        _enqueue(program, night)
        sandbox.fail_next("drop_after_body")    # applied by MoEngage, the answer lost
        stats = _load(program, night)
        assert stats["batches_uncertain"] == 1 and _states(program)["uncertain"] == 1
        settled = _settle(program, night)
        received = _received(sandbox)
    assert (settled.by_receipt, settled.absent, settled.left) == (1, 0, 0)
    assert _states(program) == {"sent": stats["batches_sent"] + 1}
    assert sum(received.values()) == len(received) == _event_keys(program)   # every event once


def test_a_request_moengage_never_read_is_resent_once_its_receipt_stays_absent(program, tmp_path):
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        _enqueue(program, night)
        sandbox.fail_next("drop")    # the connection dropped before MoEngage read the body
        _load(program, night)
        settled = _settle(program, night)
        assert (settled.by_receipt, settled.absent, settled.probes) == (0, 1, 1)
        assert _states(program).get("pending") == 1
        _load(program, night, attempt=2)
        received = _received(sandbox)
    assert _states(program) == {"sent": len(_batches_of(program))}
    assert sum(received.values()) == len(received) == _event_keys(program)
    with psycopg.connect(program) as conn:
        assert conn.execute("SELECT count(*) FROM moengage_sync.batches WHERE settled_by = 'absence'").fetchone()[0] == 1


def _batches_of(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT batch_id FROM moengage_sync.batches")]


def test_receipts_wait_out_moengage_processing_delay(program, tmp_path):
    """Attribute writes become visible only after a delay: neither the batch's receipt nor the
    probe shows at first, and absence is never concluded before the probe is seen."""
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        _enqueue(program, night)
        sandbox.state.workspace(WORKSPACE).attribute_delay = 3.0
        sandbox.fail_next("drop_after_body")
        _load(program, night)
        settled = _settle(program, night, settings=_settings(wait=0.5))
        received = _received(sandbox)
    assert (settled.by_receipt, settled.absent, settled.left) == (1, 0, 0)
    assert sum(received.values()) == len(received) == _event_keys(program)


def test_a_workspace_that_refuses_the_attribute_leaves_the_batch_to_a_person_saying_why(program, tmp_path):
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all",
                  workspace_kwargs={"refused_attributes": [RECEIPT_ATTRIBUTE]}) as sandbox:
        _enqueue(program, night)
        sandbox.fail_next("drop")
        _load(program, night)
        settled = _settle(program, night, timeout=4)
    assert (settled.by_receipt, settled.absent, settled.left) == (0, 0, 1)
    assert any("refuses the attribute" in n for n in settled.notes), settled.notes


def test_a_deleted_carrier_is_no_evidence(program, tmp_path):
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        _enqueue(program, night)
        sandbox.fail_next("drop_after_body")
        _load(program, night)
        with psycopg.connect(program) as conn:
            (carrier,) = conn.execute("SELECT receipt_carrier FROM moengage_sync.batches WHERE state = 'uncertain'"
                                      ).fetchone()
        with sandbox.state.lock:
            del sandbox.state.workspace(WORKSPACE).users[carrier]
        settled = _settle(program, night, timeout=4)
    assert (settled.by_receipt, settled.absent, settled.left) == (0, 0, 1)
    assert any("no longer in MoEngage" in n for n in settled.notes)
    with psycopg.connect(program) as conn:
        assert conn.execute("SELECT present FROM moengage_sync.customer_presence WHERE customer_id = %s",
                            (carrier,)).fetchone() == (False,)


def test_a_carrier_is_never_shared_while_its_receipt_can_still_be_read(loyalty_db):
    """A later POST can never overwrite the receipt of an earlier one that is still unsettled
    (or was written within the quiet period), so a receipt is evidence for one POST only."""
    from loyalty_moengage.sync.outbox.receipts import take_carrier

    with psycopg.connect(loyalty_db) as conn:
        conn.execute("INSERT INTO moengage_sync.customer_presence (program_id, customer_id, present) "
                     "VALUES ('p', 'C1', true), ('p', 'C2', true), ('p', 'C3', false)")
        conn.execute("INSERT INTO moengage_sync.batches (batch_id, program_id, night, run_id, kind, chunk_label, "
                     "state, element_count, body_bytes) VALUES (1, 'p', '2026-11-01', 'r', 'events', 'c', "
                     "'uncertain', 1, 1)")
        take = lambda token, batch: take_carrier(conn, program_id="p", workspace="03:WS", token=token,  # noqa: E731
                                                 candidates=["C1", "C2", "C3"], batch_id=batch, quiet_seconds=3600)
        assert take("t1", 1) == "C1"
        assert take("t2", 2) == "C2"
        assert take("t3", 3) is None          # C1, C2 just used; C3 is not known to MoEngage
        conn.execute("UPDATE moengage_sync.receipt_carriers SET used_at = now() - interval '2 hours'")
        assert take("t4", 4) == "C2"          # quiet period over; C1's batch 1 is still uncertain
        conn.execute("UPDATE moengage_sync.batches SET state = 'sent' WHERE batch_id = 1")
        conn.execute("UPDATE moengage_sync.receipt_carriers SET used_at = now() - interval '2 hours' "
                     "WHERE customer_id = 'C1'")
        assert take("t5", 5) == "C1"          # settled, and quiet: free again


def test_two_programs_on_one_workspace_never_share_a_carrier_while_a_receipt_is_unsettled(loyalty_db):
    """Programs writing one workspace write the same receipt attribute: program B's receipt on a
    customer that carries program A's unsettled receipt would overwrite it, and A's settle would read
    a token not its own, conclude absence and resend (27 events twice). Carriers are per workspace."""
    from loyalty_moengage.sync.outbox.receipts import take_carrier

    with psycopg.connect(loyalty_db) as conn:
        conn.execute("INSERT INTO moengage_sync.customer_presence (program_id, customer_id, present) "
                     "VALUES ('a', 'C1', true), ('b', 'C1', true), ('b', 'C2', true), ('c', 'C1', true)")
        conn.execute("INSERT INTO moengage_sync.batches (batch_id, program_id, night, run_id, kind, chunk_label, "
                     "state, element_count, body_bytes) VALUES (1, 'a', '2026-11-01', 'r', 'events', 'c', "
                     "'uncertain', 1, 1)")
        take = lambda program, workspace, token, batch: take_carrier(  # noqa: E731
            conn, program_id=program, workspace=workspace, candidates=["C1", "C2"], token=token, batch_id=batch,
            quiet_seconds=3600)
        assert take("a", "03:WS", "ta", 1) == "C1"
        assert take("b", "03:WS", "tb", 2) == "C2"      # C1 holds a's unsettled receipt on this workspace
        conn.execute("UPDATE moengage_sync.receipt_carriers SET used_at = now() - interval '2 hours'")
        assert take("b", "03:WS", "tb2", 3) == "C2"     # quiet over; C1 still holds a's unsettled receipt
        assert take("c", "01:OTHER", "tc", 4) == "C1"   # another workspace: its own carriers


def test_receipts_off_hold_lost_answers_for_a_person(program, tmp_path):
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        _enqueue(program, night)
        sandbox.fail_next("drop_after_body")
        from loyalty_moengage.moengage.hook import MoEngageHook
        from loyalty_moengage.sync.send.load import load_slot
        from loyalty_moengage.sync.send.settle import settle

        load_slot(program_id=PROGRAM, slot=0, night=night, run_id="run-s", state_dsn=program,
                  hook=MoEngageHook(moengage_conn_id="moengage_default"), receipts=None)
        with psycopg.connect(program) as conn:
            settled = settle(conn, program_id=PROGRAM, hook=MoEngageHook(moengage_conn_id="moengage_default"),
                             settings=None, up_to_night=night)
    assert settled.left == 1 and any("receipts are off" in n for n in settled.notes)


def test_a_workspace_without_the_get_user_api_is_told_at_preflight(program, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.night import Window
    from loyalty_moengage.sync import tasks

    night = _today() - timedelta(days=1)
    context = {"data_interval_start": Window.of_night(night - timedelta(days=1), TZ).end,
               "data_interval_end": Window.of_night(night, TZ).end, "run_id": "run-g", "params": {}, "ti": None}
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all",
                  workspace_kwargs={"export_enabled": False}):
        with pytest.raises(AirflowFailException) as failed:
            tasks.preflight(get_program(PROGRAM), context)
    message = str(failed.value)
    assert "Get User API" in message and "receipts: false" in message and "verify_customers: false" in message


# -- a rude MoEngage (issue 30's recipes) --------------------------------------------------------

@pytest.mark.parametrize("answer", ["applied:502", "applied:503", "applied:500", "applied:504", "applied:408",
                                    "applied:drop"])
def test_an_error_answer_after_moengage_applied_the_request_sends_nothing_twice(program, tmp_path, answer):
    """A proxy answering 502 after MoEngage applied the body: the hook posted the same bytes again
    (and the load put the batch back to pending when retries ran out): 27 events arrived twice."""
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        _enqueue(program, night)
        sandbox.fail_next(answer)
        stats = _load(program, night)
        settled = _settle(program, night)
        _load(program, night, attempt=2)
        received = _received(sandbox)
    assert stats["batches_uncertain"] == 1 and (settled.by_receipt, settled.absent, settled.left) == (1, 0, 0)
    assert sum(received.values()) == len(received) == _event_keys(program)   # every event once
    assert _states(program) == {"sent": len(_batches_of(program))}


def _posted_at(dsn: str) -> datetime:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT posted_at FROM moengage_sync.batches WHERE state = 'uncertain'").fetchone()[0]


def test_the_receipt_wait_runs_from_when_the_last_attempt_left_not_from_before_the_429s(program, tmp_path):
    """posted_at was stamped when the batch was marked sending; 429 waits came after it, so absence was
    concluded one poll after the probe showed, while the request (applied after the 429s) was not
    visible yet: bulk writes shown out of order, a later probe first."""
    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        _enqueue(program, night)
        sandbox.set_faults(bulk_visibility_delay=[3.0, 3.0])     # this request's writes show 3 s late
        sandbox.fail_next(429, 429, 429, 429, "applied:drop")    # 4 s of 429 waits (retry_after 1 s)
        with psycopg.connect(program) as conn:
            before = conn.execute("SELECT now()").fetchone()[0]
        _load(program, night)
        posted_at = _posted_at(program)
        sandbox.set_faults()                                     # later writes (the probe) show at once
        settled = _settle(program, night, settings=_settings(wait=3.5))
        _load(program, night, attempt=2)
        received = _received(sandbox)
    assert (posted_at - before).total_seconds() >= 3.5             # stamped when the last request left
    assert (settled.by_receipt, settled.absent) == (1, 0)
    assert sum(received.values()) == len(received) == _event_keys(program)


def test_an_answer_the_state_database_forgot_leaves_the_batch_uncertain_with_its_receipt(program, tmp_path):
    """A failover to a replica that had not seen the 'sending' mark: the batch reads 'pending' again
    while its POST is applied. Recording the 200 failed, was logged as recorded, and the batch was
    claimed and sent again."""
    import threading

    night = _today() - timedelta(days=1)
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        _enqueue(program, night)
        sandbox.fail_next("latency:1.5")

        def promote_a_stale_replica() -> None:
            with psycopg.connect(program, autocommit=True) as conn:
                for _ in range(100):
                    if conn.execute("SELECT count(*) FROM moengage_sync.batches WHERE state = 'sending'").fetchone()[0]:
                        conn.execute("UPDATE moengage_sync.batches SET state = 'pending', claimed_by = NULL, "
                                     "receipt_token = NULL, receipt_carrier = NULL, lease_expires_at = NULL "
                                     "WHERE state = 'sending'")
                        return
                    time.sleep(0.05)

        replica = threading.Thread(target=promote_a_stale_replica)
        replica.start()
        stats = _load(program, night)
        replica.join()
        assert _states(program).get("uncertain") == 1 and stats["claims_lost"] == 1
        settled = _settle(program, night)
        _load(program, night, attempt=2)
        received = _received(sandbox)
    assert (settled.by_receipt, settled.absent) == (1, 0)
    assert sum(received.values()) == len(received) == _event_keys(program)


def test_a_load_that_lost_its_lease_while_waiting_sends_nothing(program, tmp_path, monkeypatch):
    """The lease renewer lost the database while the load waited out a 429; another run took the batch
    over. The waiting load must not post it once it wakes: its claim is checked before every request."""
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.outbox import delivery
    from loyalty_moengage.sync.send.load import LoadError, load_slot

    night = _today() - timedelta(days=1)
    monkeypatch.setattr(delivery.LeaseKeeper, "_run", lambda self: None)    # the renewer lost the database
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        _enqueue(program, night)
        sandbox.set_faults(retry_after=2.5)
        sandbox.fail_next(429)                       # the first request waits 2.5 s; the lease is 1 s
        with pytest.raises(LoadError, match="no longer being sent .* not sent"):
            load_slot(program_id=PROGRAM, slot=0, night=night, run_id="run-a", state_dsn=program,
                      hook=MoEngageHook(moengage_conn_id="moengage_default"), receipts=_settings(),
                      claim_size=1, lease_seconds=1.0)
        received = _received(sandbox)
        before_b = sum(received.values())
        _load(program, night, run_id="run-b")
        received = _received(sandbox)
    assert before_b == 0                               # run A did not post the batch it lost
    assert _states(program) == {"sent": len(_batches_of(program))}
    assert sum(received.values()) == len(received) == _event_keys(program)


def test_a_lease_that_lapses_while_its_post_is_in_flight_is_settled_by_the_receipt(program, tmp_path, monkeypatch):
    """The lease lapsed while the POST was in flight; another run recovered the batch, concluded absence
    and resent it before the first POST landed. Absence now waits for the request timeout too."""
    import threading

    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.outbox import delivery
    from loyalty_moengage.sync.outbox.delivery import recover_orphans
    from loyalty_moengage.sync.outbox.receipts import ReceiptSettings
    from loyalty_moengage.sync.send.load import load_slot

    night = _today() - timedelta(days=1)
    monkeypatch.setattr(delivery.LeaseKeeper, "_run", lambda self: None)    # the renewer lost the database
    with sync_env(tmp_path, program, program_id=PROGRAM, customers="all") as sandbox:
        _enqueue(program, night)
        hook = MoEngageHook(moengage_conn_id="moengage_default")
        program_settings = type("P", (), {"receipts": True, "receipt_attribute": RECEIPT_ATTRIBUTE,
                                           "receipt_wait_seconds": 0.5})()
        settings = ReceiptSettings.of(program_settings, hook.config)       # 0.5 s asked; timeout 3 s wins
        sandbox.fail_next("latency:2")
        first = threading.Thread(target=lambda: load_slot(
            program_id=PROGRAM, slot=0, night=night, run_id="run-a", state_dsn=program, hook=hook,
            receipts=settings, claim_size=1, lease_seconds=1.0))
        first.start()
        time.sleep(1.3)
        with psycopg.connect(program) as conn:
            uncertain, _ = recover_orphans(conn, PROGRAM)
        settled = _settle(program, night, settings=settings)
        first.join()
        _load(program, night, run_id="run-b", receipts=settings)
        received = _received(sandbox)
    assert uncertain == 1 and settings.wait_seconds >= 3
    assert settled.absent == 0
    assert sum(received.values()) == len(received) == _event_keys(program)
