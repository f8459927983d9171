"""The product's wheel (`pip wheel .`) holds the product only: no development tool is shipped."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "plugins" / "loyalty_moengage"


def _builds_wheels_offline() -> bool:
    """setuptools has its own bdist_wheel from 70.1; older ones need the `wheel` package's (before 0.46)."""
    for module in ("setuptools.command.bdist_wheel", "wheel.bdist_wheel"):
        try:
            importlib.import_module(module)
            return True
        except ImportError:
            continue
    return False


def _product_wheel(tmp_path: Path) -> list[str]:
    # A copy of what the build reads (the root's files and plugins/): building in the checkout would
    # leave a build/ folder whose stale files end up in later wheels.
    src = tmp_path / "src"
    src.mkdir()
    for f in ROOT.iterdir():
        if f.is_file():
            shutil.copy2(f, src / f.name)
    shutil.copytree(ROOT / "plugins", src / "plugins", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "wheel"
    # Without build isolation when the venv's setuptools can build a wheel (fast, offline); else as
    # `make install` builds the package, with pip fetching setuptools into an isolated environment.
    isolation = ["--no-build-isolation"] if _builds_wheels_offline() else []
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", *isolation,
           "-w", str(out), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = out.glob("loyalty_moengage-*.whl")
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def test_the_product_wheel_holds_the_product_and_no_devtools(tmp_path):
    names = _product_wheel(tmp_path)
    devtools = [n for n in names if {"devtools", "loyalty_moengage_devtools"} & set(n.split("/")[:-1])]
    assert devtools == []
    assert {n.split("/")[0] for n in names} == {"loyalty_moengage", next(n.split("/")[0] for n in names
                                                                          if ".dist-info/" in n)}
    sources = {f"loyalty_moengage/{p.relative_to(SOURCE).as_posix()}" for p in SOURCE.rglob("*")
               if p.suffix in (".py", ".sql") and "__pycache__" not in p.parts}
    assert sources - set(names) == set()
    assert {"loyalty_moengage/cli.py", "loyalty_moengage/sync/__init__.py",
            "loyalty_moengage/sql/010_sync_state.sql"} <= set(names)


# What an Airflow image does with the product: the wheel and Airflow's constraints, nothing else.
IN_IMAGE = r"""
import importlib, importlib.util, json, os, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
modules = ["loyalty_moengage.sync.tasks", "loyalty_moengage.sync.sinks.outbox_sink", "loyalty_moengage.sync.chunk.pipeline",
           "loyalty_moengage.sync.send.load", "loyalty_moengage.sync.send.lookups", "loyalty_moengage.sync.send.settle",
           "loyalty_moengage.sync.report.report", "loyalty_moengage.sync.chunk.pack", "loyalty_moengage.moengage.hook",
           "loyalty_moengage.sync.ops.presence_refresh", "loyalty_moengage.api.app", "loyalty_moengage.api.__main__",
           "loyalty_moengage.ui.app", "loyalty_moengage.sync.ops.run_note", "loyalty_moengage.cli",
           "loyalty_moengage.sync.ops.runner"]
failed = {}
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
from airflow.providers_manager import ProvidersManager
from airflow.models.connection import Connection
from loyalty_moengage.api.app import create_app

create_app()
spec = importlib.util.spec_from_file_location("moengage_api_plugin", sys.argv[3])
plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plugin)
assert [a["url_prefix"] for a in plugin.MoEngageLoyaltyApiPlugin().fastapi_apps] == ["/loyalty-moengage", "/loyalty-moengage-ui"]
hook = ProvidersManager().hooks.get("moengage")
conn = Connection(conn_id="moengage_image", conn_type="moengage", host="03", login="WS_IMG",
                  password="image-key-1234567", extra=json.dumps({"base_url": sys.argv[2] + "/dc/{dc}"}))
os.environ["AIRFLOW_CONN_MOENGAGE_IMAGE"] = conn.as_json()   # as the UI's Test button does, under its conn id
ok, message = conn.test_connection()
print(json.dumps({"dags": sorted(bag.dag_ids), "import_errors": {k: v[-300:] for k, v in bag.import_errors.items()},
                  "failed": failed, "hook": hook.hook_class_name if hook else None, "test": [ok, message]}))
"""


def test_the_wheel_alone_runs_in_a_fresh_airflow_environment(tmp_path):
    """The product's wheel and Airflow's constraints in a new virtualenv: the DAGs load, the
    provider registers the MoEngage connection type and its Test button works against a real
    HTTP server, and every task's and the API's module imports (no Makefile, no requirements.txt)."""
    import json
    import os

    from loyalty_moengage_devtools.sandbox import SandboxServer

    names = _product_wheel(tmp_path)
    assert names
    (wheel,) = (tmp_path / "wheel").glob("loyalty_moengage-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    airflow = next(line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
                   if line.startswith("apache-airflow=="))
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel), airflow,
                              "-c", str(ROOT / "constraints.txt")], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    home = tmp_path / "home"
    shutil.copytree(ROOT / "dags", home / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "include", home / "include", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LOYALTY", "PYTHON"))}
    env.update({"AIRFLOW_HOME": str(home / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "LOYALTY_PROJECT_ROOT": str(home), "LOYALTY_STATE_DIR": str(tmp_path / "state")})
    with SandboxServer(port=0) as sandbox:
        sandbox.add_workspace("WS_IMG", "image-key-1234567", dc="03")
        done = subprocess.run([str(py), "-c", IN_IMAGE, str(home / "dags"), sandbox.url,
                               str(ROOT / "plugins" / "moengage_api_plugin.py")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["import_errors"] == {} and result["failed"] == {}
    assert {"moengage_sync_demo", "moengage_presence_demo"} <= set(result["dags"])
    assert result["hook"] == "loyalty_moengage.moengage.hook.MoEngageHook"
    assert result["test"][0] is True, result["test"]
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, timeout=60).stdout.lower()
    assert "loyalty-moengage-devtools" not in freeze and "pixeltable" not in freeze   # no dev tool, no embedded DB


def _dockerfile_stages() -> tuple[dict[str, str], dict[str, list[str]]]:
    """The Dockerfile's ARG defaults before the first FROM, and each stage's instructions."""
    args: dict[str, str] = {}
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            _, image, _, name = line.split()
            current = stages.setdefault(name, [f"FROM {image}"])
        elif current is None and line.startswith("ARG "):
            key, _, value = line[4:].partition("=")
            args[key] = value
        elif current is not None:
            current.append(line)
    return args, stages


def test_the_image_is_airflows_own_with_the_wheel_installed():
    """The default target extends Airflow's image at the Airflow version the project pins, and
    installs the product's wheel; the development tools reach only the dev target."""
    args, stages = _dockerfile_stages()
    pinned = next(line.split("==")[1] for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if line.startswith("apache-airflow=="))
    assert args["AIRFLOW_IMAGE"] == f"apache/airflow:{pinned}-python3.11"
    assert list(stages)[-1] == "production" and stages["production"] == ["FROM product"]
    for name in ("wheel", "product"):
        assert stages[name][0] == "FROM ${AIRFLOW_IMAGE}", name
    product = "\n".join(stages["product"])
    assert "COPY --chown=airflow:0 --from=wheel /tmp/dist/" in product
    assert '"apache-airflow==${AIRFLOW_VERSION}" "${wheel}[openlineage]"' in product
    assert "requirements.txt" not in product and "devtools" not in product
    assert "devtools/" in "\n".join(stages["dev"]) and stages["dev"][0] == "FROM product"
