"""Per-program API keys and store (outlet) keys, never in the repository.

Where a program's keys come from, first found wins (program ids from ``LOYALTY_API_PROGRAMS``,
comma-separated, default ``demo``):

1. Airflow Connection ``loyalty_api_<program_id>`` (conn_type ``generic``): password = the
   program's API key, extra ``{"store_keys": {"<store_id>": "<store key>", ...}}``. Works from
   the metadata DB, a secrets backend, or ``AIRFLOW_CONN_LOYALTY_API_<PROGRAM_ID>`` (JSON).
2. Airflow Variable ``loyalty_api_<program_id>`` holding JSON
   ``{"api_key": "...", "store_keys": {...}}`` (also ``AIRFLOW_VAR_LOYALTY_API_<PROGRAM_ID>``),
   handy for a local demo.

The result is cached for ``LOYALTY_API_KEYS_TTL`` seconds (default 60): a request costs no
secrets-backend or database work, a wrong key costs nothing at all, and a rotated key takes
effect within a minute. Keys are compared with ``hmac.compare_digest`` against every
candidate, so the time taken does not reveal which program or how many characters matched.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MIN_KEY_LENGTH = 16


@dataclass(frozen=True)
class ProgramKeys:
    program_id: str
    api_key: str
    store_keys: dict[str, str] = field(default_factory=dict)  # store_id -> store key


@dataclass(frozen=True)
class KeyRing:
    programs: dict[str, ProgramKeys]

    def program_for(self, api_key: str | None) -> str | None:
        """The program whose API key this is, or None. Checks every program (no early exit)."""
        if not api_key:
            return None
        supplied = api_key.encode("utf-8", "surrogatepass")
        found = None
        for keys in self.programs.values():
            if hmac.compare_digest(supplied, keys.api_key.encode("utf-8")):
                found = keys.program_id
        return found

    def store_for(self, program_id: str, store_key: str | None) -> str | None:
        """The store of ``program_id`` whose outlet key this is, or None."""
        if not store_key or program_id not in self.programs:
            return None
        supplied = store_key.encode("utf-8", "surrogatepass")
        found = None
        for store_id, key in self.programs[program_id].store_keys.items():
            if hmac.compare_digest(supplied, key.encode("utf-8")):
                found = store_id
        return found


def program_ids() -> list[str]:
    raw = os.environ.get("LOYALTY_API_PROGRAMS", "demo")
    return [p.strip() for p in raw.split(",") if p.strip()]


def _from_connection(program_id: str) -> ProgramKeys | None:
    conn_id = f"loyalty_api_{program_id}"
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # not defined, or no Airflow context at all
        log.debug("connection %s not usable: %s", conn_id, type(exc).__name__)
        return None
    extra: Any = conn.extra_dejson or {}
    return _keys(program_id, conn.password, extra.get("store_keys"), f"connection {conn_id}")


def _from_variable(program_id: str) -> ProgramKeys | None:
    name = f"loyalty_api_{program_id}"
    raw = None
    try:
        from airflow.sdk import Variable

        raw = Variable.get(name, default=None)
    except Exception as exc:
        log.debug("variable %s not usable: %s", name, type(exc).__name__)
    if raw is None:
        raw = os.environ.get(f"AIRFLOW_VAR_{name.upper()}")
    if raw is None:
        return None
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        log.error("variable %s is not JSON; keys for program %s ignored", name, program_id)
        return None
    if not isinstance(value, dict):
        return None
    return _keys(program_id, value.get("api_key"), value.get("store_keys"), f"variable {name}")


def _keys(program_id: str, api_key: Any, store_keys: Any, where: str) -> ProgramKeys | None:
    """Validated keys; short or malformed keys are refused so a typo cannot open the API."""
    if not isinstance(api_key, str) or len(api_key) < MIN_KEY_LENGTH:
        log.error("%s: API key missing or shorter than %d characters; program %s disabled",
                  where, MIN_KEY_LENGTH, program_id)
        return None
    stores: dict[str, str] = {}
    if isinstance(store_keys, dict):
        for store_id, key in store_keys.items():
            if isinstance(key, str) and len(key) >= MIN_KEY_LENGTH:
                stores[str(store_id)] = key
            else:
                log.error("%s: store key of %s missing or too short; ignored", where, store_id)
    elif store_keys is not None:
        log.error("%s: store_keys must be an object {store_id: key}", where)
    return ProgramKeys(program_id, api_key, stores)


def load_keys(programs_ids: list[str] | tuple[str, ...] | None = None) -> KeyRing:
    """Read the keys of ``programs_ids`` (default: ``LOYALTY_API_PROGRAMS``) now, uncached;
    programs without usable keys are skipped (their requests get 401)."""
    programs: dict[str, ProgramKeys] = {}
    for program_id in programs_ids if programs_ids is not None else program_ids():
        keys = _from_connection(program_id) or _from_variable(program_id)
        if keys is None:
            log.warning("no API keys for program %s: its endpoints answer 401", program_id)
            continue
        programs[program_id] = keys
    return KeyRing(programs)


class CachedKeys:
    """``load_keys()`` at most once per ``ttl`` seconds; stale keys serve while one thread reloads."""

    def __init__(self, ttl: float = 60.0, loader=load_keys) -> None:
        self.ttl = ttl
        self._loader = loader
        self._ring: KeyRing | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def get(self) -> KeyRing:
        ring = self._ring
        if ring is not None and time.monotonic() - self._loaded_at < self.ttl:
            return ring
        if ring is not None and not self._lock.acquire(blocking=False):
            return ring  # another thread is reloading: keep answering with the old keys
        if ring is None:
            self._lock.acquire()
        try:
            if self._ring is None or time.monotonic() - self._loaded_at >= self.ttl:
                try:
                    self._ring = self._loader()
                except Exception:
                    if self._ring is None:
                        raise
                    log.exception("reloading API keys failed; keeping the previous keys")
                self._loaded_at = time.monotonic()
            return self._ring
        finally:
            self._lock.release()

    def is_fresh(self) -> bool:
        """True when ``get()`` will answer from memory (no blocking reload)."""
        return self._ring is not None and (
            time.monotonic() - self._loaded_at < self.ttl or self._lock.locked()
        )

    def invalidate(self) -> None:
        self._loaded_at = 0.0
