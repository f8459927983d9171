"""The property test of delivery: random schedules of claims, answers, kills, lease expiries, late
visibility and overlapping loads, against the sandbox over real HTTP and a real Postgres, with the
delivery invariant checked after every step.

Why: each test of ``tests/loyalty_moengage/sync`` replays one recipe of a rude MoEngage, and the
bugs they fixed were interleavings nobody had written down before. Here the schedules are drawn
from a seed and performed by the product's own functions (``send.load.load_slot``, which claims,
stamps receipts, marks ``sending`` and posts through ``MoEngageHook``; ``delivery.recover_orphans``;
``send.settle.settle``), so what is checked is what runs at night.

**The model** (:func:`generate`; a schedule from ``(seed, index)``):

* 1-3 runs of consecutive nights; 2-5 events batches of 5-7 synthetic events each, every event on
  a customer of its own, inserted ``pending`` straight into ``moengage_sync.batches`` + ``event_keys``
  with the product's ``enqueue`` functions; receipts on (``ReceiptSettings.of``: the wait is the
  connection's ``visibility_seconds`` + ``timeout``, here ``WAIT``); a pool of probe carriers.
* A first ``load``, then 2-9 steps drawn by ``STEPS``: ``load`` 42 % (one attempt of a new load slot
  of a run) and ``takeover`` 10 % (a later try of a slot that ran, which takes over its claims, even
  from a try still running): claim size 1-3; 35 % in the background, overlapping whatever comes
  next (two runs' slots at once), its first POST then usually slow; 22 % killed at its 1st or 2nd
  POST, half before the request left and half after MoEngage answered: a ``BaseException`` the
  product cannot catch, leaving the batch ``sending`` under a lease nobody renews. ``settle`` 16 %
  (30 % in the background, beside the loads; 30 % long enough to conclude absence, else 0-2 polls;
  25 % with a rude answer to its probe; its polls are cut to ``SLEEP_MAX`` s but count in full on
  its clock: :class:`QuickClock`). ``expire`` 14 % (a slot's lease runs out: one of the last three
  killed or background slots', dead, or live mid-POST as when its renewer lost the database; and
  right after 40 % of the background loads). ``recover`` 8 %
  (``recover_orphans``, as another run's slot does). ``join`` 10 % (the background work ends).
* Each bulk request of a slot gets the next answer of its plan (the rest: 200): ok 40 %; applied,
  then 500/502/503/504/408 12 %; applied, then the connection dropped 9 %; dropped before MoEngage
  read the body 8 %; 5xx/408 without applying 8 %; 429 12 % (waited out; the request goes again);
  slow (applied after up to ``LATENCY_MAX`` s, inside the timeout) 11 %. At most ``UNAPPLIED_MAX``
  unapplied outcomes (and kills before sending) per schedule, so a batch never runs out of
  receipt carriers (each POST takes a fresh one: the quiet period is hours).
* Half the schedules delay bulk writes' visibility to the Get User API by a random 0-0.12 s per
  element, so a later probe can show before an earlier receipt.

**The invariant**, after every step (background work still running): no enqueued event applied
more than once (the sandbox's events, identified as ``delivery_audit.identity`` does: customer,
action, time and attributes, which hold a ``property_event_id``); nothing applied that was not
enqueued; no profile created (``profiles_created`` is 0: every customer is seeded in the sandbox and
present in ``customer_presence``). After a drain at the end (background work joined, faults off,
dead leases expired, rounds of recover + settle + load): every enqueued event applied exactly
once and every batch ``sent``.

**Left out, on purpose**: partial application (MoEngage applies a bulk request's elements
independently: a request whose events were dropped while its receipt landed is a residual risk
no client can see, so it would fail "nothing lost" without a product bug); a request MoEngage
applies later than ``timeout + visibility_seconds`` after it left (the receipt wait assumes it
never does); permanent refusals (4xx: quarantined, not lost); MoEngage never coming back.

Replay: a failure names its seed and index and lists its steps; ``--replay SEED:INDEX`` performs
that schedule again. Background steps interleave by the clock, so a replay repeats the schedule
and each slot's answers exactly, the interleaving only as closely as timing allows. The answers
are routed by slot: each hook sends an ``X-Property-Actor`` header and the sandbox's request
handler (wrapped here, not changed) scripts the request's answer as it arrives.

    python -m loyalty_moengage_devtools.delivery_property --schedules 5000 --seed 1   # make property
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import orjson

from loyalty_moengage_devtools.delivery_audit import Identity, identity, received

PROGRAM = "property"
WORKSPACE = "WS_PROPERTY"
API_KEY = "property-data-api-key-3b9d"
ACTOR_HEADER = "X-Property-Actor"
RECEIPT_ATTRIBUTE = "loyalty_sync_receipt"
EVENT_ID = "property_event_id"
NEWEST_NIGHT = date(2025, 11, 20)
TIMEOUT = 0.3               # the connection's request timeout, seconds
VISIBILITY_MAX = 0.12       # the longest visibility delay drawn = the connection's visibility_seconds
WAIT = TIMEOUT + VISIBILITY_MAX   # the receipt wait ReceiptSettings.of gives
LATENCY_MAX = 0.12          # slow answers land well inside the timeout
SLEEP_MAX = 0.05            # every wait of the product (429s, backoff, settle polls) is cut to this
PROBE_POOL = 60
UNAPPLIED_MAX = 3
DRAIN_ROUNDS = 6
POLL = 2.0                  # settle's poll when the wait is short (max(2, wait / 10))
SETTLE_LONG = 40.0          # a settle's timeout on its QuickClock: 20 polls, about 1 s, past the wait
JOIN_SECONDS = 30.0

#: What MoEngage does with one bulk request, and how often.
ANSWERS: dict[str, float] = {"ok": 0.40, "applied_error": 0.12, "applied_lost": 0.09, "unapplied_lost": 0.08,
                             "unapplied_error": 0.08, "throttled": 0.12, "slow": 0.11}
UNAPPLIED = frozenset({"unapplied_lost", "unapplied_error"})
STEPS: dict[str, float] = {"load": 0.42, "settle": 0.16, "expire": 0.14, "recover": 0.08, "join": 0.10,
                           "takeover": 0.10}
STATUSES = (500, 502, 503, 504, 408)


def brief_sleep(seconds: float) -> None:
    """The product's waits, cut short: a schedule must take well under a second."""
    time.sleep(min(max(seconds, 0.0), SLEEP_MAX))


