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
