"""Each program's API policy (the ``api:`` block of the programs file), cached for a minute.

A program the file does not list gets the defaults (config/api_policy.py). A file broken by
an edit keeps the last policies read; an API that never read a good one uses the defaults. The file is read in a thread, at most once a
``ttl``; a request never waits for YAML unless the cache is empty.
"""

from __future__ import annotations

import logging
import time

import anyio
from starlette.requests import Request

from loyalty_moengage.config.api_policy import DEFAULT_POLICY, ApiPolicy

log = logging.getLogger(__name__)


def read_policies() -> dict[str, ApiPolicy]:
    """{program_id: policy} from the programs file (raises when it is unusable)."""
    from loyalty_moengage.config.programs import load_programs

    return {p.id: p.api for p in load_programs()}


class PolicyCache:
    def __init__(self, ttl: float = 60.0, loader=read_policies) -> None:
        self.ttl = ttl
        self._loader = loader
        self._policies: dict[str, ApiPolicy] | None = None
        self._loaded_at = 0.0

    async def get(self, program_id: str) -> ApiPolicy:
        if self._policies is None or time.monotonic() - self._loaded_at >= self.ttl:
            await self._reload()
        return (self._policies or {}).get(program_id, DEFAULT_POLICY)

    async def _reload(self) -> None:
        """A file broken by an edit keeps the last good policies (a typo must not lift a cap);
        with none yet, every program gets the defaults until the file is fixed."""
        try:
            self._policies = await anyio.to_thread.run_sync(self._loader)
        except Exception as exc:  # ProgramsFileError, OSError, UnicodeDecodeError, ...
            kept = "keeping the last good policies" if self._policies else "using the defaults"
            log.error("programs file unusable for the API (%s): %s; %s", type(exc).__name__, exc, kept)
        self._loaded_at = time.monotonic()


async def program_policy(request: Request, program_id: str) -> ApiPolicy:
    """The policy of ``program_id`` from the cache of the app serving ``request``."""
    cache = getattr(request.app.state, "policies", None)
    if cache is None:
        cache = request.app.state.policies = PolicyCache()
    return await cache.get(program_id)