class QuickClock:
    """A settle's clock and sleep: each poll's wait (2 s at least) is cut to ``SLEEP_MAX`` but counts
    in full on this clock, so a settle's ``timeout`` is a number of polls while the receipt wait,
    judged by the database's clock, stays real."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def sleep(self, seconds: float) -> None:
        brief_sleep(seconds)
        self.skipped += max(0.0, seconds - SLEEP_MAX)

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


# ---- the model -------------------------------------------------------------------------------

def action(rng: random.Random, kind: str) -> Any:
    """The sandbox's script action for one answer kind (None: a plain 200)."""
    if kind == "applied_error":
        return f"applied:{rng.choice(STATUSES)}"
    if kind == "applied_lost":
        return rng.choice(("applied:drop", "drop_after_body"))
    if kind == "unapplied_lost":
        return "drop"
    if kind == "unapplied_error":
        return rng.choice(STATUSES)
    if kind == "throttled":
        return 429
    if kind == "slow":
        return f"latency:{rng.uniform(0.02, LATENCY_MAX):.3f}"
    return None


@dataclass
class Draw:
    """A schedule's random choices, and how many of each fault kind it drew."""

    rng: random.Random
    faults: Counter = field(default_factory=Counter)
    unapplied: int = 0

    def answer(self) -> Any:
        kind = self.rng.choices(list(ANSWERS), weights=list(ANSWERS.values()))[0]
        if kind in UNAPPLIED:
            if self.unapplied >= UNAPPLIED_MAX:
                kind = "ok"
            else:
                self.unapplied += 1
        if kind != "ok":
            self.faults[kind] += 1
        return action(self.rng, kind)

    def kill(self, claim: int) -> dict[str, Any] | None:
        if self.rng.random() >= 0.22:
            return None
        applied = self.rng.random() < 0.5 or self.unapplied >= UNAPPLIED_MAX
        self.unapplied += 0 if applied else 1
        self.faults["kill_after_answer" if applied else "kill_before_request"] += 1
        return {"post": self.rng.randint(1, min(claim, 2)), "applied": applied}


@dataclass(frozen=True)
class Schedule:
    seed: int
    index: int
    nights: dict[str, str]              # run -> its night
    batches: list[dict[str, Any]]       # {"run", "events"}
    visibility: list[float] | None      # [min, max] seconds before bulk writes show, or None
    steps: list[dict[str, Any]]
    faults: dict[str, int]

    @property
    def newest(self) -> date:
        return max(date.fromisoformat(n) for n in self.nights.values())

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "faults"}


