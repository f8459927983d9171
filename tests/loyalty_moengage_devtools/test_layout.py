"""The development tools import the product; the product never imports them."""

from __future__ import annotations

import ast
from pathlib import Path

import loyalty_moengage

PACKAGE = Path(loyalty_moengage.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_product_never_imports_devtools():
    files = sorted(PACKAGE.rglob("*.py"))   # every product module: plugins/loyalty_moengage/**/*.py
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p)
                                                     if m.split(".")[0] == "loyalty_moengage_devtools")
                 for p in files}
    assert PACKAGE / "cli.py" in files and {k: v for k, v in offenders.items() if v} == {}
