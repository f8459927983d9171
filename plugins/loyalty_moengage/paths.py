"""Where the project's files live, so code finds them the same way from Airflow, pytest or a CLI."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The checkout root (holds ``include/``); ``LOYALTY_PROJECT_ROOT`` overrides it."""
    env = os.environ.get("LOYALTY_PROJECT_ROOT")
    if env:
        return Path(env).resolve()
    return PACKAGE_DIR.parent.parent


def include_dir() -> Path:
    return project_root() / "include"


def sql_dir() -> Path:
    """The SQL templates; ``LOYALTY_SQL_DIR`` points at another copy (tests, staging)."""
    env = os.environ.get("LOYALTY_SQL_DIR")
    return Path(env).resolve() if env else include_dir() / "sql"


def state_dir() -> Path:
    """Git-ignored folder for local state: the embedded Postgres, Airflow home, sandbox data."""
    env = os.environ.get("LOYALTY_STATE_DIR")
    path = Path(env).resolve() if env else project_root() / ".local"
    path.mkdir(parents=True, exist_ok=True)
    return path
