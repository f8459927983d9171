"""Per-program keys, scoped read or write, and store (outlet) keys; never in the repository.

Why scopes: the key in a Content API URL is seen by every campaign editor, so it must not be
able to enrol members or credit points (points are money). A program therefore has

* **read keys**: the Content API (``GET /api/loyalty/points``), always with a store key;
* **write keys**: the connector webhook (``POST /api/customers/add``), which never reads points;
* **store keys**: one per outlet, ``{store_id: key}``, required by the points route.

Scopes are strict: a read key on the webhook is 403 (or 401 while the program has no write key at
all), a write key on the points route is 403. Where a program's keys come from, first found wins
(program ids from ``LOYALTY_API_PROGRAMS``, comma-separated, default ``demo``):

1. Airflow Connection ``loyalty_api_<program_id>`` (conn_type ``generic``), from the metadata DB,
   a secrets backend, or ``AIRFLOW_CONN_LOYALTY_API_<PROGRAM_ID>`` (JSON)::

       password: "<read key>"                # the key of the Content API URLs: READ only
       extra: {"read_keys":  ["<read key>", ...],      # more read keys (optional)
               "write_keys": ["<write key>", ...],     # the connector's keys
               "store_keys": {"<store_id>": "<store key>", ...}}

2. Airflow Variable ``loyalty_api_<program_id>`` (also ``AIRFLOW_VAR_LOYALTY_API_<PROGRAM_ID>``)
   holding JSON ``{"api_key": "<read key>", "read_keys": [...], "write_keys": [...],
   "store_keys": {...}}``, handy for a local demo.

The password (Variable: ``api_key``) is a read key, never a write key, so configurations made
before scopes existed keep their Content API working while their webhook answers 401 until
``write_keys`` is set. Every key has at least 16 characters; a key listed both as read and as
write stays read only, and a key shared by two programs is refused (both logged as errors).

Rotation: ``read_keys`` and ``write_keys`` hold 1 or 2 keys in normal use (old and new, both
valid while callers move over); more than 4 in one list is refused with a logged error (the
list is ignored), since a longer list means retired keys were never removed.

Callers send a key in a header, ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``, and
the store key in ``X-Store-Key``; the query parameters ``api_key`` and ``store_key`` are still
accepted (see auth.py).

The result is cached for ``LOYALTY_API_KEYS_TTL`` seconds (default 60): a request costs no
secrets-backend or database work, a wrong key costs nothing at all, and a rotated key takes
effect within a minute. Keys are compared with ``hmac.compare_digest`` against every
candidate, so the time taken does not reveal which program or how many characters matched.
"""

from __future__ import annotations

import hashlib
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
#: Most keys of one scope in one program: two during a rotation, four leaves slack.
MAX_KEYS_PER_SCOPE = 4
READ = "read"
WRITE = "write"


