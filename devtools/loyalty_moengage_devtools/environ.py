"""Process environment set for a block and put back after, for the tools that point Airflow
(``AIRFLOW_CONN_*``, ``LOYALTY_PROGRAMS_FILE``) at a sandbox and a generated program."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def restored_environ(*names: str) -> Iterator[None]:
    """Whatever the block sets among ``names`` is undone when it ends (unset ones are unset again)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
