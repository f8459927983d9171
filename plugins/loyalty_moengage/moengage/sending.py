"""The hook's one send loop: attempts, the retry policy (tenacity), 429 waits, and giving up.

Outcomes of one request:

* 2xx, unless it says ``"status": "fail"``: accepted (not yet ingested; MoEngage has no per-element report).
* 429: wait ``x-ratelimit-reset`` seconds (or back off when absent) and resend; never counted
  against ``max_retries``, given up after ``max_throttled`` waits in a row with
  :class:`MoEngageRateLimitError` naming the budget. The same on every endpoint: bulk and single
  sends, Get User API lookups, the credential preflight.
* connect errors (nothing was sent): retried with exponential backoff and jitter, ``max_retries``
  times, then :class:`MoEngageTransientError`. On lookups and the preflight, 5xx and 408 too.
* a data send's body sent, then any answer that does not name the request (500, 502, 503, 504,
  408), a read timeout or a dropped connection: a proxy or load balancer answers so after MoEngage
  applied the body as readily as before, and MoEngage has no dedupe, so the outcome is unknown:
  :class:`MoEngageUncertainError` at once, never the same bytes again (the outbox settles it by a
  receipt and resends with a new one), unless ``retry_uncertain=True``.
* 400, 401, 403, 409, 413, 415 (and any other status not named here), or 2xx with
  ``"status": "fail"``: :class:`MoEngagePermanentError` naming the cause and the fix; never retried.

Bulk and single sends, lookups and the preflight share this loop (:meth:`SendLoop.request`); a
:class:`RequestKind` says what differs. Lookups and the preflight are idempotent: every failure
without an answer, and every 504, is retried like a 5xx, and their callers read the answer. The
Test button's preflight also has a deadline (``TEST_CONNECTION_SECONDS``).

As in apache-airflow-providers-http, only failures before a connection exists are safe to replay,
and ``retry_args`` overrides tenacity's defaults the way ``HttpHook.run_with_advanced_retry`` does.
How MoEngage's answers are read and judged: :mod:`loyalty_moengage.moengage.answers`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import tenacity

from loyalty_moengage.moengage.answers import (
    UNCERTAIN_FIX,
    Answer,
    Pacer,
    bank,
    error_text,
    judge,
    observe,
    read_body,
    request_id,
    reset_seconds,
)
from loyalty_moengage.moengage.connection import MoEngageConfig
from loyalty_moengage.moengage.datacenters import label
from loyalty_moengage.moengage.errors import MoEngageRateLimitError, MoEngageTransientError, MoEngageUncertainError

# The Test button: every try must end within TEST_CONNECTION_SECONDS. The tries are planned on the
# hook's clock within TEST_PLAN_SECONDS (connect at most _TEST_CONNECT_SECONDS each); a watchdog
# answers at TEST_CONNECTION_SECONDS whatever requests does (it cannot bound DNS, and its connect
# timeout applies to each address a host name resolves to).
TEST_CONNECTION_SECONDS = 10.0
TEST_PLAN_SECONDS = 9.0
_TEST_CONNECT_SECONDS = 4.0
_TEST_MAX_RETRIES = 2
_MIN_TRY_SECONDS = 1.0  # no new try with less time than this left


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one data send did: MoEngage's ids for every request (what its support asks for) and the cost."""

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
    """What a hook did over its life (the loop counts requests, 429s, retries and bytes; the hook the rest)."""

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


