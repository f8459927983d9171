"""A rude MoEngage: the fault settings that make the sandbox fail *after* it applied a request.

The polite faults of :class:`~loyalty_moengage_devtools.sandbox.state.Faults` fail before anything
is applied. A real MoEngage (and the proxies in front of it) is ruder (``moengage-facts.md``,
"What a rude MoEngage does"); these switches, set through ``POST /sandbox/faults`` like the others,
let tests and drills prove the sync copes:

``applied_error_rate`` / ``applied_error_statuses`` (default 0 / ``[500, 502, 503, 504, 408, "drop"]``)
    the request is applied exactly as a 200 would be, then answered with one of the statuses or the
    connection is dropped. Per request: script actions ``"applied:503"``, ``"applied:drop"``. The
    request log keeps what processing answered (``applied_status``); a request processing refused
    (401, 429, ...) was not applied and still gets the injected answer, as from a proxy.
``bulk_visibility_delay`` (default ``null``; ``[min, max]`` seconds)
    attributes written through ``/v1/transition`` reach the Get User API only after a random delay
    drawn per element; ``/v1/customer`` writes show at once, so a later single write can show
    before an earlier bulk write (and then be overwritten by it). A new profile shows at once, its
    attributes after the delay.
``partial_fraction`` / ``partial_rate`` (default 0 / 1)
    in a share ``partial_rate`` of bulk requests, ``partial_fraction`` of the elements (rounded, at
    least one) is silently not applied; the answer stays 200 and each lost element is a drop with
    reason :data:`PARTIAL_REASON`. Per request: script actions ``"partial:0.25"`` or ``"partial"``
    (``partial_fraction``, else half).
``erasures`` (default ``[]``)
    ``[{"after": 3, "customer_ids": [...], "random": 2, "endpoint": "transition", "workspace_id": ...}]``:
    after the 3rd data request (of ``endpoint`` when given) those users, and ``random`` other existing
    ones, are deleted from the request's workspace (or ``workspace_id``; every workspace when the
    request named none), as ``POST /sandbox/erase`` does, before that request is answered. A later
    event (or customer element without ``update_existing_only``) for an erased id creates a new
    profile: ``profiles_created`` and ``deleted_recreated`` count it (``GET /sandbox/workspaces/{id}/profiles``).

The random choices here use a generator of their own (seeded from ``seed``), so switching them on
leaves the draws of the polite faults unchanged.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from loyalty_moengage_devtools.sandbox.state import Faults

ENDPOINTS = ("transition", "customer", "event", "export")
APPLIED_STATUSES = (500, 502, 503, 504, 408)
APPLIED_CHOICES: tuple[int | str, ...] = (*APPLIED_STATUSES, "drop")
PARTIAL_REASON = "partial application (fault)"
ERASURE_KEYS = frozenset({"after", "endpoint", "customer_ids", "random", "workspace_id"})
_PLAIN_ACTIONS = frozenset({"drop", "drop_after_body", "fail200", "partial"})
_REQUEST_RATES = ("error_rate", "drop_rate", "drop_after_body_rate", "applied_error_rate")


def _number(name: str, value: Any, low: float, high: float = math.inf) -> float:
    """``value`` as a float within [low, high], or a ValueError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        bound = f"{low}..{high}" if high != math.inf else f">= {low}"
        raise ValueError(f"fault setting {name} must be a number {bound}, got {value!r}")
    return float(value)


def _applied_choice(value: Any, where: str) -> int | str:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or value not in APPLIED_CHOICES:
        raise ValueError(f"{where} must be one of {list(APPLIED_CHOICES)}, got {value!r}")
    return value


def check_action(action: Any) -> Any:
    """A script action, normalised, or a ValueError saying what is allowed."""
    if action is None:
        return None
    if isinstance(action, str) and action.isdigit():
        action = int(action)
    if isinstance(action, int) and not isinstance(action, bool):
        if not 100 <= action <= 599:
            raise ValueError(f"scripted status {action} is not an HTTP status (100..599)")
        return action
    if not isinstance(action, str):
        raise ValueError(f"unknown fault action {action!r}")
    if action in _PLAIN_ACTIONS:
        return action
    kind, _, arg = action.partition(":")
    try:
        if kind == "latency":
            _number("latency:SECONDS", float(arg), 0.0)
            return action
        if kind == "applied":
            return f"applied:{_applied_choice(arg, 'applied:STATUS')}"
        if kind == "partial":
            fraction = _number("partial:FRACTION", float(arg), 0.0, 1.0)
            if fraction <= 0:
                raise ValueError("the fraction must be above 0")
            return f"partial:{fraction}"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"fault action {action!r}: {exc}") from None
    raise ValueError(f"unknown fault action {action!r} (allowed: an HTTP status, drop, drop_after_body, fail200, "
                     "latency:SECONDS, applied:STATUS, applied:drop, partial, partial:FRACTION)")


