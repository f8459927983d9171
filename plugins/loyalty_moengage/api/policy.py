"""Each program's API policy (the ``api:`` block of the programs file), cached for a minute.

A program the file does not list, or a file that cannot be read, gets the defaults
(config/api_policy.py): they are the safe ones (caps on, the platform's profile wins), so a
broken file can never widen what a key may do. The file is read in a thread, at most once a
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
    """{program_id: policy} from the programs file; {} (every program on defaults) when it is unusable."""
    from loyalty_moengage.config.programs import ProgramsFileError, load_programs

    try:
        return {p.id: p.api for p in load_programs()}
    except (ProgramsFileError, OSError) as exc:
        log.error("programs file unusable, API policies fall back to the defaults: %s", exc)
        return {}


class PolicyCache:
    def __init__(self, ttl: float = 60.0, loader=read_policies) -> None:
        self.ttl = ttl
        self._loader = loader
        self._policies: dict[str, ApiPolicy] | None = None
        self._loaded_at = 0.0

    async def get(self, program_id: str) -> ApiPolicy:
        if self._policies is None or time.monotonic() - self._loaded_at >= self.ttl:
            self._policies = await anyio.to_thread.run_sync(self._loader)
            self._loaded_at = time.monotonic()
        return self._policies.get(program_id, DEFAULT_POLICY)


async def program_policy(request: Request, program_id: str) -> ApiPolicy:
    """The policy of ``program_id`` from the cache of the app serving ``request``."""
    cache = getattr(request.app.state, "policies", None)
    if cache is None:
        cache = request.app.state.policies = PolicyCache()
    return await cache.get(program_id)
