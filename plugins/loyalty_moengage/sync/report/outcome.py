"""A night's outcome and the notes that explain it: success, held, failed, incomplete or uncertain."""

from __future__ import annotations

from datetime import date
from typing import Any

from loyalty_moengage.sync.outbox.states import UNSETTLED
from loyalty_moengage.sync.report.stats import StageSummary


def batch_states(conn: Any, program_id: str, night: date) -> dict[str, int]:
    return {state: n for state, n in conn.execute(
        "SELECT state, count(*) FROM moengage_sync.batches WHERE program_id = %s AND night = %s GROUP BY state",
        (program_id, night))}


def needs_attention(conn: Any, program_id: str, night: date) -> list[dict[str, Any]]:
    """Batches of any night that are uncertain (the settle task could not settle them: the
    evidence it saw is in ``evidence``), and unsent batches of earlier nights."""
    rows = conn.execute(
        "SELECT night, state, count(*), coalesce(sum(events), 0), coalesce(sum(users), 0), "
        "min(error) FILTER (WHERE state = 'uncertain') "
        "FROM moengage_sync.batches WHERE program_id = %s AND "
        "(state = 'uncertain' OR (state = ANY(%s) AND night < %s)) GROUP BY night, state ORDER BY night, state",
        (program_id, list(UNSETTLED), night)).fetchall()
    return [{"night": n.isoformat(), "state": st, "batches": b, "events": int(e), "users": int(u),
             **({"evidence": ev[:300]} if ev else {})} for n, st, b, e, u, ev in rows]


def assess(*, program_id: str, night: date, plan_info: dict[str, Any], chunks_done: int,
           guard_info: dict[str, Any], night_batches: dict[str, int], attention: list[dict[str, Any]],
           errors: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """The run's outcome and the notes that explain it: success, held, failed, incomplete or
    uncertain (the first that applies, in that order of gravity after failed and held)."""
    notes: list[str] = [f"{task} failed: {message}" for task, message in (errors or {}).items()
                        if not (task == "guard" and guard_info.get("problems"))]
    outcome = "failed" if notes else "success"
    if plan_info.get("skip_reason"):
        notes.append(f"attribute refresh skipped: {plan_info['skip_reason']}")
    if not plan_info:
        outcome = "failed"
        if not notes:
            notes.append("the plan task did not finish")
    elif chunks_done < plan_info.get("chunks", 0):
        outcome = "failed"
        notes.append(f"{plan_info['chunks'] - chunks_done} chunk(s) did not finish transforming")
    if guard_info.get("problems") and not guard_info.get("overridden"):
        outcome = "held"
        notes.extend(f"anomaly guard: {p}" for p in guard_info["problems"])
    unsent = sum(night_batches.get(s, 0) for s in UNSETTLED)
    if unsent and outcome == "success":
        outcome = "incomplete"
    if unsent and outcome != "held":
        notes.append(f"{unsent} batch(es) of night {night} not sent yet: the next attempt of the load task, a "
                     "rerun of this night or the next night sends them")
    uncertain = night_batches.get("uncertain", 0)
    if uncertain and outcome == "success":
        outcome = "uncertain"
    for item in attention:
        if item["state"] == "uncertain":
            evidence = f" Evidence seen: {item['evidence']}." if item.get("evidence") else ""
            notes.append(
                f"needs a person: {item['batches']} events batch(es) of night {item['night']} ({item['events']} "
                f"events) lost their answer and their receipts could not settle them, so MoEngage may or may not "
                f"have them.{evidence} `loyalty-moengage resend --program {program_id} --night {item['night']} "
                f"--reason ...` sends them again (a duplicate if MoEngage has them); `loyalty-moengage resolve "
                f"--program {program_id} --night {item['night']} --reason ...` records them as delivered")
        else:
            notes.append(f"needs attention: {item['batches']} batch(es) of night {item['night']} are still "
                         f"{item['state']}: rerun that night (clear its run) to send them")
    return outcome, notes


def judge(conn: Any, *, program: Any, night: date, stages: StageSummary) -> tuple[str, list[str]]:
    """:func:`assess` on what the run recorded and the night's batches now."""
    return assess(program_id=program.id, night=night, plan_info=stages.plan, chunks_done=stages.chunks_done,
                  guard_info=stages.guard, night_batches=batch_states(conn, program.id, night),
                  attention=needs_attention(conn, program.id, night),
                  errors=stages.errors)
