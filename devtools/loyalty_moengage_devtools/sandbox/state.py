"""What the sandbox remembers: workspaces, users, events, drops, budgets, faults, request log.

All access goes through one lock: the server mutates state on its event-loop thread while
tests and the demo read it from theirs.
"""

from __future__ import annotations

import heapq
import math
import random
import string
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from loyalty_moengage_devtools.sandbox import rude

DEFAULT_BUDGET_PER_MINUTE = 60_000
EXPORT_USERS_PER_MINUTE = 1_000


@dataclass(slots=True)
class Budget:
    """Fixed-window counter, like MoEngage's per-minute limits (window length configurable for tests)."""

    per_minute: float | None
    window_seconds: float = 60.0
    window_start: float = 0.0
    used: int = 0

    @property
    def limit(self) -> int | None:
        if not self.per_minute:
            return None
        return max(1, int(self.per_minute * self.window_seconds / 60.0))

    def roll(self, now: float) -> None:
        start = math.floor(now / self.window_seconds) * self.window_seconds
        if start != self.window_start:
            self.window_start, self.used = start, 0

    def fits(self, n: int) -> bool:
        limit = self.limit
        return limit is None or n == 0 or self.used + n <= limit

    def reset_in(self, now: float) -> float:
        return max(0.0, self.window_start + self.window_seconds - now)


@dataclass(slots=True)
class Workspace:
    workspace_id: str
    api_key: str = field(repr=False)
    dc: str
    users_budget: Budget
    events_budget: Budget
    export_budget: Budget
    create_unknown_users_on_event: bool = True
    honour_update_existing_only_on_events: bool = False
    attribute_delay: float = 0.0          # seconds before an accepted attribute write is applied (visible)
    refused_attributes: frozenset[str] = frozenset()   # attribute names this workspace drops
    export_enabled: bool = True           # the Get User API (MoEngage enables it per workspace)
    deferred: list[tuple] = field(default_factory=list)  # heap of (apply at, seq, customer_id, attributes)
    deferred_seq: int = 0
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # customer_id -> seed/customer/event
    erased: set[str] = field(default_factory=set)          # deleted and not created again since
    recreated: Counter = field(default_factory=Counter)    # customer_id -> times created again after erasure
    erasures: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    drops: list[dict[str, Any]] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    known_events: set[str] = field(default_factory=set)
    known_attributes: set[str] = field(default_factory=set)

    def describe(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "dc": self.dc,
            "users_per_minute": self.users_budget.per_minute,
            "events_per_minute": self.events_budget.per_minute,
            "window_seconds": self.users_budget.window_seconds,
            "create_unknown_users_on_event": self.create_unknown_users_on_event,
            "attribute_delay": self.attribute_delay,
            "refused_attributes": sorted(self.refused_attributes),
            "export_enabled": self.export_enabled,
            "users": len(self.users),
            "events": len(self.events),
            "drops": len(self.drops),
        }

    def create_profile(self, customer_id: str, origin: str) -> None:
        """A profile MoEngage creates ("customer" element or "event"), counted exactly: an id erased
        earlier counts again in ``profiles_created`` and also in ``deleted_recreated``."""
        self.users[customer_id] = {}
        self.origins[customer_id] = origin
        self.counters["profiles_created"] += 1
        self.counters["users_created" if origin == "customer" else "users_created_by_events"] += 1
        if customer_id in self.erased:
            self.erased.discard(customer_id)
            self.recreated[customer_id] += 1
            self.counters["deleted_recreated"] += 1

    def erase(self, customer_ids: Any, *, by: str, after_request: int | None = None) -> list[str]:
        """Delete users as MoEngage does (profile, origin, writes not yet visible); returns those that existed.

        The event log stays: it is the sandbox's record of what arrived, not part of the profile.
        """
        erased = [cid for cid in dict.fromkeys(customer_ids) if cid in self.users]
        gone = set(erased)
        for cid in erased:
            del self.users[cid]
            self.origins.pop(cid, None)
        self.erased |= gone
        if gone and self.deferred:
            self.deferred = [item for item in self.deferred if item[2] not in gone]
            heapq.heapify(self.deferred)
        self.counters["users_erased"] += len(erased)
        self.erasures.append({"time": time.time(), "by": by, "after_request": after_request, "customer_ids": erased})
        return erased

    def profile_stats(self) -> dict[str, Any]:
        """Where the profiles came from and what erasure did to them (``/sandbox/workspaces/{id}/profiles``)."""
        counters = self.counters
        return {
            "users": len(self.users),
            "origins": dict(Counter(self.origins.values())),
            "profiles_created": counters["profiles_created"],
            "created_by_customer": counters["users_created"],
            "created_by_events": counters["users_created_by_events"],
            "users_erased": counters["users_erased"],
            "deleted_recreated": counters["deleted_recreated"],
            "erased_ids": sorted(self.erased),
            "recreated": dict(self.recreated),
            "erasures": list(self.erasures),
        }


