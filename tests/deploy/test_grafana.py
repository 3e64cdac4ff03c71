"""The Grafana dashboard holds what Grafana's dashboard schema (version 39, Grafana 10.3 to 11) requires of an
imported dashboard: the top-level fields, panels with ids, types and grid positions inside the 24 columns and
without overlaps, rows with their panels, Prometheus targets with unique refIds on the dashboard's data source
variable, template variables defined before use."""

from __future__ import annotations

import re

from tests.deploy.dashboard import load_dashboard, panels

SCHEMA_VERSION = 39
PANEL_TYPES = {"row", "timeseries", "stat"}
VARIABLE_TYPES = {"query", "adhoc", "constant", "datasource", "interval", "textbox", "custom", "system"}
UNITS = {"none", "reqps", "percentunit", "s"}
BUILTIN_VARIABLES = {"__rate_interval", "__range", "__interval"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_the_top_level_fields_grafana_requires():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] == SCHEMA_VERSION
    assert isinstance(dashboard["title"], str) and dashboard["title"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard.get("id") is None  # an import or provisioning gives it its own
    assert isinstance(dashboard["editable"], bool)
    assert dashboard["graphTooltip"] in (0, 1, 2)
    assert set(dashboard["time"]) == {"from", "to"}
    assert isinstance(dashboard["timepicker"], dict)
    assert all(isinstance(tag, str) for tag in dashboard["tags"])
    assert isinstance(dashboard["templating"]["list"], list)
    for annotation in dashboard["annotations"]["list"]:
        assert {"name", "datasource", "enable", "iconColor"} <= set(annotation)
    assert isinstance(dashboard["panels"], list) and dashboard["panels"]


def test_panels_have_unique_ids_types_and_grid_positions_inside_24_columns_without_overlap():
    dashboard = load_dashboard()
    seen_ids: set[int] = set()
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        assert isinstance(panel["id"], int) and panel["id"] not in seen_ids, panel.get("title")
        seen_ids.add(panel["id"])
        assert panel["type"] in PANEL_TYPES
        assert isinstance(panel["title"], str) and panel["title"]
        grid = panel["gridPos"]
        assert set(grid) >= {"h", "w", "x", "y"}
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in ("h", "w", "x", "y"))
        assert 1 <= grid["w"] <= 24 and grid["x"] + grid["w"] <= 24 and grid["h"] >= 1, panel["title"]
        for dx in range(grid["w"]):
            for dy in range(grid["h"]):
                cell = (grid["x"] + dx, grid["y"] + dy)
                assert cell not in cells, f"{panel['title']} overlaps {cells[cell]}"
                cells[cell] = panel["title"]
        if panel["type"] == "row":
            assert isinstance(panel["collapsed"], bool) and isinstance(panel["panels"], list)
            assert grid["w"] == 24 and grid["h"] == 1


def test_every_panel_queries_prometheus_through_the_datasource_variable():
    for panel in panels(load_dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert set(panel["fieldConfig"]) == {"defaults", "overrides"}
        assert isinstance(panel["fieldConfig"]["overrides"], list)
        assert panel["fieldConfig"]["defaults"].get("unit", "none") in UNITS, panel["title"]
        assert isinstance(panel["options"], dict)
        assert panel.get("description"), f"{panel['title']}: say what the panel shows"
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            assert isinstance(target["expr"], str) and target["expr"].strip()


def test_template_variables_are_defined_before_use():
    dashboard = load_dashboard()
    defined: list[str] = []
    for variable in dashboard["templating"]["list"]:
        assert variable["type"] in VARIABLE_TYPES
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable["name"]) and variable["name"] not in defined
        text = str(variable.get("query", ""))
        for used in re.findall(r"\$\{?(\w+)", text):
            assert used in defined or used in BUILTIN_VARIABLES, f"${used} used by ${variable['name']} before it"
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE
            assert variable["refresh"] in (1, 2)
            assert variable["multi"] and variable["includeAll"]
        defined.append(variable["name"])
    assert defined[0] == "datasource"
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            for used in re.findall(r"\$\{?(\w+)", target["expr"]):
                assert used in defined or used in BUILTIN_VARIABLES, (panel["title"], used)
            if "halo_" in target["expr"]:
                assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