def generate(seed: int, index: int) -> Schedule:
    """Schedule ``index`` of ``seed``: the same every time."""
    draw = Draw(random.Random(f"delivery-property:{seed}:{index}"))
    rng = draw.rng
    runs = [f"r{i}" for i in range(1, rng.randint(1, 3) + 1)]
    nights = {run: (NEWEST_NIGHT - timedelta(days=len(runs) - i)).isoformat() for i, run in enumerate(runs, 1)}
    batches = [{"run": rng.choice(runs), "events": rng.randint(5, 7)} for _ in range(rng.randint(2, 5))]
    visibility = None
    if rng.random() < 0.5:
        visibility = [0.0, round(rng.uniform(0.03, VISIBILITY_MAX), 3)]
        draw.faults["visibility_delay"] += 1
    steps = _steps(draw, runs)
    return Schedule(seed, index, nights, batches, visibility, steps, dict(draw.faults))


def _steps(draw: Draw, runs: list[str]) -> list[dict[str, Any]]:
    rng = draw.rng
    loads: list[dict[str, Any]] = []
    steps = [_load_step(draw, runs, loads, takeover=False)]
    for _ in range(rng.randint(2, 9)):
        kind = rng.choices(list(STEPS), weights=list(STEPS.values()))[0]
        if kind in ("load", "takeover"):
            steps.append(_load_step(draw, runs, loads, takeover=kind == "takeover"))
            if steps[-1]["bg"] and rng.random() < 0.4:
                steps.append(_expire_step(draw, steps[-1]))     # its lease lapses mid-POST
        elif kind == "settle":
            steps.append(_settle_step(draw))
        elif kind == "expire":
            # Leases that matter: a killed slot's, or a background one's that may still be posting.
            held = [load for load in loads if load["kill"] or load["bg"]] or loads
            steps.append(_expire_step(draw, rng.choice(held[-3:])))
        else:
            steps.append({"do": kind})
    return steps


def _expire_step(draw: Draw, load: dict[str, Any]) -> dict[str, Any]:
    draw.faults["lease_expired_dead" if load["kill"] else "lease_expired_live" if load["bg"] else "lease_expired"] += 1
    return {"do": "expire", "run": load["run"], "slot": load["slot"], "try": load["try"]}


def _load_step(draw: Draw, runs: list[str], loads: list[dict[str, Any]], *, takeover: bool) -> dict[str, Any]:
    """One attempt of one load slot: a new slot, or a later try of one that ran (it takes over)."""
    rng = draw.rng
    if takeover and loads:
        slot = rng.choice(loads)
        run, number = slot["run"], slot["slot"]
        attempt = 1 + max(s["try"] for s in loads if (s["run"], s["slot"]) == (run, number))
        draw.faults["later_try_takes_over"] += 1
    else:
        run = rng.choice(runs)
        number, attempt = 1 + max((s["slot"] for s in loads if s["run"] == run), default=-1), 1
    claim = rng.randint(1, 3)
    answers = [draw.answer() for _ in range(claim + rng.randint(0, 2))]
    bg = rng.random() < 0.35
    if bg:
        draw.faults["overlapping_load"] += 1
        if rng.random() < 0.6:
            answers.insert(0, action(rng, "slow"))
            draw.faults["slow"] += 1
    step = {"do": "load", "run": run, "slot": number, "try": attempt, "claim": claim, "answers": answers,
            "kill": draw.kill(claim), "bg": bg}
    loads.append(step)
    return step


def _settle_step(draw: Draw) -> dict[str, Any]:
    rng = draw.rng
    timeout = SETTLE_LONG if rng.random() < 0.3 else POLL * rng.randint(0, 2) + 0.01
    answers: list[Any] = []
    if rng.random() < 0.25:
        kind = rng.choice(("applied_lost", "unapplied_lost", "unapplied_error", "throttled", "slow"))
        draw.faults[f"probe_{kind}"] += 1
        answers.append(action(rng, kind))
    bg = rng.random() < 0.3
    if bg:
        draw.faults["settle_during_load"] += 1
    return {"do": "settle", "timeout": timeout, "answers": answers, "bg": bg}


# ---- the world: one sandbox and one database for many schedules -------------------------------

