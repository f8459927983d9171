"""The live lane's attribute updates beside its events (programs file ``live.attributes``).

A push that says "you now have 1,250 points" needs the balance in MoEngage when the event's
campaign runs: the member's attributes go in the same request as the event. MoEngage keeps the
last write it applies, so a night's refresh (as of midnight) landing after a morning's live
update, or a live batch sent again hours later, would put an older balance last: those members
are owed a fresh update, paid by the first live run after the refresh has landed."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest

from tests.loyalty_moengage.sync.sync_env import WORKSPACE, reports, run, sync_env
from tests.loyalty_moengage.sync.test_live import (  # noqa: F401
    EARN, KEEP, _across_midnight, _earn, _earned, _live, _watermark_before, _zone_after_midnight, tiny)

LIVE_ATTRS = "    live:\n      enabled: true\n      lookback_minutes: 5\n      attributes: true\n"
ROOT = Path(__file__).resolve().parents[3]


def _balance(dsn: str, member: int) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT sum(points) FROM loyalty.points_ledger WHERE member_id = %s", (member,)).fetchone()[0]


def _points_in_moengage(sandbox, customer: str) -> int | None:
    [user] = [u for u in sandbox.state.users(WORKSPACE).items() if u[0] == customer] or [(None, {})]
    return user[1].get("points_available")


def _owed(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {c for c, in conn.execute("SELECT customer_id FROM moengage_sync.live_attributes_owed "
                                         "WHERE program_id = 'tiny'")}


SETTLE = 2.1    # sync_env's receipt_wait_seconds (2): how long after its 200 a refresh may still be applied


def _once_moengage_has_the_request(sandbox, dsn: str, sql: str, params: tuple = ()) -> tuple[threading.Thread, list]:
    """Runs ``sql`` from another connection once MoEngage has received the first bulk request and
    while it holds or answers it (until the statement changes a row); the list is [True] if it ran."""
    done: list[bool] = []

    def meanwhile() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(600):
                if sandbox.state.faults.seen["transition"] and conn.execute(sql, params).rowcount:
                    done.append(True)
                    return
                time.sleep(0.02)

    thread = threading.Thread(target=meanwhile)
    thread.start()
    return thread, done


def _request_of(sandbox, points: int) -> dict:
    """The sandbox's log entry of the request that carried the earn event of ``points``."""
    [event] = [e for e in sandbox.state.events(WORKSPACE) if e["action"] == "loyalty_points_earned"
               and e["attributes"].get("points") == points]
    [entry] = [r for r in sandbox.state.requests(WORKSPACE) if r["request_id"] == event["request_id"]]
    return entry


# ---- packing ------------------------------------------------------------------------------------

