"""The MoEngage failures the hook raises, by what the caller can do about them.

* :class:`MoEngagePermanentError` (and :class:`MoEngageAuthError`): sending again cannot help.
* :class:`MoEngageTransientError` (and :class:`MoEngageRateLimitError`): try the run again later.
* :class:`MoEngageUncertainError`: the body was sent and may have been accepted; resending may
  duplicate events, so reconcile first.
* :class:`MoEngageConfigError`: the Airflow connection is wrong; nothing was sent.

Every message names the cause and the fix; ``cause`` and ``fix`` are also kept apart for reports.
"""

from __future__ import annotations


class MoEngageError(Exception):
    """Any MoEngage failure; ``status``/``request_id`` are None when MoEngage never answered."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        attempts: int = 0,
        cause: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id
        self.attempts = attempts
        self.cause = cause
        self.fix = fix


class MoEngageConfigError(MoEngageError, ValueError):
    """The Airflow connection cannot describe a MoEngage workspace."""


class MoEngagePermanentError(MoEngageError):
    """MoEngage refused the request; sending it again cannot help."""


class MoEngageAuthError(MoEngagePermanentError):
    """Credentials or data centre are wrong (or the workspace is blocked)."""


class MoEngageTransientError(MoEngageError):
    """MoEngage kept failing (5xx, timeouts, refused connections) past the retry budget."""


class MoEngageRateLimitError(MoEngageTransientError):
    """429 kept coming back past ``max_throttled`` waits."""


class MoEngageUncertainError(MoEngageError):
    """The body was sent but no answer came: MoEngage may or may not have accepted it."""


__all__ = [
    "MoEngageAuthError",
    "MoEngageConfigError",
    "MoEngageError",
    "MoEngagePermanentError",
    "MoEngageRateLimitError",
    "MoEngageTransientError",
    "MoEngageUncertainError",
]
