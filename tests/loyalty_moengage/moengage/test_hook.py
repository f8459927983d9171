"""MoEngageHook against the real sandbox over HTTP: no mocks of requests."""

from __future__ import annotations

import base64
import functools
import logging
import socket
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pytest
import requests

from loyalty_moengage.moengage.hook import (
    MoEngageAuthError,
    MoEngageConfigError,
    MoEngageHook,
    MoEngagePermanentError,
    MoEngageRateLimitError,
    MoEngageTransientError,
    MoEngageUncertainError,
)
from loyalty_moengage.moengage.packing import TRANSITION_MAX_BYTES, pack_spans

NOW_ISH = "2026-01-01T00:00:00Z"


def event(customer_id: str, n: int = 0) -> bytes:
    return orjson.dumps({"type": "event", "customer_id": customer_id, "actions": [
        {"action": "loyalty_points_earned", "attributes": {"points": n}, "current_time": NOW_ISH,
         "user_timezone_offset": 19800}]})


def user(customer_id: str, **attributes) -> bytes:
    return orjson.dumps({"type": "customer", "customer_id": customer_id, "attributes": attributes or {"tier": "Gold"}})


@dataclass(frozen=True)
class Batch:
    """One packed body and the users/events it carries, as the outbox stores them."""

    body: bytes
    users: int
    events: int


def pack(elements: list[bytes], kinds: list[str] | str, *,
         max_bytes: int = TRANSITION_MAX_BYTES) -> tuple[list[Batch], list[tuple[int, int]]]:
    kinds = [kinds] * len(elements) if isinstance(kinds, str) else kinds
    spans, oversize = pack_spans(pa.array([e.decode() for e in elements], pa.string()), max_bytes=max_bytes)
    return [Batch(s.body, kinds[s.start:s.stop].count("customer"), kinds[s.start:s.stop].count("event"))
            for s in spans], oversize


def one_event_body(customer_id: str = "REL-1") -> bytes:
    [batch], _ = pack([event(customer_id)], "event")
    return batch.body


def data_requests(sb, workspace_id: str) -> list[dict]:
    return [r for r in sb.state.requests(workspace_id) if r["endpoint"] != "authentication"]


# -- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["https://dashboard-03.moengage.com", "DC-03", "03", "dc03"])
def test_data_centre_forms_accepted(make_hook, workspace, host):
    hook = make_hook(*workspace, host=host, base_url="https://api-{dc}.moengage.com")
    assert hook.config.data_center == "03"
    assert hook.config.base_url == "https://api-03.moengage.com"


@pytest.mark.parametrize("host", ["07", "api-03", "mumbai", ""])
def test_bad_data_centre_rejected_listing_valid_values(make_hook, workspace, host):
    hook = make_hook(*workspace, host=host)
    with pytest.raises(MoEngageConfigError) as info:
        hook.config
    assert "01, 02, 03, 04, 05, 06, 101" in str(info.value)
    assert workspace[1] not in str(info.value)


def test_defaults_and_real_api_host(make_hook, workspace, monkeypatch):
    hook = make_hook(*workspace, host="DC-01")
    monkeypatch.setenv(f"AIRFLOW_CONN_{hook.moengage_conn_id.upper()}", orjson.dumps(
        {"conn_type": "moengage", "login": workspace[0], "password": workspace[1], "host": "DC-01"}).decode())
    cfg = hook.config
    assert cfg.base_url == "https://api-01.moengage.com"
    assert (cfg.users_per_minute, cfg.events_per_minute, cfg.timeout, cfg.pacing) == (60000, 60000, 30, True)


# -- preflight and data centres ---------------------------------------------------------------

def test_preflight_and_test_connection(sb, make_hook, workspace):
    hook = make_hook(*workspace)
    result = hook.preflight()
    assert result["status"] == "success" and result["data_center"] == "03" and result["request_id"]
    ok, message = hook.test_connection()
    assert ok and "DC-03" in message