EVENT_FIELDS = ("customer_id", "action", "attributes", "current_time", "time", "user_timezone_offset", "request_id")


@dataclass
class Faults:
    """Injected failures for data endpoints (transition, customer, event, export; not authentication).

    ``script`` maps the Nth data request (1-based, counted since start or reset) to an action:
    an HTTP status (500, 502, 503, 429, ...), ``"drop"`` (close before reading the body),
    ``"drop_after_body"`` (process the request, then close without answering) or
    ``"latency:SECONDS"`` or ``"fail200"`` (200 with ``"status": "fail"``). Rates apply to every other request, drawn from a seeded RNG.
    ``endpoints`` limits the rates to those endpoints (e.g. ``("transition",)``) and ``limit`` to
    that many injected faults in all; with ``script_endpoint`` the script counts only the requests
    to that endpoint (``{3: "latency:30"}``: the third bulk request hangs).

    The rude switches (errors after applying, late and out-of-order visibility of bulk writes,
    partial application, erasures) are described in :mod:`loyalty_moengage_devtools.sandbox.rude`.
    Every setting is validated: an unknown one is a TypeError, one out of range a ValueError.
    """

    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    latency: float = 0.0
    latency_jitter: float = 0.0
    drop_rate: float = 0.0
    drop_after_body_rate: float = 0.0
    script: dict[int, Any] = field(default_factory=dict)
    retry_after: float = 1.0  # x-ratelimit-reset sent with a scripted 429
    endpoints: tuple[str, ...] = ()
    limit: int | None = None
    script_endpoint: str = ""
    applied_error_rate: float = 0.0
    applied_error_statuses: tuple[int | str, ...] = rude.APPLIED_CHOICES
    bulk_visibility_delay: tuple[float, float] | None = None
    partial_fraction: float = 0.0
    partial_rate: float = 1.0
    erasures: list[dict[str, Any]] = field(default_factory=list)
    seen: Counter = field(default_factory=Counter)   # data requests decided, per endpoint
    seed: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    rude_rng: random.Random = field(default_factory=random.Random, repr=False)
    fired_erasures: set[int] = field(default_factory=set, repr=False)

    #: what ``POST /sandbox/faults`` may set
    SETTINGS = ("error_rate", "error_statuses", "latency", "latency_jitter", "drop_rate", "drop_after_body_rate",
                "script", "retry_after", "endpoints", "limit", "script_endpoint", "applied_error_rate",
                "applied_error_statuses", "bulk_visibility_delay", "partial_fraction", "partial_rate", "erasures",
                "seed")

    def __post_init__(self) -> None:
        try:
            self.script = {int(k): v for k, v in dict(self.script).items()}
            self.error_statuses = tuple(int(s) for s in self.error_statuses)
            self.endpoints = tuple(self.endpoints)
            self.applied_error_statuses = tuple(self.applied_error_statuses)
            self.erasures = list(self.erasures)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed fault setting: {exc}") from None
        rude.check(self)
        self._rng = random.Random(self.seed)
        self.rude_rng = random.Random(f"rude:{self.seed}")

    def decide(self, n: int, endpoint: str = "") -> tuple[Any, float]:
        """(action or None, added latency) for the Nth data request."""
        self.seen[endpoint] += 1
        if self.script_endpoint:
            n = self.seen[endpoint] if endpoint == self.script_endpoint else 0
        action, delay = self._decide(n, endpoint)
        if action is not None and self.limit is not None:
            if self.limit <= 0:
                return None, delay
            self.limit -= 1
        return action, delay

    def _decide(self, n: int, endpoint: str) -> tuple[Any, float]:
        rng = self._rng
        delay = self.latency + (rng.random() * self.latency_jitter if self.latency_jitter else 0.0)
        if n in self.script:
            action = self.script[n]
            if isinstance(action, str) and action.startswith("latency:"):
                return None, delay + float(action.split(":", 1)[1])
            return action, delay
        if self.endpoints and endpoint not in self.endpoints:
            return None, delay
        draw = rng.random()
        if draw < self.error_rate:
            return rng.choice(self.error_statuses), delay
        draw -= self.error_rate
        if draw < self.drop_rate:
            return "drop", delay
        draw -= self.drop_rate
        if draw < self.drop_after_body_rate:
            return "drop_after_body", delay
        draw -= self.drop_after_body_rate
        if draw < self.applied_error_rate:
            return rude.draw_applied(rng, self), delay
        return None, delay

    def describe(self) -> dict[str, Any]:
        return {
            "error_rate": self.error_rate,
            "error_statuses": list(self.error_statuses),
            "latency": self.latency,
            "latency_jitter": self.latency_jitter,
            "drop_rate": self.drop_rate,
            "drop_after_body_rate": self.drop_after_body_rate,
            "script": {str(k): v for k, v in self.script.items()},
            "retry_after": self.retry_after,
            "endpoints": list(self.endpoints),
            "limit": self.limit,
            "script_endpoint": self.script_endpoint,
            "applied_error_rate": self.applied_error_rate,
            "applied_error_statuses": list(self.applied_error_statuses),
            "bulk_visibility_delay": list(self.bulk_visibility_delay) if self.bulk_visibility_delay else None,
            "partial_fraction": self.partial_fraction,
            "partial_rate": self.partial_rate,
            "erasures": [dict(spec) for spec in self.erasures],
            "seed": self.seed,
        }