def test_each_customers_attributes_go_first_in_the_body_of_its_events():
    import pyarrow as pa

    from loyalty_moengage.sync.chunk.check import Checked, Rejects
    from loyalty_moengage.sync.chunk.gate import Known
    from loyalty_moengage.sync.chunk.pack import pack_chunk, with_attributes

    # A's two events (~90 KB) fill a body; D's three (~120 KB) cannot share one with its attributes
    pads = {"A": 45_000, "B": 10, "C": 10, "D": 40_000}
    rows = [("e1", "A"), ("e2", "B"), ("e3", "A"), ("e4", "C"), ("e5", "D"), ("e6", "D"), ("e7", "D")]
    events = pa.table({"event_id": [e for e, _ in rows], "event_name": ["loyalty_points_earned"] * len(rows),
                       "customer_id": [c for _, c in rows],
                       "element": [orjson.dumps({"type": "event", "customer_id": c, "actions": [{"action": "x",
                                                 "attributes": {"id": e, "pad": "x" * pads[c]}}]}).decode()
                                   for e, c in rows]})
    checked = Checked(events=events, users=None, user_kinds={}, user_template="", rows_extracted=len(rows),
                      members_extracted=0, rejects=Rejects())
    packed = pack_chunk(checked, Known(already_enqueued=set(), present=None, lookups=0, send_users=False))
    members = Checked(events=None, users=pa.table({"customer_id": ["A", "C", "D"], "points_available": ["1", "3", "4"]}),
                      user_kinds={"customer_id": "text", "points_available": "int"},
                      user_template="members/attributes.sql", rows_extracted=3, members_extracted=3, rejects=Rejects())
    beside = with_attributes(packed, members)
    bodies = [orjson.loads(b.body)["elements"] for b in beside.event_batches]
    assert all(len(b.body) <= 100_000 - 2_000 for b in beside.event_batches) and len(bodies) >= 3
    where: dict[str, set[int]] = {}
    for k, elements in enumerate(bodies):
        first: dict[str, str] = {}
        for el in elements:
            where.setdefault(el["customer_id"], set()).add(k)
            first.setdefault(el["customer_id"], el["type"])
        for customer in ("A", "C"):
            if customer in first:
                assert first[customer] == "customer", elements          # its attributes lead its events
        assert first.get("B", "event") == "event"                       # no attributes asked for B
    assert len(where["A"]) == len(where["C"]) == 1                      # their elements share one body
    assert sum(1 for els in bodies for el in els if el["customer_id"] in ("A", "C") and el["type"] == "customer") == 2
    sent_attrs = [el["customer_id"] for els in bodies for el in els if el["type"] == "customer"]
    assert sorted(sent_attrs) == ["A", "C"]                             # D's events went without them
    assert sum(b.users for b in beside.event_batches) == 2 and sum(b.events for b in beside.event_batches) == 7
    keyed = dict(zip(beside.keys.column("event_id").to_pylist(), beside.keys.column("batch").to_pylist()))
    assert sorted(keyed) == [e for e, _ in sorted(rows)]
    for k, elements in enumerate(bodies):
        for el in elements:
            if el["type"] == "event":
                assert keyed[el["actions"][0]["attributes"]["id"]] == k



def test_a_live_write_left_unsent_until_a_newer_refresh_goes_without_its_attributes_and_owes(tiny, tmp_path):
    """MoEngage fails for minutes around midnight: a live batch of yesterday (its balance read before
    midnight's refresh was decided) is still pending when the night decides that refresh. Sent
    after it, its older balance would land last: its events go alone and the member is owed."""
    from loyalty_moengage.sync.send.load import LoadError

    tz, today, yesterday_late = _across_midnight()
    with sync_env(tmp_path, tiny, time_zone=tz, extra_program=LIVE_ATTRS + KEEP) as sandbox:
        with psycopg.connect(tiny) as conn:
            _watermark_before(conn, yesterday_late)
            _earn(conn, 9802, 9802, at=yesterday_late)
        sandbox.set_faults(error_rate=1.0, error_statuses=(429,), endpoints=("transition",), retry_after=0.01)
        with pytest.raises(LoadError, match="429"):                        # not applied: the batch stays pending
            _live(tiny, "run-1")
        sandbox.set_faults()
        night = today - timedelta(days=1)
        assert str(run("tiny", night, time_zone=tz).state) == "success"   # decides the refresh, sends the backlog
        with psycopg.connect(tiny) as conn:
            state, users, carrier = conn.execute(
                "SELECT state, users, receipt_carrier FROM moengage_sync.batches WHERE run_id = 'live:run-1' "
                "AND kind = 'events'").fetchone()
        assert (state, users) == ("sent", 0)
        assert _earned(sandbox) == Counter({9802: 1})
        assert _request_of(sandbox, 9802)["users"] == (1 if carrier else 0)     # its receipt, no attributes
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1)      # midnight's refresh, landed last
        assert _owed(tiny) == {"REL-0001"}
        time.sleep(SETTLE)
        assert _live(tiny, "run-2")["owed_attributes_enqueued"] == 1 and _owed(tiny) == set()
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1)



