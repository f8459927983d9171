"""The attributes of the members a live run's events touch, read beside those events so a push
that says "you now have 1,250 points" finds the balance in MoEngage (programs file
``live.attributes``): the members template itself, given ``%(customer_ids)s``.
"""

from __future__ import annotations

from typing import Any, Collection

from loyalty_moengage.night import Window
from loyalty_moengage.sync.chunk.check import Checked
from loyalty_moengage.sync.chunk.contract import TemplateError

#: Every member id: the live lane names its members by customer id, not by a range.
ALL_MEMBERS = (-(2 ** 63), 2 ** 63 - 1)


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


def attributes_of(loyalty_dsn: str, window: Window, program_id: str, customers: Collection[str]) -> Checked:
    """The checked member rows of ``customers`` as of ``window.end`` (one snapshot); a template
    that returns a member it was not asked for ignores the parameter, and fails naming it."""
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.chunk.check import check_chunk
    from loyalty_moengage.sync.chunk.extract import SESSION_SETTINGS, extract

    check_takes_customer_ids()
    template = members_template()
    params = {**window.params(program_id, *ALL_MEMBERS), "customer_ids": sorted(customers)}
    with connect(loyalty_dsn) as conn:
        conn.execute(SESSION_SETTINGS)
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        ex = extract(conn, template, params)
        conn.rollback()
    stray = set(ex.table.column("customer_id").to_pylist()) - set(customers)
    if stray:
        raise TemplateError(
            f"SQL template {template.name!r} returned {len(stray)} member(s) whose customer_id is not in "
            f"%(customer_ids)s: it names the parameter but does not filter "
            "by it. Filter the members it selects by it (see include/sql/members/attributes.sql).")
    return check_chunk([ex], window)
