"""MoEngage Data API hook: one keep-alive session, paced, retried, and loud about its failures.

Why not ``HttpHook``: its ``run()`` builds a new ``requests.Session`` per call (no connection
reuse over a night of ~200 requests/min), and it turns unknown connection extras into HTTP
headers. What this hook takes from apache-airflow-providers-http is the rest of its design:
the same TCP keep-alive adapter, the same rule that only failures before a connection exists
are safe to replay, and tenacity for retries (``retry_args`` overrides the defaults the way
``HttpHook.run_with_advanced_retry`` does).

This module is the hook itself: its Airflow attributes, its connection, session, pacers and
public methods. The rest, by idea:

* :mod:`~loyalty_moengage.moengage.sending`: the one send loop every request goes through (what
  each outcome of a request leads to: retries, 429 waits, uncertain sends, giving up).
* :mod:`~loyalty_moengage.moengage.answers`: reading MoEngage's answers and judging a send's.
* :mod:`~loyalty_moengage.moengage.credentials` and :mod:`~loyalty_moengage.moengage.get_user`: the
  credential preflight and the Get User API lookups.
* :mod:`~loyalty_moengage.moengage.session`: the keep-alive session and MoEngage's auth headers.
* :mod:`~loyalty_moengage.moengage.pacing` (``share`` is this task's fraction of the workspace budget),
  :mod:`~loyalty_moengage.moengage.connection` (the connection and its secrets) and
  :mod:`~loyalty_moengage.moengage.errors` (the exceptions, re-exported here).
"""


from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from airflow.sdk import BaseHook

from loyalty_moengage.moengage import connection, credentials, get_user
from loyalty_moengage.moengage.answers import too_large
from loyalty_moengage.moengage.connection import MoEngageConfig
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
from loyalty_moengage.moengage.sending import (
    SEND,
    TEST_CONNECTION_SECONDS,
    TEST_PLAN_SECONDS,
    HookStats,
    SendLoop,
    SendResult,
)
from loyalty_moengage.moengage.session import new_session

# How messages name the connection under test: Airflow's POST /connections/test (the UI's Test
# button) hands the hook a random transient conn_id, not the id the user sees.
TESTED_CONNECTION = "this connection"


def _as_text(exc: BaseException) -> str:
    """A failure as the Test button shows it: ours already name cause and fix; others need their type."""
    return str(exc) if isinstance(exc, MoEngageError) else f"{type(exc).__name__}: {exc}"


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
        self.stats = HookStats()
        self._loop = SendLoop(self, clock=clock, sleep=sleep)

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
        return new_session(self.config)

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
        kind, body = replace(credentials.PREFLIGHT, deadline=deadline), credentials.request_body(cfg)
        try:
            answer, attempts = self._loop.request(kind, credentials.PATH, body)
        except MoEngageTransientError as exc:
            raise credentials.could_not_verify(exc) from None
        self._preflight = credentials.verified(answer, attempts.requests, cfg)
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
                           f"{self._loop.unreachable_fix(host)}")
        finally:
            self._described_as = ""
            self.__dict__.pop("config", None)

    def _test_connection(self) -> tuple[bool, str]:
        try:
            result = self.preflight(deadline=self._clock() + TEST_PLAN_SECONDS)
        except Exception as exc:  # noqa: BLE001 - the Test button shows any failure as text
            return False, _as_text(exc)
        return True, (f"Connected to MoEngage workspace {result['app_name'] or result['workspace_id']} "
                      f"on {self.config.where}.")

    def send_transition(self, body: bytes, *, users: int, events: int,
                        before_post: Callable[[], None] | None = None) -> SendResult:
        """POST one packed bulk body (see :mod:`loyalty_moengage.moengage.packing`). ``before_post``
        runs right before each HTTP request leaves; what it raises stops the send unsent (the outbox
        re-checks its claim and stamps when the request left)."""
        if len(body) > TRANSITION_MAX_BYTES:
            raise too_large(len(body), TRANSITION_MAX_BYTES)
        return self._send(f"/v1/transition/{self.config.workspace_id}", body, users=users, events=events,
                          before_post=before_post)

    def send_user(self, element: dict[str, Any]) -> SendResult:
        body = orjson.dumps(element)
        if len(body) > SINGLE_MAX_BYTES:
            raise too_large(len(body), SINGLE_MAX_BYTES)
        return self._send(f"/v1/customer/{self.config.workspace_id}", body, users=1, events=0)

    def send_event(self, element: dict[str, Any]) -> SendResult:
        body = orjson.dumps(element)
        if len(body) > SINGLE_MAX_BYTES:
            raise too_large(len(body), SINGLE_MAX_BYTES)
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
        path = get_user.export_path(self.config.workspace_id)
        for chunk in get_user.batches(customer_ids):
            self.stats.pacing_seconds += self.lookup_bucket.acquire(len(chunk))
            self._wait_for_window([(self.lookup_window, len(chunk))], [self.lookup_bucket])
            body = get_user.request_body(chunk, fields)
            answer, _ = self._loop.request(get_user.LOOKUP, path, body,
                                           pacer=([self.lookup_window], [self.lookup_bucket]))
            self.stats.lookups += len(chunk)
            found.update(get_user.users_found(answer, self.config))
        return found

    def close(self) -> None:
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    # -- sending --------------------------------------------------------------------------
    def _send(self, path: str, body: bytes, *, users: int, events: int,
              before_post: Callable[[], None] | None = None) -> SendResult:
        """One data send: preflight once, pace on both budgets and the server's window, then the send loop."""
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
        answer, attempts = self._loop.request(SEND, path, body, pacer=([w for w, _ in needs], buckets),
                                              before_post=before_post)
        retries = attempts.tries - 1
        self.stats.sends += 1
        self.stats.users += users
        self.stats.events += events
        return SendResult(status=answer.response.status_code, request_id=answer.request_id,
                          attempts=attempts.requests, throttled=attempts.throttled, retries=retries,
                          bytes_sent=len(body), seconds=self._clock() - started,
                          request_ids=tuple(attempts.request_ids))


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