def test_a_refresh_decided_while_a_live_write_waits_out_a_429_sends_it_without_its_attributes(tiny, tmp_path):
    """The check is made again right before each HTTP request: a live write that waits out a 429
    while a refresh covering it is decided goes without its attributes, and its member is owed."""
    tz = _zone_after_midnight()
    today = datetime.now(ZoneInfo(tz)).date()
    with sync_env(tmp_path, tiny, time_zone=tz, extra_program=LIVE_ATTRS + KEEP) as sandbox:
        with psycopg.connect(tiny) as conn:
            _earn(conn, 9901, 9901, at="now() - interval '2 seconds'")
        sandbox.set_faults(script={1: 429}, script_endpoint="transition", retry_after=1.0)
        # a refresh decided once MoEngage answered the first request 429
        meanwhile, decided = _once_moengage_has_the_request(
            sandbox, tiny, "INSERT INTO moengage_sync.attribute_watermark (program_id, night, run_id) "
            "VALUES ('tiny', %s, 'a night meanwhile')", (today,))
        first = _live(tiny, "run-1")
        meanwhile.join()
        assert decided and first["events_sent"] == 1, first
        with psycopg.connect(tiny) as conn:
            users, carrier = conn.execute("SELECT users, receipt_carrier FROM moengage_sync.batches "
                                          "WHERE run_id = 'live:run-1' AND kind = 'events'").fetchone()
        assert users == 0 and _request_of(sandbox, 9901)["users"] == (1 if carrier else 0)
        assert _earned(sandbox) == Counter({9901: 1}) and _owed(tiny) == {"REL-0001"}


# ---- end to end against the sandbox ----------------------------------------------------------------

def test_the_balance_goes_in_the_same_request_as_the_event_and_is_owed_until_the_refresh_lands(tiny, tmp_path):
    tz, today, yesterday_late = _across_midnight()
    with sync_env(tmp_path, tiny, time_zone=tz, extra_program=LIVE_ATTRS + KEEP) as sandbox:
        with psycopg.connect(tiny) as conn:
            # a window across midnight: 9302 is yesterday's (its batch is that night's), 9301 today's
            _watermark_before(conn, yesterday_late)
            _earn(conn, 9302, 9302, at=yesterday_late)
            _earn(conn, 9301, 9301, at="now() - interval '2 seconds'")
        first = _live(tiny, "run-1")
        assert first["events_sent"] == 2 and first["attributes_beside"] == 2, first
        request = _request_of(sandbox, 9301)
        assert request["events"] == 1 and request["users"] >= 1          # the member's attributes, one request
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1)
        assert _owed(tiny) == set()                                       # no refresh in flight: nothing owed
        assert _live(tiny, "run-2")["owed_attributes_enqueued"] == 0

        night = today - timedelta(days=1)
        assert str(run("tiny", night, time_zone=tz).state) == "success"
        # the refresh (as of midnight, before 9301) was enqueued after 9301's live write: it owes REL-0001
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1) - 9301
        assert _owed(tiny) == {"REL-0001"}
        time.sleep(SETTLE)
        paid = _live(tiny, "run-3")
        assert paid["owed_attributes_enqueued"] == 1 and _owed(tiny) == set(), paid
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1)           # and the live lane mended it
        assert _earned(sandbox) == Counter({9301: 1, 9302: 1})

        # a plain rerun finds the refresh enqueued already: it sends no attributes and owes nothing
        assert str(run("tiny", night, time_zone=tz).state) == "success"
        assert _owed(tiny) == set() and _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1)
        # a rerun forcing the refresh sends midnight's balance again: owed again, mended again
        assert str(run("tiny", night, time_zone=tz, conf={"force_attributes": True}).state) == "success"
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1) - 9301 and _owed(tiny) == {"REL-0001"}
        time.sleep(SETTLE)
        assert _live(tiny, "run-4")["owed_attributes_enqueued"] == 1
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1)
    report = [r for r in reports(tiny, "tiny") if r["night"] == night][0]     # the first run's
    # the night's members_updated is its refresh, not also the live update beside 9302 (that night's batch)
    assert report["members_updated"] == report["members_enqueued"] > 0 and report["events_sent_live"] == 1