def test_data_centre_mismatch_fails_loudly_before_sending(sb, make_hook):
    sb.add_workspace("WS_ON_DC01", "dc01-secret-key", "01")
    hook = make_hook("WS_ON_DC01", "dc01-secret-key", host="DC-03")
    with pytest.raises(MoEngageAuthError) as info:
        hook.send_transition(one_event_body(), users=0, events=1)
    text = str(info.value)
    assert "DC-03" in text and sb.url in text and "Invalid APP_ID" in text
    assert "Workspace ID" in text and "Data API key" in text and "data centre" in text
    assert "dc01-secret-key" not in text
    assert data_requests(sb, "WS_ON_DC01") == []
    ok, message = hook.test_connection()
    assert not ok and "DC-03" in message
    # the same credentials on the right data centre work
    assert make_hook("WS_ON_DC01", "dc01-secret-key", host="DC-01").preflight()["data_center"] == "01"


def test_wrong_key_names_cause_and_fix(sb, make_hook, workspace):
    hook = make_hook(workspace[0], "not-the-key-123")
    with pytest.raises(MoEngageAuthError) as info:
        hook.preflight()
    assert info.value.status == 401
    assert "App Secret key mismatch" in str(info.value)
    assert hook.moengage_conn_id in str(info.value)


# -- sending ----------------------------------------------------------------------------------

def test_send_transition_reuses_one_connection(sb, make_hook, workspace):
    hook = make_hook(*workspace)
    elements = [event(f"REL-{i}", i) for i in range(40)] + [user(f"REL-{i}") for i in range(10)]
    batches, oversize = pack(elements, ["event"] * 40 + ["customer"] * 10, max_bytes=2_000)
    assert len(batches) > 3 and not oversize
    results = [hook.send_transition(b.body, users=b.users, events=b.events) for b in batches]
    assert all(r.status == 200 and r.request_id and r.retries == 0 for r in results)
    assert len(sb.state.events(workspace[0])) == 40
    peers = {r["peer"] for r in sb.state.requests(workspace[0])}
    assert len(peers) == 1, "every request, preflight included, rides one keep-alive connection"
    assert hook.stats.requests == len(batches) + 1 and hook.stats.bytes_sent == sum(len(b.body) for b in batches)


def test_429_waits_for_reset_without_using_retries(sb, make_hook, workspace, virtual_time):
    sb.state.faults.retry_after = 0.2
    hook = make_hook(*workspace, hook_kwargs={"max_retries": 0, "clock": virtual_time, "sleep": virtual_time.sleep})
    hook.preflight()
    sb.fail_next(429, 429)
    started = virtual_time()
    result = hook.send_transition(one_event_body(), users=0, events=1)
    assert result.status == 200 and result.throttled == 2 and result.retries == 0 and result.attempts == 3
    assert virtual_time() - started >= 0.4
    assert len(result.request_ids) == 3 and all(result.request_ids)


def test_5xx_storm_then_success_on_lookups(sb, make_hook, workspace):
    """An idempotent request (a lookup) is retried through 5xx: asking again changes nothing."""
    hook = make_hook(*workspace, hook_kwargs={"max_retries": 5})
    hook.preflight()
    sb.seed_users(workspace[0], ["REL-1"])
    sb.fail_next(500, 502, 503, 500)
    assert hook.existing_customers(["REL-1"]) == {"REL-1"}
    assert hook.stats.retries == 4


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, "drop"])
def test_an_error_answer_after_moengage_applied_a_send_is_uncertain_and_never_resent(sb, make_hook, workspace,
                                                                                      status):
    """A proxy answers 5xx or 408 (or drops the connection) after MoEngage applied the body as readily
    as before it: resending the same bytes was a duplicate (27 events twice, the issue's recipe 1)."""
    hook = make_hook(*workspace, timeout=0.5, hook_kwargs={"max_retries": 5})
    hook.preflight()
    sb.fail_next(f"applied:{status}")
    with pytest.raises(MoEngageUncertainError) as info:
        hook.send_transition(one_event_body(), users=0, events=1)
    assert info.value.attempts == 1 and "may or may not" in str(info.value)
    assert len(sb.state.events(workspace[0])) == 1          # applied once, and never posted again
    assert hook.stats.requests - 1 == 1                     # the preflight and one POST


