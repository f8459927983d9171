"""Floors at the pipeline's parallelism, and the naive peer in the public wrapper's pattern.

Each floor does one of the pipeline's costs with nothing else, on the same data:

* COPY: the same SQL (every template, the plan's member chunks) through the product's COPY loop
  (``sync.extract.copy_out``), ``parallelism`` connections at once like the mapped transforms.
* JSON: building JSON from the same extracted columns the pipeline starts from (``extract()``'s
  all-string Arrow tables and column kinds, not timed): every value keyed as the least its kind
  needs (numbers as printed, dates and times quoted, text escaped and quoted), each row joined
  into one object, the objects of a chunk into one buffer; vectorised (``pyarrow.compute``),
  ``parallelism`` chunks at once. It leaves out what the pipeline adds: row checks, typed numbers
  and ISO times, the nested event shape, packing into 100 KB bodies. (The run committed with
  this floor, at 1f3fa63, escaped every value as text, which overstated it.) The old floor
  (orjson of prebuilt dicts) started after the costly part; it is kept only for comparison
  (``json_floor_prebuilt_s``).
* delivery: the same bodies POSTed over ``parallelism`` keep-alive sessions at once, like the
  load slots (threads in one process here: the sandbox on the same two cores bounds it anyway).

Naive peer: the pattern of the ``moengage`` wrapper on PyPI (and of most hand-written
integrations): per record, a dict is built and handed to a module-level ``requests.post(url,
auth=HTTPBasicAuth(workspace, key), headers={"MOE-APPKEY": workspace}, json=record)`` (a new
``Session``, so a new TCP connection, per call; stdlib ``json`` encoding), then
``response.json()["status"]`` is read. :func:`naive_send` below is that code.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any


def _chunks(conn: Any, program: Any) -> list[dict[str, Any]]:
    from loyalty_moengage.sync.chunk.plan import plan_chunks

    return plan_chunks(conn, program.id, chunk_members=program.chunk_members)


def _window(program: Any, night: date) -> Any:
    from loyalty_moengage.night import Window

    return Window.of_night(night, program.time_zone)


def copy_floor_parallel(dsn: str, program_id: str, night: date, parallelism: int) -> dict[str, Any]:
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.chunk.contract import load_templates
    from loyalty_moengage.sync.chunk.extract import SESSION_SETTINGS, copy_out, render

    program = get_program(program_id)
    w = _window(program, night)
    with connect(dsn) as conn:
        chunks = _chunks(conn, program)
    templates = load_templates()
    work = iter(chunks)
    lock = threading.Lock()
    sizes: list[int] = []

    def stream() -> None:
        with connect(dsn) as conn:
            conn.execute(SESSION_SETTINGS)
            while True:
                with lock:
                    chunk = next(work, None)
                if chunk is None:
                    break
                for template in templates:
                    sizes.append(copy_out(conn, render(conn, template, w.params(program_id, chunk["lo"],
                                                                                  chunk["hi"]))).tell())
            conn.rollback()

    t = time.perf_counter()
    with ThreadPoolExecutor(parallelism) as pool:
        for f in [pool.submit(stream) for _ in range(parallelism)]:
            f.result()
    return {"copy_floor_parallel_s": round(time.perf_counter() - t, 3), "copy_parallel_bytes": sum(sizes),
            "copy_parallel_chunks": len(chunks)}


_RAW = ("int", "number", "float", "json", "bool")


def _encode(table: Any, kinds: dict[str, str] | None = None) -> int:
    """Every value a JSON literal under its key, one object per row, a chunk's objects in one buffer.
    The least each kind needs: numbers as printed, dates and times quoted, text escaped and quoted
    (the pipeline also checks numbers, writes ISO times and true/false)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from loyalty_moengage.sync.chunk.payloads import json_string

    if table.num_rows == 0:
        return 0
    fragments = []
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        kind = (kinds or {}).get(name, "text")
        if kind in _RAW:
            value = col
        elif kind in ("date", "timestamptz", "timestamp"):
            value = pc.binary_join_element_wise('"', col, '"', "")
        else:
            value = json_string(col)
        fragments.append(pc.binary_join_element_wise(f'"{name}":', value, ""))  # NULL: no fragment
    rows = pc.binary_join_element_wise("{", pc.binary_join_element_wise(*fragments, ",", null_handling="skip"),
                                       "}", "")
    offsets = pa.array([0, len(rows)], pa.int32())
    body = pc.binary_join(pa.ListArray.from_arrays(offsets, rows), ",")
    return len(body[0].as_buffer())