def test_a_resend_after_a_lost_answer_goes_without_the_attributes_and_owes_them(tiny, tmp_path):
    """A rude MoEngage drops the connection before applying the live request. The next live runs
    read its receipt: absent past the wait while a later probe shows, so it goes again. By then its
    balance could be older than one sent since, so the events go alone and the member is owed a
    fresh update, which the run after pays."""
    from loyalty_moengage.moengage.presence import record_answers

    tz = _zone_after_midnight()
    today = datetime.now(ZoneInfo(tz)).date()
    with sync_env(tmp_path, tiny, time_zone=tz, extra_program=LIVE_ATTRS + KEEP) as sandbox:
        with psycopg.connect(tiny) as conn:
            _earn(conn, 9401, 9401, at="now() - interval '2 seconds'")
        sandbox.set_faults(drop_rate=1.0, endpoints=("transition",), limit=1)
        first = _live(tiny, "run-1")
        sandbox.set_faults()
        assert first["batches_uncertain"] == 1 and first["uncertain_live_batches"] == 1, first
        assert _earned(sandbox) == Counter()
        assert _owed(tiny) == {"REL-0001"}                                # in doubt: MoEngage may apply it late
        assert str(run("tiny", today - timedelta(days=1), time_zone=tz).state) == "success"
        with psycopg.connect(tiny) as conn:                               # a second customer carries the probe,
            record_answers(conn, "tiny", ["REL-0002"], {"REL-0002"})     # confirmed after the night's own POSTs
        time.sleep(SETTLE + 1)                                            # the wait: receipt_wait + read timeout
        probing = _live(tiny, "run-2")                                    # absent, and a probe written
        assert probing["uncertain_live_batches"] == 1 and _earned(sandbox) == Counter(), probing.get("settle_notes")
        seen = []
        for attempt in range(3):                                          # the probe shows: not applied, sent again
            resent = _live(tiny, f"run-3.{attempt}")
            seen.append({k: resent.get(k) for k in ("resent_after_absence", "uncertain_live_batches",
                                                    "settle_notes", "settle_error", "settled_by_receipt")})
            if resent["resent_after_absence"]:
                break
            time.sleep(1)
        assert (resent["resent_after_absence"], resent["uncertain_live_batches"]) == (1, 0), seen
        assert _earned(sandbox) == Counter({9401: 1})                     # the events went, once
        with psycopg.connect(tiny) as conn:
            users, body, carrier = conn.execute(
                "SELECT users, body, receipt_carrier FROM moengage_sync.batches WHERE run_id = 'live:run-1' "
                "AND kind = 'events'").fetchone()
        assert users == 0 and b'"customer_id":"REL-0001","update_existing_only"' not in bytes(body)
        assert _request_of(sandbox, 9401)["users"] == (1 if carrier else 0)   # its receipt, no attributes
        assert _owed(tiny) == {"REL-0001"}                                # left out of the resend: owed
        # ... paid once the lost write could no longer land (the receipt wait), not before
        assert _live(tiny, "run-4")["owed_attributes_enqueued"] == 0 and _owed(tiny) == {"REL-0001"}
        time.sleep(SETTLE + 1)
        assert _live(tiny, "run-5")["owed_attributes_enqueued"] == 1 and _owed(tiny) == set()
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1)



def test_an_answer_the_state_database_forgot_keeps_the_live_write_in_doubt_and_owes_its_members(tiny, tmp_path):
    """A failover to a replica that had not seen the 'sending' mark: MoEngage answers, the row reads
    'pending'. The batch is kept uncertain with its receipt (never posted again on the strength of a
    state that forgot the POST), and its attributes, which MoEngage may apply late, are owed in the
    same transaction."""
    tz = _zone_after_midnight()
    with sync_env(tmp_path, tiny, time_zone=tz, extra_program=LIVE_ATTRS + KEEP) as sandbox:
        with psycopg.connect(tiny) as conn:
            _earn(conn, 9451, 9451, at="now() - interval '2 seconds'")
        sandbox.set_faults(script={1: "latency:1.5"}, script_endpoint="transition")

        # a stale replica promoted once MoEngage holds the POST (1.5 s), not before
        replica, flipped = _once_moengage_has_the_request(
            sandbox, tiny, "UPDATE moengage_sync.batches SET state = 'pending', claimed_by = NULL, "
            "lease_expires_at = NULL WHERE state = 'sending'")
        first = _live(tiny, "run-1")
        replica.join()
        assert flipped, "the batch was never seen being sent"
        with psycopg.connect(tiny) as conn:
            state, users = conn.execute("SELECT state, users FROM moengage_sync.batches WHERE run_id = 'live:run-1' "
                                        "AND kind = 'events'").fetchone()
        assert (state, users) == ("uncertain", 1) and first["uncertain_live_batches"] == 1, first
        assert _earned(sandbox) == Counter({9451: 1})
        assert _owed(tiny) == {"REL-0001"}