def test_5xx_past_retry_budget_is_transient_on_lookups(sb, make_hook, workspace):
    hook = make_hook(*workspace, hook_kwargs={"max_retries": 2})
    hook.preflight()
    sb.fail_next(503, 503, 503, 503)
    with pytest.raises(MoEngageTransientError) as info:
        hook.existing_customers(["REL-1"])
    assert info.value.status == 503 and info.value.attempts == 3 and info.value.request_id
    assert "3 attempts" in str(info.value)


@pytest.mark.parametrize(("status", "words"), [
    (400, "payload"), (401, "Workspace ID, the Data API key and the data centre"), (403, "allowlist"),
    (409, "single Workspace ID"), (413, "pack_spans"), (415, "application/json"), ("fail200", "reported a failure"),
])
def test_permanent_errors_never_retry(sb, make_hook, workspace, status, words):
    hook = make_hook(*workspace)
    hook.preflight()
    before = len(data_requests(sb, workspace[0]))
    sb.fail_next(status)
    with pytest.raises(MoEngagePermanentError) as info:
        hook.send_transition(one_event_body(), users=0, events=1)
    err = info.value
    assert err.status == (200 if status == "fail200" else status)
    assert err.request_id and err.attempts == 1 and err.cause and err.fix
    assert words in str(err)
    assert len(sb.state.requests()) and len(data_requests(sb, workspace[0])) in (before, before + 1)
    assert sb.state.data_requests == max(r.get("n", 0) for r in sb.state.requests())  # exactly one data request


def test_real_400_413_and_409_from_sandbox(sb, make_hook, workspace):
    hook = make_hook(*workspace)
    with pytest.raises(MoEngagePermanentError) as info:
        hook.send_transition(b'{"type":"transition","elements":[]}', users=0, events=0)
    assert info.value.status == 400 and "elements cannot be empty" in str(info.value)
    with pytest.raises(MoEngagePermanentError) as info:
        hook.send_transition(b"x" * 100_001, users=0, events=0)
    assert info.value.status is None and "not sent" in str(info.value)
    with pytest.raises(MoEngagePermanentError) as info:
        hook._send("/v1/transition/SOMEONE_ELSE", one_event_body(), users=0, events=1)
    assert info.value.status == 409


def test_uncertain_outcome_is_not_retried_by_default(sb, make_hook, workspace):
    hook = make_hook(*workspace)
    hook.preflight()
    sb.fail_next("drop_after_body")
    with pytest.raises(MoEngageUncertainError) as info:
        hook.send_transition(one_event_body(), users=0, events=1)
    assert "may or may not" in str(info.value) and info.value.attempts == 1
    assert len(sb.state.events(workspace[0])) == 1, "the sandbox processed it: a resend would duplicate"


def test_gateway_timeout_is_uncertain_not_retried(sb, make_hook, workspace):
    hook = make_hook(*workspace)
    hook.preflight()
    sb.fail_next(504)
    with pytest.raises(MoEngageUncertainError) as info:
        hook.send_transition(one_event_body(), users=0, events=1)
    assert info.value.status == 504 and info.value.attempts == 1


def test_uncertain_retried_when_allowed_duplicates(sb, make_hook, workspace):
    hook = make_hook(*workspace, hook_kwargs={"retry_uncertain": True})
    hook.preflight()
    sb.fail_next("drop_after_body", "drop")
    result = hook.send_transition(one_event_body(), users=0, events=1)
    assert result.retries == 2
    assert len(sb.state.events(workspace[0])) == 2


def test_read_timeout_is_uncertain(sb, make_hook, workspace):
    hook = make_hook(*workspace, timeout=0.3)
    hook.preflight()
    sb.fail_next("latency:1.0")
    with pytest.raises(MoEngageUncertainError):
        hook.send_transition(one_event_body(), users=0, events=1)


