"""The MoEngage failures the hook raises, by what the caller can do about them.

* :class:`MoEngagePermanentError` (and :class:`MoEngageAuthError`): sending again cannot help.
* :class:`MoEngageTransientError` (and :class:`MoEngageRateLimitError`): try the run again later.
* :class:`MoEngageUncertainError`: the body was sent and may have been accepted; resending may
  duplicate events, so reconcile first.
* :class:`MoEngageConfigError`: the Airflow connection is wrong; nothing was sent.

Every message names the cause and the fix; ``cause`` and ``fix`` are also kept apart for reports
(:meth:`MoEngageError.of` builds the message from them).
"""

from __future__ import annotations

from typing import Self

# The answers that sending again cannot mend (the hook words a cause and a fix for each).
PERMANENT_STATUSES = frozenset({400, 401, 403, 409, 413, 415})
# Among them, the ones that say the connection is wrong, not the batch.
CONFIG_STATUSES = frozenset({401, 403, 409})


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

    @classmethod
    def of(
        cls,
        cause: str,
        fix: str,
        *,
        detail: str = "",
        status: int | None = None,
        request_id: str | None = None,
        attempts: int = 0,
    ) -> Self:
        """The error whose message is ``"<cause><detail>. <fix>"``.

        ``detail`` is for the message only (``"; request_id …"``, ``" after 3 attempts"``), so
        ``cause`` stays what went wrong.
        """
        return cls(f"{cause}{detail}. {fix}", status=status, request_id=request_id, attempts=attempts,
                   cause=cause, fix=fix)


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


def is_config_failure(exc: BaseException) -> bool:
    """True when the connection is wrong, not the batch: no other batch can fare better."""
    if isinstance(exc, MoEngageConfigError):
        return True
    return isinstance(exc, MoEngagePermanentError) and exc.status in CONFIG_STATUSES


__all__ = [
    "CONFIG_STATUSES",
    "PERMANENT_STATUSES",
    "MoEngageAuthError",
    "MoEngageConfigError",
    "MoEngageError",
    "MoEngagePermanentError",
    "MoEngageRateLimitError",
    "MoEngageTransientError",
    "MoEngageUncertainError",
    "is_config_failure",
]
