"""The programs file: which loyalty programs sync, where their data and credentials live.

Parsed at DAG parse time, so it only needs PyYAML and pydantic (both already imported by
Airflow): no database, no network. ``LOYALTY_PROGRAMS_FILE`` points at another file (tests use
this). Types are strict: a quoted number (``load_parallelism: "2"``) is an error, not a guess.
"""

from __future__ import annotations

import difflib
import os
import re
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loyalty_moengage.config.api_policy import ApiPolicy
from loyalty_moengage.config.live_policy import LivePolicy
from loyalty_moengage.paths import include_dir

_ID = re.compile(r"^[a-z0-9_]{1,40}$")
_POOL = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")
_ATTRIBUTE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
UNCERTAIN_POLICIES = ("hold", "resend")


class ProgramsFileError(ValueError):
    """The programs file is invalid; the message names the file, the program and the key."""


class Program(BaseModel):
    """One program's settings; defaults here are those of a program that sets nothing."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    id: str
    name: str
    time_zone: str
    enabled: bool = True
    loyalty_conn_id: str = "loyalty_db"
    moengage_conn_id: str = "moengage_default"
    state_conn_id: str | None = None
    start_date: str = "2026-01-01"
    catchup: bool = False
    retries: int = 2
    retry_delay_seconds: int = 120
    chunk_members: int = 50_000
    load_parallelism: int = 2
    # A load task that has not finished after this long is stopped by Airflow (execution_timeout) and
    # retried; its claims come back to the outbox when its lease runs out.
    load_timeout_minutes: int = Field(360, ge=10, le=1440)
    # The Airflow Pool every program of one MoEngage workspace shares for its load tasks (docs/scale-out.md);
    # None: "moengage_<moengage_conn_id>"; "default_pool": no shared pool.
    workspace_pool: str | None = None
    # The slots that Pool has (`airflow pools set NAME SLOTS ...`); each load task paces at the
    # workspace budget / this. None: load_parallelism.
    workspace_pool_slots: int | None = None
    reject_threshold: float = 0.01
    uncertain_policy: str = "hold"
    min_members: int = 1
    max_event_drop_pct: float = 80.0
    anomaly_lookback_nights: int = 7
    # Nights before this one whose windows each run re-reads for late rows (recorded in that night's
    # window, committed after its run extracted): 0..7, 0 = none (docs/sql-contract.md).
    late_row_lookback_nights: int = 1
    audit_retention_days: int = 30
    keep_sent_bodies: bool = False
    verify_customers: bool = True
    receipts: bool = True
    receipt_attribute: str = "loyalty_sync_receipt"
    receipt_wait_seconds: float = 900.0
    # What MoEngage may do through the API for this program: caps, profile updates, non-members.
    api: ApiPolicy = ApiPolicy()
    # Events within minutes, between the nights (docs/live.md): off unless enabled.
    live: LivePolicy = LivePolicy()
    presence_refresh_minutes: int = Field(45, ge=0, le=55)
    presence_refresh_days: int = Field(30, ge=1)
    # How long a Get User confirmation (or a `presence import`) is trusted before an event for the
    # customer is checked again: customers deleted in MoEngage are recreated by the next event. 168 h
    # (7 days) because the Get User budget (1,000/min = 1.44M/day for the whole workspace) cannot
    # re-check a program of a million active customers daily; the refresher renews them at 3/4 of it.
    # 24..720 h: under a day, every customer with an event would be looked up again every night (what
    # the cache exists to spare); 30 days is the absences' longest back-off.
    presence_lifetime_hours: int = Field(168, ge=24, le=720)
    alert_email: list[str] = []
    alert_slack_conn_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _lenient_spellings(cls, data: Any) -> Any:
        """The YAML spellings the hand-written loader accepted: ``id: 123``, an unquoted
        ``start_date``, one address as ``alert_email``; ``name`` defaults to the id."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("id"), int) and not isinstance(data["id"], bool):
            data["id"] = str(data["id"])
        if isinstance(data.get("start_date"), date):
            data["start_date"] = data["start_date"].isoformat()
        if isinstance(data.get("alert_email"), str):
            data["alert_email"] = [data["alert_email"]]
        if "name" not in data and "id" in data:
            data["name"] = data["id"]
        return data

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("use 1-40 lowercase letters, digits or underscores")
        return value

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Asia/Kolkata)") from None
        return value

    @field_validator("uncertain_policy")
    @classmethod
    def _uncertain_policy(cls, value: str) -> str:
        if value not in UNCERTAIN_POLICIES:
            raise ValueError(f"must be one of {', '.join(UNCERTAIN_POLICIES)}")
        return value

    @field_validator("receipt_attribute")
    @classmethod
    def _receipt_attribute(cls, value: str) -> str:
        if not _ATTRIBUTE.match(value) or value.lower().startswith("moe_") or value in ("id", "_id"):
            raise ValueError("use 1-64 letters, digits or underscores, not starting with moe_ (a MoEngage user "
                             "attribute name)")
        return value

    @field_validator("receipt_wait_seconds")
    @classmethod
    def _receipt_wait_seconds(cls, value: float) -> float:
        if not 1 <= value <= 86_400:
            raise ValueError("must be between 1 and 86400 seconds")
        return value

    @field_validator("chunk_members")
    @classmethod
    def _chunk_members(cls, value: int) -> int:
        if value < 100:
            raise ValueError("must be at least 100")
        return value

    @field_validator("load_parallelism")
    @classmethod
    def _load_parallelism(cls, value: int) -> int:
        if not 1 <= value <= 64:
            raise ValueError("must be between 1 and 64")
        return value

    @field_validator("workspace_pool_slots")
    @classmethod
    def _workspace_pool_slots(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 64:
            raise ValueError("must be between 1 and 64")
        return value

    @field_validator("workspace_pool")
    @classmethod
    def _workspace_pool(cls, value: str | None) -> str | None:
        if value is not None and not _POOL.match(value):
            raise ValueError("use 1-256 letters, digits, '_', '-' or '.' (an Airflow Pool name)")
        return value

    @field_validator("reject_threshold")
    @classmethod
    def _reject_threshold(cls, value: float) -> float:
        if not 0 <= value <= 1:
            raise ValueError("is a share between 0 and 1 (0.01 = 1%)")
        return value

    @field_validator("late_row_lookback_nights")
    @classmethod
    def _late_row_lookback_nights(cls, value: int) -> int:
        if not 0 <= value <= 7:
            raise ValueError("must be between 0 and 7 nights (0: no lookback; a late row is then never sent)")
        return value

    @field_validator("start_date")
    @classmethod
    def _start_date(cls, value: str) -> str:
        try:
            date.fromisoformat(value)
        except ValueError:
            raise ValueError("must be a date like 2026-01-01") from None
        return value

    @property
    def dag_id(self) -> str:
        return f"moengage_sync_{self.id}"

    @property
    def pool(self) -> str:
        """The Airflow Pool of the load tasks: one per MoEngage workspace (connection), shared by every
        program that sends to it, so their load tasks never spend more than the workspace budget."""
        if self.workspace_pool:
            return self.workspace_pool
        return "moengage_" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.moengage_conn_id)

    @property
    def pool_slots(self) -> int:
        """How many load tasks of the workspace may send at once (the Pool's slots)."""
        if self.pool == "default_pool":
            return self.load_parallelism
        return self.workspace_pool_slots or self.load_parallelism

    @property
    def load_share(self) -> float:
        """Each load task's fraction of the workspace budget: at most ``pool_slots`` run at once,
        beside the live lane's share when the program has one."""
        return (1 - self.live.budget_share if self.live.enabled else 1) / self.pool_slots

    @property
    def live_dag_id(self) -> str:
        return f"moengage_live_{self.id}"

    @property
    def state_conn(self) -> str:
        return self.state_conn_id or self.loyalty_conn_id

    @property
    def start(self) -> date:
        return date.fromisoformat(str(self.start_date))