def test_connection_refused_is_retried_then_transient(make_hook, workspace):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook = make_hook(*workspace, base_url=f"http://127.0.0.1:{port}/dc/{{dc}}", hook_kwargs={"max_retries": 2})
    with pytest.raises(MoEngageTransientError) as info:
        hook.preflight()
    assert info.value.attempts == 3 and "DC-03" in str(info.value)
    hook = make_hook(*workspace, base_url=f"http://127.0.0.1:{port}", hook_kwargs={
        "max_retries": 2, "preflight_before_send": False})
    with pytest.raises(MoEngageTransientError) as info:
        hook.send_transition(one_event_body(), users=0, events=1)
    assert info.value.attempts == 3 and "could not connect" in str(info.value)


def test_single_user_and_event_endpoints(sb, make_hook, workspace):
    hook = make_hook(*workspace)
    assert hook.send_user({"type": "customer", "customer_id": "REL-9", "attributes": {"tier": "Gold"}}).status == 200
    assert hook.send_event(orjson.loads(event("REL-9"))).status == 200
    assert sb.state.users(workspace[0])["REL-9"] == {"tier": "Gold"}
    with pytest.raises(MoEngagePermanentError) as info:
        hook.send_user({"type": "customer", "attributes": {}})
    assert info.value.status == 400 and "customer_id" in str(info.value)


# -- pacing -----------------------------------------------------------------------------------

def test_pacing_under_a_tight_budget(sb, make_hook, virtual_time):
    sb.add_workspace("WS_TIGHT", "tight-key", "03", users_per_minute=6000, window_seconds=1.0)
    hook = make_hook("WS_TIGHT", "tight-key", users_per_minute=6000,  # 100 users/s, 100 per 1 s window
                     hook_kwargs={"clock": virtual_time, "sleep": virtual_time.sleep})
    hook.preflight()
    batches, _ = pack([user(f"REL-{i}") for i in range(300)], "customer", max_bytes=800)
    started = virtual_time()
    results = [hook.send_transition(b.body, users=b.users, events=b.events) for b in batches]
    elapsed = virtual_time() - started
    assert len(sb.state.users("WS_TIGHT")) == 300
    assert 1.8 <= elapsed <= 4.0, elapsed  # (300 - 100 burst) / 100 per s = 2 s
    assert sum(r.throttled for r in results) <= 3 and all(r.retries == 0 for r in results)


def test_two_tasks_share_the_budget(sb, make_hook, virtual_time):
    sb.add_workspace("WS_SHARED", "shared-key", "03", events_per_minute=12000, window_seconds=1.0)
    hooks = [make_hook("WS_SHARED", "shared-key", events_per_minute=12000,
                       hook_kwargs={"share": 0.5, "clock": virtual_time, "sleep": virtual_time.sleep})
             for _ in range(2)]
    batches, _ = pack([event(f"REL-{i}") for i in range(600)], "event", max_bytes=2_000)
    halves = [batches[0::2], batches[1::2]]
    results: list = []

    def run(hook, mine):
        hook.preflight()
        results.extend(hook.send_transition(b.body, users=b.users, events=b.events) for b in mine)

    started = virtual_time()
    virtual_time.run_threads([functools.partial(run, h, m) for h, m in zip(hooks, halves, strict=True)])
    elapsed = virtual_time() - started
    assert len(sb.state.events("WS_SHARED")) == 600
    assert 2.0 <= elapsed <= 4.5, elapsed  # (600 - 200 burst) / 200 per s = 2 s
    assert sum(r.throttled for r in results) <= 4


# -- secrets ----------------------------------------------------------------------------------

