"""Settling the doubts lost answers leave, from MoEngage's own evidence, without an operator.

- An uncertain **users** batch goes back to pending: attribute updates are last-write-wins, so
  sending one again duplicates nothing (a newer night's refresh supersedes it at the claim).
- An uncertain **events** batch is judged by its receipt (``receipts.py``), read back through
  the Get User API on the lookup budget the presence gate also spends:
  the carrier holds this POST's token -> MoEngage applied the request: ``sent``;
  the token is not there ``wait_seconds`` after the POST *and* a probe written after that POST
  is visible (so MoEngage is applying this workspace's writes, and the attribute is accepted)
  -> it was not applied: ``pending``, resent with a new receipt (that cannot duplicate);
  the carrier is gone from MoEngage, the probe never shows, or the batch had no receipt -> it
  stays ``uncertain`` for a person (``loyalty-moengage resend`` / ``resolve``), with the evidence seen.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Callable

from loyalty_moengage.sync.outbox.receipts import ReceiptSettings

log = logging.getLogger(__name__)


@dataclass
class Settled:
    by_receipt: int = 0        # uncertain -> sent: the receipt is in MoEngage
    absent: int = 0            # uncertain -> pending: no receipt after the wait, the probe seen
    users_requeued: int = 0    # uncertain users batches -> pending
    left: int = 0              # still uncertain
    probes: int = 0
    lookups: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, other: "Settled") -> None:
        for name in ("by_receipt", "absent", "users_requeued", "probes", "lookups"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.left = other.left
        self.notes = list(dict.fromkeys(self.notes + other.notes))

    def as_stats(self) -> dict[str, Any]:
        return {"settled_by_receipt": self.by_receipt, "resent_after_absence": self.absent,
                "users_requeued": self.users_requeued, "uncertain_left": self.left, "probes": self.probes,
                "receipt_lookups": self.lookups, "notes": self.notes}


@dataclass(frozen=True)
class _Doubt:
    batch_id: int
    night: date
    carrier: str | None
    token: str | None
    posted_at: datetime | None


@dataclass
class _Probe:
    carrier: str
    token: str
    posted_at: datetime
    seen: bool = False


#: Which batches a settle judges: every one of the program's, or (``live_only``) the live lane's.
_WHICH = "AND (NOT %(live)s OR starts_with(run_id, %(prefix)s))"


def requeue_users(conn: Any, program_id: str, up_to_night: date, *, live_only: bool = False) -> int:
    n = conn.execute(
        "UPDATE moengage_sync.batches SET state = 'pending', claimed_by = NULL, updated_at = now(), "
        "settled_by = 'resend', error = coalesce(error, '') || ' (sent again: attributes are last-write-wins)' "
        "WHERE program_id = %(p)s AND state = 'uncertain' AND kind = 'users' AND night <= %(night)s "
        "AND body IS NOT NULL " + _WHICH, _which(program_id, up_to_night, live_only)).rowcount
    conn.commit()
    return n


def _which(program_id: str, up_to_night: date, live_only: bool) -> dict[str, Any]:
    from loyalty_moengage.sync.outbox.states import LIVE_RUN_PREFIX

    return {"p": program_id, "night": up_to_night, "live": live_only, "prefix": LIVE_RUN_PREFIX}


def settle(conn: Any, *, program_id: str, hook: Any, settings: ReceiptSettings | None, up_to_night: date,
           run_id: str | None = None, timeout: float | None = None, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic, live_only: bool = False) -> Settled:
    """Settle what the evidence allows within ``timeout`` seconds (default: the wait, a few
    polls and a minute); returns what was settled and why the rest could not be. ``live_only``:
    the live lane's batches only (a live run settles its own doubts between the nights)."""
    out = Settled(users_requeued=requeue_users(conn, program_id, up_to_night, live_only=live_only))
    doubts = _doubts(conn, program_id, up_to_night, live_only)
    waiting = [d for d in doubts if d.token and d.carrier and d.posted_at]
    if settings is None and doubts:
        out.notes.append("receipts are off (programs file: receipts): uncertain events batches wait for a person")
        waiting = []
    elif len(waiting) < len(doubts):
        out.notes.append(f"{len(doubts) - len(waiting)} uncertain batch(es) carry no receipt (none of their "
                         "customers could carry one): they wait for a person")
    if waiting:
        assert settings is not None
        poll = min(60.0, max(2.0, settings.wait_seconds / 10))
        deadline = clock() + (timeout if timeout is not None else settings.wait_seconds + 3 * poll + 60)
        _watch(conn, out, waiting, program_id=program_id, run_id=run_id, hook=hook, settings=settings, poll=poll,
               deadline=deadline, sleep=sleep, clock=clock)
    out.left = conn.execute(
        "SELECT count(*) FROM moengage_sync.batches WHERE program_id = %(p)s AND state = 'uncertain' "
        "AND night <= %(night)s " + _WHICH, _which(program_id, up_to_night, live_only)).fetchone()[0]
    conn.commit()
    return out