class Retryable(Exception):
    """One failed attempt that may be repeated (what tenacity retries on; never leaves the loop)."""

    def __init__(self, cause: str, *, status: int | None = None, request_id: str | None = None,
                 unreachable: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.status = status
        self.request_id = request_id
        self.unreachable = unreachable  # no connection was made: name the host


@dataclass(slots=True)
class Attempts:
    """What one call of the loop did so far: its messages and results count these."""

    requests: int = 0
    throttled: int = 0
    tries: int = 0
    request_ids: list[str | None] = field(default_factory=list)


class LoopOwner(Protocol):
    """What the loop reads from the hook that owns it, at each use (the hook may rebuild ``config``
    for the Test button, or close ``session``)."""

    share: float
    retry_uncertain: bool
    max_retries: int
    max_throttled: int
    backoff_initial: float
    backoff_max: float
    retry_args: dict[str, Any]
    idle_reconnect_seconds: float
    stats: HookStats

    @property
    def config(self) -> MoEngageConfig: ...

    @property
    def session(self) -> requests.Session: ...

    @property
    def log(self) -> logging.Logger: ...


@dataclass(frozen=True, slots=True)
class RequestKind:
    """What the one send loop (:meth:`SendLoop.request`) does differently per kind of request.

    ``idempotent=False`` is a data send: its bytes count in ``HookStats.bytes_sent``; MoEngage has
    no dedupe, so a body sent without an answer, or answered 5xx or 408, is uncertain; and the loop judges
    the answer (4xx, or 2xx with ``"status": "fail"``: permanent). An idempotent request retries every
    failure without an answer, and its caller reads the answer.
    """

    idempotent: bool
    budget: str | None  # the rate limit it spends, as 429 messages name it; None: the users/events budgets
    advice: Callable[[LoopOwner], str]  # the fix when 429s keep coming
    deadline: float | None = None  # on the hook's clock: every try ends by then (the Test button)


def send_advice(owner: LoopOwner) -> str:
    """The fix when data sends keep getting 429s."""
    return ("Another sender is spending this workspace's budget, or the budget in the connection "
            "extras is higher than MoEngage's: lower users_per_minute/events_per_minute or use a Pool.")


SEND = RequestKind(idempotent=False, budget=None, advice=send_advice)


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


class SendLoop:
    """A hook's one send loop, on the hook's session, clock and retry settings.

    :param owner: the hook; read at each use, so its settings and ``stats`` are always current.
    :param clock: the hook's clock (deadlines, idle connections); ``sleep``: how it waits.
    """

    def __init__(self, owner: LoopOwner, *, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.owner = owner
        self.clock = clock
        self.sleep = sleep
        self.last_io: float | None = None  # when the session last sent or read

    def request(self, kind: RequestKind, path: str, body: bytes, *, pacer: Pacer = ((), ()),
                before_post: Callable[[], None] | None = None) -> tuple[Answer, Attempts]:
        """The one send loop: tenacity resends what ``kind`` allows (failures that sent nothing; for
        idempotent kinds 5xx, 408 and failures without an answer too) with backoff; each attempt waits
        out its 429s, so they never use up retries. ``before_post`` runs right before every HTTP
        request leaves (after pacing, backoff and 429 waits); whatever it raises ends the loop unsent."""
        attempts = Attempts()
        started = self.clock()
        try:
            for attempt in self._retrying(deadline=kind.deadline):
                with attempt:
                    attempts.tries += 1
                    answer = self._attempt(kind, path, body, attempts, pacer, before_post)
                    self.owner.stats.retries += attempts.tries - 1
                    return answer, attempts
        except Retryable as exc:
            raise self._gave_up(kind, exc, attempts, started) from None
        raise AssertionError("unreachable")

    def _retrying(self, *, deadline: float | None = None) -> tenacity.Retrying:
        owner = self.owner
        retries = owner.max_retries if deadline is None else min(owner.max_retries, _TEST_MAX_RETRIES)
        stop: Callable[[tenacity.RetryCallState], bool] = tenacity.stop_after_attempt(retries + 1)
        if deadline is not None:
            by_count = stop

            def stop(state: tenacity.RetryCallState) -> bool:
                # no new try that would start with less than _MIN_TRY_SECONDS left
                return by_count(state) or self.clock() + state.upcoming_sleep + _MIN_TRY_SECONDS > deadline

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            owner.log.warning("MoEngage request failed (%s; request_id %s); retry %d/%d in %.2f s",
                              getattr(exc, "cause", exc), getattr(exc, "request_id", None),
                              state.attempt_number, retries,
                              state.next_action.sleep if state.next_action else 0.0)

        args: dict[str, Any] = {
            "stop": stop,
            "wait": tenacity.wait_exponential_jitter(initial=owner.backoff_initial, max=owner.backoff_max,
                                                     jitter=owner.backoff_initial),
            "retry": tenacity.retry_if_exception_type(Retryable),
            "sleep": self.sleep,
            "reraise": True,
            "before_sleep": before_sleep,
        }
        args.update(owner.retry_args)
        return tenacity.Retrying(**args)

    def _post(self, path: str, body: bytes, *, timeout: tuple[float, float] | None = None) -> requests.Response:
        owner = self.owner
        cfg = owner.config
        now = self.clock()
        if self.last_io is not None and now - self.last_io > owner.idle_reconnect_seconds:
            # A pooled connection idle this long may be closed by a load balancer mid-request,
            # which would look like an uncertain outcome: start from a fresh connection instead.
            for adapter in owner.session.adapters.values():
                adapter.poolmanager.clear()
        try:
            return owner.session.post(cfg.base_url + path, data=body,
                                      timeout=timeout or (min(10.0, cfg.timeout), cfg.timeout))
        finally:
            self.last_io = self.clock()
            owner.stats.requests += 1

    def _attempt(self, kind: RequestKind, path: str, body: bytes, attempts: Attempts, pacer: Pacer,
                 before_post: Callable[[], None] | None = None) -> Answer:
        """One logical attempt: 429s are waited out inside it; a send's 5xx or 408 is uncertain, an
        idempotent request's raises ``Retryable``."""
        owner = self.owner
        while True:
            if before_post is not None:
                before_post()
            attempts.requests += 1
            try:
                response = self._post(path, body, timeout=self._try_timeout(kind.deadline))
            except requests.RequestException as exc:
                attempts.request_ids.append(None)
                raise self._unanswered(kind, exc, len(body), attempts.requests) from None
            status = response.status_code
            doc = read_body(response)
            rid = request_id(doc, response)
            attempts.request_ids.append(rid)
            if not kind.idempotent:
                owner.stats.bytes_sent += len(body)
                owner.log.debug("MoEngage POST %s -> %s request_id=%s bytes=%d", path, status, rid, len(body))
            observe(pacer, response)
            if status == 429:
                self._wait_out_429(kind, response, rid, attempts, pacer)
                continue
            if (status >= 500 or status == 408) and not (kind.idempotent or owner.retry_uncertain):
                # The body reached MoEngage's edge: a proxy answers this after the upstream applied it too.
                cause = (f"MoEngage answered HTTP {status} ({error_text(doc, response)}, request_id {rid}) on "
                         f"{owner.config.where} after the body was sent; a proxy or load balancer answers so "
                         "after MoEngage applied a request, so it may or may not have it")
                raise MoEngageUncertainError.of(cause, UNCERTAIN_FIX, status=status, request_id=rid,
                                                attempts=attempts.requests)
            if status >= 500 or status == 408:
                raise Retryable(f"HTTP {status} {error_text(doc, response)}", status=status, request_id=rid)
            answer = Answer(response, doc, rid)
            if not kind.idempotent:
                judge(answer, owner.config, attempts.requests)
            return answer

    def _try_timeout(self, deadline: float | None) -> tuple[float, float] | None:
        """Under a deadline, connect and read timeouts that end the try by then; else the connection's."""
        if deadline is None:
            return None
        cfg = self.owner.config
        left = max(0.1, deadline - self.clock())
        return round(min(_TEST_CONNECT_SECONDS, cfg.timeout, left), 1), round(min(cfg.timeout, left), 1)

    def _unanswered(self, kind: RequestKind, exc: requests.RequestException, size: int, attempts: int
                    ) -> Retryable | MoEngageUncertainError:
        """A request that got no answer: retryable, unless a send's body may have arrived."""
        cfg = self.owner.config
        if kind.idempotent:
            if _never_sent(exc):
                host = urlsplit(cfg.base_url).netloc
                return Retryable(f"cannot reach {host} ({_describe(exc)})", unreachable=True)
            return Retryable(f"no answer from {cfg.where} ({_describe(exc)})")
        if _never_sent(exc):
            return Retryable(f"could not connect ({_describe(exc)})")
        if self.owner.retry_uncertain:
            return Retryable(f"no answer after the body was sent ({_describe(exc)})")
        cause = (f"the request body ({size} bytes) was sent to {cfg.where} but no answer came "
                 f"({_describe(exc)}); MoEngage may or may not have accepted it")
        return MoEngageUncertainError.of(cause, UNCERTAIN_FIX, attempts=attempts)

    def _wait_out_429(self, kind: RequestKind, response: requests.Response, rid: str | None,
                      attempts: Attempts, pacer: Pacer) -> None:
        """Wait until the budget resets; give up when 429s persist or the wait would pass the deadline."""
        owner = self.owner
        attempts.throttled += 1
        owner.stats.throttled += 1
        if attempts.throttled > owner.max_throttled:
            raise self._rate_limited(kind, response, rid, attempts)
        wait = self._throttle_wait(response, attempts.throttled)
        if kind.deadline is not None and self.clock() + wait > kind.deadline:
            raise self._rate_limited(kind, response, rid, attempts, past_deadline=True)
        owner.log.info("MoEngage rate limit%s (429, request_id %s): waiting %.2f s for the budget to reset",
                       f" on {kind.budget}" if kind.budget else "", rid, wait)
        owner.stats.throttle_seconds += wait
        self.sleep(wait)
        bank(pacer, wait)

    @staticmethod
    def _throttle_wait(response: requests.Response, count: int) -> float:
        """Seconds until the budget resets: ``x-ratelimit-reset`` (seconds or epoch), else backoff."""
        wait = reset_seconds(response)
        if wait is None:
            wait = min(60.0, 2.0 ** min(count - 1, 6))
        # A little jitter so tasks sharing a workspace do not all return on the same instant.
        return min(wait, 120.0) + random.uniform(0, 0.05 + 0.05 * wait)

    def _rate_limited(self, kind: RequestKind, response: requests.Response, rid: str | None,
                      attempts: Attempts, *, past_deadline: bool = False) -> MoEngageRateLimitError:
        cfg = self.owner.config
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
        return MoEngageRateLimitError.of(cause, kind.advice(self.owner), status=429, request_id=rid,
                                         attempts=attempts.requests)

    def _gave_up(self, kind: RequestKind, exc: Retryable, attempts: Attempts, started: float
                 ) -> MoEngageTransientError:
        """The retries are spent: what kept failing, and what to check."""
        cfg = self.owner.config
        if not kind.idempotent:
            fix = ("MoEngage or the network kept failing; the run can be resumed later. "
                   "Check https://status.moengage.com and the worker's network.")
            return MoEngageTransientError.of(f"{exc.cause} after {attempts.tries} attempts on {cfg.where}", fix,
                                             status=exc.status, request_id=exc.request_id, attempts=attempts.requests)
        tries = f"{attempts.tries} attempts" + (f" in {self.clock() - started:.1f} s" if kind.deadline else "")
        if exc.unreachable:
            fix = self.unreachable_fix(urlsplit(cfg.base_url).netloc)
        elif exc.status is None:
            fix = "Check the network path to MoEngage and the data centre in the connection, then retry."
        else:
            fix = "MoEngage kept failing: check https://status.moengage.com and retry later."
        return MoEngageTransientError.of(exc.cause, fix, detail=f" after {tries}", status=exc.status,
                                         request_id=exc.request_id, attempts=attempts.requests)

    def unreachable_fix(self, host: str) -> str:
        """What to check when ``host`` cannot be reached (the Test button says it too)."""
        try:
            cfg = self.owner.config
        except Exception:  # noqa: BLE001 - only wording
            return f"Check the data centre and base_url of the connection, and that this machine can reach {host}."
        return (f"Check the Data centre field ({label(cfg.data_center)}, so {cfg.base_url}) and the base_url extra "
                f"in {cfg.name}, and that this machine can reach {host} (DNS, proxy, firewall or egress rules).")
