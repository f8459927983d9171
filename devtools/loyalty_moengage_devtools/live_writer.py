"""A loyalty platform writing while the live lane runs: earn rows committed at a steady rate,
bursts in one transaction, and transactions held open across live runs.

Every row is a ``loyalty_points_earned`` event whose ``points`` value is unique (``FIRST_POINTS``
upwards), so what MoEngage (the sandbox) received can be matched row by row: sent once, lost,
or sent twice, and when it was committed. ``recorded_at`` and ``occurred_at`` are ``now()``: the
transaction's start, as a platform's ``DEFAULT now()`` stamps them, so a held transaction's
rows are older than their commit. Development tool (the live scheduler test and benchmark).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: The first points value (and, above ENTRY_BASE, entry id) the writer uses: far above generated data.
FIRST_POINTS = 1_000_000
ENTRY_BASE = 900_000_000
EARN = ("INSERT INTO loyalty.points_ledger (entry_id, program_id, member_id, entry_type, points, earning_type, "
        "expires_on, occurred_at, recorded_at) VALUES (%s, %s, %s, 'earn', %s, 'campaign_bonus', "
        "current_date + 365, now(), now())")


@dataclass
class Plan:
    rate: float = 5.0                      # rows per second, committed every `tick` seconds
    seconds: float = 120.0
    tick: float = 0.2
    bursts: dict[float, int] = field(default_factory=dict)              # second -> rows in one transaction
    holds: list[tuple[float, float]] = field(default_factory=list)      # (second it opens, seconds held)
    rows_per_hold: int = 3


class LiveWriter:
    """Writes ``plan`` into the loyalty database in threads; ``committed`` maps each row's points
    value to its commit time (``time.time()``) once its transaction committed."""

    def __init__(self, dsn: str, program_id: str, plan: Plan, *, seed: int = 5) -> None:
        self.dsn, self.program_id, self.plan = dsn, program_id, plan
        self.committed: dict[int, float] = {}
        self.errors: list[str] = []
        self._next = 0
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._members: list[int] = []
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()

    def start(self) -> "LiveWriter":
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            self._members = [r[0] for r in conn.execute(
                "SELECT member_id FROM loyalty.members WHERE program_id = %s AND relation_reference IS NOT NULL "
                "ORDER BY member_id", (self.program_id,))]
        if not self._members:
            raise RuntimeError(f"program {self.program_id!r} has no members with a relation reference")
        self._spawn(self._steady)
        for at, rows in self.plan.bursts.items():
            self._spawn(self._later, at, rows, 0.0)
        for at, held in self.plan.holds:
            self._spawn(self._later, at, self.plan.rows_per_hold, held)
        return self

    def stop(self) -> None:
        """Ends the steady writing early (a plan's ``seconds`` is then an upper bound)."""
        self._stopped.set()

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    @property
    def written(self) -> int:
        return len(self.committed)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, *args), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guarded(self, target: Any, *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # a writer's failure is the test's to report, not a thread's to swallow
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _take(self, n: int) -> list[tuple[int, str, int, int]]:
        """(entry id, program, member, points) of the next ``n`` rows."""
        with self._lock:
            first, self._next = self._next, self._next + n
            members = [self._rng.choice(self._members) for _ in range(n)]
        return [(ENTRY_BASE + i, self.program_id, m, FIRST_POINTS + i) for i, m in zip(range(first, first + n), members)]

    def _commit(self, rows: list[tuple[int, str, int, int]], hold: float = 0.0) -> None:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            with conn.cursor() as cur:
                cur.executemany(EARN, rows)
            if hold:
                time.sleep(hold)
            conn.commit()
        at = time.time()
        with self._lock:
            self.committed.update({r[3]: at for r in rows})

    def _steady(self) -> None:
        """Commits ``rate * seconds`` rows in all: what is due is read from the clock, so a late wake
        (a busy machine) commits the rows it missed at once instead of dropping them."""
        plan, started, done = self.plan, time.monotonic(), 0
        total = self.steady_rows
        while done < total and not self._stopped.is_set():
            elapsed = time.monotonic() - started
            due = total if elapsed >= plan.seconds else min(total, int(plan.rate * elapsed))
            if due > done:
                self._commit(self._take(due - done))
                done = due
            time.sleep(plan.tick)

    @property
    def steady_rows(self) -> int:
        return round(self.plan.rate * self.plan.seconds)

    @property
    def planned(self) -> int:
        """Rows the whole plan commits when it is not stopped early."""
        return self.steady_rows + sum(self.plan.bursts.values()) + self.plan.rows_per_hold * len(self.plan.holds)

    def _later(self, at: float, rows: int, hold: float) -> None:
        time.sleep(at)
        self._commit(self._take(rows), hold)


def commit_recent(dsn: str, program_id: str, members: list[int], *, ago_seconds: int = 2) -> list[int]:
    """One earn row per member, stamped ``ago_seconds`` before now (so inside a live run's window,
    which ends on a whole second), committed at once, after any rows written before; their points."""
    import psycopg

    sql = EARN.replace("now(), now())", f"now() - interval '{int(ago_seconds)} seconds', "
                                         f"now() - interval '{int(ago_seconds)} seconds')")
    with psycopg.connect(dsn) as conn:
        taken = conn.execute("SELECT coalesce(max(entry_id), %s - 1) FROM loyalty.points_ledger WHERE entry_id >= %s",
                             (ENTRY_BASE, ENTRY_BASE)).fetchone()[0]
        first = taken - ENTRY_BASE + 1
        rows = [(ENTRY_BASE + first + i, program_id, m, FIRST_POINTS + first + i) for i, m in enumerate(members)]
        conn.cursor().executemany(sql, rows)
    return [r[3] for r in rows]


def received_points(events: list[dict[str, Any]]) -> dict[int, int]:
    """How many times MoEngage received each writer row (by its unique points value)."""
    counts: dict[int, int] = {}
    for e in events:
        points = (e.get("attributes") or {}).get("points")
        if e.get("action") == "loyalty_points_earned" and isinstance(points, int) and points >= FIRST_POINTS:
            counts[points] = counts.get(points, 0) + 1
    return counts


def stale_balances(dsn: str, program_id: str, users: dict[str, dict[str, Any]]) -> list[str]:
    """Customers whose rows the writer wrote and whose ``points_available`` in MoEngage (``users``:
    the sandbox's attributes by customer) is not their balance in the loyalty database now."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        want = dict(conn.execute(
            "SELECT m.relation_reference, sum(l.points) FROM loyalty.points_ledger l JOIN loyalty.members m "
            "USING (member_id) WHERE l.program_id = %s AND l.member_id IN (SELECT member_id FROM "
            "loyalty.points_ledger WHERE program_id = %s AND entry_id >= %s) GROUP BY 1",
            (program_id, program_id, ENTRY_BASE)).fetchall())
    return sorted(c for c, points in want.items() if (users.get(c) or {}).get("points_available") != points)


def live_attribute_counts(dsn: str, program_id: str) -> dict[str, int]:
    """What the live runs sent of members' attributes, and the owed updates still unpaid."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        beside, owed_sent = conn.execute(
            "SELECT coalesce(sum((stats->>'attributes_beside')::int), 0), "
            "coalesce(sum((stats->>'owed_attributes_enqueued')::int), 0) FROM moengage_sync.task_stats "
            "WHERE program_id = %s AND stage = 'live'", (program_id,)).fetchone()
        left = conn.execute("SELECT count(*) FROM moengage_sync.live_attributes_owed WHERE program_id = %s",
                            (program_id,)).fetchone()[0]
    return {"attributes_beside": beside, "owed_attributes_sent": owed_sent, "owed_left": left}