def _doubts(conn: Any, program_id: str, up_to_night: date, live_only: bool) -> list[_Doubt]:
    rows = conn.execute(
        "SELECT batch_id, night, receipt_carrier, receipt_token, posted_at FROM moengage_sync.batches "
        "WHERE program_id = %(p)s AND state = 'uncertain' AND kind = 'events' AND night <= %(night)s "
        + _WHICH + " ORDER BY batch_id", _which(program_id, up_to_night, live_only)).fetchall()
    conn.commit()
    return [_Doubt(*r) for r in rows]


def _watch(conn: Any, out: Settled, waiting: list[_Doubt], *, program_id: str, run_id: str | None, hook: Any,
           settings: ReceiptSettings, poll: float, deadline: float, sleep: Callable[[float], None],
           clock: Callable[[], float]) -> None:
    """Read the receipts until each is seen, proven absent or the deadline passes."""
    attribute = settings.attribute
    probe = _last_probe(conn, program_id, settings)
    while waiting:
        carriers = {d.carrier for d in waiting} | ({probe.carrier} if probe and not probe.seen else set())
        users = hook.read_users(sorted(c for c in carriers if c), [attribute])
        out.lookups += len(carriers)
        if probe and not probe.seen:
            probe.seen = (users.get(probe.carrier) or {}).get(attribute) == probe.token
        db_now = conn.execute("SELECT now()").fetchone()[0]
        conn.commit()
        still = []
        for d in waiting:
            verdict = _judge(d, users.get(d.carrier or ""), attribute=attribute, probe=probe, db_now=db_now,
                             wait=settings.wait_seconds)
            if verdict is None:
                still.append(d)
            elif _record(conn, program_id, d, verdict, run_id=run_id):
                if verdict == "receipt":
                    out.by_receipt += 1
                elif verdict == "absence":
                    out.absent += 1
                else:
                    out.notes.append(verdict)
        waiting = still
        if not waiting:
            return
        if probe is None or probe.posted_at <= max(d.posted_at for d in waiting if d.posted_at) \
                or (not probe.seen and (db_now - probe.posted_at).total_seconds() > settings.wait_seconds):
            probe = _send_probe(conn, program_id=program_id, hook=hook, settings=settings)
            if probe is None:
                out.notes.append("no customer could carry a probe receipt: absent receipts prove nothing, "
                                 f"{len(waiting)} batch(es) wait for a person")
                return
            out.probes += 1
        if clock() + poll > deadline:
            out.notes.append(_why_unsettled(waiting, probe, settings))
            return
        sleep(poll)


def _judge(d: _Doubt, user: dict[str, Any] | None, *, attribute: str, probe: _Probe | None, db_now: datetime,
           wait: float) -> str | None:
    """'receipt', 'absence', a note saying why it cannot be settled, or None (not yet)."""
    if user is None:
        return (f"batch {d.batch_id}: its receipt carrier {d.carrier} is no longer in MoEngage (deleted?); "
                "whether the batch arrived cannot be read back")
    if user.get(attribute) == d.token:
        return "receipt"
    assert d.posted_at is not None
    if probe is not None and probe.seen and probe.posted_at > d.posted_at \
            and (db_now - d.posted_at).total_seconds() >= wait:
        return "absence"
    return None


