"""The rude sandbox over real HTTP: errors after applying, late and out-of-order bulk writes,
partial application, erasure, and the validation of every switch."""

from __future__ import annotations

import time

import pytest
import requests

from loyalty_moengage_devtools.sandbox.rude import PARTIAL_REASON
from tests.loyalty_moengage_devtools.sandbox.test_server import KEY, WS, ev, post, transition

APPLIED = {500, 502, 503, 504, 408}


def customer(customer_id, **attributes):
    return {"type": "customer", "customer_id": customer_id, "attributes": attributes}


def export(sb, *customer_ids):
    """The Get User API: {customer_id: attributes} of the users found, and the ids not found."""
    ids = [{"identifier_type": "customer_id", "identifier": c} for c in customer_ids]
    r = post(sb, f"/v1/customers/export?app_id={WS}", {"data": {"identifiers": ids}})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    found = {u["user_attributes"]["customer_id"]: {k: v for k, v in u["user_attributes"].items() if k != "customer_id"}
             for u in data["users"]}
    return found, [u["identifier"] for u in data["users_not_found"]]


def faults(sb, doc):
    return requests.post(f"{sb.url}/sandbox/faults", json=doc, timeout=5)


def inspect(sb, path):
    r = requests.get(f"{sb.url}/sandbox{path}", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


# -- 1. errors after applying -------------------------------------------------------------------

@pytest.mark.parametrize("status", sorted(APPLIED))
def test_scripted_error_after_applying_applies_the_request(sb, status):
    sb.fail_next(f"applied:{status}")
    r = post(sb, f"/v1/transition/{WS}", transition(customer("REL-1", tier="Gold"), ev("REL-2")))
    assert r.status_code == status
    assert r.json()["error"]["type"] == "Injected fault" and "after applying" in r.json()["error"]["message"]
    assert sb.state.users(WS) == {"REL-1": {"tier": "Gold"}, "REL-2": {}}
    assert [e["customer_id"] for e in sb.state.events(WS)] == ["REL-2"]
    [entry] = sb.state.requests(WS)
    assert (entry["status"], entry["applied_status"], entry["fault"]) == (status, 200, f"applied:{status}")
    assert sb.state.drops(WS) == []


def test_scripted_drop_after_applying_per_endpoint(sb):
    r = faults(sb, {"script": {"2": "applied:drop", "3": "applied:504"}, "script_endpoint": "customer"})
    assert r.status_code == 200 and r.json()["script"] == {"2": "applied:drop", "3": "applied:504"}
    assert post(sb, f"/v1/transition/{WS}", transition(customer("BULK", a=1))).status_code == 200
    assert post(sb, f"/v1/customer/{WS}", customer("ONE", a=1)).status_code == 200
    with pytest.raises(requests.ConnectionError):
        post(sb, f"/v1/customer/{WS}", customer("TWO", a=2))
    assert post(sb, f"/v1/customer/{WS}", customer("THREE", a=3)).status_code == 504
    assert post(sb, f"/v1/customer/{WS}", customer("FOUR", a=4)).status_code == 200
    assert sb.state.users(WS) == {"BULK": {"a": 1}, "ONE": {"a": 1}, "TWO": {"a": 2}, "THREE": {"a": 3},
                                  "FOUR": {"a": 4}}
    statuses = [e["status"] for e in sb.state.requests(WS)]
    assert statuses == [200, 200, "dropped after processing (would have been 200)", 504, 200]


def test_random_errors_after_applying_lose_nothing(sb):
    r = faults(sb, {"applied_error_rate": 0.5, "applied_error_statuses": [503, 408, "drop"], "seed": 7})
    assert r.status_code == 200 and r.json()["applied_error_statuses"] == [503, 408, "drop"]
    outcomes = []
    for i in range(40):
        try:
            outcomes.append(post(sb, f"/v1/transition/{WS}", transition(customer(f"REL-{i}", n=i), ev(f"REL-{i}")))
                            .status_code)
        except requests.ConnectionError:
            outcomes.append("drop")
    errors = [o for o in outcomes if o != 200]
    assert 8 <= len(errors) <= 32 and set(errors) <= {503, 408, "drop"} and len(set(errors)) >= 2
    assert sb.state.users(WS) == {f"REL-{i}": {"n": i} for i in range(40)}, "every request was applied"
    assert len(sb.state.events(WS)) == 40
    faulted = [e for e in sb.state.requests(WS) if e["fault"]]
    assert len(faulted) == len(errors) and all(str(e["fault"]).startswith("applied:") for e in faulted)
    assert all(e.get("applied_status") == 200 for e in faulted if e["fault"] != "applied:drop")


# -- 2. late, out-of-order visibility of bulk writes -------------------------------------------

def test_bulk_writes_show_late_and_a_later_single_write_first(sb):
    sb.seed_users(WS, ["REL-A"], {"tier": "Bronze"})
    assert faults(sb, {"bulk_visibility_delay": [1.0, 1.5]}).json()["bulk_visibility_delay"] == [1.0, 1.5]
    started = time.monotonic()
    assert post(sb, f"/v1/transition/{WS}", transition(customer("REL-A", tier="Gold"),
                                                       customer("REL-NEW", tier="Silver"))).status_code == 200
    with sb.state.lock:
        delays = [due - time.time() for due, *_ in sb.state.workspace(WS).deferred]
    assert len(delays) == 2 and all(0.5 < d <= 1.5 for d in delays)
    assert post(sb, f"/v1/customer/{WS}", customer("REL-A", tier="Platinum", points=5)).status_code == 200
    found, missing = export(sb, "REL-A", "REL-NEW")
    assert time.monotonic() - started < 1.0, "the machine was too slow for this check"
    assert found == {"REL-A": {"tier": "Platinum", "points": 5}, "REL-NEW": {}} and missing == []
    time.sleep(max(0.0, 1.6 - (time.monotonic() - started)))
    found, _ = export(sb, "REL-A", "REL-NEW")
    assert found == {"REL-A": {"tier": "Gold", "points": 5}, "REL-NEW": {"tier": "Silver"}}, \
        "the earlier bulk write lands after the later single write"
    assert sb.profile_stats(WS)["profiles_created"] == 1


def test_without_the_switch_bulk_writes_show_at_once(sb):
    assert faults(sb, {}).json()["bulk_visibility_delay"] is None
    post(sb, f"/v1/transition/{WS}", transition(customer("REL-A", tier="Gold")))
    assert export(sb, "REL-A")[0] == {"REL-A": {"tier": "Gold"}}


# -- 3. partial application ------------------------------------------------------------------

def test_partial_application_loses_a_share_silently(sb):
    sb.set_faults(partial_fraction=0.5, seed=3)
    elements = [customer(f"REL-{i}", n=i) for i in range(6)] + [ev(f"EV-{i}") for i in range(4)]
    r = post(sb, f"/v1/transition/{WS}", transition(*elements))
    assert r.status_code == 200 and r.json()["status"] == "success"
    drops = sb.state.drops(WS)
    assert len(drops) == 5 and all(d["reason"] == PARTIAL_REASON and d["fault"] is True for d in drops)
    assert all(d["request_id"] == r.json()["request_id"] and d["kind"] == "element" for d in drops)
    lost = {d["customer_id"] for d in drops}
    assert lost == {elements[d["index"]]["customer_id"] for d in drops}
    stored = set(sb.state.users(WS)) | {e["customer_id"] for e in sb.state.events(WS)}
    assert stored == {e["customer_id"] for e in elements} - lost and len(stored) == 5
    counters = inspect(sb, f"/workspaces/{WS}/counters")
    assert (counters["elements_dropped_by_fault"], counters["elements_dropped"], counters["profiles_created"]) == (5, 5, 5)
    assert sb.state.requests(WS)[-1]["partial"] == 0.5
    assert post(sb, f"/v1/customer/{WS}", customer("SINGLE", a=1)).status_code == 200
    assert "SINGLE" in sb.state.users(WS) and len(sb.state.drops(WS)) == 5, "single writes are whole"


def test_scripted_partial_hits_only_its_request(sb):
    sb.set_faults(script={2: "partial:0.3"}, script_endpoint="transition")
    for batch in range(3):
        post(sb, f"/v1/transition/{WS}", transition(*[customer(f"B{batch}-{i}") for i in range(10)]))
    drops = sb.state.drops(WS)
    assert len(drops) == 3 and {d["customer_id"][:2] for d in drops} == {"B1"}
    assert len(sb.state.users(WS)) == 27
    sb.set_faults(partial_fraction=0.5, partial_rate=0.0)
    post(sb, f"/v1/transition/{WS}", transition(*[customer(f"C-{i}") for i in range(10)]))
    assert len(sb.state.users(WS)) == 37, "partial_rate 0 hits no request"


# -- 4. erasure ------------------------------------------------------------------------------

def test_erased_users_are_not_found_and_come_back_as_new_profiles(sb):
    sb.seed_users(WS, ["A", "B", "C"], {"tier": "Gold"})
    r = requests.post(f"{sb.url}/sandbox/erase", json={"customer_ids": ["A", "B", "ZZ"]}, timeout=5)
    assert r.status_code == 200 and r.json() == {"erased": {WS: ["A", "B"]}, "not_found": ["ZZ"]}
    assert export(sb, "A", "B", "C") == ({"C": {"tier": "Gold"}}, ["A", "B"])
    post(sb, f"/v1/transition/{WS}", transition(
        ev("A"),                                                           # recreates A
        {**customer("B", tier="Silver"), "update_existing_only": True},   # dropped: B is gone
        ev("NEW")))                                                        # a brand-new profile
    assert export(sb, "A", "B")[1] == ["B"]
    assert [d["customer_id"] for d in sb.state.drops(WS)] == ["B"]
    post(sb, f"/v1/customer/{WS}", customer("B", tier="Silver"))            # recreates B
    assert export(sb, "B")[0] == {"B": {"tier": "Silver"}}
    stats = inspect(sb, f"/workspaces/{WS}/profiles")
    assert (stats["profiles_created"], stats["created_by_events"], stats["created_by_customer"]) == (3, 2, 1)
    assert (stats["users_erased"], stats["deleted_recreated"]) == (2, 2)
    assert stats["recreated"] == {"A": 1, "B": 1} and stats["erased_ids"] == []
    assert stats["origins"] == {"seed": 1, "event": 2, "customer": 1}
    assert sb.state.user_origins(WS) == {"C": "seed", "A": "event", "NEW": "event", "B": "customer"}
    counters = sb.state.workspace_counters(WS)
    assert (counters["profiles_created"], counters["deleted_recreated"], counters["users_erased"]) == (3, 2, 2)
    sb.erase(WS, ["A"])
    post(sb, f"/v1/event/{WS}", ev("A"))
    assert sb.profile_stats(WS)["recreated"] == {"A": 2, "B": 1} and sb.profile_stats(WS)["deleted_recreated"] == 3


def test_erasure_discards_writes_not_yet_visible(sb):
    sb.seed_users(WS, ["A"])
    sb.set_faults(bulk_visibility_delay=[0.3, 0.3])
    post(sb, f"/v1/transition/{WS}", transition(customer("A", tier="Gold")))
    assert requests.post(f"{sb.url}/sandbox/workspaces/{WS}/erase", json={"customer_ids": ["A"]},
                         timeout=5).json()["erased"] == {WS: ["A"]}
    assert export(sb, "A") == ({}, ["A"])
    post(sb, f"/v1/event/{WS}", ev("A"))        # a new profile for the erased id, at once
    time.sleep(0.4)
    assert sb.state.users(WS) == {"A": {}}, "the old profile's pending write is gone with it"
    assert (sb.profile_stats(WS)["profiles_created"], sb.profile_stats(WS)["deleted_recreated"]) == (1, 1)


def test_erasure_fault_after_request_k(sb):
    sb.seed_users(WS, [f"S{i}" for i in range(6)])
    r = faults(sb, {"erasures": [{"after": 1, "customer_ids": ["S0"]},
                                 {"after": 2, "endpoint": "transition", "random": 2}], "seed": 5})
    assert r.status_code == 200
    assert r.json()["erasures"][1] == {"after": 2, "endpoint": "transition", "random": 2, "customer_ids": [],
                                       "workspace_id": None}
    post(sb, f"/v1/customer/{WS}", customer("S1", a=1))          # request 1: then S0 is erased
    assert export(sb, "S0")[1] == ["S0"] and len(sb.state.users(WS)) == 5   # request 2 (export)
    post(sb, f"/v1/transition/{WS}", transition(customer("S1", a=2)))     # 1st transition
    assert len(sb.state.users(WS)) == 5
    post(sb, f"/v1/transition/{WS}", transition(customer("S1", a=3)))     # 2nd: then two at random
    stats = sb.profile_stats(WS)
    assert len(sb.state.users(WS)) == 3 and stats["users_erased"] == 3
    assert [(e["by"], e["after_request"], len(e["customer_ids"])) for e in stats["erasures"]] == [
        ("fault", 1, 1), ("fault", 4, 2)]
    post(sb, f"/v1/transition/{WS}", transition(*[ev(cid) for cid in stats["erased_ids"]]))
    stats = sb.profile_stats(WS)
    assert (stats["profiles_created"], stats["deleted_recreated"], len(sb.state.users(WS))) == (3, 3, 6)
    assert [e["n"] for e in sb.state.requests(WS) if e.get("erased")] == [1, 4], "each erasure fires once"


# -- 5. describe, reset, validation ------------------------------------------------------------

def test_every_switch_is_described_and_reset(sb):
    doc = {"applied_error_rate": 0.2, "applied_error_statuses": [502, "drop"], "bulk_visibility_delay": [0.5, 2],
           "partial_fraction": 0.25, "partial_rate": 0.5,
           "erasures": [{"after": 3, "customer_ids": ["X"], "random": 0, "endpoint": "", "workspace_id": WS}]}
    described = faults(sb, doc).json()
    assert {k: described[k] for k in doc} == {**doc, "bulk_visibility_delay": [0.5, 2.0]}
    assert faults(sb, described).json() == described, "describe() round-trips"
    sb.seed_users(WS, ["X"])
    sb.erase(WS, ["X"])
    requests.post(f"{sb.url}/sandbox/reset", json={}, timeout=5)
    after = inspect(sb, "/faults")
    assert (after["applied_error_rate"], after["applied_error_statuses"], after["bulk_visibility_delay"],
            after["partial_fraction"], after["partial_rate"], after["erasures"]) == (
        0.0, [500, 502, 503, 504, 408, "drop"], None, 0.0, 1.0, [])
    assert inspect(sb, f"/workspaces/{WS}/profiles")["users_erased"] == 0


@pytest.mark.parametrize(("doc", "message"), [
    ({"rudeness": 1}, "unknown fault setting rudeness"),
    ({"applied_error_rate": 1.5}, "applied_error_rate must be a number 0.0..1.0"),
    ({"error_rate": 0.6, "applied_error_rate": 0.6}, "must add up to at most 1"),
    ({"applied_error_statuses": [418]}, "must be one of [500, 502, 503, 504, 408, 'drop']"),
    ({"applied_error_statuses": []}, "needs at least one"),
    ({"bulk_visibility_delay": [2, 1]}, "bulk_visibility_delay max must be a number >= 2.0"),
    ({"bulk_visibility_delay": [-1, 1]}, "bulk_visibility_delay min must be a number >= 0.0"),
    ({"bulk_visibility_delay": 3}, "must be null or [min, max] seconds"),
    ({"partial_fraction": -0.1}, "partial_fraction must be a number 0.0..1.0"),
    ({"partial_rate": 2}, "partial_rate must be a number 0.0..1.0"),
    ({"script": {"1": "explode"}}, "unknown fault action 'explode'"),
    ({"script": {"1": "applied:418"}}, "applied:STATUS must be one of"),
    ({"script": {"1": "partial:1.5"}}, "partial:FRACTION must be a number 0.0..1.0"),
    ({"script": {"0": 503}}, "counted from 1"),
    ({"erasures": [{"after": 0, "customer_ids": ["A"]}]}, "erasures[0].after must be a request number >= 1"),
    ({"erasures": [{"after": 1}]}, "erases nobody"),
    ({"erasures": [{"after": 1, "random": -1}]}, "random must be a whole number >= 0"),
    ({"erasures": [{"after": 1, "random": 1, "when": 2}]}, "unknown keys ['when']"),
    ({"erasures": [{"after": 1, "random": 1, "endpoint": "nope"}]}, "endpoint must be one of"),
    ({"endpoints": ["nope"]}, "unknown endpoint 'nope'"),
])
def test_bad_settings_are_refused_with_400(sb, doc, message):
    before = inspect(sb, "/faults")
    r = faults(sb, doc)
    assert r.status_code == 400 and message in r.text, r.text
    assert inspect(sb, "/faults") == before, "a refused setting changes nothing"


def test_python_setters_refuse_bad_settings(sb):
    with pytest.raises(TypeError):
        sb.set_faults(rudeness=1)
    with pytest.raises(ValueError, match="partial_fraction"):
        sb.set_faults(partial_fraction=2)
    with pytest.raises(ValueError, match="unknown fault action"):
        sb.fail_next("nope")


@pytest.mark.parametrize(("path", "doc", "status"), [
    ("/sandbox/erase", {}, 400),
    ("/sandbox/erase", {"customer_ids": "A"}, 400),
    ("/sandbox/erase", {"random": -1}, 400),
    ("/sandbox/erase", {"customer_ids": ["A"], "workspace_id": "NOPE"}, 404),
    ("/sandbox/workspaces/NOPE/erase", {"customer_ids": ["A"]}, 404),
])
def test_bad_erase_requests(sb, path, doc, status):
    sb.seed_users(WS, ["A"])
    assert requests.post(f"{sb.url}{path}", json=doc, timeout=5).status_code == status
    assert "A" in sb.state.users(WS)