def programs_file() -> Path:
    return Path(os.environ.get("LOYALTY_PROGRAMS_FILE") or include_dir() / "programs.yaml")


def _unknown_key(key: Any) -> str:
    """'unknown key 'x' (did you mean 'y'?)', or the valid keys when none is close; a dotted key
    ('api.max_points') is looked up among the keys of its block."""
    parent, _, leaf = str(key).rpartition(".")
    fields = {"api": ApiPolicy.model_fields, "live": LivePolicy.model_fields}.get(parent, Program.model_fields)
    close = difflib.get_close_matches(leaf, sorted(fields), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(fields)}"
    return f"unknown key {str(key)!r} ({hint})"


def _merged(defaults: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The program's keys over the defaults; a block (``api:``) is merged key by key."""
    merged = {**defaults, **entry}
    for key, value in entry.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            merged[key] = {**defaults[key], **value}
    return merged


def _file_error(path: Path, where: str, entry: dict[str, Any], exc: ValidationError) -> ProgramsFileError:
    """Every problem pydantic found, one line each: 'file: program 'p', key 'k': what is wrong (got ...)'."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        key = ".".join(loc[:2]) if loc[:1] in (["api"], ["live"]) else (loc[0] if loc else "?")
        if error["type"] in ("extra_forbidden", "invalid_key"):
            lines.append(f"{path}: {where}: {_unknown_key(key)}")
            continue
        if error["type"] == "missing":
            if key == "name" and "id" not in entry:
                continue  # name defaults to the id: only the id is missing
            lines.append(f"{path}: {where}: missing required key {key!r}")
            continue
        if error["type"] == "value_error":
            message = str(error["ctx"]["error"])
        else:
            message = f"{error['msg'][0].lower()}{error['msg'][1:]}, got {error['input']!r}"
        top = str(error["loc"][0]) if error["loc"] else ""
        origin = "" if top in entry or not error["loc"] else " (set under defaults)"
        lines.append(f"{path}: {where}, key {key!r}{origin}: {message}")
    return ProgramsFileError("\n".join(lines))


def _read(path: Path) -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ProgramsFileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ProgramsFileError(f"{path}: expected a mapping with 'defaults' and 'programs'")
    return raw


def load_programs(path: Path | None = None) -> list[Program]:
    """All programs in the file (enabled or not), validated."""
    path = path or programs_file()
    raw = _read(path)
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ProgramsFileError(f"{path}: 'defaults' must be a mapping")
    unknown = [key for key in defaults if key not in Program.model_fields]
    if unknown:
        raise ProgramsFileError("\n".join(f"{path}: defaults: {_unknown_key(key)}" for key in unknown))
    entries = raw.get("programs") or []
    if not isinstance(entries, list):
        raise ProgramsFileError(f"{path}: 'programs' must be a list")
    programs: list[Program] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ProgramsFileError(f"{path}: programs[{i}]: expected a mapping of keys")
        where = f"program {str(entry['id'])!r}" if "id" in entry else f"programs[{i}]"
        try:
            program = Program.model_validate(_merged(defaults, entry))
        except ValidationError as exc:
            raise _file_error(path, where, entry, exc) from None
        if program.id in seen:
            raise ProgramsFileError(f"{path}: program id {program.id!r} appears twice")
        seen.add(program.id)
        programs.append(program)
    _check_shared_workspaces(path, programs)
    return programs


def _state_home(program: Program) -> str:
    return program.state_conn_id or program.loyalty_conn_id


def _check_shared_workspaces(path: Path, programs: list[Program]) -> None:
    """Programs writing one MoEngage workspace share its receipt carriers through their state
    database: two state databases cannot see each other's unsettled receipts on one customer."""
    by_target: dict[tuple[str, str], list[Program]] = {}
    for program in programs:
        if program.enabled and program.receipts:
            by_target.setdefault((program.moengage_conn_id, program.receipt_attribute), []).append(program)
    for (conn_id, attribute), group in by_target.items():
        homes = {_state_home(p) for p in group}
        if len(homes) > 1:
            names = ", ".join(f"{p.id} ({_state_home(p)})" for p in group)
            raise ProgramsFileError(
                f"{path}: programs {names} send to one MoEngage connection ({conn_id!r}) and write the same "
                f"receipt attribute {attribute!r}, but keep their state in different databases, so neither sees "
                "the other's unsettled receipts on a customer: give them one state_conn_id, or each its own "
                "receipt_attribute")


def get_program(program_id: str, path: Path | None = None) -> Program:
    for program in load_programs(path):
        if program.id == program_id:
            return program
    raise ProgramsFileError(f"{path or programs_file()}: no program with id {program_id!r}")