class Answers:
    """The answers planned for each actor's bulk requests, taken as the requests reach the sandbox."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: dict[str, deque[Any]] = {}

    def plan(self, actor: str, answers: list[Any]) -> None:
        with self._lock:
            self._plans[actor] = deque(answers)

    def next(self, actor: str | None) -> Any:
        with self._lock:
            plan = self._plans.get(actor or "")
            return plan.popleft() if plan else None

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()


def route_answers(sandbox: Any, answers: Answers) -> None:
    """Script each bulk request's answer from its actor's plan as it arrives. The sandbox decides a
    request's fault synchronously when its handler starts (no await before), so the script entry
    for the next request number is this request's, whatever else is in flight."""
    app = sandbox.app
    handler = app._data

    async def data(request: Any, endpoint: str) -> Any:
        answer = answers.next(request.headers.get(ACTOR_HEADER)) if endpoint == "transition" else None
        if answer is not None:
            with app.state.lock:
                app.state.faults.script[app.state.data_requests + 1] = answer
        return await handler(request, endpoint)

    app._data = data


@dataclass
class World:
    sandbox: Any
    dsn: str
    config: Any                  # MoEngageConfig of the sandbox connection
    settings: Any                # ReceiptSettings
    answers: Answers
    tables: list[str]
    hook_kwargs: dict[str, Any]
    conn: Any = None             # the harness's own connection (main thread only)


def _config(sandbox: Any) -> Any:
    from loyalty_moengage.moengage.connection import config_from_connection

    conn = SimpleNamespace(login=WORKSPACE, password=API_KEY, host="DC-03", extra_dejson={
        "base_url": sandbox.base_url_template, "timeout": TIMEOUT, "visibility_seconds": VISIBILITY_MAX,
        "pacing": False, "lookups_per_minute": 1_000_000})
    return config_from_connection(conn, "moengage_property")


