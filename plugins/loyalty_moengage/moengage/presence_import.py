"""Seeding the presence cache from a MoEngage export, so a first night need not look every
active customer up at 1,000 users/min.

A user who can export a segment of all users from MoEngage (a CSV) or has a plain list of
customer ids (one per line) marks them present in ``moengage_sync.customer_presence``: those
are customers MoEngage has, so their events need no lookup. Ids the file does not hold are left
as they are (the gate looks them up as before); an absence cached earlier is overturned.

A file is not MoEngage's confirmation (an export ages, a list may be wrong), so an import never
makes presence last longer than a Get User answer given at the import would: its rows are
``imported``, their ``checked_at`` the import time, so they expire after the program's presence
lifetime like that answer (an export's own age is not known, so it is not subtracted); a
customer whose presence is still trusted is left as it is (an import never extends it); and the
presence refresher confirms imported customers active lately first, whatever their age.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

#: Header names a MoEngage export may give the customer id column (compared case-insensitively).
ID_COLUMNS = ("customer_id", "customer id", "id", "uid", "user_id", "userid", "unique id")
BATCH = 10_000


class PresenceFileError(ValueError):
    """The file cannot be read as a list of customer ids."""


@dataclass
class ImportCounts:
    rows: int = 0              # data rows (or lines) read
    ids: int = 0               # distinct usable customer ids
    refused: int = 0           # values MoEngage refuses as a customer_id, or empty
    duplicates: int = 0        # repeated in the file
    already_present: int = 0   # the cache knew them already (a trusted presence: left as it is)
    marked_present: int = 0    # new in the cache, an absence overturned or an expired presence (a dry run: would be)
    absences_overturned: int = 0
    expired_reasserted: int = 0   # a presence older than the lifetime, trusted again from the import
    lifetime_hours: float = 0.0   # how long the marked presence is trusted (the program's presence lifetime)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_ids(path: Path, *, column: str | None = None) -> Iterator[str]:
    """Every customer id of ``path``: a CSV whose header names the column (``column``, or one of
    :data:`ID_COLUMNS`), or a plain list, one id per line (an optional ``customer_id`` header)."""
    if not path.is_file():
        raise PresenceFileError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as f:
        head = f.readline()
        rest = f
        if "," in head or "\t" in head or ";" in head or column:
            yield from _csv_ids(path, head, rest, column)
            return
        first = head.strip()
        if first and first.lower() not in ID_COLUMNS:
            yield first
        for line in rest:
            yield line.strip()


def _csv_ids(path: Path, head: str, rest: io.TextIOBase, column: str | None) -> Iterator[str]:
    dialect = csv.Sniffer().sniff(head, delimiters=",;\t") if head.strip() else csv.excel
    header = next(csv.reader([head], dialect))
    names = [h.strip().lower() for h in header]
    wanted = [column.lower()] if column else list(ID_COLUMNS)
    index = next((names.index(w) for w in wanted if w in names), None)
    if index is None:
        raise PresenceFileError(
            f"{path}: no customer id column in the header ({', '.join(header[:12])}): name it with --column"
            + ("" if column else f" (looked for {', '.join(ID_COLUMNS)})"))
    for row in csv.reader(rest, dialect):
        if row:
            yield row[index].strip() if index < len(row) else ""


def import_presence(conn: Any, *, program_id: str, ids: Iterator[str], lifetime: timedelta, dry_run: bool = False,
                    progress: Callable[[ImportCounts], None] | None = None) -> ImportCounts:
    """Mark the file's customers present for at most ``lifetime`` from now (the program's
    presence lifetime), in one transaction; a dry run only counts."""
    from loyalty_moengage.moengage.rules import DISALLOWED_CUSTOMER_IDS

    counts = ImportCounts(dry_run=dry_run, lifetime_hours=lifetime.total_seconds() / 3600)
    seen: set[str] = set()
    batch: list[str] = []
    for cid in ids:
        counts.rows += 1
        if not cid or cid.strip().lower() in DISALLOWED_CUSTOMER_IDS:
            counts.refused += 1
            continue
        if cid in seen:
            counts.duplicates += 1
            continue
        seen.add(cid)
        batch.append(cid)
        if len(batch) >= BATCH:
            _apply(conn, program_id, batch, counts, dry_run, lifetime)
            batch = []
            if progress:
                progress(counts)
    _apply(conn, program_id, batch, counts, dry_run, lifetime)
    counts.ids = len(seen)
    if dry_run:
        conn.rollback()
    else:
        conn.commit()
    return counts


def _apply(conn: Any, program_id: str, batch: list[str], counts: ImportCounts, dry_run: bool,
           lifetime: timedelta) -> None:
    """Mark ``batch`` present as of now, ``imported``; a presence still trusted is left alone, so
    an import never makes one last longer than its confirmation does."""
    if not batch:
        return
    known = {cid: (present, trusted) for cid, present, trusted in conn.execute(
        "SELECT customer_id, present, checked_at > now() - %s::interval FROM moengage_sync.customer_presence "
        "WHERE program_id = %s AND customer_id = ANY(%s)", (lifetime, program_id, batch)).fetchall()}
    counts.already_present += sum(1 for c in batch if known.get(c) == (True, True))
    counts.absences_overturned += sum(1 for c in batch if c in known and not known[c][0])
    counts.expired_reasserted += sum(1 for c in batch if known.get(c) == (True, False))
    fresh = [c for c in batch if known.get(c) != (True, True)]
    counts.marked_present += len(fresh)
    if dry_run or not fresh:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO moengage_sync.customer_presence (program_id, customer_id, present, imported) "
            "VALUES (%s, %s, true, true) ON CONFLICT (program_id, customer_id) DO UPDATE SET present = true, "
            "imported = true, checked_at = now()",
            [(program_id, c) for c in fresh])