def test_secrets_absent_from_logs_errors_and_reprs(sb, make_hook, workspace, caplog, capsys):
    workspace_id, key = workspace
    token = base64.b64encode(f"{workspace_id}:{key}".encode()).decode()
    caplog.set_level(logging.DEBUG)
    hook = make_hook(workspace_id, key, timeout=0.3, hook_kwargs={"max_retries": 1})
    hook.preflight()
    sb.state.faults.retry_after = 0.05
    sb.fail_next(503, 429, "drop_after_body")
    errors: list[BaseException] = []
    for _ in range(2):
        try:
            hook.send_transition(one_event_body(), users=0, events=1)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    bad = make_hook(workspace_id, key + "x")
    try:
        bad.preflight()
    except Exception as exc:  # noqa: BLE001
        errors.append(exc)
    assert len(errors) == 3     # 503 and the dropped answer are uncertain sends; the wrong key
    out, err = capsys.readouterr()
    texts = [caplog.text, out, err, repr(hook), repr(hook.config), repr(hook.session.auth), str(vars(hook.config)
             if hasattr(hook.config, "__dict__") else ""), repr(hook.stats)]
    texts += [str(e) for e in errors] + [repr(e) for e in errors] + [repr(vars(e)) for e in errors]
    for text in texts:
        assert key not in text and token not in text
    from airflow.sdk._shared.secrets_masker import redact

    assert key not in str(redact(f"key={key} header=Basic {token}"))
    assert token not in str(redact(f"Authorization: Basic {token}"))


def test_registered_as_connection_type():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    hook = manager.hooks["moengage"]
    assert hook.hook_class_name == "loyalty_moengage.moengage.hook.MoEngageHook"
    assert hook.connection_testable and hook.hook_name == "MoEngage"
    behaviour = manager.field_behaviours["moengage"]
    assert behaviour["relabeling"] == {"login": "Workspace ID", "password": "Data API key", "host": "Data centre"}
    widgets = {k.rsplit("__", 1)[1]: v.field for k, v in manager.connection_form_widgets.items()
               if k.startswith("extra__moengage__")}
    assert {"base_url", "users_per_minute", "events_per_minute", "lookups_per_minute", "timeout", "pacing",
            "visibility_seconds"} <= set(widgets)
    assert widgets["users_per_minute"]["value"] == 60000
    assert widgets["lookups_per_minute"]["value"] == 1000
    assert MoEngageHook.conn_type == "moengage" and MoEngageHook.default_conn_name == "moengage_default"


def test_constructor_is_keyword_only_and_airflow_builds_it(sb, workspace, monkeypatch):
    from airflow.models.connection import Connection

    with pytest.raises(TypeError):
        MoEngageHook("moengage_default")  # type: ignore[misc]
    conn = Connection(conn_id="moe_kw_only", conn_type="moengage", login=workspace[0], password=workspace[1],
                      host="DC-03", extra=orjson.dumps({"base_url": sb.base_url_template}).decode())
    hook = conn.get_hook()  # what the Test button does: hook_class(moengage_conn_id=...)
    assert isinstance(hook, MoEngageHook) and hook.moengage_conn_id == "moe_kw_only"


# -- Get User API lookups: rate limits as on the send path ------------------------------------

def test_lookups_wait_for_the_export_budget_to_reset(sb, make_hook, virtual_time):
    # 1,200 users/min in 1 s windows: 20 identifiers (one request) per window; the hook paces at 100/s
    sb.add_workspace("WS_LOOKUPS", "lookup-key", "03", export_users_per_minute=1200, window_seconds=1.0)
    sb.seed_users("WS_LOOKUPS", [f"REL-{i}" for i in range(0, 100, 2)])
    hook = make_hook("WS_LOOKUPS", "lookup-key", lookups_per_minute=6000, hook_kwargs={
        "max_retries": 0, "clock": virtual_time, "sleep": virtual_time.sleep})
    started = virtual_time()
    found = hook.existing_customers([f"REL-{i}" for i in range(100)])
    elapsed = virtual_time() - started
    assert found == {f"REL-{i}" for i in range(0, 100, 2)}
    # five requests, one per window: x-ratelimit-remaining says each next one does not fit, so the
    # hook waits for x-ratelimit-reset before sending instead of being answered 429
    assert hook.stats.throttled == 0 and hook.stats.retries == 0 and hook.stats.requests == 5
    assert hook.stats.window_waits == 4
    assert 4.0 <= elapsed < 4.6, elapsed


