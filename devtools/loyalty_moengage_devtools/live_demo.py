"""The demo's live step: after the night, the platform records a few purchases and one live run
sends them to the sandbox within seconds, once each (docs/live.md). Development tool only."""

from __future__ import annotations

import time
from typing import Any

DEMO_ROWS = 25


def live_step(dsn: str, program: Any, sandbox: Any, workspace: str) -> dict[str, Any]:
    """Commit ``DEMO_ROWS`` earn rows for members MoEngage has, run one live run in-process, and
    count what the sandbox received of them."""
    import psycopg

    from loyalty_moengage.config.live_policy import LivePolicy
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.live.run import LiveRun, run_live
    from loyalty_moengage_devtools.live_writer import commit_recent, received_points

    live = program.model_copy(update={"live": LivePolicy(enabled=True)})
    known = set(sandbox.state.users(workspace))
    with psycopg.connect(dsn) as conn:
        members = [m for m, ref in conn.execute(
            "SELECT member_id, relation_reference FROM loyalty.members WHERE program_id = %s "
            "AND relation_reference IS NOT NULL ORDER BY member_id", (program.id,)) if ref in known][:DEMO_ROWS]
    mine = commit_recent(dsn, program.id, members)
    committed = time.perf_counter()
    hook = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=1.0)
    stats = run_live(LiveRun.of(live, f"demo-{int(time.time())}", 1, dsn, dsn), hook=hook, lookup=hook.existing_customers)
    seconds = time.perf_counter() - committed
    got = received_points(sandbox.state.events(workspace))
    return {"written": len(members), "received_once": sum(1 for p in mine if got.get(p) == 1),
            "received_twice": sum(1 for p in mine if got.get(p, 0) > 1), "seconds": round(seconds, 2),
            "stats": stats}
