"""The forwarders package imports neither the app layer nor aiohttp's server side (it gets a client session)."""

from __future__ import annotations

import ast
from pathlib import Path

import halo_proxy.forwarders

FORBIDDEN = ("aiohttp.web", "halo_proxy.app", "halo_proxy.server", "halo_proxy.admin", "halo_proxy.edge",
             "halo_proxy.cli")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_forwarders_stay_below_the_app_layer():
    package = Path(halo_proxy.forwarders.__file__).parent
    files = sorted(package.glob("*.py"))
    assert files
    for path in files:
        bad = sorted(name for name in _imports(path) if name.startswith(FORBIDDEN))
        assert bad == [], f"{path.name} imports {bad}"
