"""Make a program's members exist in the MoEngage sandbox, as they would after years of syncs.

The loyalty schema is read here, never in the sandbox: the sandbox stands in for MoEngage and
knows only customer ids (``seed_users``).
"""

from __future__ import annotations

import hashlib
from typing import Any


def is_missing(customer_id: str, share: float, seed: int = 0) -> bool:
    """Deterministic 'this member never reached MoEngage' draw, stable across runs and machines."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def customer_ids(dsn: str, program_id: str) -> list[str]:
    """The program's MoEngage customer ids (``relation_reference``), in the loyalty DB's order."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT relation_reference FROM loyalty.members WHERE program_id = %s", (program_id,)
        ).fetchall()
    return [r[0] for r in rows]


def seed_from_loyalty_db(sandbox: Any, workspace_id: str, dsn: str, program_id: str, *,
                         missing_share: float = 0.05, seed: int = 0) -> dict[str, int]:
    """Seed ``sandbox`` (a SandboxServer or SandboxState) with the program's members, except a
    deterministic ``missing_share``."""
    ids = customer_ids(dsn, program_id)
    present = [c for c in ids if not is_missing(c, missing_share, seed)]
    sandbox.seed_users(workspace_id, present)
    return {"members": len(ids), "seeded": len(present), "missing": len(ids) - len(present)}
