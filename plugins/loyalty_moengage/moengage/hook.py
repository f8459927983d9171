"""MoEngage Data API hook: one keep-alive session, paced, retried, and loud about its failures.

Why not ``HttpHook``: its ``run()`` builds a new ``requests.Session`` per call (no connection
reuse over a night of ~200 requests/min), and it turns unknown connection extras into HTTP
headers. What this hook takes from apache-airflow-providers-http is the rest of its design:
the same TCP keep-alive adapter, the same rule that only failures before a connection exists
are safe to replay, and tenacity for retries (``retry_args`` overrides the defaults the way
``HttpHook.run_with_advanced_retry`` does).

Outcomes of one request:

* 2xx, unless it says ``"status": "fail"``: accepted (not yet ingested; MoEngage has no per-element report).
* 429: wait ``x-ratelimit-reset`` seconds (or back off when absent) and resend; never counted
  against ``max_retries``, given up after ``max_throttled`` waits in a row with
  :class:`MoEngageRateLimitError` naming the budget. The same on every endpoint: bulk and single
  sends, Get User API lookups, the credential preflight.
* 5xx, 408, connect errors: retried with exponential backoff and jitter, ``max_retries`` times,
  then :class:`MoEngageTransientError`.
* body sent, then a read timeout, a dropped connection or a 504: the outcome is unknown and MoEngage
  has no dedupe, so :class:`MoEngageUncertainError` at once, unless ``retry_uncertain=True``.
* 400, 401, 403, 409, 413, 415 (and any other status not named here), or 2xx with
  ``"status": "fail"``: :class:`MoEngagePermanentError` naming the cause and the fix; never retried.

Bulk and single sends, lookups and the preflight share one send loop (``MoEngageHook._request``);
a ``_RequestKind`` says what differs. Lookups and the preflight are idempotent: every failure
without an answer, and every 504, is retried like a 5xx, and their callers read the answer. The
Test button's preflight also has a deadline (``TEST_CONNECTION_SECONDS``).

Pacing: see :mod:`loyalty_moengage.moengage.pacing` (``share`` is this task's fraction of the workspace budget).
The connection and its secrets: :mod:`loyalty_moengage.moengage.connection`; the exceptions:
:mod:`loyalty_moengage.moengage.errors` (re-exported here).
"""


from __future__ import annotations

import contextvars
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
import tenacity
from airflow.sdk import BaseHook

from loyalty_moengage.moengage import connection
from loyalty_moengage.moengage.connection import MoEngageConfig, Secret
from loyalty_moengage.moengage.datacenters import label
from loyalty_moengage.moengage.errors import (
    PERMANENT_STATUSES,
    MoEngageAuthError,
    MoEngageConfigError,
    MoEngageError,
    MoEngagePermanentError,
    MoEngageRateLimitError,
    MoEngageTransientError,
    MoEngageUncertainError,
)
from loyalty_moengage.moengage.pacing import ServerWindow, TokenBucket
from loyalty_moengage.moengage.packing import SINGLE_MAX_BYTES, TRANSITION_MAX_BYTES

# The Test button: every try must end within TEST_CONNECTION_SECONDS. The tries are planned on the
# hook's clock within _TEST_PLAN_SECONDS (connect at most _TEST_CONNECT_SECONDS each); a watchdog
# answers at TEST_CONNECTION_SECONDS whatever requests does (it cannot bound DNS, and its connect
# timeout applies to each address a host name resolves to).
TEST_CONNECTION_SECONDS = 10.0
_TEST_PLAN_SECONDS = 9.0
_TEST_CONNECT_SECONDS = 4.0
_TEST_MAX_RETRIES = 2
_MIN_TRY_SECONDS = 1.0  # no new try with less time than this left
# How messages name the connection under test: Airflow's POST /connections/test (the UI's Test
# button) hands the hook a random transient conn_id, not the id the user sees.
TESTED_CONNECTION = "this connection"


@dataclass(frozen=True, slots=True)
class SendResult:
    status: int
    request_id: str | None
    attempts: int  # HTTP requests made, 429s included
    throttled: int  # 429s waited out
    retries: int  # resends after 5xx/timeouts/connection errors
    bytes_sent: int
    seconds: float
    request_ids: tuple[str | None, ...] = ()  # MoEngage's id for every request made, in order


@dataclass(slots=True)
class HookStats:
    requests: int = 0
    sends: int = 0
    throttled: int = 0
    retries: int = 0
    bytes_sent: int = 0
    users: int = 0
    events: int = 0
    throttle_seconds: float = 0.0
    pacing_seconds: float = 0.0
    window_waits: int = 0  # sends held back to the server's next window (x-ratelimit-remaining)
    window_seconds: float = 0.0
    lookups: int = 0  # customer ids read through the Get User API