@contextmanager
def open_world(dsn: str, hook_kwargs: dict[str, Any] | None = None) -> Iterator[World]:
    """A sandbox of our own (its answers routed by actor) in front of the state database ``dsn``."""
    from loyalty_moengage.db import apply_schema, connect
    from loyalty_moengage.sync.outbox.receipts import ReceiptSettings
    from loyalty_moengage_devtools.sandbox import SandboxServer

    apply_schema(dsn)
    with connect(dsn, application_name="delivery property") as conn, SandboxServer(port=0) as sandbox:
        tables = [f"moengage_sync.{r[0]}" for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'moengage_sync' ORDER BY 1")]
        conn.commit()
        sandbox.add_workspace(WORKSPACE, API_KEY, dc="03", users_per_minute=None, events_per_minute=None,
                              export_users_per_minute=None)
        answers = Answers()
        route_answers(sandbox, answers)
        config = _config(sandbox)
        program = SimpleNamespace(receipts=True, receipt_attribute=RECEIPT_ATTRIBUTE, receipt_wait_seconds=0.05)
        settings = ReceiptSettings.of(program, config)
        assert abs(settings.wait_seconds - WAIT) < 1e-9, settings
        yield World(sandbox, dsn, config, settings, answers, tables, dict(hook_kwargs or {}), conn)


def new_hook(world: World, actor: str) -> Any:
    """A real hook on the sandbox connection, its waits cut short, its requests named ``actor``."""
    from loyalty_moengage.moengage.hook import MoEngageHook

    hook = MoEngageHook(moengage_conn_id="moengage_property", sleep=brief_sleep, backoff_initial=0.01,
                        backoff_max=0.02, **world.hook_kwargs)
    hook.__dict__["config"] = world.config       # the connection, resolved once for every schedule
    hook.session.headers[ACTOR_HEADER] = actor
    return hook


# ---- one schedule's data ------------------------------------------------------------------------

@dataclass(frozen=True)
class Enqueued:
    """What a schedule enqueued: each event's identity -> its id, and every customer."""

    events: dict[Identity, str]
    customers: list[str]
    probes: list[str]


def _event(index: int, batch: int, number: int) -> tuple[str, bytes, Identity, str]:
    customer = f"PROP-{batch}-{number}"
    event_id = f"s{index}.b{batch}.e{number}"
    when = f"{NEWEST_NIGHT - timedelta(days=1)}T{batch:02d}:{number:02d}:00Z"
    attributes = {EVENT_ID: event_id, "points": 10 * number + batch}
    element = orjson.dumps({"type": "event", "customer_id": customer, "actions": [
        {"action": "points_earned", "attributes": attributes, "current_time": when, "user_timezone_offset": 19800}]})
    return customer, element, identity(customer, "points_earned", when, attributes), event_id


def prepare(world: World, schedule: Schedule) -> Enqueued:
    """A clean sandbox and outbox, then the schedule's batches ``pending`` and its customers known.
    The tables are emptied with DELETE: a TRUNCATE of some twenty tables and their indexes costs
    0.1-0.3 s (new files for each), as much as the schedule itself."""
    world.sandbox.reset()
    world.answers.clear()
    state = world.sandbox.state
    with state.lock:
        state.faults.bulk_visibility_delay = tuple(schedule.visibility) if schedule.visibility else None
    probes = [f"PROBE-{i}" for i in range(PROBE_POOL)]
    conn = world.conn
    for table in world.tables:
        conn.execute(f"DELETE FROM {table}")
    enqueued = _enqueue(conn, schedule, probes)
    conn.commit()
    world.sandbox.seed_users(WORKSPACE, enqueued.customers + probes)
    return enqueued


def _enqueue(conn: Any, schedule: Schedule, probes: list[str]) -> Enqueued:
    from loyalty_moengage.moengage.packing import BODY_PREFIX, BODY_SUFFIX
    from loyalty_moengage.sync.outbox.enqueue import NewBatch, allocate_batch_ids, insert_batches, insert_event_keys

    events: dict[Identity, str] = {}
    customers: list[str] = []
    keys: list[str] = []
    ids = allocate_batch_ids(conn, len(schedule.batches))
    for b, (batch_id, spec) in enumerate(zip(ids, schedule.batches)):
        made = [_event(schedule.index, b, n) for n in range(spec["events"])]
        body = BODY_PREFIX + b",".join(m[1] for m in made) + BODY_SUFFIX
        night = date.fromisoformat(schedule.nights[spec["run"]])
        insert_batches(conn, program_id=PROGRAM, night=night, run_id=spec["run"], chunk_label=f"b{b}",
                       batch_ids=[batch_id], batches=[NewBatch("events", body, len(made), 0, len(made))])
        for customer, _, ident, event_id in made:
            events[ident] = event_id
            customers.append(customer)
            keys.append(f"{PROGRAM},{event_id},{night},points_earned,{batch_id}")
    insert_event_keys(conn, ("\n".join(keys) + "\n").encode())
    conn.execute("UPDATE moengage_sync.batches SET state = 'pending' WHERE program_id = %s", (PROGRAM,))
    # Probes take any present customer, newest check first: the pool's, so batches keep their carriers.
    conn.execute("INSERT INTO moengage_sync.customer_presence (program_id, customer_id, present, checked_at) "
                 "SELECT %s, c, true, now() - interval '1 hour' FROM unnest(%s::text[]) c UNION ALL "
                 "SELECT %s, c, true, now() FROM unnest(%s::text[]) c", (PROGRAM, customers, PROGRAM, probes))
    return Enqueued(events, customers, probes)


# ---- performing a schedule ---------------------------------------------------------------------

class Killed(BaseException):
    """The load attempt's process died (SIGKILL, OOM): no line of the product runs after it."""


class DyingHook:
    """A hook whose ``post``-th send dies: before its request leaves, or after MoEngage answered it."""

    def __init__(self, hook: Any, post: int, applied: bool) -> None:
        self._hook, self._post, self._applied, self._posts = hook, post, applied, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hook, name)

    def send_transition(self, body: bytes, **kwargs: Any) -> Any:
        self._posts += 1
        if self._posts != self._post:
            return self._hook.send_transition(body, **kwargs)
        if self._applied:
            with contextlib.suppress(Exception):
                self._hook.send_transition(body, **kwargs)
        raise Killed(f"killed at post {self._post} ({'after the answer' if self._applied else 'before the request'})")


@dataclass(frozen=True)
class Violation:
    kind: str       # duplicate | unexpected | profile_created | lost | unsettled | exception
    step: int       # seen after this step (the number of steps: after the drain)
    detail: str


def _slot_key(run: str, slot: int) -> str:
    return f"{PROGRAM}:{run}:slot-{slot}"


def _actor(step: dict[str, Any]) -> str:
    return f"{step['run']}/slot-{step['slot']}/try-{step['try']}"


