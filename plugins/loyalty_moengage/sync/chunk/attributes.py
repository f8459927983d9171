"""The attributes of the members a live run's events touch, read beside those events so a push
that says "you now have 1,250 points" finds the balance in MoEngage (programs file
``live.attributes``): the members template itself, given ``%(customer_ids)s``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Collection

from loyalty_moengage.night import Window
from loyalty_moengage.sync.chunk.check import Checked
from loyalty_moengage.sync.chunk.contract import TemplateError

#: Every member id: the live lane names its members by customer id, not by a range.
ALL_MEMBERS = (-(2 ** 63), 2 ** 63 - 1)
#: A members template failing on rows is read again in halves to find them, up to this many,
#: in at most MOST_READS reads (a failure that is not in the rows, bad data in a table every member
#: reads, fails them all: it must not cost a read per member each minute).
MOST_BAD = 16
MOST_READS = 40


def members_template() -> Any:
    from loyalty_moengage.sync.chunk.contract import load_templates

    return next(t for t in load_templates() if t.kind == "members")


def check_takes_customer_ids() -> None:
    """The members template must honour ``%(customer_ids)s`` before a live run relies on it."""
    from loyalty_moengage.sync.chunk.extract import takes

    template = members_template()
    if not takes(template, "customer_ids"):
        raise TemplateError(
            f"SQL template {template.name!r} does not use %(customer_ids)s, which live.attributes needs (the live "
            "lane reads only the members its events touch): add `AND (%(customer_ids)s::text[] IS NULL OR "
            "<the customer id column> = ANY(%(customer_ids)s::text[]))` to the members it selects and the same "
            "member filter to each aggregate (see include/sql/members/attributes.sql and docs/sql-contract.md), "
            "or turn live.attributes off.")


@dataclass(frozen=True)
class Spared:
    """Members' attributes read around the rows the template cannot compute."""

    checked: Checked
    failed: list[str]            # customers whose rows the template failed on (or not told apart)
    error: str | None            # the first failure, naming those customers


def attributes_sparing_bad_rows(loyalty_dsn: str, window: Window, program_id: str, customers: Collection[str],
                                *, most_bad: int = MOST_BAD, most_reads: int = MOST_READS) -> Spared:
    """The checked member rows of ``customers`` as of ``window.end``. A template failing on some
    members' rows (bad data: a ``TemplateDataError``) is read again in halves until those members
    are found, so one bad row does not hold back the attributes of the others (each half is its
    own snapshot as of ``window.end``); past ``most_bad`` failed members, or ``most_reads`` reads,
    the rest is not told apart: it fails with them. A template that returns a member it was not
    asked for ignores the parameter, and fails naming it (``TemplateError``)."""
    import pyarrow as pa

    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.chunk.check import check_chunk
    from loyalty_moengage.sync.chunk.contract import TemplateDataError

    check_takes_customer_ids()
    template = members_template()
    good: list[Any] = []
    failed: list[str] = []
    errors: list[str] = []
    reads = [0]

    def read(conn: Any, ids: list[str]) -> None:
        if reads[0] >= most_reads:
            failed.extend(ids)
            return
        reads[0] += 1
        try:
            good.append(_extract(conn, window, program_id, template, ids))
        except TemplateDataError as exc:
            if len(ids) == 1 or len(failed) >= most_bad:
                failed.extend(ids)
                errors.append(str(exc).split(". ")[0])
                return
            read(conn, ids[:len(ids) // 2])
            read(conn, ids[len(ids) // 2:])

    with connect(loyalty_dsn) as conn:
        read(conn, sorted(customers))
    if good:
        merged = replace(good[0], table=pa.concat_tables([g.table for g in good]),
                         bytes_read=sum(g.bytes_read for g in good))
        checked = check_chunk([merged], window)
    else:
        checked = check_chunk([], window)
    error = None
    if failed:
        shown = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
        error = (f"{errors[0]}; on the rows of customer(s) {shown}: a value there is one the template cannot "
                 "compute with (an infinite or out-of-range date or number, say): fix the row or make the "
                 "template tolerate it (e.g. isfinite())")
    return Spared(checked, failed, error)


def _extract(conn: Any, window: Window, program_id: str, template: Any, customers: list[str]) -> Any:
    """One read of ``customers``' rows, in its own snapshot."""
    from loyalty_moengage.sync.chunk.extract import SESSION_SETTINGS, extract

    params = {**window.params(program_id, *ALL_MEMBERS), "customer_ids": customers}
    try:
        conn.execute(SESSION_SETTINGS)
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        ex = extract(conn, template, params)
    finally:
        conn.rollback()
    stray = set(ex.table.column("customer_id").to_pylist()) - set(customers)
    if stray:
        raise TemplateError(
            f"SQL template {template.name!r} returned {len(stray)} member(s) whose customer_id is not in "
            f"%(customer_ids)s: it names the parameter but does not filter "
            "by it. Filter the members it selects by it (see include/sql/members/attributes.sql).")
    return ex