def key_id(key: str) -> str:
    """A short, stable name of a key for logs and rate-limit buckets (the key itself never is)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class KeyMatch:
    """Who a valid API key is: its program, its scope (``READ`` or ``WRITE``) and its ``key_id``."""

    program_id: str
    scope: str
    key_id: str


@dataclass(frozen=True)
class ProgramKeys:
    program_id: str
    api_key: str | None                                       # the password: a read key
    store_keys: dict[str, str] = field(default_factory=dict)  # store_id -> store key
    read_keys: tuple[str, ...] = ()                           # read keys besides api_key
    write_keys: tuple[str, ...] = ()

    def all_read_keys(self) -> tuple[str, ...]:
        """api_key and read_keys, each once; a key also listed as write stays read only."""
        keys = ((self.api_key,) if self.api_key else ()) + self.read_keys
        return tuple(dict.fromkeys(keys))

    def all_write_keys(self) -> tuple[str, ...]:
        reads = set(self.all_read_keys())
        return tuple(k for k in dict.fromkeys(self.write_keys) if k not in reads)


@dataclass(frozen=True)
class KeyRing:
    programs: dict[str, ProgramKeys]
    #: (encoded key, match) of every usable API key, built once per load so a request only compares.
    entries: tuple[tuple[bytes, KeyMatch], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", _entries(self.programs))

    def match(self, api_key: str | None) -> KeyMatch | None:
        """The program and scope of this API key, or None. Checks every key (no early exit)."""
        if not api_key:
            return None
        supplied = api_key.encode("utf-8", "surrogatepass")
        found = None
        for candidate, who in self.entries:
            if hmac.compare_digest(supplied, candidate):
                found = who
        return found

    def program_for(self, api_key: str | None) -> str | None:
        """The program whose API key (of either scope) this is, or None."""
        found = self.match(api_key)
        return found.program_id if found else None

    def has_write_keys(self, program_id: str) -> bool:
        keys = self.programs.get(program_id)
        return bool(keys and keys.all_write_keys())

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


def _entries(programs: dict[str, ProgramKeys]) -> tuple[tuple[bytes, KeyMatch], ...]:
    """Every API key with who it is; a key of two programs is refused (it would be either)."""
    owners: dict[str, set[str]] = {}
    for keys in programs.values():
        for key in keys.all_read_keys() + keys.all_write_keys():
            owners.setdefault(key, set()).add(keys.program_id)
    out = []
    for keys in programs.values():
        for scope, scoped in ((READ, keys.all_read_keys()), (WRITE, keys.all_write_keys())):
            for key in scoped:
                if len(owners[key]) > 1:
                    log.error("API key %s is configured for programs %s; refused for all of them",
                              key_id(key), ", ".join(sorted(owners[key])))
                    continue
                out.append((key.encode("utf-8", "surrogatepass"), KeyMatch(keys.program_id, scope, key_id(key))))
    return tuple(out)


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
    if not isinstance(extra, dict):
        extra = {}
    return _keys(program_id, conn.password, extra, f"connection {conn_id}")


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
    return _keys(program_id, value.get("api_key"), value, f"variable {name}")


def _key_list(value: Any, name: str, where: str) -> tuple[str, ...]:
    """The valid keys of a ``read_keys``/``write_keys`` list; a malformed or too long list is refused."""
    if value is None:
        return ()
    if not isinstance(value, list):
        log.error("%s: %s must be a list of keys; ignored", where, name)
        return ()
    if len(value) > MAX_KEYS_PER_SCOPE:
        log.error("%s: %s has %d keys, at most %d (remove retired keys); %s ignored",
                  where, name, len(value), MAX_KEYS_PER_SCOPE, name)
        return ()
    keys = []
    for i, key in enumerate(value):
        if isinstance(key, str) and len(key) >= MIN_KEY_LENGTH:
            keys.append(key)
        else:
            log.error("%s: %s[%d] is not a key of %d+ characters; ignored", where, name, i, MIN_KEY_LENGTH)
    return tuple(keys)


def _store_keys(store_keys: Any, where: str) -> dict[str, str]:
    stores: dict[str, str] = {}
    if isinstance(store_keys, dict):
        for store_id, key in store_keys.items():
            if isinstance(key, str) and len(key) >= MIN_KEY_LENGTH:
                stores[str(store_id)] = key
            else:
                log.error("%s: store key of %s missing or too short; ignored", where, store_id)
    elif store_keys is not None:
        log.error("%s: store_keys must be an object {store_id: key}", where)
    return stores


def _keys(program_id: str, api_key: Any, config: dict[str, Any], where: str) -> ProgramKeys | None:
    """Validated keys; short or malformed keys are refused so a typo cannot open the API."""
    if api_key is not None and api_key != "" and (not isinstance(api_key, str) or len(api_key) < MIN_KEY_LENGTH):
        log.error("%s: API key (read) shorter than %d characters; ignored", where, MIN_KEY_LENGTH)
        api_key = None
    keys = ProgramKeys(program_id, api_key or None, _store_keys(config.get("store_keys"), where),
                       _key_list(config.get("read_keys"), "read_keys", where),
                       _key_list(config.get("write_keys"), "write_keys", where))
    both = set(keys.write_keys) & set(keys.all_read_keys())
    if both:
        log.error("%s: %d write key(s) are also read keys (the password is a read key); they stay read only",
                  where, len(both))
    if not keys.all_read_keys() and not keys.all_write_keys():
        log.error("%s: no API key of %d+ characters (password, read_keys or write_keys); program %s disabled",
                  where, MIN_KEY_LENGTH, program_id)
        return None
    return keys


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
