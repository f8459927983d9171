"""What a night reads and writes, told to Airflow's hook lineage collector.

A transform chunk reads the loyalty tables its SQL templates name and writes the state
database's outbox; a load slot reads the outbox and writes the MoEngage workspace. With the
OpenLineage provider installed and a transport configured, each task's OpenLineage event
carries these as input and output datasets:

- loyalty tables and outbox tables: namespace ``postgres://<host>:<port>``, name
  ``<database>.<schema>.<table>`` (the postgres provider's Asset URIs);
- MoEngage: namespace ``moengage://<workspace id>``, names ``users`` and ``events``.

Without a lineage reader (no OpenLineage provider, or it is disabled) Airflow hands out a
collector that drops everything, so this costs nothing. Lineage never fails a task: a problem
here is logged and the night goes on. No user name or password reaches a dataset.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any
from urllib.parse import SplitResult

log = logging.getLogger(__name__)

# Tables the outbox writes while a chunk is staged, and reads when a slot loads.
STAGED_TABLES = ("batches", "event_keys", "awaiting_presence", "quarantine", "attribute_chunks")
LOADED_TABLES = ("batches",)
DRY_RUN_TABLES = ("dry_runs",)
STATE_SCHEMA = "moengage_sync"
MOENGAGE_DATASETS = ("users", "events")

_PARAM = re.compile(r"%\((\w+)\)s")
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_CTE = re.compile(r"(?:\bWITH|,)\s*(?:RECURSIVE\s+)?([A-Za-z_]\w*)\s+AS\s+(?:NOT\s+)?(?:MATERIALIZED\s+)?\(", re.I)
_SOURCE = re.compile(r"\b(?:FROM|JOIN)\s+((?:[A-Za-z_]\w*\.)?[A-Za-z_]\w*)\b(?!\s*\()", re.I)


def template_tables(sql: str) -> set[tuple[str, str]]:
    """``(schema, table)`` names a template may read (unqualified names are in ``public``).

    OpenLineage's SQL parser where it is installed, joined with a scan of FROM/JOIN names that
    skips the query's CTEs and function calls: the parser misses tables read inside a CTE's
    subquery, the scan can take ``EXTRACT(EPOCH FROM m.at)`` for a table. :func:`loyalty_tables`
    keeps only names the database has.
    """
    text = _PARAM.sub("NULL", _COMMENT.sub(" ", sql)).replace("%%", "%")
    found: set[tuple[str, str]] = set()
    try:
        from openlineage_sql import parse

        found |= {(t.schema or "public", t.name) for t in parse([text], dialect="postgres",
                                                                 default_schema="public").in_tables}
    except Exception:  # noqa: BLE001 - not installed, or a parser failure: the scan still runs
        pass
    ctes = {name.lower() for name in _CTE.findall(text)}
    for name in _SOURCE.findall(text):
        schema, _, table = name.rpartition(".")
        if not schema and table.lower() in ctes:
            continue
        found.add((schema or "public", table))
    return found


@lru_cache(maxsize=4)
def loyalty_tables(loyalty_dsn: str) -> tuple[tuple[str, str], ...]:
    """Tables and views the templates read, as the loyalty database knows them (one query a process)."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.chunk.contract import load_templates

    names: set[tuple[str, str]] = set()
    for template in load_templates():
        names |= template_tables(template.sql)
    ordered = sorted(names)
    with connect(loyalty_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT s, t FROM unnest(%s::text[], %s::text[]) AS n(s, t) "
            "WHERE to_regclass(quote_ident(s) || '.' || quote_ident(t)) IS NOT NULL",
            ([s for s, _ in ordered], [t for _, t in ordered])).fetchall()
    return tuple(sorted((s, t) for s, t in rows))


def postgres_uri(dsn: str, schema: str, table: str) -> str:
    """The postgres provider's Asset URI of a table, from a DSN (host, port and database only)."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(dsn)
    host = str(info.get("host") or "localhost")
    if host.startswith("/"):
        host = "localhost"  # a socket folder: the server is on this machine
    port = info.get("port") or 5432
    return f"postgres://{host}:{port}/{info.get('dbname') or 'postgres'}/{schema}/{table}"


def moengage_uri(workspace_id: str, dataset: str) -> str:
    return f"moengage://{workspace_id}/{dataset}"


def _collector() -> Any | None:
    try:
        from airflow.sdk.lineage import NoOpCollector, get_hook_lineage_collector

        collector = get_hook_lineage_collector()
    except Exception:  # noqa: BLE001 - an Airflow without hook lineage
        return None
    return None if isinstance(collector, NoOpCollector) else collector


def report_transform(*, loyalty_dsn: str, state_dsn: str, dry_run: bool, context: object) -> bool:
    """A chunk read the loyalty tables and wrote the outbox (a dry run: its own area). False when
    nothing collects lineage."""
    collector = _collector()
    if collector is None:
        return False
    try:
        for schema, table in loyalty_tables(loyalty_dsn):
            collector.add_input_asset(context=context, uri=postgres_uri(loyalty_dsn, schema, table))
        for table in DRY_RUN_TABLES if dry_run else STAGED_TABLES:
            collector.add_output_asset(context=context, uri=postgres_uri(state_dsn, STATE_SCHEMA, table))
    except Exception as exc:  # noqa: BLE001 - lineage never fails a night
        log.warning("lineage not reported for this chunk: %s", exc)
        return False
    return True


def report_load(*, state_dsn: str, moengage_conn_id: str) -> bool:
    """A slot read the outbox and wrote MoEngage's users and events (named by the connection's
    workspace id, not a secret: MoEngage shows it in every dashboard URL)."""
    collector = _collector()
    if collector is None:
        return False
    try:
        from loyalty_moengage.moengage.hook import MoEngageHook

        context = MoEngageHook(moengage_conn_id=moengage_conn_id)
        workspace_id = context.config.workspace_id
        for table in LOADED_TABLES:
            collector.add_input_asset(context=context, uri=postgres_uri(state_dsn, STATE_SCHEMA, table))
        for dataset in MOENGAGE_DATASETS:
            collector.add_output_asset(context=context, uri=moengage_uri(workspace_id, dataset))
    except Exception as exc:  # noqa: BLE001 - lineage never fails a night
        log.warning("lineage not reported for this load slot: %s", exc)
        return False
    return True


# The provider's asset-uris entry for the moengage scheme (see moengage/provider.py).

def sanitize_moengage_uri(uri: SplitResult) -> SplitResult:
    """``moengage://<workspace or connection>/<name>``: both parts required, nothing else."""
    if not uri.netloc or "@" in uri.netloc:
        raise ValueError("a moengage:// URI names a workspace (or connection) and nothing else before the path")
    name = uri.path.strip("/")
    if not name:
        raise ValueError("a moengage:// URI needs a name after the workspace, e.g. moengage://<workspace>/users")
    return uri._replace(path=f"/{name}", query="", fragment="")


def moengage_to_openlineage(asset: Any, lineage_context: Any) -> Any:
    from urllib.parse import urlsplit

    from airflow.providers.common.compat.openlineage.facet import Dataset

    parsed = urlsplit(asset.uri)
    return Dataset(namespace=f"moengage://{parsed.netloc}", name=parsed.path.strip("/"))
