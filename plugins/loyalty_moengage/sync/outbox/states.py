"""The outbox's batch states, named once (every transition: sql/010_sync_state.sql).

``staged`` -> ``pending`` -> ``claimed`` -> ``sending`` -> ``sent`` | ``rejected`` | ``uncertain``;
``superseded`` for users batches a newer night's refresh (or, for a live one whose answer was
lost, an owed update) replaced.
"""

from __future__ import annotations

STAGED, PENDING, CLAIMED, SENDING = "staged", "pending", "claimed", "sending"
SENT, REJECTED, UNCERTAIN, SUPERSEDED = "sent", "rejected", "uncertain", "superseded"

#: Not sent yet, and sure to be sent by a later load (or withdrawn by the guard).
UNSETTLED = (STAGED, PENDING, CLAIMED, SENDING)
#: Held by a load attempt right now.
IN_FLIGHT = (CLAIMED, SENDING)
#: Where a batch ends.
FINAL = (SENT, REJECTED, SUPERSEDED)
#: The answers a POST can record (``pending``: a transient failure, to be retried).
OUTCOMES = (SENT, REJECTED, UNCERTAIN, PENDING)

#: Run ids of the live lane (sync/live/) start with this: a live DAG run's Airflow run id can equal
#: a night's ("scheduled__<time>"), and the outbox tells the lanes apart by it.
LIVE_RUN_PREFIX = "live:"