def _record(conn: Any, program_id: str, d: _Doubt, verdict: str, *, run_id: str | None) -> bool:
    """Compare-and-set on (uncertain, token): two settlers never both move a batch."""
    if verdict == "receipt":
        sql = ("UPDATE moengage_sync.batches SET state = 'sent', settled_by = 'receipt', sent_at = now(), "
               "sent_by_run = coalesce(%(run)s, sent_by_run), updated_at = now(), "
               "error = 'answer lost; its receipt was seen in MoEngage' ")
    elif verdict == "absence":
        sql = ("UPDATE moengage_sync.batches SET state = 'pending', settled_by = 'absence', claimed_by = NULL, "
               "updated_at = now(), error = 'answer lost; its receipt was absent after the wait while a later "
               "probe was visible: MoEngage did not apply it, sent again' ")
    else:
        conn.execute("UPDATE moengage_sync.batches SET error = %s, updated_at = now() WHERE batch_id = %s "
                     "AND state = 'uncertain'", (verdict, d.batch_id))
        conn.execute("UPDATE moengage_sync.customer_presence SET present = false, checked_at = now() "
                     "WHERE program_id = %s AND customer_id = %s", (program_id, d.carrier))
        conn.commit()
        return True
    moved = conn.execute(sql + "WHERE batch_id = %(id)s AND state = 'uncertain' AND receipt_token = %(token)s",
                         {"run": run_id, "id": d.batch_id, "token": d.token}).rowcount
    conn.commit()
    if moved:
        log.info("batch %d (night %s): settled by %s", d.batch_id, d.night, verdict)
    return moved == 1


def _last_probe(conn: Any, program_id: str, settings: ReceiptSettings) -> _Probe | None:
    """The newest probe a settle of this program wrote to this workspace (its receipt attribute):
    evidence for every doubt posted before it, so a settle that reads once a minute (the live
    lane's) concludes on an earlier one's probe. One never seen is replaced after the wait."""
    row = conn.execute(
        "SELECT customer_id, token, used_at FROM moengage_sync.receipt_carriers WHERE workspace = %s "
        "AND program_id = %s AND batch_id IS NULL ORDER BY used_at DESC LIMIT 1",
        (settings.workspace or f"program:{program_id}", program_id)).fetchone()
    conn.commit()
    return _Probe(carrier=row[0], token=row[1], posted_at=row[2]) if row else None


def _send_probe(conn: Any, *, program_id: str, hook: Any, settings: ReceiptSettings) -> _Probe | None:
    """A receipt on its own, written after the doubts' POSTs: once it is visible, MoEngage has
    been applying this workspace's writes (and accepts the attribute)."""
    import uuid

    from loyalty_moengage.moengage.errors import MoEngageError
    from loyalty_moengage.sync.outbox.receipts import probe_body, take_carrier

    token = f"p{uuid.uuid4().hex[:10]}"
    carrier = take_carrier(conn, program_id=program_id, workspace=settings.workspace, candidates=None, token=token,
                           batch_id=None, quiet_seconds=settings.quiet_seconds, presence_hours=settings.presence_hours)
    posted_at = conn.execute("SELECT now()").fetchone()[0]
    conn.commit()
    if carrier is None:
        return None
    try:
        hook.send_transition(probe_body(carrier, settings.attribute, token), users=1, events=0)
    except MoEngageError as exc:  # a probe is an attribute write: if it is lost, it is simply not seen
        log.warning("the settle probe was not answered (%s); waiting for it anyway", exc.cause)
    return _Probe(carrier=carrier, token=token, posted_at=posted_at)


def _why_unsettled(waiting: list[_Doubt], probe: _Probe | None, settings: ReceiptSettings) -> str:
    if probe is not None and not probe.seen:
        return (f"{len(waiting)} batch(es) unsettled: the probe receipt ({settings.attribute} on {probe.carrier}) "
                f"did not become visible within the wait: MoEngage is slower than receipt_wait_seconds "
                f"({settings.wait_seconds:g}), or the workspace refuses the attribute (256 attributes at most); "
                "the next run reads them again")
    return (f"{len(waiting)} batch(es) unsettled: their receipts are not visible yet and receipt_wait_seconds "
            f"({settings.wait_seconds:g}) has not passed; the next run reads them again")
