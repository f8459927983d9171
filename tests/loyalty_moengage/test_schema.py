import psycopg

from loyalty_moengage.db import apply_schema


def test_schema_applies_cleanly_twice(empty_db):
    apply_schema(empty_db)
    apply_schema(empty_db)
    with psycopg.connect(empty_db) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'loyalty'")}
    assert {"programs", "members", "member_tier_changes", "member_status_changes", "transactions",
            "points_ledger", "redemptions", "segments", "segment_memberships", "tiers", "stores"} <= tables


def test_ledger_rejects_inconsistent_rows(loyalty_db):
    with psycopg.connect(loyalty_db) as conn:
        conn.execute("INSERT INTO loyalty.programs (program_id, name, time_zone, earn_rate) VALUES ('p', 'P', 'UTC', 1)")
        conn.execute("INSERT INTO loyalty.tiers VALUES ('p', 'Silver', 1)")
        conn.execute("INSERT INTO loyalty.members (member_id, program_id, relation_reference, tier, enrolled_at) "
                     "VALUES (1, 'p', 'REL-1', 'Silver', now())")
        conn.commit()
        try:
            conn.execute("INSERT INTO loyalty.points_ledger (program_id, member_id, entry_type, points, occurred_at, recorded_at) "
                         "VALUES ('p', 1, 'earn', 10, now(), now())")
        except psycopg.errors.CheckViolation:
            conn.rollback()
        else:
            raise AssertionError("an earn entry without earning_type and expiry was accepted")


def test_state_schema_is_applied_once_per_version_even_by_runs_starting_together(empty_db):
    import threading

    from loyalty_moengage.db import ensure_state_schema

    results: list[bool] = []
    errors: list[BaseException] = []

    def start_run() -> None:
        try:
            results.append(ensure_state_schema(empty_db))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start_run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(results) == [False, False, False, True]
    assert ensure_state_schema(empty_db) is False