# ---- the template's part --------------------------------------------------------------------------

def _templates(tmp_path: Path, members_sql: str) -> Path:
    sql = tmp_path / "sql"
    shutil.copytree(ROOT / "include" / "sql", sql)
    (sql / "members" / "attributes.sql").write_text(members_sql)
    return sql


def test_a_members_template_that_does_not_take_customer_ids_fails_naming_it(tiny, tmp_path, monkeypatch):
    from loyalty_moengage.sync.chunk.contract import TemplateError

    # the template as it was before the parameter: the same SQL without the customer filters
    before = "\n".join(line for line in (ROOT / "include/sql/members/attributes.sql").read_text().splitlines()
                       if "%(customer_ids)s" not in line or line.lstrip().startswith("--"))
    assert "%(customer_ids)s" in before   # only in its comments, which do not count
    monkeypatch.setenv("LOYALTY_SQL_DIR", str(_templates(tmp_path, before)))
    with sync_env(tmp_path, tiny, extra_program=LIVE_ATTRS + KEEP) as sandbox:
        with psycopg.connect(tiny) as conn:
            _earn(conn, 9501, 9501, at="now() - interval '2 seconds'")
        with pytest.raises(TemplateError, match=r"'members/attributes.sql' does not use %\(customer_ids\)s"):
            _live(tiny, "run-1")
        assert _earned(sandbox) == Counter()                # nothing half-done: the run fails before it reads


def test_a_members_template_that_names_customer_ids_but_ignores_them_fails_naming_it(tiny, tmp_path, monkeypatch):
    from loyalty_moengage.night import Window
    from loyalty_moengage.sync.chunk.attributes import attributes_sparing_bad_rows
    from loyalty_moengage.sync.chunk.contract import TemplateError

    sql = (ROOT / "include/sql/members/attributes.sql").read_text()
    ignoring = sql.replace("%(customer_ids)s::text[] IS NULL OR", "%(customer_ids)s::text[] IS NULL OR TRUE OR")
    monkeypatch.setenv("LOYALTY_SQL_DIR", str(_templates(tmp_path, ignoring)))
    window = Window.of_night(datetime.now(ZoneInfo("UTC")).date(), "UTC")
    with pytest.raises(TemplateError, match=r"returned 2 member\(s\) whose customer_id is not in %\(customer_ids\)s"):
        attributes_sparing_bad_rows(tiny, window, "tiny", ["REL-0001"])
    monkeypatch.delenv("LOYALTY_SQL_DIR")
    checked = attributes_sparing_bad_rows(tiny, window, "tiny", ["REL-0001"]).checked
    assert checked.users.column("customer_id").to_pylist() == ["REL-0001"]
    assert int(checked.users.column("points_available")[0].as_py()) == _balance(tiny, 1)