class _MoEngageAuth(requests.auth.AuthBase):
    """Basic auth plus ``MOE-APPKEY``, with the header computed once (and masked once)."""

    def __init__(self, workspace_id: str, header: Secret) -> None:
        self.workspace_id = workspace_id
        self._header = header

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header.reveal()
        request.headers["MOE-APPKEY"] = self.workspace_id
        return request

    def __repr__(self) -> str:
        return f"_MoEngageAuth(workspace_id={self.workspace_id!r}, header='***')"


class _Retryable(Exception):
    """Internal: one failed attempt that may be repeated."""

    def __init__(self, cause: str, *, status: int | None = None, request_id: str | None = None,
                 unreachable: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.status = status
        self.request_id = request_id
        self.unreachable = unreachable  # no connection was made: name the host


@dataclass(slots=True)
class _Attempts:
    requests: int = 0
    throttled: int = 0
    tries: int = 0
    request_ids: list[str | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Answer:
    """MoEngage's final answer to one request (no 429, 5xx or 408)."""

    response: requests.Response
    doc: dict[str, Any]
    request_id: str | None


@dataclass(frozen=True, slots=True)
class _RequestKind:
    """What the one send loop (:meth:`MoEngageHook._request`) does differently per kind of request.

    ``idempotent=False`` is a data send: its bytes count in ``HookStats.bytes_sent``; MoEngage has
    no dedupe, so a body sent without an answer (or answered 504) is uncertain; and the hook judges
    the answer (4xx, or 2xx with ``"status": "fail"``: permanent). An idempotent request retries every
    failure without an answer, and its caller reads the answer.
    """

    idempotent: bool
    budget: str | None  # the rate limit it spends, as 429 messages name it; None: the users/events budgets
    advice: Callable[[MoEngageHook], str]  # the fix when 429s keep coming
    deadline: float | None = None  # on the hook's clock: every try ends by then (the Test button)


def _send_advice(hook: MoEngageHook) -> str:
    return ("Another sender is spending this workspace's budget, or the budget in the connection "
            "extras is higher than MoEngage's: lower users_per_minute/events_per_minute or use a Pool.")


def _lookup_advice(hook: MoEngageHook) -> str:
    cfg = hook.config
    pace = (f"this task paces lookups at {cfg.lookups_per_minute * hook.share:g} users/min"
            if cfg.pacing else "pacing is off in the connection (the pacing extra)")
    return (f"The workspace's Get User API budget (MoEngage: 1,000 users/min unless raised) is spent: another job "
            f"is looking users up in this workspace, or the lookups_per_minute extra ({cfg.lookups_per_minute:g}; "
            f"{pace}) is higher than MoEngage's budget. Lower lookups_per_minute in {cfg.name}, run fewer lookups "
            "at once, or ask MoEngage to raise the budget; then retry the run.")


def _auth_advice(hook: MoEngageHook) -> str:
    return ("The authentication endpoint is rate-limited by MoEngage's per-user fair use (5,000 requests/min): "
            "something is checking credentials in a loop. Stop it, wait a minute, and retry.")


_SEND = _RequestKind(idempotent=False, budget=None, advice=_send_advice)
_LOOKUP = _RequestKind(idempotent=True, budget="the Get User API (customer lookups)", advice=_lookup_advice)
_PREFLIGHT = _RequestKind(idempotent=True, budget="the authentication endpoint (credential preflight)",
                          advice=_auth_advice)

_UNCERTAIN_FIX = ("The outbox settles it: a users batch is sent again (attributes are last-write-wins); an "
                  "events batch is settled by its receipt (README, Backfills and reruns).")

_FIXES: dict[int, tuple[str, str]] = {
    400: ("MoEngage could not read the request",
          "Fix the payload: the message names the field. A bulk body is "
          '{"type":"transition","elements":[...]} with lowercase element types.'),
    401: ("MoEngage rejected the credentials",
          "Check the Workspace ID, the Data API key and the data centre in {conn}."),
    403: ("MoEngage refused the workspace (suspended, blocked or behind an IP allowlist)",
          "Ask the workspace admin or MoEngage support; if an IP allowlist is on, add the workers' egress IP."),
    409: ("The Workspace ID in the URL differs from the one in Basic auth",
          "Use a single Workspace ID: check the login (Workspace ID) of {conn} for spaces or a stale value."),
    413: ("The request body exceeds MoEngage's size limit",
          f"Pack with loyalty_moengage.moengage.packing.pack_spans: at most {TRANSITION_MAX_BYTES} bytes per "
          f"transition request, {SINGLE_MAX_BYTES} per single request."),
    415: ("MoEngage requires Content-Type: application/json",
          "Send JSON with Content-Type: application/json (the hook does; check proxies that rewrite headers)."),
}


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request failed before a connection existed (same rule as HttpHook's SRV failover)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    from urllib3.exceptions import ConnectTimeoutError  # NewConnectionError and NameResolutionError subclass it

    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, ConnectTimeoutError)


def _describe(exc: BaseException) -> str:
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    inner = reason or (exc.args[0] if exc.args else exc)
    return f"{type(exc).__name__}: {inner}"


def _as_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MoEngageError) else f"{type(exc).__name__}: {exc}"


def _body(response: requests.Response) -> dict[str, Any]:
    try:
        doc = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _request_id(doc: dict[str, Any], response: requests.Response) -> str | None:
    error = doc.get("error")
    return (
        doc.get("request_id")
        or (error.get("request_id") if isinstance(error, dict) else None)
        or response.headers.get("x-request-id")
    )


def _error_text(doc: dict[str, Any], response: requests.Response) -> str:
    error = doc.get("error")
    if isinstance(error, dict):
        parts = [str(error[k]) for k in ("type", "message") if error.get(k)]
        if error.get("attribute"):
            parts.append(f"attribute {error['attribute']!r}")
        return ": ".join(parts) if parts else str(error)
    if isinstance(error, str):
        return error
    return doc.get("message") or response.reason or "no error message"


_Pacer = tuple["Sequence[ServerWindow]", "Sequence[TokenBucket]"]  # a request's server windows and buckets


def _header_number(response: requests.Response, name: str) -> float | None:
    raw = response.headers.get(name)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _reset_seconds(response: requests.Response) -> float | None:
    """``x-ratelimit-reset`` (or ``Retry-After``) as seconds from now: seconds or an epoch; None if absent."""
    value = _header_number(response, "x-ratelimit-reset")
    if value is None:
        value = _header_number(response, "retry-after")
    if value is None:
        return None
    wait = value - time.time() if value > 1_000_000_000 else value
    return wait if wait >= 0 else None


def _observe(pacer: _Pacer, response: requests.Response) -> None:
    """Tell the request's server windows what ``x-ratelimit-remaining`` / ``-reset`` say."""
    windows = pacer[0]
    if not windows:
        return
    remaining = _header_number(response, "x-ratelimit-remaining")
    reset = _reset_seconds(response) if remaining is not None else None
    for window in windows:
        window.observe(remaining, reset)


def _bank(pacer: _Pacer, seconds: float) -> None:
    for bucket in pacer[1]:
        bucket.bank(seconds)


class MoEngageHook(BaseHook):
    """MoEngage Data API: bulk ``transition``, single user/event, and credential preflight.

    Keyword-only, like the community providers' hooks (``SlackWebhookHook(slack_webhook_conn_id=...)``):
    ``MoEngageHook(moengage_conn_id="moengage_default", share=0.5)``. Airflow builds it the same way
    (``Connection.get_hook`` passes ``moengage_conn_id=`` by name).

    :param moengage_conn_id: Airflow connection: login = Workspace ID, password = Data API key,
        host = data centre (``DC-03``, ``03`` or ``https://dashboard-03.moengage.com``); extras
        ``base_url`` (may contain ``{dc}``), ``users_per_minute``, ``events_per_minute``,
        ``lookups_per_minute``, ``timeout``, ``pacing`` (the form in ``provider.py`` lists the same).
    :param share: this task's fraction of the workspace budget (1/N for N concurrent load tasks).
    :param retry_uncertain: resend when a body was sent but no answer came (risks duplicates).
    :param max_retries: resends after 5xx/timeouts/connection errors; 429 waits do not count.
    :param max_throttled: 429 waits per request before giving up.
    :param retry_args: tenacity ``Retrying`` keyword overrides (``wait``, ``stop``, ...).
    :param sleep: how the hook waits (pacing, 429s, backoff); tests pass a fake one.
    :param clock: monotonic seconds for pacing and idle reconnects; tests pass a fake one.
    """

    conn_name_attr = "moengage_conn_id"
    default_conn_name = "moengage_default"
    conn_type = "moengage"
    hook_name = "MoEngage"

    def __init__(
        self,
        *,
        moengage_conn_id: str = default_conn_name,
        share: float = 1.0,
        retry_uncertain: bool = False,
        max_retries: int = 5,
        max_throttled: int = 30,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        retry_args: dict[str, Any] | None = None,
        preflight_before_send: bool = True,
        idle_reconnect_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.moengage_conn_id = moengage_conn_id
        self.share = share
        self.retry_uncertain = retry_uncertain
        self.max_retries = max_retries
        self.max_throttled = max_throttled
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.retry_args = retry_args or {}
        self.preflight_before_send = preflight_before_send
        self.idle_reconnect_seconds = idle_reconnect_seconds
        self._sleep = sleep
        self._clock = clock
        self._preflight: dict[str, Any] | None = None
        self._described_as = ""  # see test_connection
        self._last_io: float | None = None
        self.stats = HookStats()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(moengage_conn_id={self.moengage_conn_id!r}, share={self.share:g})"

    # -- configuration --------------------------------------------------------------------
    @cached_property
    def config(self) -> MoEngageConfig:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.moengage_conn_id)
        except AirflowNotFoundException:
            # No retry can mend it: say so at once instead of retrying for minutes.
            raise MoEngageConfigError.of(
                f"the Airflow connection {self.moengage_conn_id!r} (MoEngage) is not defined",
                "Add it (README, \"Point it at MoEngage\"), or try the local sandbox: `make sandbox` prints the "
                "connection to export") from None
        return self.config_from_connection(conn, self.moengage_conn_id, described_as=self._described_as)

    @staticmethod
    def config_from_connection(conn: Any, conn_id: str, *, described_as: str = "") -> MoEngageConfig:
        """Validate a connection into a config; see :mod:`loyalty_moengage.moengage.connection`."""
        return connection.config_from_connection(conn, conn_id, described_as=described_as)

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session for the hook's lifetime."""
        cfg = self.config
        session = requests.Session()
        session.auth = _MoEngageAuth(cfg.workspace_id, cfg.auth_header)
        session.headers.update({"Content-Type": "application/json", "Accept": "application/json",
                                "User-Agent": "loyalty-moengage/0.1"})
        adapter = _keep_alive_adapter()
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def get_conn(self) -> requests.Session:
        return self.session

    @cached_property
    def users_bucket(self) -> TokenBucket:
        cfg = self.config
        return TokenBucket(cfg.users_per_minute * self.share if cfg.pacing else None,
                           clock=self._clock, sleep=self._sleep)

    @cached_property
    def events_bucket(self) -> TokenBucket:
        cfg = self.config
        return TokenBucket(cfg.events_per_minute * self.share if cfg.pacing else None,
                           clock=self._clock, sleep=self._sleep)

    def _window(self, per_minute: float) -> ServerWindow:
        return ServerWindow(others_per_second=per_minute * (1 - self.share) / 60.0, clock=self._clock)

    @cached_property
    def users_window(self) -> ServerWindow:
        """The server's users window as its headers last told (see :class:`ServerWindow`)."""
        return self._window(self.config.users_per_minute)

    @cached_property
    def events_window(self) -> ServerWindow:
        return self._window(self.config.events_per_minute)

    @cached_property
    def lookup_window(self) -> ServerWindow:
        return self._window(self.config.lookups_per_minute)

    def _wait_for_window(self, needs: list[tuple[ServerWindow, float]], buckets: list[TokenBucket]) -> float:
        """Hold a send back to the server's next window when it would not fit in this one, and bank
        the wait in the buckets (the budget not spent meanwhile is still owed). Pacing off: no wait."""
        if not self.config.pacing:
            return 0.0
        wait = max((w.wait_for(n) for w, n in needs), default=0.0)
        if wait <= 0:
            return 0.0
        wait = min(wait, 120.0)
        self.log.debug("x-ratelimit-remaining says the next send does not fit this window: waiting %.2f s", wait)
        self._sleep(wait)
        for bucket in buckets:
            bucket.bank(wait)
        self.stats.window_waits += 1
        self.stats.window_seconds += wait
        return wait

    # -- public API -----------------------------------------------------------------------
    def preflight(self, *, deadline: float | None = None) -> dict[str, Any]:
        """Prove the credentials work on the configured data centre before anything is sent.

        :param deadline: on the hook's clock, when the last try must be over (``test_connection``).
        """
        cfg = self.config
        body = orjson.dumps({"app_id": cfg.workspace_id, "app_secret": cfg.api_key.reveal(),
                             "source": "airflow-loyalty-moengage", "region": cfg.data_center})
        try:
            answer, attempts = self._request(replace(_PREFLIGHT, deadline=deadline),
                                             "/v1/integrations/authentication", body)
        except MoEngageTransientError as exc:
            raise type(exc)(
                f"Could not verify MoEngage credentials: {exc}", status=exc.status,
                request_id=exc.request_id, attempts=exc.attempts, cause=exc.cause, fix=exc.fix) from None
        response, doc, request_id = answer.response, answer.doc, answer.request_id
        if response.status_code != 200 or doc.get("status") != "success":
            detail = f"{response.status_code} {_error_text(doc, response)}"
            cause = f"MoEngage rejected the credentials ({detail}) on {cfg.where}"
            fix = (f"Check the Workspace ID, the Data API key and the data centre in {cfg.name}: "
                   "a workspace exists on one data centre only.")
            raise MoEngageAuthError.of(cause, fix, status=response.status_code, request_id=request_id,
                                       attempts=attempts.requests)
        self._preflight = {"status": "success", "app_name": doc.get("app_name"), "workspace_id": cfg.workspace_id,
                           "data_center": cfg.data_center, "base_url": cfg.base_url, "request_id": request_id}
        self.log.info("MoEngage credentials verified for workspace %s on %s", cfg.workspace_id, cfg.where)
        return dict(self._preflight)

    def test_connection(self) -> tuple[bool, str]:
        """The UI's Test button (and ``airflow connections test``): one preflight, answered within 10 s.

        Airflow 3.3's ``POST /api/v2/connections/test`` copies the form into a connection with a
        random ``conn_id`` (``get_random_string()``, exported as ``AIRFLOW_CONN_<ID>``) and builds
        the hook with it, so that id means nothing to the user: messages say "this connection".
        An unreachable host is given up within ``TEST_CONNECTION_SECONDS`` ("cannot reach <host>").
        """
        self._described_as = TESTED_CONNECTION
        self.__dict__.pop("config", None)
        try:
            try:
                host = urlsplit(self.config.base_url).netloc
            except Exception as exc:  # noqa: BLE001 - the Test button shows any failure as text
                return False, _as_text(exc)
            outcome: list[tuple[bool, str]] = []
            context = contextvars.copy_context()  # Airflow hands the connection over in a context variable
            worker = threading.Thread(target=context.run, args=(lambda: outcome.append(self._test_connection()),),
                                      name="moengage-test-connection", daemon=True)
            worker.start()
            worker.join(TEST_CONNECTION_SECONDS)
            if outcome:
                return outcome[0]
            return False, (f"Could not verify MoEngage credentials: cannot reach {host} within "
                           f"{TEST_CONNECTION_SECONDS:g} s (no answer to the name lookup or the connection). "
                           f"{self._unreachable_fix(host)}")
        finally:
            self._described_as = ""
            self.__dict__.pop("config", None)

    def _test_connection(self) -> tuple[bool, str]:
        try:
            result = self.preflight(deadline=self._clock() + _TEST_PLAN_SECONDS)
        except Exception as exc:  # noqa: BLE001 - the Test button shows any failure as text
            return False, _as_text(exc)
        return True, (f"Connected to MoEngage workspace {result['app_name'] or result['workspace_id']} "
                      f"on {self.config.where}.")

    def send_transition(self, body: bytes, *, users: int, events: int) -> SendResult:
        """POST one packed bulk body (see :mod:`loyalty_moengage.moengage.packing`)."""
        if len(body) > TRANSITION_MAX_BYTES:
            raise self._too_large(len(body), TRANSITION_MAX_BYTES)
        return self._send(f"/v1/transition/{self.config.workspace_id}", body, users=users, events=events)

    def send_user(self, element: dict[str, Any]) -> SendResult:
        body = orjson.dumps(element)
        if len(body) > SINGLE_MAX_BYTES:
            raise self._too_large(len(body), SINGLE_MAX_BYTES)
        return self._send(f"/v1/customer/{self.config.workspace_id}", body, users=1, events=0)

    def send_event(self, element: dict[str, Any]) -> SendResult:
        body = orjson.dumps(element)
        if len(body) > SINGLE_MAX_BYTES:
            raise self._too_large(len(body), SINGLE_MAX_BYTES)
        actions = element.get("actions")
        return self._send(f"/v1/event/{self.config.workspace_id}", body, users=0,
                          events=len(actions) if isinstance(actions, list) else 1)

    @cached_property
    def lookup_bucket(self) -> TokenBucket:
        """The Get User API has its own, much smaller budget (1,000 users/min by default)."""
        return TokenBucket(self.config.lookups_per_minute * self.share if self.config.pacing else None,
                           clock=self._clock, sleep=self._sleep)

    def existing_customers(self, customer_ids: list[str]) -> set[str]:
        """Which of these customer_ids exist in MoEngage (Get User API, 20 per request).

        Used before sending events: an event for an unknown customer_id creates a MoEngage
        profile, and this integration never creates profiles.
        """
        return set(self.read_users(customer_ids, ["customer_id"]))

    def read_users(self, customer_ids: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """The ``fields`` of each of these customers MoEngage has (Get User API, 20 per request,
        paced on the lookup budget); customers it does not have are absent from the answer."""
        found: dict[str, dict[str, Any]] = {}
        path = f"/v1/customers/export?app_id={self.config.workspace_id}"
        wanted = list(dict.fromkeys(["customer_id", *fields]))
        for start in range(0, len(customer_ids), 20):
            chunk = customer_ids[start:start + 20]
            self.stats.pacing_seconds += self.lookup_bucket.acquire(len(chunk))
            self._wait_for_window([(self.lookup_window, len(chunk))], [self.lookup_bucket])
            body = orjson.dumps({"data": {"identifiers": [{"identifier_type": "customer_id", "identifier": c}
                                                          for c in chunk],
                                          "user_fields_to_export": wanted}})
            answer, _ = self._request(_LOOKUP, path, body, pacer=([self.lookup_window], [self.lookup_bucket]))
            response, doc = answer.response, answer.doc
            self.stats.lookups += len(chunk)
            if response.status_code != 200 or doc.get("status") != "success":
                detail = f"{response.status_code} {_error_text(doc, response)}"
                cause = f"the Get User API refused the lookup ({detail}) on {self.config.where}"
                fix = ("Check the connection's credentials and that MoEngage enabled the Get User API for the "
                       "workspace (your customer success manager does): customer checks (verify_customers) and "
                       "receipts (receipts) need it.")
                error = MoEngageAuthError if response.status_code in (401, 403) else MoEngagePermanentError
                raise error.of(cause, fix, status=response.status_code, request_id=answer.request_id)
            for user in (doc.get("data") or {}).get("users") or []:
                attributes = user.get("user_attributes") or {}
                cid = attributes.get("customer_id")
                if isinstance(cid, str):
                    found[cid] = attributes
        return found

    def close(self) -> None:
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    # -- sending --------------------------------------------------------------------------
    def _send(self, path: str, body: bytes, *, users: int, events: int) -> SendResult:
        cfg = self.config
        if self.preflight_before_send and self._preflight is None:
            self.preflight()
        if users > cfg.users_per_minute or events > cfg.events_per_minute:
            cause = (f"one request carries {users} users and {events} events, more than the workspace budget "
                     f"of {cfg.users_per_minute:g} users and {cfg.events_per_minute:g} events per minute")
            fix = "Pack smaller batches or raise the budget in the connection extras if MoEngage raised it."
            raise MoEngagePermanentError.of(cause, fix)
        started = self._clock()
        # While one bucket holds this send back, the other budget goes unspent: it is banked (pacing.py).
        waited_users = self.users_bucket.acquire(users)
        self.events_bucket.bank(waited_users)
        waited_events = self.events_bucket.acquire(events)
        self.users_bucket.bank(waited_events)
        self.stats.pacing_seconds += waited_users + waited_events
        needs = [(w, n) for w, n in ((self.users_window, users), (self.events_window, events)) if n]
        buckets = [self.users_bucket, self.events_bucket]
        self._wait_for_window(needs, buckets)
        answer, attempts = self._request(_SEND, path, body, pacer=([w for w, _ in needs], buckets))
        retries = attempts.tries - 1
        self.stats.sends += 1
        self.stats.users += users
        self.stats.events += events
        return SendResult(status=answer.response.status_code, request_id=answer.request_id,
                          attempts=attempts.requests, throttled=attempts.throttled, retries=retries,
                          bytes_sent=len(body), seconds=self._clock() - started,
                          request_ids=tuple(attempts.request_ids))

    def _request(self, kind: _RequestKind, path: str, body: bytes, *, pacer: _Pacer = ((), ())
                 ) -> tuple[_Answer, _Attempts]:
        """The one send loop: tenacity resends what ``kind`` allows (5xx, 408, failures without an
        answer) with backoff; each attempt waits out its 429s, so they never use up retries."""
        attempts = _Attempts()
        started = self._clock()
        try:
            for attempt in self._retrying(deadline=kind.deadline):
                with attempt:
                    attempts.tries += 1
                    answer = self._attempt(kind, path, body, attempts, pacer)
                    self.stats.retries += attempts.tries - 1
                    return answer, attempts
        except _Retryable as exc:
            raise self._gave_up(kind, exc, attempts, started) from None
        raise AssertionError("unreachable")

    def _retrying(self, *, deadline: float | None = None) -> tenacity.Retrying:
        retries = self.max_retries if deadline is None else min(self.max_retries, _TEST_MAX_RETRIES)
        stop: Callable[[tenacity.RetryCallState], bool] = tenacity.stop_after_attempt(retries + 1)
        if deadline is not None:
            by_count = stop

            def stop(state: tenacity.RetryCallState) -> bool:
                # no new try that would start with less than _MIN_TRY_SECONDS left
                return by_count(state) or self._clock() + state.upcoming_sleep + _MIN_TRY_SECONDS > deadline

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log.warning("MoEngage request failed (%s; request_id %s); retry %d/%d in %.2f s",
                             getattr(exc, "cause", exc), getattr(exc, "request_id", None),
                             state.attempt_number, retries,
                             state.next_action.sleep if state.next_action else 0.0)

        args: dict[str, Any] = {
            "stop": stop,
            "wait": tenacity.wait_exponential_jitter(initial=self.backoff_initial, max=self.backoff_max,
                                                     jitter=self.backoff_initial),
            "retry": tenacity.retry_if_exception_type(_Retryable),
            "sleep": self._sleep,
            "reraise": True,
            "before_sleep": before_sleep,
        }
        args.update(self.retry_args)
        return tenacity.Retrying(**args)

    def _post(self, path: str, body: bytes, *, timeout: tuple[float, float] | None = None) -> requests.Response:
        cfg = self.config
        now = self._clock()
        if self._last_io is not None and now - self._last_io > self.idle_reconnect_seconds:
            # A pooled connection idle this long may be closed by a load balancer mid-request,
            # which would look like an uncertain outcome: start from a fresh connection instead.
            for adapter in self.session.adapters.values():
                adapter.poolmanager.clear()
        try:
            return self.session.post(cfg.base_url + path, data=body,
                                     timeout=timeout or (min(10.0, cfg.timeout), cfg.timeout))
        finally:
            self._last_io = self._clock()
            self.stats.requests += 1

    def _attempt(self, kind: _RequestKind, path: str, body: bytes, attempts: _Attempts, pacer: _Pacer) -> _Answer:
        """One logical attempt: 429s are waited out inside it; 5xx and 408 raise ``_Retryable``."""
        while True:
            attempts.requests += 1
            try:
                response = self._post(path, body, timeout=self._try_timeout(kind.deadline))
            except requests.RequestException as exc:
                attempts.request_ids.append(None)
                raise self._unanswered(kind, exc, len(body), attempts.requests) from None
            status = response.status_code
            doc = _body(response)
            request_id = _request_id(doc, response)
            attempts.request_ids.append(request_id)
            if not kind.idempotent:
                self.stats.bytes_sent += len(body)
                self.log.debug("MoEngage POST %s -> %s request_id=%s bytes=%d", path, status, request_id, len(body))
            _observe(pacer, response)
            if status == 429:
                self._wait_out_429(kind, response, request_id, attempts, pacer)
                continue
            if status == 504 and not (kind.idempotent or self.retry_uncertain):
                # A gateway timeout: the request reached MoEngage's edge and may have been processed.
                cause = (f"MoEngage's gateway timed out (504, request_id {request_id}) on {self.config.where} "
                         "after the body was sent; MoEngage may or may not have accepted it")
                raise MoEngageUncertainError.of(cause, _UNCERTAIN_FIX, status=status, request_id=request_id,
                                                attempts=attempts.requests)
            if status >= 500 or status == 408:
                raise _Retryable(f"HTTP {status} {_error_text(doc, response)}", status=status, request_id=request_id)
            answer = _Answer(response, doc, request_id)
            if not kind.idempotent:
                self._judge(answer, attempts.requests)
            return answer

    def _try_timeout(self, deadline: float | None) -> tuple[float, float] | None:
        """Under a deadline, connect and read timeouts that end the try by then; else the connection's."""
        if deadline is None:
            return None
        cfg = self.config
        left = max(0.1, deadline - self._clock())
        return round(min(_TEST_CONNECT_SECONDS, cfg.timeout, left), 1), round(min(cfg.timeout, left), 1)

    def _unanswered(self, kind: _RequestKind, exc: requests.RequestException, size: int, attempts: int
                    ) -> _Retryable | MoEngageUncertainError:
        """A request that got no answer: retryable, unless a send's body may have arrived."""
        cfg = self.config
        if kind.idempotent:
            if _never_sent(exc):
                host = urlsplit(cfg.base_url).netloc
                return _Retryable(f"cannot reach {host} ({_describe(exc)})", unreachable=True)
            return _Retryable(f"no answer from {cfg.where} ({_describe(exc)})")
        if _never_sent(exc):
            return _Retryable(f"could not connect ({_describe(exc)})")
        if self.retry_uncertain:
            return _Retryable(f"no answer after the body was sent ({_describe(exc)})")
        cause = (f"the request body ({size} bytes) was sent to {cfg.where} but no answer came "
                 f"({_describe(exc)}); MoEngage may or may not have accepted it")
        return MoEngageUncertainError.of(cause, _UNCERTAIN_FIX, attempts=attempts)

    def _judge(self, answer: _Answer, attempts: int) -> None:
        """A send's final answer: a 2xx is accepted unless it says ``"status": "fail"``; the rest is permanent."""
        response, doc, request_id = answer.response, answer.doc, answer.request_id
        status = response.status_code
        if not 200 <= status < 300:
            raise self._permanent(answer, attempts)
        if doc.get("status") == "fail":
            cause = (f"MoEngage answered {status} but reported a failure ({_error_text(doc, response)}) "
                     f"on {self.config.where}")
            fix = "The request was not accepted: fix what the message names; do not count it as sent."
            raise MoEngagePermanentError.of(cause, fix, detail=f"; request_id {request_id}", status=status,
                                            request_id=request_id, attempts=attempts)

    def _permanent(self, answer: _Answer, attempts: int) -> MoEngagePermanentError:
        response, request_id = answer.response, answer.request_id
        status = response.status_code
        cfg = self.config
        what, fix = _FIXES.get(status, (f"MoEngage refused the request with HTTP {status}",
                                        "Check the endpoint and the payload; this status is not retried."))
        fix = fix.replace("{conn}", cfg.name)
        cause = f"{what} ({status} {_error_text(answer.doc, response)}) on {cfg.where}"
        error = MoEngageAuthError if status in (401, 403) else MoEngagePermanentError
        return error.of(cause, fix, detail=f"; request_id {request_id}", status=status, request_id=request_id,
                        attempts=attempts)

    def _wait_out_429(self, kind: _RequestKind, response: requests.Response, request_id: str | None,
                      attempts: _Attempts, pacer: _Pacer) -> None:
        """Wait until the budget resets; give up when 429s persist or the wait would pass the deadline."""
        attempts.throttled += 1
        self.stats.throttled += 1
        if attempts.throttled > self.max_throttled:
            raise self._rate_limited(kind, response, request_id, attempts)
        wait = self._throttle_wait(response, attempts.throttled)
        if kind.deadline is not None and self._clock() + wait > kind.deadline:
            raise self._rate_limited(kind, response, request_id, attempts, past_deadline=True)
        self.log.info("MoEngage rate limit%s (429, request_id %s): waiting %.2f s for the budget to reset",
                      f" on {kind.budget}" if kind.budget else "", request_id, wait)
        self.stats.throttle_seconds += wait
        self._sleep(wait)
        _bank(pacer, wait)

    def _throttle_wait(self, response: requests.Response, count: int) -> float:
        """Seconds until the budget resets: ``x-ratelimit-reset`` (seconds or epoch), else backoff."""
        wait = _reset_seconds(response)
        if wait is None:
            wait = min(60.0, 2.0 ** min(count - 1, 6))
        # A little jitter so tasks sharing a workspace do not all return on the same instant.
        return min(wait, 120.0) + random.uniform(0, 0.05 + 0.05 * wait)

    def _rate_limited(self, kind: _RequestKind, response: requests.Response, request_id: str | None,
                      attempts: _Attempts, *, past_deadline: bool = False) -> MoEngageRateLimitError:
        cfg = self.config
        if kind.budget is None:
            cause = f"MoEngage answered 429 {attempts.throttled} times in a row on {cfg.where}"
        else:
            limit = response.headers.get("x-ratelimit-limit")
            reset = response.headers.get("x-ratelimit-reset")
            seen = ", ".join(f"{k} {v}" for k, v in (("x-ratelimit-limit", limit), ("x-ratelimit-reset", reset)) if v)
            if past_deadline:
                cause = (f"MoEngage answered 429 (rate limit) on {kind.budget} on {cfg.where}, and its budget "
                         f"resets after this test's {TEST_CONNECTION_SECONDS:g} s")
            else:
                cause = (f"MoEngage kept answering 429 (rate limit) on {kind.budget}: {attempts.throttled} times "
                         f"in a row on {cfg.where}")
            cause += f" ({seen})" if seen else ""
        return MoEngageRateLimitError.of(cause, kind.advice(self), status=429, request_id=request_id,
                                         attempts=attempts.requests)

    def _gave_up(self, kind: _RequestKind, exc: _Retryable, attempts: _Attempts, started: float
                 ) -> MoEngageTransientError:
        """The retries are spent: what kept failing, and what to check."""
        cfg = self.config
        if not kind.idempotent:
            fix = ("MoEngage or the network kept failing; the run can be resumed later. "
                   "Check https://status.moengage.com and the worker's network.")
            return MoEngageTransientError.of(f"{exc.cause} after {attempts.tries} attempts on {cfg.where}", fix,
                                             status=exc.status, request_id=exc.request_id, attempts=attempts.requests)
        tries = f"{attempts.tries} attempts" + (f" in {self._clock() - started:.1f} s" if kind.deadline else "")
        if exc.unreachable:
            fix = self._unreachable_fix(urlsplit(cfg.base_url).netloc)
        elif exc.status is None:
            fix = "Check the network path to MoEngage and the data centre in the connection, then retry."
        else:
            fix = "MoEngage kept failing: check https://status.moengage.com and retry later."
        return MoEngageTransientError.of(exc.cause, fix, detail=f" after {tries}", status=exc.status,
                                         request_id=exc.request_id, attempts=attempts.requests)

    def _unreachable_fix(self, host: str) -> str:
        try:
            cfg = self.config
        except Exception:  # noqa: BLE001 - only wording
            return f"Check the data centre and base_url of the connection, and that this machine can reach {host}."
        return (f"Check the Data centre field ({label(cfg.data_center)}, so {cfg.base_url}) and the base_url extra "
                f"in {cfg.name}, and that this machine can reach {host} (DNS, proxy, firewall or egress rules).")

    def _too_large(self, size: int, limit: int) -> MoEngagePermanentError:
        cause = f"request body is {size} bytes; MoEngage accepts at most {limit} (not sent)"
        return MoEngagePermanentError.of(cause, _FIXES[413][1], status=None)


def _keep_alive_adapter() -> requests.adapters.HTTPAdapter:
    """The TCP keep-alive adapter HttpHook mounts, with a pool sized for one task's traffic."""
    try:
        from requests_toolbelt.adapters.socket_options import TCPKeepAliveAdapter
    except ImportError:  # pragma: no cover - requests-toolbelt comes with the http provider
        return requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=8, max_retries=0)
    return TCPKeepAliveAdapter(idle=120, count=20, interval=30, pool_connections=2, pool_maxsize=8, max_retries=0)


__all__ = [
    "PERMANENT_STATUSES",
    "HookStats",
    "MoEngageAuthError",
    "MoEngageConfig",
    "MoEngageConfigError",
    "MoEngageError",
    "MoEngageHook",
    "MoEngagePermanentError",
    "MoEngageRateLimitError",
    "MoEngageTransientError",
    "MoEngageUncertainError",
    "SendResult",
]
