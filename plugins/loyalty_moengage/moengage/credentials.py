"""The credential preflight (``MoEngageHook.preflight``): prove the Workspace ID, the Data API key
and the data centre work before anything is sent.

MoEngage's authentication endpoint answers ``"status": "success"`` for credentials valid on the
data centre asked; a workspace exists on one data centre only, so a wrong one fails here rather
than on the night's first send. The request is idempotent (the send loop retries what a send could
not) and spends MoEngage's per-user fair-use budget, not the workspace's.
"""

from __future__ import annotations

from typing import Any

import orjson

from loyalty_moengage.moengage.answers import Answer, error_text
from loyalty_moengage.moengage.connection import MoEngageConfig
from loyalty_moengage.moengage.errors import MoEngageAuthError, MoEngageTransientError
from loyalty_moengage.moengage.sending import LoopOwner, RequestKind

PATH = "/v1/integrations/authentication"


def auth_advice(owner: LoopOwner) -> str:
    """The fix when the authentication endpoint keeps answering 429."""
    return ("The authentication endpoint is rate-limited by MoEngage's per-user fair use (5,000 requests/min): "
            "something is checking credentials in a loop. Stop it, wait a minute, and retry.")


PREFLIGHT = RequestKind(idempotent=True, budget="the authentication endpoint (credential preflight)",
                        advice=auth_advice)


def request_body(cfg: MoEngageConfig) -> bytes:
    return orjson.dumps({"app_id": cfg.workspace_id, "app_secret": cfg.api_key.reveal(),
                         "source": "airflow-loyalty-moengage", "region": cfg.data_center})


def could_not_verify(exc: MoEngageTransientError) -> MoEngageTransientError:
    """The same failure, saying it was the credential check that could not be made."""
    return type(exc)(
        f"Could not verify MoEngage credentials: {exc}", status=exc.status,
        request_id=exc.request_id, attempts=exc.attempts, cause=exc.cause, fix=exc.fix)


def verified(answer: Answer, attempts: int, cfg: MoEngageConfig) -> dict[str, Any]:
    """What the preflight proved (the hook keeps it); credentials MoEngage rejected raise, saying what to check."""
    response, doc, request_id = answer.response, answer.doc, answer.request_id
    if response.status_code != 200 or doc.get("status") != "success":
        detail = f"{response.status_code} {error_text(doc, response)}"
        cause = f"MoEngage rejected the credentials ({detail}) on {cfg.where}"
        fix = (f"Check the Workspace ID, the Data API key and the data centre in {cfg.name}: "
               "a workspace exists on one data centre only.")
        raise MoEngageAuthError.of(cause, fix, status=response.status_code, request_id=request_id,
                                   attempts=attempts)
    return {"status": "success", "app_name": doc.get("app_name"), "workspace_id": cfg.workspace_id,
            "data_center": cfg.data_center, "base_url": cfg.base_url, "request_id": request_id}
