"""The programs file: which loyalty programs sync, where their data and credentials live.

Parsed at DAG parse time, so it only needs PyYAML (already an Airflow dependency): no database,
no network. ``LOYALTY_PROGRAMS_FILE`` points at another file (tests use this).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from loyalty_moengage.paths import include_dir

_ID = re.compile(r"^[a-z0-9_]{1,40}$")
UNCERTAIN_POLICIES = ("hold", "resend")


class ProgramsFileError(ValueError):
    """The programs file is invalid; the message names the file, the program and the key."""


@dataclass(frozen=True)
class Program:
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
    reject_threshold: float = 0.01
    uncertain_policy: str = "hold"
    min_members: int = 1
    max_event_drop_pct: float = 80.0
    anomaly_lookback_nights: int = 7
    audit_retention_days: int = 30
    keep_sent_bodies: bool = False
    verify_customers: bool = True
    alert_email: list[str] = field(default_factory=list)
    alert_slack_conn_id: str | None = None

    @property
    def dag_id(self) -> str:
        return f"moengage_sync_{self.id}"

    @property
    def state_conn(self) -> str:
        return self.state_conn_id or self.loyalty_conn_id

    @property
    def start(self) -> date:
        return date.fromisoformat(str(self.start_date))


def programs_file() -> Path:
    return Path(os.environ.get("LOYALTY_PROGRAMS_FILE") or include_dir() / "programs.yaml")


def _validate(program: Program, where: str) -> None:
    def fail(key: str, message: str) -> None:
        raise ProgramsFileError(f"{where}: program {program.id!r}, key {key!r}: {message}")

    if not _ID.match(program.id):
        fail("id", "use 1-40 lowercase letters, digits or underscores")
    try:
        ZoneInfo(program.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        fail("time_zone", f"{program.time_zone!r} is not an IANA time zone (e.g. Asia/Kolkata)")
    if program.uncertain_policy not in UNCERTAIN_POLICIES:
        fail("uncertain_policy", f"must be one of {', '.join(UNCERTAIN_POLICIES)}")
    if program.chunk_members < 100:
        fail("chunk_members", "must be at least 100")
    if not 1 <= program.load_parallelism <= 64:
        fail("load_parallelism", "must be between 1 and 64")
    if not 0 <= program.reject_threshold <= 1:
        fail("reject_threshold", "is a share between 0 and 1 (0.01 = 1%)")
    try:
        program.start
    except ValueError:
        fail("start_date", "must be a date like 2026-01-01")


def load_programs(path: Path | None = None) -> list[Program]:
    """All programs in the file (enabled or not), validated."""
    import yaml

    path = path or programs_file()
    raw: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in fields(Program)}
    defaults = raw.get("defaults") or {}
    unknown = set(defaults) - known
    if unknown:
        raise ProgramsFileError(f"{path}: unknown key(s) under defaults: {', '.join(sorted(unknown))}")
    programs: list[Program] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw.get("programs") or []):
        unknown = set(entry) - known
        if unknown:
            raise ProgramsFileError(f"{path}: programs[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("id", "time_zone"):
            if key not in entry:
                raise ProgramsFileError(f"{path}: programs[{i}]: missing required key {key!r}")
        merged = {**defaults, **entry}
        merged.setdefault("name", entry["id"])
        merged["id"] = str(merged["id"])
        program = Program(**merged)
        _validate(program, str(path))
        if program.id in seen:
            raise ProgramsFileError(f"{path}: program id {program.id!r} appears twice")
        seen.add(program.id)
        programs.append(program)
    return programs


def get_program(program_id: str, path: Path | None = None) -> Program:
    for program in load_programs(path):
        if program.id == program_id:
            return program
    raise ProgramsFileError(f"{path or programs_file()}: no program with id {program_id!r}")
