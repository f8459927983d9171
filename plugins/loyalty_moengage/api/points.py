"""Live points of one member, with the same arithmetic as the nightly sync's member attributes
(include/sql/members/attributes.sql), so a Content API and the synced attributes agree:

* points_available = sum(points) over all the member's ledger entries;
* points_expiring_Nd = sum of the remaining points (lot points + entries naming the lot) of earn
  lots with expires_on in (today, today + N], today being the date in the program's time zone;
* next_expiry_date = min expires_on of lots with remaining > 0 and expires_on > today, or ""
  when there is none (MoEngage templates stop on null, so no field is ever null).

One round trip and one pass over the member's ledger rows: the member by (program_id, phone) or (program_id, relation_reference) uses the
unique indexes, the ledger rows by ``ledger_member_recorded_idx``; a member has few rows.

The round trip is the hot path of the Content API (MoEngage asks once per user of a campaign),
so it skips psycopg's cursor layer, which costs more CPU than the query itself: each statement
is prepared once per connection under a name of its own, then executed with libpq directly
(``send_query_prepared``, binary results, one wait for the socket). Errors are psycopg's own
exceptions (``psycopg.errors.error_from_result``), so the app's handlers and ``ApiState.run``'s
lost-connection retry see exactly what a cursor would raise. A connection that is not idle or
whose client encoding is not UTF-8 takes the cursor path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import weakref
from struct import Struct
from typing import Any

from psycopg import AsyncConnection, OperationalError, errors
from psycopg.pq import ExecStatus, Format, TransactionStatus

_SQL = """
WITH mem AS (
    SELECT m.member_id, m.relation_reference, m.tier, m.status,
           (now() AT TIME ZONE p.time_zone)::date AS today
    FROM loyalty.members m
    JOIN loyalty.programs p ON p.program_id = m.program_id
    WHERE m.program_id = %(program_id)s AND {where}
    {order}
),
lots AS (
    SELECT max(l.expires_on) AS expires_on, sum(l.points) AS remaining
    FROM mem
    JOIN loyalty.points_ledger l ON l.member_id = mem.member_id
    GROUP BY COALESCE(l.lot_entry_id, l.entry_id)
)
SELECT mem.relation_reference, mem.tier, mem.status, mem.today,
       COALESCE(sum(lots.remaining), 0)::bigint AS points_available,
       COALESCE(sum(lots.remaining) FILTER (
           WHERE lots.expires_on > mem.today AND lots.expires_on <= mem.today + 30), 0)::bigint AS d30,
       COALESCE(sum(lots.remaining) FILTER (
           WHERE lots.expires_on > mem.today AND lots.expires_on <= mem.today + 60), 0)::bigint AS d60,
       COALESCE(sum(lots.remaining) FILTER (
           WHERE lots.expires_on > mem.today AND lots.expires_on <= mem.today + 90), 0)::bigint AS d90,
       min(lots.expires_on) FILTER (WHERE lots.remaining > 0 AND lots.expires_on > mem.today) AS next_expiry
FROM mem
LEFT JOIN lots ON true
GROUP BY mem.relation_reference, mem.tier, mem.status, mem.today
"""
BY_PHONE = _SQL.format(where="m.phone = %(key)s", order="")
# A number with several readings (phone.py): the member of the likeliest reading that exists.
BY_PHONES = _SQL.format(where="m.phone = ANY(%(key)s)", order="ORDER BY array_position(%(key)s, m.phone) LIMIT 1")
BY_REFERENCE = _SQL.format(where="m.relation_reference = %(key)s", order="")

_TEXT_OID, _TEXT_ARRAY_OID = 25, 1009


def _libpq(sql: str) -> bytes:
    return sql.replace("%(program_id)s", "$1").replace("%(key)s", "$2").encode()


#: sql -> (statement name, libpq text, parameter types) of the statements prepared by name.
_STATEMENTS: dict[str, tuple[bytes, bytes, tuple[int, int]]] = {
    BY_PHONE: (b"loyalty_points_by_phone", _libpq(BY_PHONE), (_TEXT_OID, _TEXT_OID)),
    BY_PHONES: (b"loyalty_points_by_phones", _libpq(BY_PHONES), (_TEXT_OID, _TEXT_ARRAY_OID)),
    BY_REFERENCE: (b"loyalty_points_by_reference", _libpq(BY_REFERENCE), (_TEXT_OID, _TEXT_OID)),
}
#: The statement names prepared on each libpq connection (a new connection starts empty).
_PREPARED: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()
#: SQLSTATE 26000 invalid_sql_statement_name: the statement is gone (DISCARD ALL, DEALLOCATE).
_STATEMENT_GONE = b"26000"
#: SQLSTATE 42P05 duplicate_prepared_statement: prepared already (a prepare whose answer we missed).
_PREPARED_ALREADY = b"42P05"
_IDLE = (TransactionStatus.IDLE, TransactionStatus.INTRANS)

_INT8 = Struct("!q")
_INT4 = Struct("!i")
_BINARY = (Format.BINARY,)
_PG_EPOCH_ORDINAL = dt.date(2000, 1, 1).toordinal()


def _key_param(key: str | list[str]) -> bytes:
    """A text or text[] parameter in text format."""
    if isinstance(key, str):
        return key.encode()
    # array literal: every element double-quoted, with " and \ escaped
    return ("{" + ",".join('"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"' for k in key) + "}").encode()


async def _wait(pgconn, loop: asyncio.AbstractEventLoop, writing: bool = False) -> None:
    """Until the connection's socket is readable (or writable)."""
    fd = pgconn.socket
    fut = loop.create_future()
    if writing:
        loop.add_writer(fd, _wake, fut)
    else:
        loop.add_reader(fd, _wake, fut)
    try:
        await fut
    finally:
        if writing:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