def json_floor_parallel(dsn: str, program_id: str, night: date, parallelism: int) -> dict[str, Any]:
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.db import connect
    from loyalty_moengage.sync.chunk.contract import load_templates
    from loyalty_moengage.sync.chunk.extract import SESSION_SETTINGS, extract

    program = get_program(program_id)
    w = _window(program, night)
    templates = load_templates()
    tables: list[list[Any]] = []
    with connect(dsn) as conn:  # the input, as the pipeline has it after extraction: not timed
        conn.execute(SESSION_SETTINGS)
        for chunk in _chunks(conn, program):
            tables.append([(x.table, x.kinds) for x in (extract(conn, t, w.params(program_id, chunk["lo"], chunk["hi"]))
                                                          for t in templates)])
        conn.rollback()
    rows = sum(t.num_rows for ts in tables for t, _ in ts)

    def chunk_seconds(ts: list[Any]) -> tuple[float, int]:
        t = time.perf_counter()
        size = sum(_encode(table, kinds) for table, kinds in ts)
        return time.perf_counter() - t, size

    serial = [chunk_seconds(ts) for ts in tables]
    t = time.perf_counter()
    with ThreadPoolExecutor(parallelism) as pool:
        list(pool.map(chunk_seconds, tables))
    wall = time.perf_counter() - t
    return {"json_floor_s": round(sum(s for s, _ in serial), 3), "json_floor_parallel_s": round(wall, 3),
            "json_floor_rows": rows, "json_floor_bytes": sum(n for _, n in serial)}


def delivery_floor_parallel(url: str, headers: dict[str, str], path: str, bodies: list[bytes],
                            parallelism: int) -> float:
    import requests

    work = iter(bodies)
    lock = threading.Lock()

    def stream() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    body = next(work, None)
                if body is None:
                    return
                r = session.post(url + path, data=body, headers=headers, timeout=30)
                if r.status_code != 200:
                    raise RuntimeError(f"delivery floor: HTTP {r.status_code} {r.text[:200]}")

    t = time.perf_counter()
    with ThreadPoolExecutor(parallelism) as pool:
        for f in [pool.submit(stream) for _ in range(parallelism)]:
            f.result()
    return time.perf_counter() - t


def naive_send(base_url: str, workspace: str, key: str, record: dict[str, Any]) -> None:
    """One record the way the public wrapper sends it (see the module doc): a new connection each call."""
    import requests
    from requests.auth import HTTPBasicAuth

    kind = "customer" if record.get("type") == "customer" else "event"
    response = requests.post(f"{base_url}/v1/{kind}/{workspace}", auth=HTTPBasicAuth(workspace, key),
                             headers={"MOE-APPKEY": workspace}, json=record)
    if response.json()["status"] == "fail":
        raise RuntimeError(f"naive peer: {response.text[:200]}")


def naive_peer(base_url: str, workspace: str, key: str, bodies: list[bytes], records: int) -> dict[str, Any]:
    """The wrapper pattern on a sample of the night's records (half users, half events), extrapolated."""
    import orjson

    users: list[dict] = []
    events: list[dict] = []
    half = records // 2
    for body in bodies:
        for el in orjson.loads(body)["elements"]:
            (users if el.get("type") == "customer" else events).append(el)
        if len(users) >= half and len(events) >= records - half:
            break
    sample = users[:half] + events[: records - len(users[:half])]
    t = time.perf_counter()
    for record in sample:
        naive_send(base_url, workspace, key, record)
    seconds = time.perf_counter() - t
    return {"naive_records": len(sample), "naive_seconds": round(seconds, 3),
            "naive_records_per_s": round(len(sample) / seconds, 1),
            "naive_pattern": "requests.post per record (new connection), HTTPBasicAuth + MOE-APPKEY, json=record, "
                             "response.json() (devtools/bench/floors.py naive_send)"}
