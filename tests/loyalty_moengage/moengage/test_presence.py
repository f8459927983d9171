"""known_customers against a real Postgres: what is cached, what is looked up again, and when."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from loyalty_moengage.moengage.presence import ABSENT_RECHECK, cached_presence, known_customers, renewals_due

PROGRAM = "p1"
#: A program's presence lifetime (``presence_lifetime_hours``, default 168).
LIFETIME = timedelta(hours=168)


class Lookup:
    """A Get User API stand-in: knows ``existing`` and records every batch it is asked about."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = set(existing)
        self.calls: list[list[str]] = []

    def __call__(self, customer_ids: list[str]) -> set[str]:
        self.calls.append(list(customer_ids))
        return self.existing & set(customer_ids)


@pytest.fixture
def conn(loyalty_db):
    with psycopg.connect(loyalty_db) as c:
        yield c


def check(conn, customer_ids, lookup, program_id=PROGRAM, lifetime=LIFETIME):
    result = known_customers(conn, program_id, customer_ids, lookup, lifetime=lifetime)
    conn.commit()
    return result


def cached(conn, program_id=PROGRAM) -> dict[str, bool]:
    return dict(conn.execute("SELECT customer_id, present FROM moengage_sync.customer_presence "
                             "WHERE program_id = %s", (program_id,)).fetchall())


def age(conn, customer_id: str, interval: str) -> None:
    conn.execute("UPDATE moengage_sync.customer_presence SET checked_at = now() - %s::interval "
                 "WHERE program_id = %s AND customer_id = %s", (interval, PROGRAM, customer_id))
    conn.commit()


def test_first_sight_looks_up_everyone_once_and_caches_both_answers(conn):
    lookup = Lookup({"REL-1", "REL-3"})
    present, looked_up = check(conn, ["REL-3", "REL-2", "REL-1"], lookup)
    assert present == {"REL-1", "REL-3"} and looked_up == 3
    assert lookup.calls == [["REL-1", "REL-2", "REL-3"]]  # one call, sorted
    assert cached(conn) == {"REL-1": True, "REL-2": False, "REL-3": True}


def test_cache_hits_need_no_lookup(conn):
    lookup = Lookup({"REL-1"})
    check(conn, ["REL-1", "REL-2"], lookup)
    present, looked_up = check(conn, ["REL-1", "REL-2"], lookup)
    assert present == {"REL-1"} and looked_up == 0
    assert len(lookup.calls) == 1  # the absent REL-2 is fresh: not asked again


def test_presence_is_cached_for_its_lifetime(conn):
    """Was ``..._cached_for_good`` (aged 400 days): a confirmation is now trusted for the lifetime only."""
    lookup = Lookup({"REL-1"})
    check(conn, ["REL-1"], lookup)
    age(conn, "REL-1", "167 hours 59 minutes")
    lookup.existing.clear()  # even if MoEngage would now say otherwise
    assert check(conn, ["REL-1"], lookup) == ({"REL-1"}, 0)
    assert len(lookup.calls) == 1


def test_absent_is_rechecked_only_after_the_recheck_interval(conn):
    assert ABSENT_RECHECK == "20 hours"
    lookup = Lookup(set())
    check(conn, ["REL-7"], lookup)
    age(conn, "REL-7", "19 hours 59 minutes")
    assert check(conn, ["REL-7"], lookup) == (set(), 0)
    age(conn, "REL-7", "20 hours 1 minute")
    lookup.existing.add("REL-7")  # added to MoEngage since
    assert check(conn, ["REL-7"], lookup) == ({"REL-7"}, 1)
    assert lookup.calls == [["REL-7"], ["REL-7"]]
    assert cached(conn) == {"REL-7": True}
    fresh, = conn.execute("SELECT checked_at > now() - interval '1 minute' FROM moengage_sync.customer_presence "
                          "WHERE customer_id = 'REL-7'").fetchone()
    assert fresh