async def _round_trip(pgconn, loop: asyncio.AbstractEventLoop):
    """After a send: flush, then every result until the connection is idle; the first result."""
    while pgconn.flush():
        await _wait(pgconn, loop, writing=True)
    first = None
    while True:
        await _wait(pgconn, loop)
        pgconn.consume_input()
        while not pgconn.is_busy():
            res = pgconn.get_result()
            if res is None:
                return first
            if first is None:
                first = res


def _sqlstate(res) -> bytes | None:
    if res is None or res.status != ExecStatus.FATAL_ERROR:
        return None
    return res.error_field(errors.DiagnosticField.SQLSTATE) or b""


def _check(res) -> None:
    if res is None:
        raise OperationalError("the database sent no result")
    if res.status == ExecStatus.FATAL_ERROR:
        raise errors.error_from_result(res, encoding="utf-8")


async def _execute(conn: AsyncConnection, sql: str, params: list[bytes]):
    """The result of the named prepared statement of ``sql`` (prepared first if need be)."""
    name, text, types = _STATEMENTS[sql]
    pgconn = conn.pgconn
    loop = asyncio.get_running_loop()
    prepared = _PREPARED.get(pgconn)
    if prepared is None:
        prepared = _PREPARED[pgconn] = set()
    for attempt in (1, 2):
        if name not in prepared:
            pgconn.send_prepare(name, text, types)
            res = await _round_trip(pgconn, loop)
            if _sqlstate(res) != _PREPARED_ALREADY:
                _check(res)
            prepared.add(name)
        pgconn.send_query_prepared(name, params, None, Format.BINARY)
        res = await _round_trip(pgconn, loop)
        if attempt == 1 and _sqlstate(res) == _STATEMENT_GONE:
            prepared.discard(name)    # deallocated behind our back: prepare again, once
            continue
        _check(res)
        return res


def _fast_path_ok(conn: AsyncConnection) -> bool:
    """Whether the connection is ours alone, idle (or in a transaction) and in UTF-8."""
    pgconn = conn.pgconn
    return (pgconn.transaction_status in _IDLE and not pgconn.pipeline_status and not conn.lock.locked()
            and pgconn.parameter_status(b"client_encoding") == b"UTF8")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _date(value: bytes | None) -> dt.date | None:
    return None if value is None else dt.date.fromordinal(_PG_EPOCH_ORDINAL + _INT4.unpack(value)[0])


def _int(value: bytes) -> int:
    return _INT8.unpack(value)[0]


async def _row(conn: AsyncConnection, sql: str, program_id: str, key: str | list[str]) -> tuple | None:
    if not _fast_path_ok(conn):
        cur = await conn.execute(sql, {"program_id": program_id, "key": key}, prepare=True)
        return await cur.fetchone()
    res = await _execute(conn, sql, [program_id.encode(), _key_param(key)])
    if res.ntuples == 0:
        return None
    v = res.get_value
    return (_text(v(0, 0)), _text(v(0, 1)), _text(v(0, 2)), _date(v(0, 3)), _int(v(0, 4)), _int(v(0, 5)),
            _int(v(0, 6)), _int(v(0, 7)), _date(v(0, 8)))


async def lookup(conn: AsyncConnection, program_id: str, *, phones: list[str] | None = None,
                 customer_id: str | None = None) -> dict[str, Any] | None:
    """The flat JSON object a MoEngage template reads, or None for an unknown member."""
    if phones:
        sql, key = (BY_PHONE, phones[0]) if len(phones) == 1 else (BY_PHONES, phones)
    else:
        sql, key = BY_REFERENCE, customer_id
    row = await _row(conn, sql, program_id, key)
    if row is None:
        return None
    reference, tier, status, today, available, d30, d60, d90, next_expiry = row
    return {
        "member": True,
        "customer_id": reference,
        "points_available": int(available),
        "tier": tier,
        "status": status,
        "points_expiring_30d": int(d30),
        "points_expiring_60d": int(d60),
        "points_expiring_90d": int(d90),
        "next_expiry_date": next_expiry.isoformat() if next_expiry else "",
        "as_of_date": today.isoformat(),
    }


def non_member(as_of_date: str) -> dict[str, Any]:
    """The answer for someone who is not a member, where the program asks for one (a campaign
    then still sends: every field a template reads is there, none null)."""
    return {"member": False, "customer_id": "", "points_available": 0, "tier": "", "status": "",
            "points_expiring_30d": 0, "points_expiring_60d": 0, "points_expiring_90d": 0,
            "next_expiry_date": "", "as_of_date": as_of_date}
