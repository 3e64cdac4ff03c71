"""The direction of imports across the whole package, relative imports included (STYLE.md "Layout"):

- `tracking/` and `edge/boundary.py` are pure: the standard library (no I/O modules), small parsers, themselves;
- `storage/` never imports aiohttp, nor anything above it;
- `forwarders/` wire modules never import storage (the delivery worker may) nor aiohttp's server side;
- `services/` never imports aiohttp's server side nor the routes above it;
- `views/` (HTML pages as data and templates) never does I/O: no aiohttp, no storage, nothing above it;
- nothing imports the composition root `app.py` but the entry points that run it (cli, server, demo).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import halo_proxy

ROOT = Path(halo_proxy.__file__).parent
MODULES = sorted(ROOT.rglob("*.py"))
PURE_THIRD_PARTY = {"user_agents", "ua_parser", "phonenumbers"}
IO_STDLIB = {"asyncio", "logging", "socket", "sqlite3", "subprocess", "threading", "time"}
ABOVE_STORAGE = ("halo_proxy.app", "halo_proxy.edge", "halo_proxy.server", "halo_proxy.admin", "halo_proxy.cli",
                 "halo_proxy.routes", "halo_proxy.services", "halo_proxy.views",
                 "halo_proxy.forwarders", "halo_proxy.demo")
ENTRY_POINTS = {"halo_proxy.cli", "halo_proxy.server", "halo_proxy.demo"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved, `from x import y` also as `x.y`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def ids(path: Path) -> str:
    return module_name(path)


@pytest.mark.parametrize("path", [p for p in MODULES if "tracking" in p.parts or p.name == "boundary.py"], ids=ids)
def test_pure_modules_import_only_pure_things(path):
    own = "halo_proxy.tracking" if "tracking" in path.parts else "halo_proxy.edge.boundary"
    for module in imports(path):
        top = module.split(".")[0]
        if top == "halo_proxy":
            assert module.startswith(own), f"{module_name(path)} imports {module}"
        elif top in sys.stdlib_module_names:
            assert top not in IO_STDLIB, f"{module_name(path)} imports {module}"
        else:
            assert top in PURE_THIRD_PARTY or top == "__future__", f"{module_name(path)} imports {module}"


@pytest.mark.parametrize("path", [p for p in MODULES if "storage" in p.parts], ids=ids)
def test_storage_never_imports_aiohttp_or_what_is_above_it(path):
    bad = sorted(m for m in imports(path) if m.split(".")[0] == "aiohttp" or m.startswith(ABOVE_STORAGE))
    assert bad == [], f"{module_name(path)} imports {bad}"


@pytest.mark.parametrize("path", [p for p in MODULES if "forwarders" in p.parts], ids=ids)
def test_forwarder_wire_modules_never_import_storage(path):
    names = imports(path)
    bad = sorted(m for m in names if m.startswith(("aiohttp.web", "halo_proxy.app", "halo_proxy.edge",
                                                      "halo_proxy.server", "halo_proxy.cli", "halo_proxy.routes")))
    if path.name != "worker.py":
        bad += sorted(m for m in names if m.startswith("halo_proxy.storage"))
    assert bad == [], f"{module_name(path)} imports {bad}"


@pytest.mark.parametrize("path", [p for p in MODULES if "services" in p.parts], ids=ids)
def test_services_never_import_aiohttp_web_or_routes(path):
    bad = sorted(m for m in imports(path) if m.startswith(("aiohttp.web", "halo_proxy.routes", "halo_proxy.edge",
                                                             "halo_proxy.app", "halo_proxy.server", "halo_proxy.cli")))
    assert bad == [], f"{module_name(path)} imports {bad}"


@pytest.mark.parametrize("path", [p for p in MODULES if "views" in p.parts], ids=ids)
def test_views_do_no_io(path):
    bad = sorted(m for m in imports(path) if m.split(".")[0] in {"aiohttp", "asyncpg"} | IO_STDLIB
                 or m.startswith(("halo_proxy.routes", "halo_proxy.edge", "halo_proxy.storage", "halo_proxy.app",
                                  "halo_proxy.server", "halo_proxy.cli", "halo_proxy.forwarders")))
    assert bad == [], f"{module_name(path)} imports {bad}"


@pytest.mark.parametrize("path", MODULES, ids=ids)
def test_nothing_imports_the_composition_root(path):
    if module_name(path) in ENTRY_POINTS | {"halo_proxy.app"}:
        return
    bad = sorted(m for m in imports(path) if m == "halo_proxy.app" or m.startswith("halo_proxy.app."))
    assert bad == [], f"{module_name(path)} imports {bad}"


def test_the_walk_sees_the_package():
    names = {module_name(p) for p in MODULES}
    assert {"halo_proxy.app", "halo_proxy.tracking.visit", "halo_proxy.storage.sessions",
            "halo_proxy.forwarders.meta", "halo_proxy.edge.proxy"} <= names
    assert "halo_proxy.storage.db" in imports(ROOT / "storage" / "sessions.py") or \
        any(m.startswith("halo_proxy.storage") for m in imports(ROOT / "storage" / "sessions.py"))
