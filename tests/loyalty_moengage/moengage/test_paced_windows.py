"""Paced sends against the sandbox's fixed 60 s windows, on virtual time: the budget is used to the
end (the night ends at records / budget) and no 429 comes back, with one task or several sharing it."""

from __future__ import annotations

import queue

import pytest

from loyalty_moengage_devtools.sandbox.server import SandboxServer

BUDGET = 6_000      # users/min
USERS = 20_000
BATCH = 230         # users per body, like a packed 100 KB body of member attributes


def _events_body(n: int, start: int) -> bytes:
    elements = ",".join(f'{{"type":"event","customer_id":"REL-{start + i}","actions":[{{"action":"loyalty_points_earned",'
                        f'"attributes":{{"points":{i}}},"current_time":"2026-11-22T14:05:09Z"}}]}}' for i in range(n))
    return f'{{"type":"transition","elements":[{elements}]}}'.encode()


def _body(n: int, start: int) -> bytes:
    elements = ",".join(f'{{"type":"customer","customer_id":"REL-{start + i}","update_existing_only":true,'
                        f'"attributes":{{"points_available":{i}}}}}' for i in range(n))
    return f'{{"type":"transition","elements":[{elements}]}}'.encode()


@pytest.fixture
def counting_sandbox(virtual_time):
    with SandboxServer(port=0, count_only=True) as server:
        yield server


@pytest.mark.parametrize("phase", [0.0, 17.0, 41.5, 59.5])
@pytest.mark.parametrize("tasks", [1, 2, 3])
@pytest.mark.parametrize("events", [0, 1_200])
def test_paced_night_ends_at_the_budget_floor_without_429(counting_sandbox, make_hook, virtual_time,
                                                          monkeypatch, phase, tasks, events):
    """Events batches first (as the outbox orders them), then users: while a task waits on its
    events bucket its users budget is banked, so the night takes max(users, events) / budget."""
    from loyalty_moengage_devtools.sandbox import server

    # where in MoEngage's minute the night starts
    monkeypatch.setattr(server, "time", virtual_time.as_time_module(epoch=1_800_000_000.0 + phase))
    sb = counting_sandbox
    sb.add_workspace("WS_PACED", "paced-key", "03", users_per_minute=BUDGET, events_per_minute=BUDGET)
    work: queue.Queue[bytes] = queue.Queue()
    for start in range(0, events, 200):
        work.put((_events_body(200, start), 0, 200))
    sent = 0
    while sent < USERS:
        n = min(BATCH, USERS - sent)
        work.put((_body(n, sent), n, 0))
        sent += n
    hooks = [make_hook("WS_PACED", "paced-key", base_url=sb.base_url_template, users_per_minute=BUDGET,
                       events_per_minute=BUDGET,
                       hook_kwargs={"share": 1 / tasks, "clock": virtual_time, "sleep": virtual_time.sleep,
                                    "preflight_before_send": False})
             for _ in range(tasks)]

    def slot(hook):
        def run():
            while True:
                try:
                    body, n, e = work.get_nowait()
                except queue.Empty:
                    return
                hook.send_transition(body, users=n, events=e)
        return run

    virtual_time.run_threads([slot(h) for h in hooks])
    counters = sb.state.workspace_counters("WS_PACED")
    assert counters["users_counted"] == USERS and counters["events_counted"] == events
    assert counters.get("throttled", 0) == 0
    floor = USERS / BUDGET * 60
    # the last body goes out once its tokens are reserved, so a little before the floor
    assert floor * 0.97 <= virtual_time() <= floor * 1.01, (virtual_time(), sum(h.stats.window_waits for h in hooks))
