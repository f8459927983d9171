"""Run a SQL template for one chunk and read its rows with COPY, the fastest path out of Postgres.

Values arrive as text exactly as Postgres prints them (UTC timestamps, ISO dates) and keep
their Postgres type, so the payload builder can emit integers as integers and never guesses a
type from the text ("001" stays a string).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

from loyalty_moengage.sync.chunk.contract import Template, TemplateDataError, TemplateError, check_columns

# Postgres type OIDs -> the payload builder's value kinds.
_KINDS = {
    16: "bool",
    20: "int", 21: "int", 23: "int", 26: "int",
    1700: "number",
    700: "float", 701: "float",
    1082: "date",
    1114: "timestamp", 1184: "timestamptz",
    114: "json", 3802: "json",
}

# work_mem: the member template's per-chunk aggregates (50,000 members) spill to disk at the
# 4 MB default; 64 MB keeps them in memory (a few hash nodes per extract, 2 extracts at once).
SESSION_SETTINGS = ("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'iso_8601'; "
                    "SET work_mem = '64MB'; SET max_parallel_workers_per_gather = 0")


@dataclass
class Extract:
    template: Template
    table: Any                 # pyarrow.Table, every column as string
    kinds: dict[str, str]      # column -> value kind
    bytes_read: int


PERCENT_HINT = ("parameters are written %(name)s, so a literal % (a LIKE pattern, the modulo operator) "
                "is written %%")


def render(conn: Any, template: Template, params: dict[str, Any]) -> str:
    """The template with parameters bound client-side (COPY cannot take server parameters)."""
    import psycopg

    cur = psycopg.ClientCursor(conn)
    try:
        return cur.mogrify(template.sql.strip().rstrip(";"), params)
    except (psycopg.ProgrammingError, KeyError, ValueError, TypeError) as exc:
        raise TemplateError(
            f"SQL template {template.name!r} cannot be prepared: {exc}. Its {PERCENT_HINT}; the "
            f"parameters are {', '.join('%(' + k + ')s' for k in params)}. See README, 'The SQL contract'."
        ) from None


def describe(conn: Any, template: Template, params: dict[str, Any]) -> dict[str, str]:
    """Column kinds of a template's output, checked against the contract (no rows read)."""
    import psycopg

    query = render(conn, template, params)
    with conn.cursor() as cur:
        try:
            cur.execute(f"SELECT * FROM ({query}) AS q LIMIT 0")
        except psycopg.errors.DataError as exc:
            conn.rollback()
            raise TemplateDataError(f"SQL template {template.name!r} failed: {exc}") from exc
        except psycopg.ProgrammingError as exc:  # syntax, unknown table or column, no privilege
            conn.rollback()
            raise TemplateError(f"SQL template {template.name!r} failed: {_first_line(exc)}. Fix the template "
                                f"and clear the run (its {PERCENT_HINT}).") from exc
        columns = [(d.name, d.type_code) for d in cur.description]
    check_columns(template, [c for c, _ in columns])
    return {name: _KINDS.get(oid, "text") for name, oid in columns}


def copy_out(conn: Any, query: str) -> io.BytesIO:
    """The query's rows as CSV, through ``COPY ... TO STDOUT`` (the one COPY loop)."""
    buf = io.BytesIO()
    with conn.cursor() as cur:
        with cur.copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)") as copy:
            for data in copy:
                buf.write(data)
    return buf


def extract(conn: Any, template: Template, params: dict[str, Any], kinds: dict[str, str] | None = None) -> Extract:
    """The template's rows for ``params``; ``kinds``, when given, are its columns' already described."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    import psycopg

    kinds = kinds or describe(conn, template, params)
    try:
        buf = copy_out(conn, render(conn, template, params))
    except psycopg.errors.DataError as exc:
        raise TemplateDataError(
            f"SQL template {template.name!r} failed on the rows of members {params.get('member_lo')} to "
            f"{params.get('member_hi')} (member_id >= lo and < hi) of night {params.get('night')}: "
            f"{_first_line(exc)}. A value in those rows is one the template cannot compute with (an infinite "
            "or out-of-range date or number, say): run the template for that range to find it, then fix the "
            "row or make the template tolerate it (e.g. isfinite())."
        ) from exc
    names = list(kinds)
    size = buf.tell()
    if size == 0:
        table = pa.table({n: pa.array([], pa.string()) for n in names})
    else:
        buf.seek(0)
        table = pacsv.read_csv(
            buf,
            read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    return Extract(template=template, table=table, kinds=kinds, bytes_read=size)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def reads_window(template: Template) -> bool:
    """Does the template select the rows *recorded* in the night's window (it uses
    ``%(window_start)s`` outside its comments)? Only those can miss a row committed late, so only
    those are re-read for late rows; a template of the state at the night's end (expiring soon:
    ``window_end`` and ``night`` only) is a reminder for that night, not a row that can be late."""
    return takes(template, "window_start")


def takes(template: Template, parameter: str) -> bool:
    """Does the template use ``%(parameter)s`` outside its comments?"""
    code = "\n".join(line.split("--", 1)[0] for line in template.sql.splitlines())
    return f"%({parameter})s" in code


def extract_chunk(loyalty_dsn: str, params: dict[str, Any], lookback: Sequence[dict[str, Any]] = (), *,
                  recorded_only: bool = False) -> tuple[list[Extract], list[list[Extract]]]:
    """Every template's rows of one chunk, and for each lookback night's parameters the rows of the
    templates that read the recorded window (:func:`reads_window`), all from one consistent snapshot.
    ``recorded_only`` (the live lane): only the event templates that read the recorded window; the
    members' attributes and the reminders of a night's end are the night's."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.chunk.contract import load_templates

    with connect(loyalty_dsn) as conn:
        conn.execute(SESSION_SETTINGS)
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        templates = [t for t in load_templates()
                     if not recorded_only or (t.kind == "events" and reads_window(t))]
        extracts = [extract(conn, t, params) for t in templates]
        windowed = [e for e in extracts if e.template.kind == "events" and reads_window(e.template)]
        earlier = [[extract(conn, e.template, night, e.kinds) for e in windowed] for night in lookback]
        conn.rollback()
    return extracts, earlier