def _check_erasure(spec: Any, position: int) -> dict[str, Any]:
    where = f"erasures[{position}]"
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be an object like {{\"after\": 3, \"customer_ids\": [\"A\"]}}")
    unknown = set(spec) - ERASURE_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)} (known: {sorted(ERASURE_KEYS)})")
    after = spec.get("after")
    if isinstance(after, bool) or not isinstance(after, int) or after < 1:
        raise ValueError(f"{where}.after must be a request number >= 1, got {after!r}")
    ids = spec.get("customer_ids", [])
    if not isinstance(ids, list) or not all(isinstance(c, str) and c for c in ids):
        raise ValueError(f"{where}.customer_ids must be a list of customer ids")
    count = spec.get("random", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"{where}.random must be a whole number >= 0, got {count!r}")
    if not ids and not count:
        raise ValueError(f"{where} erases nobody: give customer_ids or random")
    endpoint = spec.get("endpoint", "")
    if endpoint and endpoint not in ENDPOINTS:
        raise ValueError(f"{where}.endpoint must be one of {list(ENDPOINTS)}, got {endpoint!r}")
    workspace_id = spec.get("workspace_id")
    if workspace_id is not None and not isinstance(workspace_id, str):
        raise ValueError(f"{where}.workspace_id must be a string")
    return {"after": after, "customer_ids": list(ids), "random": count, "endpoint": endpoint,
            "workspace_id": workspace_id}


def check(faults: Faults) -> None:
    """Validate and normalise every setting in place (ValueError: the sandbox answers 400)."""
    for name in (*_REQUEST_RATES, "partial_fraction", "partial_rate"):
        setattr(faults, name, _number(name, getattr(faults, name), 0.0, 1.0))
    if sum(getattr(faults, name) for name in _REQUEST_RATES) > 1.0:
        raise ValueError(f"fault settings {', '.join(_REQUEST_RATES)} must add up to at most 1")
    for name in ("latency", "latency_jitter", "retry_after"):
        setattr(faults, name, _number(name, getattr(faults, name), 0.0))
    if not faults.error_statuses or not all(100 <= s <= 599 for s in faults.error_statuses):
        raise ValueError("fault setting error_statuses must be HTTP statuses (100..599)")
    faults.applied_error_statuses = tuple(
        _applied_choice(s, "applied_error_statuses items") for s in faults.applied_error_statuses)
    if not faults.applied_error_statuses:
        raise ValueError(f"fault setting applied_error_statuses needs at least one of {list(APPLIED_CHOICES)}")
    for endpoint in (*faults.endpoints, *([faults.script_endpoint] if faults.script_endpoint else [])):
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r} (known: {list(ENDPOINTS)})")
    if faults.limit is not None and (isinstance(faults.limit, bool) or not isinstance(faults.limit, int)
                                     or faults.limit < 0):
        raise ValueError(f"fault setting limit must be null or a whole number >= 0, got {faults.limit!r}")
    if any(n < 1 for n in faults.script):
        raise ValueError("script keys are request numbers, counted from 1")
    faults.script = {n: check_action(a) for n, a in faults.script.items()}
    faults.bulk_visibility_delay = _check_delay(faults.bulk_visibility_delay)
    faults.erasures = [_check_erasure(spec, i) for i, spec in enumerate(faults.erasures)]
    if isinstance(faults.seed, bool) or not isinstance(faults.seed, int):
        raise ValueError(f"fault setting seed must be a whole number, got {faults.seed!r}")


def _check_delay(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"fault setting bulk_visibility_delay must be null or [min, max] seconds, got {value!r}")
    low = _number("bulk_visibility_delay min", value[0], 0.0)
    high = _number("bulk_visibility_delay max", value[1], low)
    return low, high


def draw_applied(rng: random.Random, faults: Faults) -> str:
    """The random after-applying fault of one request, as a script action."""
    return f"applied:{rng.choice(faults.applied_error_statuses)}"


def after_applying(action: Any) -> int | str | None:
    """What replaces the real answer once the request was processed: a status, ``"drop"`` or None."""
    if action == "drop_after_body":
        return "drop"
    if isinstance(action, str) and action.startswith("applied:"):
        choice = action.split(":", 1)[1]
        return "drop" if choice == "drop" else int(choice)
    return None


def partial_share(faults: Faults, action: Any, endpoint: str) -> float:
    """Share of this bulk request's elements to lose silently (0: apply them all)."""
    if endpoint != "transition":
        return 0.0
    if isinstance(action, str) and action.startswith("partial"):
        _, _, arg = action.partition(":")
        return float(arg) if arg else (faults.partial_fraction or 0.5)
    if faults.partial_fraction and faults.rude_rng.random() < faults.partial_rate:
        return faults.partial_fraction
    return 0.0


def pick_partial(faults: Faults, count: int, share: float) -> set[int]:
    """Indices of the elements lost: ``share`` of ``count``, rounded, at least one."""
    if share <= 0 or count <= 0:
        return set()
    lost = min(count, max(1, math.floor(share * count + 0.5)))
    return set(faults.rude_rng.sample(range(count), lost))


def visibility_delay(faults: Faults, endpoint: str) -> Callable[[], float] | None:
    """Draws the delay before a bulk attribute write shows, or None when writes show as before."""
    if endpoint != "transition" or faults.bulk_visibility_delay is None:
        return None
    low, high = faults.bulk_visibility_delay
    rng = faults.rude_rng
    return lambda: rng.uniform(low, high)


def due_erasures(faults: Faults, number: int, endpoint: str, index: int) -> list[dict[str, Any]]:
    """The erasures that fire after data request ``number`` (``index``-th of its endpoint), each once."""
    due = []
    for position, spec in enumerate(faults.erasures):
        if position in faults.fired_erasures:
            continue
        count = (index if spec["endpoint"] == endpoint else None) if spec["endpoint"] else number
        if count == spec["after"]:
            faults.fired_erasures.add(position)
            due.append(spec)
    return due