def test_a_row_the_members_template_cannot_compute_holds_back_only_that_members_attributes(tiny, tmp_path, monkeypatch):
    """Bad data on one member (here a division by zero on REL-0002's row) fails the members
    template for the whole read. It is read again in halves: the other members' balances still go
    beside their events and their debts are paid; the bad member's events go alone, its debt waits
    (tried again later) and each run says which customer's row to mend."""
    sql = (ROOT / "include/sql/members/attributes.sql").read_text()
    broken = sql.replace("COALESCE(ledger.available, 0)                           AS points_available",
                         "COALESCE(ledger.available, 0) / (CASE WHEN mem.relation_reference = 'REL-0002' "
                         "THEN 0 ELSE 1 END) AS points_available")
    assert broken != sql
    monkeypatch.setenv("LOYALTY_SQL_DIR", str(_templates(tmp_path, broken)))
    tz = _zone_after_midnight()
    with sync_env(tmp_path, tiny, time_zone=tz, extra_program=LIVE_ATTRS + KEEP) as sandbox:
        with psycopg.connect(tiny) as conn:
            conn.execute(EARN.format(at="now() - interval '2 seconds'"), (9701, 1, 9701))
            conn.execute(EARN.format(at="now() - interval '2 seconds'"), (9702, 2, 9702))
        first = _live(tiny, "run-1")
        assert first["events_sent"] == 2 and first["attributes_beside"] == 1, first
        assert "REL-0002" in first["attribute_errors"][0] and "division by zero" in first["attribute_errors"][0]
        assert _earned(sandbox) == Counter({9701: 1, 9702: 1})
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1)
        assert _owed(tiny) == {"REL-0002"}
        with psycopg.connect(tiny) as conn:      # both owed and due now (a refresh landed after them, say)
            conn.execute("INSERT INTO moengage_sync.live_attributes_owed (program_id, customer_id) VALUES "
                         "('tiny', 'REL-0001') ON CONFLICT DO NOTHING")
            conn.execute("UPDATE moengage_sync.live_attributes_owed SET not_before = now() - interval '1 second'")
        paying = _live(tiny, "run-2")
        assert paying["owed_attributes_enqueued"] == 1 and paying["owed_attributes_failed"] == 1, paying
        assert "REL-0002" in paying["owed_attributes_error"] and "REL-0001" not in paying["owed_attributes_error"]
        with psycopg.connect(tiny) as conn:
            [(customer, wait)] = conn.execute(
                "SELECT customer_id, extract(epoch FROM not_before - now()) FROM moengage_sync.live_attributes_owed")
        assert customer == "REL-0002" and 800 < wait <= 900     # waits, still owed, behind no other debt
        monkeypatch.delenv("LOYALTY_SQL_DIR")                   # the row is mended (here: the template)
        with psycopg.connect(tiny) as conn:
            conn.execute("UPDATE moengage_sync.live_attributes_owed SET not_before = now() - interval '1 second'")
        mended = _live(tiny, "run-3")
        assert mended["owed_attributes_enqueued"] == 1 and "owed_attributes_failed" not in mended, mended
        assert _owed(tiny) == set() and _points_in_moengage(sandbox, "REL-0002") == _balance(tiny, 2)



def test_a_members_template_failing_on_every_row_costs_a_bounded_number_of_reads(tiny, tmp_path, monkeypatch):
    """Bad data every member reads (not one member's row) fails every half: the search for the bad
    rows stops after its read budget instead of reading each member alone, every minute."""
    from loyalty_moengage.night import Window
    from loyalty_moengage.sync.chunk import attributes

    sql = (ROOT / "include/sql/members/attributes.sql").read_text()
    broken = sql.replace("COALESCE(ledger.available, 0)                           AS points_available",
                         "COALESCE(ledger.available, 0) / 0 AS points_available")
    monkeypatch.setenv("LOYALTY_SQL_DIR", str(_templates(tmp_path, broken)))
    reads = []
    real = attributes._extract
    monkeypatch.setattr(attributes, "_extract", lambda *a: reads.append(len(a[-1])) or real(*a))
    window = Window.of_night(datetime.now(ZoneInfo("UTC")).date(), "UTC")
    customers = [f"REL-{n:04d}" for n in range(1, 65)]
    with psycopg.connect(tiny) as conn:
        conn.execute("INSERT INTO loyalty.members (member_id, program_id, relation_reference, status, tier, "
                     "enrolled_at, recorded_at) SELECT 100 + n, 'tiny', 'REL-' || lpad(n::text, 4, '0'), 'active', "
                     "'Silver', now() - interval '1 day', now() - interval '1 day' FROM generate_series(3, 64) AS n")
    spared = attributes.attributes_sparing_bad_rows(tiny, window, "tiny", customers, most_reads=9)
    assert len(reads) == 9 and reads[:2] == [64, 32]
    assert sorted(spared.failed) == customers and spared.checked.users is None
    assert "division by zero" in spared.error and "REL-0001" in spared.error and "54 more" in spared.error