def test_lookups_only_for_unknown_or_stale_ones(conn):
    lookup = Lookup({"A", "N1"})
    check(conn, ["A", "B", "C"], lookup)  # A present; B and C absent
    age(conn, "C", "2 days")
    present, looked_up = check(conn, ["A", "B", "C", "N2", "N1"], lookup)
    assert present == {"A", "N1"} and looked_up == 3
    assert lookup.calls[1] == ["C", "N1", "N2"]  # not A (present), not B (absent, fresh)


def test_programs_do_not_share_answers(conn):
    check(conn, ["REL-1"], Lookup({"REL-1"}), program_id="p1")
    other = Lookup(set())
    assert check(conn, ["REL-1"], other, program_id="p2") == (set(), 1)
    assert cached(conn, "p1") == {"REL-1": True} and cached(conn, "p2") == {"REL-1": False}


def test_nothing_to_check_calls_nothing(conn):
    lookup = Lookup(set())
    assert check(conn, [], lookup) == (set(), 0)
    assert lookup.calls == []


def test_a_failed_lookup_caches_nothing(conn):
    def failing(customer_ids):
        raise RuntimeError("Get User API refused")

    with pytest.raises(RuntimeError):
        known_customers(conn, PROGRAM, ["REL-1"], failing, lifetime=LIFETIME)
    conn.rollback()
    assert cached(conn) == {}
    assert check(conn, ["REL-1"], Lookup({"REL-1"})) == ({"REL-1"}, 1)


def test_twice_in_one_transaction(conn):
    lookup = Lookup({"REL-1"})
    assert known_customers(conn, PROGRAM, ["REL-1", "REL-2"], lookup, lifetime=LIFETIME) == ({"REL-1"}, 2)
    assert known_customers(conn, PROGRAM, ["REL-2", "REL-3"], lookup, lifetime=LIFETIME) == (set(), 1)
    conn.commit()
    assert lookup.calls == [["REL-1", "REL-2"], ["REL-3"]]


def test_an_absence_confirmed_again_waits_twice_as_long_before_the_next_lookup(conn):
    """Not a lookup every night a member who is not in MoEngage has an event: 20 h, 40 h, 80 h, ..."""
    lookup = Lookup(set())
    check(conn, ["REL-8"], lookup)                       # absent once: recheck after 20 h
    age(conn, "REL-8", "21 hours")
    assert check(conn, ["REL-8"], lookup) == (set(), 1)  # absent twice: recheck after 40 h
    age(conn, "REL-8", "39 hours")
    assert check(conn, ["REL-8"], lookup) == (set(), 0)
    age(conn, "REL-8", "41 hours")
    assert check(conn, ["REL-8"], lookup) == (set(), 1)  # three times: 80 h
    age(conn, "REL-8", "79 hours")
    assert check(conn, ["REL-8"], lookup) == (set(), 0)
    conn.execute("UPDATE moengage_sync.customer_presence SET absent_checks = 40")
    age(conn, "REL-8", "30 days 1 hour")                 # never longer than 30 days
    lookup.existing.add("REL-8")
    assert check(conn, ["REL-8"], lookup) == ({"REL-8"}, 1)
    assert conn.execute("SELECT present, absent_checks FROM moengage_sync.customer_presence").fetchone() == (True, 0)
    assert len(lookup.calls) == 4


def test_a_presence_older_than_its_lifetime_is_looked_up_again_and_a_deleted_customer_is_absent(conn):
    """Customers are deleted in MoEngage (erasure): past the lifetime the cache no longer answers
    for them, so no event is sent for one MoEngage no longer has."""
    lookup = Lookup({"REL-1", "REL-2"})
    check(conn, ["REL-1", "REL-2"], lookup)
    age(conn, "REL-1", "168 hours 1 minute")
    age(conn, "REL-2", "168 hours 1 minute")
    lookup.existing.discard("REL-1")                        # erased in MoEngage since
    assert cached_presence(conn, PROGRAM, ["REL-1", "REL-2"], lifetime=LIFETIME) == (set(), ["REL-1", "REL-2"])
    conn.commit()
    assert check(conn, ["REL-1", "REL-2"], lookup) == ({"REL-2"}, 2)
    assert lookup.calls[-1] == ["REL-1", "REL-2"]
    assert cached(conn) == {"REL-1": False, "REL-2": True}
    # The answer starts a new lifetime (REL-2) or the absences' back-off (REL-1): no lookup now.
    assert check(conn, ["REL-1", "REL-2"], lookup) == ({"REL-2"}, 0)
    assert conn.execute("SELECT customer_id, absent_checks, checked_at > now() - interval '1 minute' FROM "
                        "moengage_sync.customer_presence ORDER BY 1").fetchall() == [("REL-1", 1, True),
                                                                                    ("REL-2", 0, True)]