def test_lookup_429_storm_speaks_of_the_rate_limit(sb, make_hook, workspace, virtual_time):
    sb.state.faults.retry_after = 0.5
    hook = make_hook(*workspace, lookups_per_minute=900, hook_kwargs={
        "max_retries": 0, "max_throttled": 3, "clock": virtual_time, "sleep": virtual_time.sleep})
    sb.fail_next(429, 429, 429, 429)
    started = virtual_time()
    with pytest.raises(MoEngageRateLimitError) as info:
        hook.existing_customers(["REL-1"])
    elapsed = virtual_time() - started
    err = info.value
    text = str(err)
    assert err.status == 429 and err.attempts == 4 and err.request_id
    assert "429 (rate limit)" in text and "Get User API" in text and "4 times in a row" in text
    assert "lookups_per_minute" in text and "900" in text and hook.moengage_conn_id in text
    assert "network" not in text
    # three waits of x-ratelimit-reset (0.5 s), not the 1, 2, 4 s of a network back-off
    assert 1.5 <= elapsed < 1.8, elapsed


def test_lookup_429s_do_not_use_up_retries(sb, make_hook, workspace, virtual_time):
    sb.state.faults.retry_after = 0.2
    sb.seed_users(workspace[0], ["REL-1"])
    hook = make_hook(*workspace, hook_kwargs={"max_retries": 0, "clock": virtual_time, "sleep": virtual_time.sleep})
    sb.fail_next(429, 429, 429, 429, 429, 429)
    assert hook.existing_customers(["REL-1", "REL-2"]) == {"REL-1"}
    assert hook.stats.throttled == 6 and hook.stats.requests == 7
    sb.fail_next(503)
    with pytest.raises(MoEngageTransientError) as info:  # a 5xx is a retry, and max_retries=0
        hook.existing_customers(["REL-1"])
    assert not isinstance(info.value, MoEngageRateLimitError) and "status.moengage.com" in str(info.value)
    retrying = make_hook(*workspace, hook_kwargs={"max_retries": 1, "clock": virtual_time, "sleep": virtual_time.sleep})
    sb.fail_next(429, 503, 429)
    assert retrying.existing_customers(["REL-1"]) == {"REL-1"}
    assert (retrying.stats.throttled, retrying.stats.retries, retrying.stats.requests) == (2, 1, 4)


def test_form_has_every_extra_the_connection_reads():
    import inspect
    import re

    from loyalty_moengage.moengage import connection
    from loyalty_moengage.moengage.provider import get_provider_info

    read = set(re.findall(r'extra\.get\("(\w+)"', inspect.getsource(connection.config_from_connection)))
    assert read == {"base_url", "users_per_minute", "events_per_minute", "lookups_per_minute", "timeout", "pacing",
            "visibility_seconds"}
    [conn_type] = get_provider_info()["connection-types"]
    assert set(conn_type["conn-fields"]) == read


# -- the Test button --------------------------------------------------------------------------

def _airflow_test_button(monkeypatch, **fields):
    """What POST /api/v2/connections/test does: the form under a random transient conn_id."""
    from airflow.models.connection import Connection
    from airflow.utils.strings import get_random_string

    conn = Connection(conn_id=get_random_string(), conn_type="moengage", **fields)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn.conn_id.upper()}", conn.get_uri())
    ok, message = conn.test_connection()
    return conn.conn_id, ok, message


def test_test_button_names_this_connection_not_the_transient_id(sb, workspace, monkeypatch):
    extra = orjson.dumps({"base_url": sb.base_url_template}).decode()
    transient, ok, message = _airflow_test_button(
        monkeypatch, login=workspace[0], password="not-the-key", host="DC-03", extra=extra)
    assert not ok and "App Secret key mismatch" in message
    assert transient not in message and "in this connection" in message and "not-the-key" not in message
    transient, ok, message = _airflow_test_button(monkeypatch, login=workspace[0], password="", host="DC-03", extra=extra)
    assert not ok and message == "No Data API key (password) in this connection."
    transient, ok, message = _airflow_test_button(
        monkeypatch, login=workspace[0], password=workspace[1], host="DC-03", extra=extra)
    assert ok and "DC-03" in message, message


