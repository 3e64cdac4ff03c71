"""Reading the Grafana dashboard under deploy/grafana: its panels' PromQL and its template variables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from tests.deploy.tools import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "halotrack.json"
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\)$")
METRIC = re.compile(r"\b(halo_[a-z0-9_]+)\b")


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title and refId, PromQL) for every query of every panel."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"{panel['title']} [{target['refId']}]", target["expr"]


def variable_queries(dashboard: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{name: (series selector, label)} of the query variables (`label_values(selector, label)`), in order."""
    found: dict[str, tuple[str, str]] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = LABEL_VALUES.match(query.strip())
        assert match, f"variable {variable['name']}: {query!r} is not label_values(selector, label)"
        found[variable["name"]] = (match["selector"], match["label"])
    return found


def metric_names(expr: str) -> set[str]:
    names = set(METRIC.findall(expr))
    if re.search(r"\bup\{", expr):
        names.add("up")
    return names