# ---- refreshes that are held, rerun or in doubt, and the order of writes -----------------------------

def test_a_held_night_released_later_owes_the_live_written_members_again(tiny, tmp_path):
    """The night's guard holds it (its refresh withdrawn); an operator releases it later with
    skip_anomaly_guard, sending midnight's balance after the morning's live update: owed, mended."""
    tz = _zone_after_midnight()
    today = datetime.now(ZoneInfo(tz)).date()
    with sync_env(tmp_path, tiny, time_zone=tz, extra_program=LIVE_ATTRS + KEEP + "    min_members: 100\n") as sandbox:
        with psycopg.connect(tiny) as conn:
            _earn(conn, 9601, 9601, at="now() - interval '2 seconds'")
        assert _live(tiny, "run-1")["attributes_beside"] == 1
        night = today - timedelta(days=1)
        held = run("tiny", night, time_zone=tz)
        assert [r["outcome"] for r in reports(tiny, "tiny")] == ["held"], held
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1)       # nothing overwrote it
        time.sleep(SETTLE)
        _live(tiny, "run-2")                                                         # pays what the decision owed
        assert _owed(tiny) == set() and _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1)
        assert str(run("tiny", night, time_zone=tz, conf={"skip_anomaly_guard": True}).state) == "success"
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1) - 9601  # midnight's, landed last
        assert _owed(tiny) == {"REL-0001"}
        time.sleep(SETTLE)
        assert _live(tiny, "run-3")["owed_attributes_enqueued"] == 1
        assert _points_in_moengage(sandbox, "REL-0001") == _balance(tiny, 1)


def test_a_live_lane_sends_its_batches_in_the_order_it_wrote_them(tiny, tmp_path):
    """An owed update (users batch) written before a newer events+attributes batch of the same
    night goes first: the older snapshot never lands last."""
    from loyalty_moengage.sync.outbox.delivery import Owner, claim

    with sync_env(tmp_path, tiny, extra_program=LIVE_ATTRS + KEEP):
        _live(tiny, "warm")
        with psycopg.connect(tiny) as conn:
            ids = [conn.execute(
                "INSERT INTO moengage_sync.batches (program_id, night, run_id, chunk_label, kind, state, body, "
                "body_bytes, element_count, users, events) VALUES ('tiny', '2026-11-21', %s, 'c', %s, 'pending', "
                "'{}'::bytea, 2, 1, 1, %s) RETURNING batch_id", (run_id, kind, events)).fetchone()[0]
                for run_id, kind, events in (("live:a", "users", 0), ("live:b", "events", 1))]
            conn.commit()
            owner = Owner(program_id="tiny", run_id="live:c", slot=-2, try_number=1)
            claimed = claim(conn, owner, 10, up_to_night=datetime(2026, 11, 21).date(), live_only=True)
        assert [b.batch_id for b in claimed] == ids            # by batch id, not events before users


def test_receipts_that_cannot_be_read_do_not_stop_a_live_run_sending(tiny, tmp_path):
    """A live batch in doubt and the Get User API refusing: the run says so and still sends."""
    with sync_env(tmp_path, tiny, extra_program=LIVE_ATTRS + KEEP) as sandbox:
        with psycopg.connect(tiny) as conn:
            _earn(conn, 9701, 9701, at="now() - interval '2 seconds'")
        sandbox.set_faults(drop_rate=1.0, endpoints=("transition",), limit=1)
        assert _live(tiny, "run-1")["uncertain_live_batches"] == 1
        sandbox.set_faults(error_rate=1.0, error_statuses=[400], endpoints=("export",))
        with psycopg.connect(tiny) as conn:
            _earn(conn, 9702, 9702, at="now() - interval '2 seconds'")
        time.sleep(1.1)
        second = _live(tiny, "run-2")
        sandbox.set_faults()
        assert "settle_error" in second and second["events_sent"] == 1, second
        assert _earned(sandbox) == Counter({9702: 1})