def test_the_lifetime_is_the_callers_and_absences_keep_their_back_off(conn):
    lookup = Lookup({"REL-1"})
    check(conn, ["REL-1", "REL-9"], lookup)                 # REL-9 absent
    age(conn, "REL-1", "49 hours")
    age(conn, "REL-9", "19 hours")
    assert check(conn, ["REL-1", "REL-9"], lookup) == ({"REL-1"}, 0)                       # 168 h: still trusted
    assert check(conn, ["REL-1", "REL-9"], lookup, lifetime=timedelta(hours=48)) == ({"REL-1"}, 1)   # 48 h: not
    assert check(conn, ["REL-9"], lookup, lifetime=timedelta(hours=720)) == (set(), 0)   # absence: 20 h, not 720
    age(conn, "REL-9", "21 hours")
    assert check(conn, ["REL-9"], lookup, lifetime=timedelta(hours=24)) == (set(), 1)
    assert lookup.calls == [["REL-1", "REL-9"], ["REL-1"], ["REL-9"]]


def test_present_keeps_its_meaning_when_it_expires(conn):
    """``present`` is the last answer: an expired one is still true (receipts.py filters on it) until
    a lookup says otherwise; only the cache's trust in it ends."""
    check(conn, ["REL-1"], Lookup({"REL-1"}))
    age(conn, "REL-1", "400 days")
    assert cached(conn) == {"REL-1": True}
    assert cached_presence(conn, PROGRAM, ["REL-1"], lifetime=LIFETIME) == (set(), ["REL-1"])


def test_renewals_due_are_present_customers_near_expiry_or_imported_oldest_first(conn):
    check(conn, ["OLD", "OLDER", "EXPIRED", "NEW", "GONE"], Lookup({"OLD", "OLDER", "EXPIRED", "NEW"}))
    age(conn, "OLD", "130 hours")
    age(conn, "OLDER", "160 hours")
    age(conn, "EXPIRED", "200 hours")
    age(conn, "GONE", "300 hours")                             # an absence: not a renewal
    conn.execute("INSERT INTO moengage_sync.customer_presence (program_id, customer_id, present, imported) "
                 "VALUES (%s, 'IMPORTED', true, true)", (PROGRAM,))
    conn.commit()
    ids = ["NEW", "OLD", "OLDER", "EXPIRED", "GONE", "IMPORTED", "UNKNOWN"]
    assert renewals_due(conn, PROGRAM, ids, older_than=LIFETIME * 0.75) == ["EXPIRED", "OLDER", "OLD", "IMPORTED"]
    assert renewals_due(conn, PROGRAM, ["NEW", "OLD"], older_than=LIFETIME * 0.75) == ["OLD"]
    assert renewals_due(conn, PROGRAM, [], older_than=LIFETIME) == []
    conn.commit()
    # An answer confirms an imported customer: no longer due until its confirmation ages.
    check(conn, ["IMPORTED"], Lookup({"IMPORTED"}), lifetime=timedelta(0))
    assert renewals_due(conn, PROGRAM, ["IMPORTED"], older_than=LIFETIME * 0.75) == []
    assert conn.execute("SELECT imported FROM moengage_sync.customer_presence WHERE customer_id = 'IMPORTED'"
                        ).fetchone() == (False,)