def test_test_connection_leaves_task_messages_naming_the_connection(sb, make_hook, workspace):
    hook = make_hook(workspace[0], "not-the-key")
    ok, message = hook.test_connection()
    assert not ok and hook.moengage_conn_id not in message and "this connection" in message
    with pytest.raises(MoEngageAuthError) as info:  # the same hook in a task names its connection
        hook.preflight()
    assert repr(hook.moengage_conn_id) in str(info.value)


class _BlackHole(requests.adapters.HTTPAdapter):
    """A host that never answers a SYN: every connect waits its whole timeout (on the virtual clock)."""

    def __init__(self, clock) -> None:
        super().__init__()
        self.clock = clock
        self.timeouts: list[tuple[float, float]] = []

    def send(self, request, timeout=None, **kwargs):
        connect, read = timeout
        self.timeouts.append((connect, read))
        self.clock.sleep(connect)
        raise requests.exceptions.ConnectTimeout(f"Connection to {request.url} timed out. (connect timeout={connect})")


def test_test_button_gives_up_on_an_unreachable_host_within_10_s(make_hook, workspace, virtual_time):
    hook = make_hook(*workspace, base_url="https://api-{dc}.moengage.com", hook_kwargs={
        "backoff_initial": 1.0, "backoff_max": 60.0, "clock": virtual_time, "sleep": virtual_time.sleep})
    hole = _BlackHole(virtual_time)
    hook.session.mount("https://", hole)
    started = virtual_time()
    ok, message = hook.test_connection()
    elapsed = virtual_time() - started
    assert not ok and "cannot reach api-03.moengage.com" in message, message
    assert "network" not in message.split(".")[0] and "this connection" in message
    assert len(hole.timeouts) >= 2 and all(c <= 4.0 and r <= 9.0 for c, r in hole.timeouts)
    assert elapsed <= 10.0, elapsed  # today: 6 tries of 10 s plus 31 s of back-off
    # a task's preflight keeps its patient retries
    assert hook.max_retries == 5


def test_test_button_refused_port_says_cannot_reach(make_hook, workspace, virtual_time):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook = make_hook(*workspace, base_url=f"http://127.0.0.1:{port}/dc/{{dc}}", hook_kwargs={
        "backoff_initial": 1.0, "clock": virtual_time, "sleep": virtual_time.sleep})
    ok, message = hook.test_connection()
    assert not ok and f"cannot reach 127.0.0.1:{port}" in message and "3 attempts" in message, message
    assert virtual_time() <= 10.0


def test_test_button_watchdog_answers_when_requests_cannot(make_hook, workspace, monkeypatch):
    """A name lookup that hangs is not bounded by requests' timeouts: the watchdog answers."""
    import threading

    from loyalty_moengage.moengage import hook as hook_module

    monkeypatch.setattr(hook_module, "TEST_CONNECTION_SECONDS", 0.2)
    release = threading.Event()

    class Hang(requests.adapters.HTTPAdapter):
        def send(self, request, **kwargs):
            release.wait(10)
            raise requests.exceptions.ConnectionError("name resolution hung")

    hook = make_hook(*workspace, base_url="https://api-{dc}.moengage.com")
    hook.session.mount("https://", Hang())
    try:
        ok, message = hook.test_connection()
    finally:
        release.set()
    assert not ok and "cannot reach api-03.moengage.com within 0.2 s" in message, message
    assert "this connection" in message


def test_a_504_is_retried_on_lookups_but_uncertain_on_sends(sb, make_hook, workspace):
    sb.seed_users(workspace[0], ["REL-1"])
    hook = make_hook(*workspace, hook_kwargs={"max_retries": 1})
    sb.fail_next(504)
    assert hook.existing_customers(["REL-1"]) == {"REL-1"}  # idempotent: a 504 is a 5xx like any other
    assert (hook.stats.retries, hook.stats.requests, hook.stats.bytes_sent) == (1, 2, 0)
    hook.preflight()
    sb.fail_next(504)
    with pytest.raises(MoEngageUncertainError) as info:
        hook.send_transition(one_event_body(), users=0, events=1)
    assert info.value.status == 504 and info.value.attempts == 1 and hook.stats.retries == 1
