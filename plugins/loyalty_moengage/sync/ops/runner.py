"""Run one night of a program's sync in-process with Airflow's ``dag.test()``.

Used by ``make demo``, the CLI and the end-to-end tests: the same DAG code the scheduler runs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

from loyalty_moengage.paths import project_root

#: The run conf key of an in-process night (``dag.test``: one task at a time).
IN_PROCESS = "in_process"


def airflow_env(home: Path) -> dict[str, str]:
    root = project_root()
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


def ensure_metadata_db() -> None:
    """Create Airflow's metadata DB (SQLite under AIRFLOW_HOME) once."""
    home = Path(os.environ.get("AIRFLOW_HOME", project_root() / ".local" / "airflow"))
    marker = home / ".migrated-3.3"
    if marker.exists() and (home / "airflow.db").exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker.touch()


def load_dag(program_id: str) -> Any:
    path = project_root() / "dags" / "moengage_sync.py"
    spec = importlib.util.spec_from_file_location("moengage_sync_dags", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    dag = getattr(module, f"moengage_sync_{program_id}", None)
    if dag is None:
        raise LookupError(f"no DAG moengage_sync_{program_id}: is the program enabled in the programs file?")
    return dag


def run_night(program_id: str, night: date, time_zone: str, *, conf: dict[str, Any] | None = None) -> Any:
    """Run the program's DAG for one night and return the DagRun."""
    from loyalty_moengage.night import Window

    ensure_metadata_db()
    dag = load_dag(program_id)
    # dag.test(logical_date=...) treats the date as "run after" and syncs the last complete
    # interval before it: the night that ends there. In-process, mapped tasks run one after
    # another, so each load slot may spend the whole budget (tasks.load_share).
    return dag.test(logical_date=Window.of_night(night, time_zone).end,
                    run_conf={**(conf or {}), IN_PROCESS: True})