class SandboxState:
    """Everything the sandbox knows, thread-safe."""

    def __init__(self, *, count_only: bool = False, future_tolerance: float = 0.0, request_log_size: int = 100_000) -> None:
        self.lock = threading.RLock()
        self.count_only = count_only
        self.future_tolerance = future_tolerance
        self.workspaces: dict[str, Workspace] = {}
        self.faults = Faults()
        self.request_log: deque[dict[str, Any]] = deque(maxlen=request_log_size)
        self.data_requests = 0
        self.counters: Counter = Counter()
        self._ids = random.Random()

    # -- set-up -------------------------------------------------------------------------
    def add_workspace(
        self,
        workspace_id: str,
        api_key: str,
        dc: str = "03",
        *,
        users_per_minute: float | None = DEFAULT_BUDGET_PER_MINUTE,
        events_per_minute: float | None = DEFAULT_BUDGET_PER_MINUTE,
        export_users_per_minute: float | None = EXPORT_USERS_PER_MINUTE,
        window_seconds: float = 60.0,
        create_unknown_users_on_event: bool = True,
        honour_update_existing_only_on_events: bool = False,
        attribute_delay: float = 0.0,
        refused_attributes: Any = (),
        export_enabled: bool = True,
    ) -> Workspace:
        from loyalty_moengage.moengage.datacenters import parse_data_center

        workspace = Workspace(
            workspace_id=workspace_id,
            api_key=api_key,
            dc=parse_data_center(dc),
            users_budget=Budget(users_per_minute, window_seconds),
            events_budget=Budget(events_per_minute, window_seconds),
            export_budget=Budget(export_users_per_minute, window_seconds),
            create_unknown_users_on_event=create_unknown_users_on_event,
            honour_update_existing_only_on_events=honour_update_existing_only_on_events,
            attribute_delay=float(attribute_delay),
            refused_attributes=frozenset(refused_attributes),
            export_enabled=bool(export_enabled),
        )
        with self.lock:
            self.workspaces[workspace_id] = workspace
        return workspace

    def set_faults(self, **kwargs: Any) -> Faults:
        with self.lock:
            self.faults = Faults(**kwargs)
            return self.faults

    def fail_next(self, *actions: Any) -> None:
        """Script the next data requests, in order (e.g. ``fail_next(503, "applied:504")``)."""
        checked = [rude.check_action(action) for action in actions]
        with self.lock:
            for offset, action in enumerate(checked, start=1):
                self.faults.script[self.data_requests + offset] = action

    def reset(self, *, workspaces: bool = False) -> None:
        """Forget data, counters, faults and the request log (and the workspaces if asked)."""
        with self.lock:
            if workspaces:
                self.workspaces.clear()
            else:
                for ws in list(self.workspaces.values()):
                    self.add_workspace(
                        ws.workspace_id, ws.api_key, ws.dc,
                        users_per_minute=ws.users_budget.per_minute,
                        events_per_minute=ws.events_budget.per_minute,
                        export_users_per_minute=ws.export_budget.per_minute,
                        window_seconds=ws.users_budget.window_seconds,
                        create_unknown_users_on_event=ws.create_unknown_users_on_event,
                        honour_update_existing_only_on_events=ws.honour_update_existing_only_on_events,
                        attribute_delay=ws.attribute_delay,
                        refused_attributes=ws.refused_attributes,
                        export_enabled=ws.export_enabled,
                    )
            self.faults = Faults()
            self.request_log.clear()
            self.data_requests = 0
            self.counters.clear()

    def seed_users(self, workspace_id: str, customer_ids: Any, attributes: dict[str, Any] | None = None) -> int:
        with self.lock:
            ws = self.workspace(workspace_id)
            count = 0
            for customer_id in customer_ids:
                ws.users.setdefault(customer_id, {}).update(attributes or {})
                ws.origins.setdefault(customer_id, "seed")
                count += 1
            return count

    # -- access -------------------------------------------------------------------------
    def workspace(self, workspace_id: str) -> Workspace:
        try:
            return self.workspaces[workspace_id]
        except KeyError:
            raise KeyError(f"sandbox has no workspace {workspace_id!r}") from None

    def users(self, workspace_id: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            ws = self.workspace(workspace_id)
            apply_deferred(ws)
            return {cid: dict(attrs) for cid, attrs in ws.users.items()}

    def user_origins(self, workspace_id: str) -> dict[str, str]:
        with self.lock:
            return dict(self.workspace(workspace_id).origins)

    def events(self, workspace_id: str, customer_id: str | None = None, action: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            rows = list(self.workspace(workspace_id).events)
        return [
            dict(zip(EVENT_FIELDS, row, strict=True))
            for row in rows
            if (customer_id is None or row[0] == customer_id) and (action is None or row[1] == action)
        ]

    def drops(self, workspace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.workspace(workspace_id).drops)

    def requests(self, workspace_id: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            rows = list(self.request_log)
        return [r for r in rows if workspace_id is None or r.get("workspace_id") == workspace_id]

    def workspace_counters(self, workspace_id: str) -> dict[str, int]:
        with self.lock:
            ws = self.workspace(workspace_id)
            return {"profiles_created": 0, "deleted_recreated": 0, "users_erased": 0, **ws.counters,
                    "users": len(ws.users), "events_stored": len(ws.events), "drops": len(ws.drops)}

    def profile_stats(self, workspace_id: str) -> dict[str, Any]:
        with self.lock:
            return self.workspace(workspace_id).profile_stats()

    def erase(self, workspace_id: str | None, customer_ids: Any = (), *, random_count: int = 0, by: str = "api",
              after_request: int | None = None) -> dict[str, list[str]]:
        """Delete users from one workspace (or every one), plus ``random_count`` other existing users each;
        returns the ids erased per workspace. Random picks use the faults' seeded generator."""
        with self.lock:
            targets = [self.workspace(workspace_id)] if workspace_id else list(self.workspaces.values())
            erased: dict[str, list[str]] = {}
            for ws in targets:
                ids = list(customer_ids)
                if random_count:
                    pool = sorted(set(ws.users) - set(ids))
                    ids += self.faults.rude_rng.sample(pool, min(random_count, len(pool)))
                erased[ws.workspace_id] = ws.erase(ids, by=by, after_request=after_request)
            return erased

    def global_counters(self) -> dict[str, int]:
        with self.lock:
            return {**self.counters, "data_requests": self.data_requests}

    def new_request_id(self) -> str:
        return "".join(self._ids.choices(string.ascii_letters, k=8))


def now() -> float:
    return time.time()


def defer(ws: Workspace, due: float, customer_id: str, attributes: dict[str, Any]) -> None:
    """Queue an accepted attribute write until ``due``; writes land in due order, not arrival order."""
    ws.deferred_seq += 1
    heapq.heappush(ws.deferred, (due, ws.deferred_seq, customer_id, attributes))


def apply_deferred(ws: Workspace, at: float | None = None) -> None:
    """Apply the accepted attribute writes whose processing delay has passed (call under the lock).

    A write never creates a profile: erasure removes its user's pending writes, and one whose user
    is gone anyway (deleted by hand) is lost, as on MoEngage.
    """
    at = time.time() if at is None else at
    while ws.deferred and ws.deferred[0][0] <= at:
        _, _, customer_id, attributes = heapq.heappop(ws.deferred)
        user = ws.users.get(customer_id)
        if user is not None:
            user.update(attributes)
