"""The datasets a night reports for lineage: the tables its templates read, the outbox, MoEngage.

The scheduler test (``test_assets.py``) reads them back from OpenLineage's file transport; these
check the parts that decide what is reported.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from loyalty_moengage.sync.ops import lineage


def test_a_table_read_inside_a_cte_counts_and_a_cte_name_does_not():
    sql = """
        WITH lots AS (SELECT member_id FROM loyalty.points_ledger l
                      WHERE l.points > (SELECT sum(d.points) FROM loyalty.points_ledger d))
        SELECT m.relation_reference, extract(epoch FROM m.enrolled_at) -- FROM loyalty.commented
        FROM lots JOIN loyalty.members m ON m.member_id = lots.member_id
        LEFT JOIN tiers t ON t.code = m.tier
        WHERE m.program_id = %(program_id)s AND m.name LIKE 'a%%'
    """
    tables = lineage.template_tables(sql)
    assert {("loyalty", "points_ledger"), ("loyalty", "members"), ("public", "tiers")} <= tables
    assert ("public", "lots") not in tables and ("loyalty", "commented") not in tables


def test_only_tables_the_loyalty_database_has_are_reported(loyalty_db):
    lineage.loyalty_tables.cache_clear()
    tables = lineage.loyalty_tables(loyalty_db)
    # Every template's sources, and not the scan's false hits (EXTRACT(... FROM m.col)).
    assert set(tables) == {("loyalty", t) for t in (
        "members", "points_ledger", "transactions", "redemptions", "member_tier_changes", "tiers",
        "member_status_changes", "segments", "segment_memberships")}


def test_a_dataset_uri_carries_no_credentials():
    uri = lineage.postgres_uri("postgresql://sync:s3cret@db.internal:6432/loyalty?sslmode=require",
                               "loyalty", "members")
    assert uri == "postgres://db.internal:6432/loyalty/loyalty/members"
    assert lineage.postgres_uri("postgresql:///loyalty?host=/var/run/postgresql", "moengage_sync", "batches") \
        == "postgres://localhost:5432/loyalty/moengage_sync/batches"


def test_moengage_uris_are_checked_and_named_for_openlineage():
    ok = lineage.sanitize_moengage_uri(urlsplit("moengage://WS123/users/?x=1"))
    assert ok.geturl() == "moengage://WS123/users"
    for bad in ("moengage:///users", "moengage://WS123", "moengage://key:secret@WS123/users"):
        with pytest.raises(ValueError):
            lineage.sanitize_moengage_uri(urlsplit(bad))
    from airflow.sdk import Asset

    dataset = lineage.moengage_to_openlineage(Asset(uri="moengage://WS123/events"), None)
    assert (dataset.namespace, dataset.name) == ("moengage://WS123", "events")


def test_without_a_lineage_reader_nothing_is_collected(loyalty_db):
    # No OpenLineage transport is configured in the tests' environment: Airflow's collector is
    # the no-op one, and a chunk reports nothing (and opens no connection for it).
    assert lineage.report_transform(loyalty_dsn="postgresql://nowhere.invalid/x", state_dsn=loyalty_db,
                                    dry_run=False, context=object()) is False
