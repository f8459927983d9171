"""The hook's one keep-alive ``requests.Session``: MoEngage's auth headers and HttpHook's TCP keep-alive adapter.

One session for the hook's lifetime (``HttpHook.run()`` builds one per call): a night of ~200
requests/min reuses its connections. The ``Authorization`` header is computed once, from a
:class:`~loyalty_moengage.moengage.connection.Secret`, and never printed.
"""

from __future__ import annotations

import requests

from loyalty_moengage.moengage.connection import MoEngageConfig, Secret


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


def _keep_alive_adapter() -> requests.adapters.HTTPAdapter:
    """The TCP keep-alive adapter HttpHook mounts, with a pool sized for one task's traffic."""
    try:
        from requests_toolbelt.adapters.socket_options import TCPKeepAliveAdapter
    except ImportError:  # pragma: no cover - requests-toolbelt comes with the http provider
        return requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=8, max_retries=0)
    return TCPKeepAliveAdapter(idle=120, count=20, interval=30, pool_connections=2, pool_maxsize=8, max_retries=0)


def new_session(cfg: MoEngageConfig) -> requests.Session:
    """A session that authenticates as ``cfg``'s workspace, speaks JSON and keeps its connections alive."""
    session = requests.Session()
    session.auth = _MoEngageAuth(cfg.workspace_id, cfg.auth_header)
    session.headers.update({"Content-Type": "application/json", "Accept": "application/json",
                            "User-Agent": "loyalty-moengage/0.1"})
    adapter = _keep_alive_adapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
