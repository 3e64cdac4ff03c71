"""The tracking package stays pure: standard library, small parsers, and itself; no I/O frameworks, no logging."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import halo_proxy.tracking

PACKAGE = Path(halo_proxy.tracking.__file__).parent
ALLOWED_THIRD_PARTY = {"user_agents", "ua_parser", "phonenumbers"}
FORBIDDEN_STDLIB = {"asyncio", "logging", "socket", "sqlite3", "subprocess", "threading", "time"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_module_imports_only_pure_dependencies(path):
    for module in imported_modules(path):
        top = module.split(".")[0]
        if module.startswith("halo_proxy."):
            assert module.startswith("halo_proxy.tracking"), f"{path.name} imports {module}"
        elif top in sys.stdlib_module_names:
            assert top not in FORBIDDEN_STDLIB, f"{path.name} imports {module}"
        else:
            assert top in ALLOWED_THIRD_PARTY, f"{path.name} imports {module}"
