"""A faithful local MoEngage Data API for tests, drills and demos (``python -m loyalty_moengage_devtools.sandbox``).

See :mod:`loyalty_moengage_devtools.sandbox.server` for what it checks and how it differs from MoEngage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loyalty_moengage_devtools.sandbox.server import SandboxApp, SandboxServer
    from loyalty_moengage_devtools.sandbox.state import Faults, SandboxState

__all__ = ["Faults", "SandboxApp", "SandboxServer", "SandboxState", "Sandbox"]


def __getattr__(name: str) -> Any:
    # aiohttp is imported only when the sandbox is actually used.
    if name in {"SandboxServer", "SandboxApp", "Sandbox"}:
        from loyalty_moengage_devtools.sandbox import server

        return server.SandboxServer if name == "Sandbox" else getattr(server, name)
    if name in {"Faults", "SandboxState"}:
        from loyalty_moengage_devtools.sandbox import state

        return getattr(state, name)
    raise AttributeError(name)
