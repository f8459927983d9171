"""The sandbox over real HTTP: MoEngage's documented behaviour plus the inspection API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import orjson
import pytest
import requests

from loyalty_moengage_devtools.sandbox.server import SandboxServer

from tests.loyalty_moengage_devtools.sandbox.conftest import KEY, WS  # noqa: E402


def post(sb, path, body, *, auth=(WS, KEY), content_type="application/json", appkey=WS, dc="03"):
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if appkey:
        headers["MOE-APPKEY"] = appkey
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(f"{sb.url}/dc/{dc}{path}", data=data, headers=headers, auth=auth, timeout=10)


def transition(*elements):
    return {"type": "transition", "elements": list(elements)}


def ev(customer_id="REL-1", **action):
    return {"type": "event", "customer_id": customer_id,
            "actions": [{"action": "loyalty_points_earned", "attributes": {"points": 5},
                         "current_time": "2026-01-01T00:00:00Z", "user_timezone_offset": 19800, **action}]}


def test_accepts_and_stores_events_and_users(sb):
    r = post(sb, f"/v1/transition/{WS}", transition(
        {"type": "customer", "customer_id": "REL-1", "attributes": {"tier": "Gold"}}, ev("REL-1")))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "success" and body["request_id"]
    assert r.headers["x-ratelimit-limit"] == "60000"
    [stored] = sb.state.events(WS, customer_id="REL-1")
    assert stored["action"] == "loyalty_points_earned" and stored["user_timezone_offset"] == 19800
    assert stored["request_id"] == body["request_id"] and stored["current_time"] == "2026-01-01T00:00:00Z"
    assert sb.state.users(WS) == {"REL-1": {"tier": "Gold"}}


@pytest.mark.parametrize(("kwargs", "status", "message"), [
    ({"auth": None}, 401, "Authentication Header Required"),
    ({"auth": (WS, "wrong")}, 401, "App Secret key mismatch"),
    ({"auth": ("NOPE", KEY), "appkey": "NOPE"}, 401, "Invalid APP_ID"),
    ({"dc": "01"}, 401, "Invalid APP_ID used in Authentication Header"),
    ({"appkey": "OTHER"}, 401, "MOE_APPKEY doesn't match"),
    ({"content_type": None}, 400, "Content-Type Header is required"),
    ({"content_type": "text/plain"}, 415, "Unsupported Media Type"),
])
def test_request_checks(sb, kwargs, status, message):
    r = post(sb, f"/v1/transition/{WS}", transition(ev()), **kwargs)
    assert r.status_code == status
    assert r.json()["status"] == "fail" and message in r.json()["error"]["message"]
    assert r.json()["error"]["request_id"]
    assert sb.state.events(WS) == []


def test_path_and_auth_mismatch_is_409(sb):
    sb.add_workspace("OTHER_WS", "other-key", "03")
    r = post(sb, "/v1/transition/OTHER_WS", transition(ev()))
    assert r.status_code == 409 and "App key mismatch" in r.json()["error"]["message"]


def test_size_limits(sb):
    def padded(size, kind="transition"):
        base = transition(ev()) if kind == "transition" else ev()
        base["pad"] = ""
        raw = orjson.dumps(base)
        base["pad"] = "x" * (size - len(raw))
        out = orjson.dumps(base)
        assert len(out) == size
        return out

    assert post(sb, f"/v1/transition/{WS}", padded(100_000)).status_code == 200
    r = post(sb, f"/v1/transition/{WS}", padded(100_001))
    assert r.status_code == 413 and "100 KB" in r.json()["error"]["message"]
    assert post(sb, f"/v1/event/{WS}", padded(128_000, "event")).status_code == 200
    assert post(sb, f"/v1/event/{WS}", padded(128_001, "event")).status_code == 413


def test_malformed_and_empty_bodies(sb):
    assert post(sb, f"/v1/transition/{WS}", b"{nope").status_code == 400
    r = post(sb, f"/v1/transition/{WS}", transition())
    assert r.status_code == 400 and "elements cannot be empty" in r.json()["error"]["message"]
    r = post(sb, f"/v1/customer/{WS}", {"type": "customer"})
    assert r.status_code == 400 and r.json()["error"]["attribute"] == "customer_id"


def test_bulk_answers_200_and_records_every_drop(sb):
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    r = post(sb, f"/v1/transition/{WS}", transition(
        {"type": "Customer", "customer_id": "REL-2"},
        {"type": "customer", "customer_id": "null"},
        {"type": "customer", "customer_id": "REL-3", "attributes": {"id": 1, "moe_custom": 2, "ok": 3}},
        ev("REL-4", current_time=future),
        ev("REL-5", user_timezone_offset=54001),
        ev("REL-6", action="points earned"),
        {"type": "event", "customer_id": "REL-7"},
        ev("REL-8", user_timezone_offset=-54000),
    ))
    assert r.status_code == 200
    reasons = [(d["index"], d["kind"], d["reason"]) for d in sb.state.drops(WS)]
    text = " | ".join(reason for _, _, reason in reasons)
    assert "must be lowercase" in text and "disallowed value" in text
    assert "'id' is blocked" in text and "reserved moe_ prefix" in text
    assert "in the future" in text and "outside -54000..54000" in text
    assert "contains a space" in text and "actions is not found" in text
    assert {i for i, _, _ in reasons} == {0, 1, 2, 3, 4, 5, 6}
    assert all(d["request_id"] == r.json()["request_id"] for d in sb.state.drops(WS))
    assert sb.state.users(WS)["REL-3"] == {"ok": 3}
    assert [e["customer_id"] for e in sb.state.events(WS)] == ["REL-8"]


def test_update_existing_only_and_unknown_users(sb):
    sb.seed_users(WS, ["REL-OLD"])
    post(sb, f"/v1/transition/{WS}", transition(
        {"type": "customer", "customer_id": "REL-OLD", "update_existing_only": True, "attributes": {"a": 1}},
        {"type": "customer", "customer_id": "REL-NEW", "update_existing_only": True, "attributes": {"a": 1}},
        ev("REL-GHOST")))
    users = sb.state.users(WS)
    assert users["REL-OLD"] == {"a": 1} and "REL-NEW" not in users
    assert sb.state.user_origins(WS)["REL-GHOST"] == "event", "events for unknown users create a profile"
    sb.add_workspace("WS_STRICT", "strict-key", "03", create_unknown_users_on_event=False)
    post(sb, "/v1/transition/WS_STRICT", transition(ev("REL-GHOST")), auth=("WS_STRICT", "strict-key"),
         appkey="WS_STRICT")
    assert sb.state.users("WS_STRICT") == {} and sb.state.events("WS_STRICT") == []
    assert "does not exist" in sb.state.drops("WS_STRICT")[0]["reason"]


def test_budget_429_with_ratelimit_headers(sb):
    sb.add_workspace("WS_BUDGET", "budget-key", "03", users_per_minute=600, window_seconds=1.0)  # 10 per window
    users = [{"type": "customer", "customer_id": f"REL-{i}"} for i in range(6)]

    def send():
        return post(sb, "/v1/transition/WS_BUDGET", transition(*users), auth=("WS_BUDGET", "budget-key"),
                    appkey="WS_BUDGET")

    first = send()
    if first.headers["x-ratelimit-remaining"] != "4":  # crossed a window edge between roll and send
        first = send()
    assert first.status_code == 200 and first.headers["x-ratelimit-limit"] == "10"
    second = send()
    if second.status_code == 200:  # the window rolled in between; the next one must be refused
        second = send()
    assert second.status_code == 429
    assert second.headers["x-ratelimit-remaining"] == "4"
    assert 0 <= float(second.headers["x-ratelimit-reset"]) <= 1.0
    time.sleep(float(second.headers["x-ratelimit-reset"]) + 0.01)
    assert send().status_code == 200


def test_faults_scripted_and_random(sb):
    sb.fail_next(503, "drop", "drop_after_body")
    assert post(sb, f"/v1/transition/{WS}", transition(ev())).status_code == 503
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            post(sb, f"/v1/transition/{WS}", transition(ev()))
    assert len(sb.state.events(WS)) == 1, "drop_after_body processes the request, then hangs up"
    assert post(sb, f"/v1/transition/{WS}", transition(ev())).status_code == 200
    sb.set_faults(error_rate=0.5, seed=1)
    statuses = [post(sb, f"/v1/transition/{WS}", transition(ev())).status_code for _ in range(40)]
    assert 8 <= sum(s >= 500 for s in statuses) <= 32 and set(statuses) <= {200, 500, 502, 503}
    sb.set_faults(latency=0.2)
    started = time.monotonic()
    post(sb, f"/v1/transition/{WS}", transition(ev()))
    assert time.monotonic() - started >= 0.2


def test_authentication_endpoint(sb):
    body = {"app_id": WS, "app_secret": KEY, "source": "test", "region": "03"}
    r = post(sb, "/v1/integrations/authentication", body)
    assert r.status_code == 200 and r.json()["app_name"] == WS
    r = post(sb, "/v1/integrations/authentication", body, dc="02")
    assert r.status_code == 401 and "Invalid APP_ID" in r.json()["error"]["message"]
    r = post(sb, "/v1/integrations/authentication", {**body, "app_secret": "nope"}, auth=None)
    assert r.status_code == 401 and "App Secret key mismatch" in r.json()["error"]["message"]


def test_customers_export(sb):
    sb.seed_users(WS, ["REL-1"], {"tier": "Gold"})
    ids = [{"identifier_type": "customer_id", "identifier": c} for c in ("REL-1", "REL-404")]
    r = post(sb, f"/v1/customers/export?app_id={WS}", {"data": {"identifiers": ids}})
    data = r.json()["data"]
    assert data["users"] == [{"user_attributes": {"customer_id": "REL-1", "tier": "Gold"}}]
    assert data["users_not_found"] == [{"identifier_type": "customer_id", "identifier": "REL-404"}]
    r = post(sb, f"/v1/customers/export?app_id={WS}", {"data": {"identifiers": ids * 11}})
    assert r.status_code == 400 and "max limit allowed is 20" in r.json()["error"]["message"]


def test_inspection_api(sb):
    post(sb, f"/v1/transition/{WS}", transition(ev("REL-1"), {"type": "customer", "customer_id": "null"}))
    get = lambda path: requests.get(f"{sb.url}/sandbox{path}", timeout=5).json()  # noqa: E731
    assert get(f"/workspaces/{WS}/events?customer_id=REL-1")[0]["action"] == "loyalty_points_earned"
    assert get(f"/workspaces/{WS}/users")[0]["customer_id"] == "REL-1"
    assert "disallowed" in get(f"/workspaces/{WS}/drops")[0]["reason"]
    assert get(f"/workspaces/{WS}/counters")["events_accepted"] == 1
    assert get("/requests")[-1]["status"] == 200
    r = requests.post(f"{sb.url}/sandbox/workspaces", json={"workspace_id": "WS_API", "api_key": "k-api-1", "dc": "DC-02"},
                      timeout=5)
    assert r.status_code == 201 and r.json()["dc"] == "02"
    assert requests.post(f"{sb.url}/sandbox/workspaces/WS_API/seed", json={"customer_ids": ["A", "B"]},
                         timeout=5).json() == {"seeded": 2}
    assert requests.post(f"{sb.url}/sandbox/faults", json={"script": {"1": 502}}, timeout=5).json()["script"] == {"1": 502}
    requests.post(f"{sb.url}/sandbox/reset", json={}, timeout=5)
    assert get(f"/workspaces/{WS}/events") == [] and get("/faults")["script"] == {}


def test_count_only_mode_counts_and_checks_auth():
    with SandboxServer(port=0, count_only=True) as sb:
        sb.add_workspace(WS, KEY, "03")
        body = orjson.dumps(transition(ev("A"), ev("B"), {"type": "customer", "customer_id": "C"}))
        assert post(sb, f"/v1/transition/{WS}", body).status_code == 200
        assert post(sb, f"/v1/transition/{WS}", body, auth=(WS, "bad")).status_code == 401
        counters = sb.state.workspace_counters(WS)
        assert (counters["elements"], counters["users_counted"], counters["events_counted"]) == (3, 1, 2)
        assert counters["bytes"] == len(body) and sb.state.events(WS) == []


def test_cli_serves_the_default_workspace(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "loyalty_moengage_devtools.sandbox", "--port", str(port), "--dc", "DC-01"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line and "DEMO_WORKSPACE" in line and "DC-01" in line
        r = requests.post(f"http://127.0.0.1:{port}/v1/transition/DEMO_WORKSPACE", data=orjson.dumps(transition(ev())),
                          headers={"Content-Type": "application/json", "MOE-APPKEY": "DEMO_WORKSPACE"},
                          auth=("DEMO_WORKSPACE", "demo-data-api-key"), timeout=5)
        assert r.status_code == 200, "plain /v1 is the default data centre"
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


def test_unique_ids_per_request(sb):
    ids = {post(sb, f"/v1/transition/{WS}", transition(ev(f"R{uuid.uuid4().hex[:6]}"))).json()["request_id"]
           for _ in range(20)}
    assert len(ids) == 20