class Execution:
    """One schedule performed step by step: its background work and what went wrong in it."""

    def __init__(self, world: World, schedule: Schedule) -> None:
        self.world, self.schedule = world, schedule
        self.threads: list[threading.Thread] = []
        self.problems: list[Violation] = []
        self.step = 0

    def perform(self, step: dict[str, Any]) -> None:
        getattr(self, f"do_{step['do']}")(step)

    def _start(self, work: Callable[[], Any], background: bool, name: str) -> None:
        at = self.step

        def guarded() -> None:
            from loyalty_moengage.sync.send.load import LoadError

            try:
                work()
            except (Killed, LoadError):
                pass   # a slot that died, or stopped as the product stops it (claim lost, transient)
            except Exception as exc:  # noqa: BLE001 - anything else is a finding
                text = "".join(traceback.format_exception_only(exc)).strip()
                self.problems.append(Violation("exception", at, f"{name}: {text}"))

        if not background:
            guarded()
            return
        thread = threading.Thread(target=guarded, name=f"property {name}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def load(self, run: str, slot: int, attempt: int, claim: int, night: date, hook: Any) -> None:
        from loyalty_moengage.sync.send.load import load_slot

        load_slot(program_id=PROGRAM, slot=slot, night=night, run_id=run, state_dsn=self.world.dsn, hook=hook,
                  claim_size=claim, attempt=attempt, receipts=self.world.settings)

    def do_load(self, step: dict[str, Any]) -> None:
        actor = _actor(step)
        hook = new_hook(self.world, actor)
        if step["kill"]:
            hook = DyingHook(hook, **step["kill"])
        self.world.answers.plan(actor, step["answers"])
        night = date.fromisoformat(self.schedule.nights[step["run"]])
        self._start(lambda: self.load(step["run"], step["slot"], step["try"], step["claim"], night, hook),
                    step["bg"], actor)

    def settle(self, actor: str, timeout: float) -> Any:
        from loyalty_moengage.db import connect
        from loyalty_moengage.sync.send.settle import settle

        clock = QuickClock()
        with connect(self.world.dsn) as conn:
            return settle(conn, program_id=PROGRAM, hook=new_hook(self.world, actor), settings=self.world.settings,
                          up_to_night=self.schedule.newest, run_id=actor, timeout=timeout, sleep=clock.sleep,
                          clock=clock)

    def do_settle(self, step: dict[str, Any]) -> None:
        actor = f"settle-{self.step}"
        self.world.answers.plan(actor, step["answers"])
        self._start(lambda: self.settle(actor, step["timeout"]), step["bg"], actor)

    def do_expire(self, step: dict[str, Any]) -> None:
        """The slot's lease runs out (its process is dead, or its renewer lost the database); a live
        slot's once it is posting, so the lapse lands mid-POST."""
        params = (_slot_key(step["run"], step["slot"]), step["try"])
        self._await_sending(f"property {_actor(step)}", params)
        self._expire("claim_slot = %s AND claim_try = %s", params)

    def _await_sending(self, name: str, params: tuple[Any, ...], patience: float = 0.3) -> None:
        """While the slot's thread runs (at most ``patience`` s), wait for it to mark a batch 'sending'."""
        thread = next((t for t in self.threads if t.name == name and t.is_alive()), None)
        deadline = time.monotonic() + patience
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            posting = self.world.conn.execute(
                "SELECT 1 FROM moengage_sync.batches WHERE claim_slot = %s AND claim_try = %s AND state = 'sending'",
                params).fetchone()
            self.world.conn.commit()
            if posting:
                return
            time.sleep(0.005)

    def _expire(self, where: str, params: tuple[Any, ...] = ()) -> None:
        self.world.conn.execute("UPDATE moengage_sync.batches SET lease_expires_at = now() - interval '1 second' "
                                "WHERE program_id = %s AND state IN ('claimed', 'sending') AND " + where,
                                (PROGRAM, *params))
        self.world.conn.commit()

    def do_recover(self, step: dict[str, Any] | None = None) -> None:
        from loyalty_moengage.sync.outbox.delivery import recover_orphans

        recover_orphans(self.world.conn, PROGRAM)

    def do_join(self, step: dict[str, Any] | None = None) -> None:
        for thread in self.threads:
            thread.join(JOIN_SECONDS)
            if thread.is_alive():
                self.problems.append(Violation("exception", self.step, f"{thread.name} still running after "
                                               f"{JOIN_SECONDS:g} s"))
        self.threads = [t for t in self.threads if t.is_alive()]

    def drain(self) -> None:
        """Faults off, every slot gone (their leases run out), then recover + settle + load rounds."""
        self.do_join()
        self.world.answers.clear()
        with self.world.sandbox.state.lock:
            self.world.sandbox.state.faults.bulk_visibility_delay = None
        for attempt in range(1, DRAIN_ROUNDS + 1):
            self._expire("true")
            self.do_recover()
            if not unsettled(self.world.conn):
                return
            self._start(lambda: self.settle(f"drain-settle-{attempt}", SETTLE_LONG), False, "drain settle")
            hook = new_hook(self.world, f"drain/{attempt}")
            self._start(lambda: self.load("drain", 0, attempt, 3, self.schedule.newest, hook), False, "drain load")


def unsettled(conn: Any) -> dict[int, str]:
    """Batches not sent yet: id -> 'state: error'."""
    rows = conn.execute("SELECT batch_id, state, error FROM moengage_sync.batches WHERE program_id = %s "
                        "AND state <> 'sent' ORDER BY batch_id", (PROGRAM,)).fetchall()
    conn.commit()
    return {r[0]: f"{r[1]}: {r[2] or ''}"[:300] for r in rows}


# ---- the invariant ------------------------------------------------------------------------------

def check_safety(world: World, enqueued: Enqueued, step: int) -> list[Violation]:
    """What must hold at every instant: nothing applied twice, nothing foreign, no profile created."""
    found: list[Violation] = []
    for ident, times in received(world.sandbox.state.events(WORKSPACE)).items():
        if ident not in enqueued.events:
            found.append(Violation("unexpected", step, f"{times} x {ident[0]} {ident[1]} {ident[3].decode()}"))
        elif times > 1:
            found.append(Violation("duplicate", step, f"event {enqueued.events[ident]} applied {times} times"))
    created = world.sandbox.profile_stats(WORKSPACE)["profiles_created"]
    if created:
        found.append(Violation("profile_created", step, f"{created} profile(s) created"))
    return found


def check_drained(world: World, enqueued: Enqueued, step: int) -> list[Violation]:
    """What must hold after the drain: every event applied (once: check_safety), every batch sent."""
    got = received(world.sandbox.state.events(WORKSPACE))
    found = [Violation("lost", step, f"event {event_id} never applied")
             for ident, event_id in enqueued.events.items() if not got[ident]]
    found += [Violation("unsettled", step, f"batch {batch_id} {what}")
              for batch_id, what in unsettled(world.conn).items()]
    return found


def answer_kind(fault: Any) -> str:
    """The kind (as in ``ANSWERS``) of the answer the sandbox gave; a slow one shows as ``ok``."""
    if fault in ("applied:drop", "drop_after_body"):
        return "applied_lost"
    if isinstance(fault, str) and fault.startswith("applied:"):
        return "applied_error"
    if fault == "drop":
        return "unapplied_lost"
    if fault == 429:
        return "throttled"
    return "unapplied_error" if isinstance(fault, int) else "ok"


def outcomes(world: World) -> Counter:
    """What the schedule made the product do (so a quiet run shows it went where the bugs were): the
    answers the sandbox gave to bulk requests (batches' and probes'), and how batches were settled."""
    seen: Counter = Counter()
    for entry in world.sandbox.state.requests():    # a fault answered before auth names no workspace
        if entry.get("endpoint") == "transition":
            seen[f"answered {answer_kind(entry.get('fault'))}"] += 1
    rows = world.conn.execute("SELECT coalesce(settled_by, 'answer'), count(*), sum(attempts), sum(lost_answers) "
                              "FROM moengage_sync.batches WHERE program_id = %s GROUP BY 1", (PROGRAM,)).fetchall()
    world.conn.commit()
    for settled_by, batches, claims, lost in rows:
        seen[f"batches settled by {settled_by}"] += batches
        seen["claims"] += claims
        seen["lost answers"] += lost
    return seen


def execute(world: World, schedule: Schedule) -> tuple[list[Violation], Counter]:
    """Perform the schedule, checking after each step and after the drain; each violation once."""
    enqueued = prepare(world, schedule)
    run = Execution(world, schedule)
    seen: dict[tuple[str, str], Violation] = {}

    def note(found: list[Violation]) -> None:
        for violation in found + run.problems:
            seen.setdefault((violation.kind, violation.detail), violation)

    try:
        for number, step in enumerate(schedule.steps):
            run.step = number
            run.perform(step)
            note(check_safety(world, enqueued, number))
        run.step = len(schedule.steps)
        run.drain()
        note(check_safety(world, enqueued, run.step) + check_drained(world, enqueued, run.step))
    finally:
        run.do_join()
    return list(seen.values()), outcomes(world)


# ---- the runner -----------------------------------------------------------------------------------

@dataclass
class Summary:
    seed: int
    schedules: int = 0
    steps: int = 0
    seconds: float = 0.0
    faults: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def violations(self) -> list[dict[str, Any]]:
        return [v for f in self.failures for v in f["violations"]]

    def add(self, schedule: Schedule, violations: list[Violation], outcomes: Counter) -> None:
        self.schedules += 1
        self.steps += len(schedule.steps)
        self.faults.update(schedule.faults)
        self.outcomes.update(outcomes)
        if violations:
            self.failures.append({"seed": schedule.seed, "index": schedule.index,
                                  "replay": f"--replay {schedule.seed}:{schedule.index}",
                                  "violations": [asdict(v) for v in violations], "schedule": schedule.describe()})

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "schedules": self.schedules, "steps": self.steps,
                "violations": len(self.violations), "seconds": round(self.seconds, 1),
                "seconds_per_schedule": round(self.seconds / max(1, self.schedules), 3),
                "faults": dict(sorted(self.faults.items())), "outcomes": dict(sorted(self.outcomes.items())),
                "failures": self.failures[:50],
                "model": {"answers": ANSWERS, "steps": STEPS, "timeout": TIMEOUT, "wait": WAIT,
                          "visibility_max": VISIBILITY_MAX, "latency_max": LATENCY_MAX, "unapplied_max": UNAPPLIED_MAX}}


