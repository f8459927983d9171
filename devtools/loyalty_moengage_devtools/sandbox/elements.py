"""How the accepted elements of a data request change a workspace: profiles, attributes, events, drops.

Kept apart from the HTTP layer (:mod:`~loyalty_moengage_devtools.sandbox.server`) so the rules of
what MoEngage keeps, and the rude faults that lose or delay part of it, read in one place.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from loyalty_moengage_devtools.sandbox import rude
from loyalty_moengage_devtools.sandbox.state import SandboxState, Workspace, apply_deferred, defer
from loyalty_moengage_devtools.sandbox.validation import Checked, StructuralError, check_element

Drop = Callable[..., None]


def apply_elements(state: SandboxState, ws: Workspace, elements: list[Any], request_id: str, endpoint: str,
                   partial: float = 0.0) -> None:
    """Store what MoEngage would keep of each element; ``partial`` (a rude fault) loses a share silently."""
    now = time.time()
    with state.lock:
        apply_deferred(ws, now)
        faults = state.faults
        lost = rude.pick_partial(faults, len(elements), partial)
        visible_after = rude.visibility_delay(faults, endpoint)
        counters = ws.counters
        counters["requests"] += 1
        counters["elements"] += len(elements)
        for index, element in enumerate(elements):
            drop = _dropper(ws, index, request_id, endpoint)
            if index in lost:
                drop("element", rude.PARTIAL_REASON, _customer_id(element), fault=True)
                counters["elements_dropped"] += 1
                counters["elements_dropped_by_fault"] += 1
                continue
            _apply_element(state, ws, element, now, drop, visible_after, request_id)


def _customer_id(element: Any) -> str | None:
    customer_id = element.get("customer_id") if isinstance(element, dict) else None
    return customer_id if isinstance(customer_id, str) else None


def _dropper(ws: Workspace, index: int, request_id: str, endpoint: str) -> Drop:
    """Records one element's drops with where they came from (call under the lock)."""
    def drop(kind: str, reason: str, customer_id: str | None, **extra: Any) -> None:
        ws.drops.append({"kind": kind, "reason": reason, "customer_id": customer_id, "index": index,
                         "request_id": request_id, "endpoint": endpoint, **extra})
    return drop


def _apply_element(state: SandboxState, ws: Workspace, element: Any, now: float, drop: Drop,
                   visible_after: Callable[[], float] | None, request_id: str) -> None:
    try:
        checked = check_element(element, now=now, known_events=ws.known_events,
                                known_attributes=ws.known_attributes, future_tolerance=state.future_tolerance)
    except StructuralError as exc:
        drop("element", str(exc), _customer_id(element))
        ws.counters["elements_dropped"] += 1
        return
    for item in checked.drops:
        drop(item.kind, item.reason, item.customer_id, action_index=item.action_index, name=item.name)
    if checked.rejected:
        ws.counters["elements_dropped"] += 1
    elif checked.type == "customer":
        _apply_customer(ws, checked, now, drop, visible_after)
    elif checked.type == "event":
        _apply_event(ws, checked, drop, request_id)
    else:
        ws.counters["devices"] += 1


def _apply_customer(ws: Workspace, checked: Checked, now: float, drop: Drop,
                    visible_after: Callable[[], float] | None) -> None:
    """Create or update the profile; the attributes show at once or after a delay (workspace or rude fault)."""
    customer_id = checked.customer_id
    assert customer_id is not None
    exists = customer_id in ws.users
    if checked.update_existing_only and not exists:
        drop("element", "update_existing_only is true and the user does not exist", customer_id)
        ws.counters["elements_dropped"] += 1
        return
    for name in checked.attributes:
        if name in ws.refused_attributes:
            drop("attribute", "this workspace refuses the attribute", customer_id, name=name)
    attributes = {k: v for k, v in checked.attributes.items() if k not in ws.refused_attributes}
    delay = visible_after() if visible_after else (ws.attribute_delay if exists else 0.0)
    if not exists:
        ws.create_profile(customer_id, "customer")
    if delay > 0:
        defer(ws, now + delay, customer_id, attributes)
    else:
        ws.users[customer_id].update(attributes)
    if exists:
        ws.counters["users_updated"] += 1
        if len(attributes) == 1:
            ws.counters[f"single_attribute_updates:{next(iter(attributes))}"] += 1


def _apply_event(ws: Workspace, checked: Checked, drop: Drop, request_id: str) -> None:
    """Store the actions; an unknown id gets a new profile unless the workspace says otherwise."""
    customer_id = checked.customer_id
    assert customer_id is not None
    if customer_id not in ws.users:
        if checked.update_existing_only and ws.honour_update_existing_only_on_events:
            drop("element", "update_existing_only is true and the user does not exist", customer_id)
            ws.counters["elements_dropped"] += 1
            return
        if not ws.create_unknown_users_on_event:
            drop("element", "the user does not exist and this workspace does not create users from events",
                 customer_id)
            ws.counters["elements_dropped"] += 1
            return
        if checked.actions:
            ws.create_profile(customer_id, "event")
    for action in checked.actions:
        ws.events.append((customer_id, action.action, action.attributes, action.current_time,
                          action.time, action.user_timezone_offset, request_id))
        if action.stamped:
            ws.counters["events_stamped_with_receive_time"] += 1
    ws.counters["events_accepted"] += len(checked.actions)
