"""known_customers against a real Postgres: what is cached, what is looked up again, and when."""

from __future__ import annotations

import psycopg
import pytest

from loyalty_moengage.moengage.presence import ABSENT_RECHECK, known_customers

PROGRAM = "p1"


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


def check(conn, customer_ids, lookup, program_id=PROGRAM):
    result = known_customers(conn, program_id, customer_ids, lookup)
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


def test_presence_is_cached_for_good(conn):
    lookup = Lookup({"REL-1"})
    check(conn, ["REL-1"], lookup)
    age(conn, "REL-1", "400 days")
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
        known_customers(conn, PROGRAM, ["REL-1"], failing)
    conn.rollback()
    assert cached(conn) == {}
    assert check(conn, ["REL-1"], Lookup({"REL-1"})) == ({"REL-1"}, 1)


def test_twice_in_one_transaction(conn):
    lookup = Lookup({"REL-1"})
    assert known_customers(conn, PROGRAM, ["REL-1", "REL-2"], lookup) == ({"REL-1"}, 2)
    assert known_customers(conn, PROGRAM, ["REL-2", "REL-3"], lookup) == (set(), 1)
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
