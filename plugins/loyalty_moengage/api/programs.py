"""Program settings the API needs per request (default country, time zone, earn rate...),
cached briefly in memory so a points lookup is one query, not two."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from psycopg import AsyncConnection


@dataclass(frozen=True)
class ProgramInfo:
    program_id: str
    time_zone: str
    default_country: str
    earn_rate: Decimal
    currency: str
    points_validity_days: int
    entry_tier: str | None  # lowest-rank tier: where new members start


_SQL = """
SELECT p.program_id, p.time_zone, p.default_country, p.earn_rate, p.currency, p.points_validity_days,
       (SELECT t.tier FROM loyalty.tiers t WHERE t.program_id = p.program_id ORDER BY t.rank LIMIT 1)
FROM loyalty.programs p
WHERE p.program_id = %s
"""


class ProgramCache:
    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._items: dict[str, tuple[float, ProgramInfo | None]] = {}

    async def get(self, conn_factory, program_id: str) -> ProgramInfo | None:
        """The program's settings, from memory when younger than ``ttl``."""
        hit = self._items.get(program_id)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        async with conn_factory() as conn:
            info = await fetch(conn, program_id)
        self._items[program_id] = (time.monotonic(), info)
        return info

    def clear(self) -> None:
        self._items.clear()


async def fetch(conn: AsyncConnection, program_id: str) -> ProgramInfo | None:
    cur = await conn.execute(_SQL, (program_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    pid, tz, country, rate, currency, validity, tier = row
    return ProgramInfo(pid, tz, country.strip(), Decimal(rate), currency.strip(), int(validity), tier)