def run(count: int, seed: int, *, dsn: str, start: int = 0, hook_kwargs: dict[str, Any] | None = None,
        progress: Any = None) -> Summary:
    """Schedules ``start`` .. ``start + count - 1`` of ``seed`` against one sandbox and the database ``dsn``
    (its moengage_sync tables are emptied between schedules). ``hook_kwargs`` go to every MoEngageHook."""
    summary = Summary(seed=seed)
    started = time.perf_counter()
    with open_world(dsn, hook_kwargs) as world:
        for index in range(start, start + count):
            schedule = generate(seed, index)
            summary.add(schedule, *execute(world, schedule))
            if progress is not None:
                progress.advance()
    summary.seconds = time.perf_counter() - started
    return summary


# ---- the command ----------------------------------------------------------------------------------

@contextmanager
def _server(dsn: str | None) -> Iterator[str]:
    """``--dsn``, TEST_DATABASE_URL or LOYALTY_DB_URL, else an embedded server of our own."""
    url = dsn or os.environ.get("TEST_DATABASE_URL") or os.environ.get("LOYALTY_DB_URL")
    if url:
        yield url
        return
    from loyalty_moengage.embedded import owned_server

    with owned_server("property-pgdata") as server:
        yield server


@contextmanager
def _fresh_database(server: str) -> Iterator[str]:
    """A database of our own on ``server`` (others may be testing there too), dropped after."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"lm_property_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(**{**conninfo_to_dict(server), "dbname": name})
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _print(summary: Summary, out: Path | None) -> None:
    figures = summary.as_dict()
    print(f"{summary.schedules:,} schedules, {summary.steps:,} steps in {figures['seconds']} s "
          f"({figures['seconds_per_schedule'] * 1000:.0f} ms per schedule): {figures['violations']} violation(s)")
    print("faults drawn: " + ", ".join(f"{k} {v:,}" for k, v in figures["faults"].items()))
    print("what happened: " + ", ".join(f"{k} {v:,}" for k, v in figures["outcomes"].items()))
    for failure in summary.failures[:10]:
        print(f"\nseed {failure['seed']} schedule {failure['index']} ({failure['replay']}):")
        for v in failure["violations"]:
            print(f"  after step {v['step']}: {v['kind']}: {v['detail']}")
        print(json.dumps(failure["schedule"], default=str))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    from loyalty_moengage.paths import project_root
    from loyalty_moengage.progress import Progress

    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")   # the hook logs each preflight
    parser = argparse.ArgumentParser(prog="python -m loyalty_moengage_devtools.delivery_property",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=int, default=0, help="the first schedule's index")
    parser.add_argument("--replay", metavar="SEED:INDEX", help="perform one schedule again (writes no results)")
    parser.add_argument("--dsn", help="a Postgres server (default: TEST_DATABASE_URL, LOYALTY_DB_URL, or embedded)")
    parser.add_argument("--out", type=Path, default=project_root() / "bench" / "results" /
                        "delivery-property-latest.json")
    args = parser.parse_args(argv)
    if args.replay:
        seed, _, index = args.replay.partition(":")
        args.seed, args.start, args.schedules, args.out = int(seed), int(index), 1, None
    logging.basicConfig(level=logging.ERROR)
    with _server(args.dsn) as server, _fresh_database(server) as dsn, \
            Progress("delivery property", total=args.schedules, unit="schedules") as progress:
        summary = run(args.schedules, args.seed, dsn=dsn, start=args.start, progress=progress)
    _print(summary, args.out)
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
